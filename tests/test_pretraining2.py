"""data2vec 2.0 (images): the step against a numpy reference of docs/algorithm.md §8 (targets once
per image and shared by its views, the loss on masked patches only, the cls loss summed over
views), EMA bookkeeping, mesh equality, train.py's kill / resume, and the export."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import train as train_lib
from configs import vision2
from data2vec import ema, masking, sharding, trainer, workdirs
from data2vec.models.decoder import decoder_input
from test_objective import np_layer_norm, np_targets
from test_sharding import FAST_COMPILE, assert_trees_close, mesh_of
from test_train import interrupt_and_rerun, needs_fashion_mnist, read_metrics

B, M = 8, 2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def micro_config(**overrides):
  config = vision2.get_config('tiny')
  config.model.update(dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, patch_size=7))  # a 4 x 4 patch grid
  config.objective.top_k = 2
  config.masking.clone_batch = M
  config.decoder.update(dict(dim=16, num_layers=2, groups=4))
  config.optimizer.warmup_steps = 0
  config.batch_size = B
  config.total_steps = 10
  config.probe_every_steps = 0
  for key, value in overrides.items():
    config.update_from_flattened_dict({key: value})
  return config


def synthetic_batch(config, seed=0, same_views=False):
  rng = np.random.default_rng(seed)
  kw = {k: config.masking[k] for k in ('mask_prob', 'mask_length', 'mask_prob_adjust')}
  masks = np.stack([np.stack([masking.inverse_block_mask(rng, (4, 4), **kw)
                              for _ in range(1 if same_views else M)]) for _ in range(B)])
  if same_views:
    masks = np.repeat(masks, M, axis=1)
  return {'pixel_values': rng.normal(size=(B, 1, 28, 28)).astype(np.float32),
          'bool_masked_pos': masks}


def first_step(config, batch):
  """(initial state, the metrics of one unsharded step on `batch`)."""
  train = trainer.build_train_step(config, mesh_of((1, 1, 1)))
  state = train.init()
  initial = jax.device_get(state)
  _, metrics = jax.jit(train.task.train_step(jax.eval_shape(train.task.init_state)))(state, batch)
  return train.task, initial, jax.device_get(metrics)


def test_loss_matches_the_numpy_reference():
  config = micro_config()
  batch = synthetic_batch(config)
  task, state, metrics = first_step(config, batch)
  encoder = nnx.merge(task.graph_defs['encoder'], state['params']['encoder'])
  decoder = nnx.merge(task.graph_defs['decoder'], state['params']['decoder'])
  # Targets: the teacher (= the student at step 0) on the whole image, cls dropped, top-2 FFN
  # outputs instance-normed over the 16 patches, averaged, LayerNorm.
  layers = np.asarray(encoder(batch['pixel_values'])['ffn_outputs'])[:, :, 1:]
  targets = np_targets(layers, 2, 'instance', True)  # [B, 16, D]
  masks = batch['bool_masked_pos']
  keep = int(16 * (1 - config.masking.mask_prob))
  assert (masks.sum(-1) == 16 - keep).all()
  ids = np.stack([[np.flatnonzero(~view) for view in views] for views in masks])  # [B, M, keep]
  encode_rng, noise_rng = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(0), 0))
  x = np.asarray(encoder.encode_visible(batch['pixel_values'], ids,
                                        rng=encode_rng)['last_hidden_state'])
  pred = np.asarray(decoder(decoder_input(x[:, 1:], ids.reshape(B * M, keep), 16,
                                          config.decoder.noise_std, noise_rng)))
  d = config.model.hidden_size
  loss_sum, count, cls_sum = 0.0, 0, 0.0
  for b in range(B):
    for v in range(M):
      row = b * M + v
      hidden = masks[b, v]
      loss_sum += ((pred[row, hidden] - targets[b, hidden]) ** 2).sum() / np.sqrt(d)
      count += hidden.sum()
      cls_sum += ((x[row, 0] - targets[b].mean(0)) ** 2).sum() / np.sqrt(d)
  np.testing.assert_allclose(metrics['cls_loss'], cls_sum, rtol=1e-4)
  np.testing.assert_allclose(metrics['loss'], loss_sum / count + 0.01 * cls_sum, rtol=1e-4)
  np.testing.assert_allclose(metrics['masked_fraction'], (16 - keep) / 16, rtol=1e-6)
  assert np.allclose(np_layer_norm(targets).std(-1), 1, atol=1e-2)


def test_views_share_their_image_targets():
  """Two identical views of each image (no decoder noise) give the one-view regression loss and
  twice its cls sum: the targets are computed once and repeated, the cls term is summed."""
  config = micro_config(**{'decoder.noise_std': 0.0})
  one = micro_config(**{'decoder.noise_std': 0.0, 'masking.clone_batch': 1})
  batch = synthetic_batch(config, same_views=True)
  _, _, two_views = first_step(config, batch)
  _, _, one_view = first_step(one, dict(batch, bool_masked_pos=batch['bool_masked_pos'][:, :1]))
  np.testing.assert_allclose(two_views['cls_loss'], 2 * one_view['cls_loss'], rtol=1e-5)
  regression = lambda m: m['loss'] - 0.01 * m['cls_loss']
  np.testing.assert_allclose(regression(two_views), regression(one_view), rtol=1e-5)


def test_the_teacher_follows_the_encoder_only():
  config = micro_config()
  train = trainer.build_train_step(config, mesh_of((1, 1, 1)))
  state = train.init()
  before = jax.device_get(state)
  state, metrics = jax.jit(train.task.train_step(jax.eval_shape(train.task.init_state)))(
      state, synthetic_batch(config))
  after = jax.device_get(state)
  tau = float(metrics['tau'])
  assert tau == pytest.approx(ema.tau_schedule(1, 0.99, 0.999, 600))
  assert set(after['params']) == {'encoder', 'decoder'}
  jax.tree.map(lambda t0, s1, t1: np.testing.assert_allclose(t1, tau * t0 + (1 - tau) * s1,
                                                             rtol=1e-6, atol=1e-7),
               before['teacher'], after['params']['encoder'], after['teacher'])
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b),
                                       before['params']['decoder'], after['params']['decoder']))
  assert any(moved)


def test_a_2x2x2_mesh_trains_like_one_device():
  config = micro_config()
  runs = []
  for shape in ((1, 1, 1), (2, 2, 2)):
    mesh = mesh_of(shape)
    train = trainer.build_train_step(config, mesh)
    state, losses = train.init(), []
    for i in range(3):
      batch = sharding.global_batch(synthetic_batch(config, seed=i), mesh)
      compiled = train.compile(state, batch, FAST_COMPILE)
      state, metrics = compiled(state, batch)
      losses.append(float(metrics['loss']))
    runs.append((losses, jax.device_get(state)))
  np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-5, atol=1e-5)
  assert_trees_close(runs[1][1]['params'], runs[0][1]['params'])


@needs_fashion_mnist
def test_train_py_resumes_a_v2_run_exactly(tmp_path):
  config = micro_config(**{'total_steps': 6, 'log_every_steps': 1, 'checkpoint_every_steps': 3})
  straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
  train_lib.train_and_evaluate(config, straight)
  interrupt_and_rerun(config, split, batches=3)
  a, b = read_metrics(straight), read_metrics(split)
  assert [m['step'] for m in a] == list(range(1, 7)) and len(b) == 6
  assert [m['loss'] for m in a] == [m['loss'] for m in b]


@needs_fashion_mnist
def test_a_v2_encoder_exports_to_transformers(tmp_path):
  """scripts/export_hf.py takes a v2 workdir: the student encoder is a
  Data2VecVisionModel (absolute positions), loaded by transformers with identical outputs."""
  transformers = pytest.importorskip('transformers')
  torch = pytest.importorskip('torch')
  workdir, out = str(tmp_path / 'w'), str(tmp_path / 'hf')
  train_lib.train_and_evaluate(micro_config(**{'total_steps': 2, 'checkpoint_every_steps': 2}),
                               workdir)
  subprocess.run([sys.executable, 'scripts/export_hf.py', '--workdir', workdir, '--out', out],
                 cwd=REPO, check=True, capture_output=True)
  theirs = transformers.AutoModel.from_pretrained(out).eval()
  ours, step = workdirs.restore_model(workdir)
  assert step == 2 and isinstance(theirs, transformers.Data2VecVisionModel)
  assert theirs.config.use_absolute_position_embeddings
  pixels = np.random.default_rng(0).normal(size=(2, 1, 28, 28)).astype(np.float32)
  with torch.no_grad():
    expected = theirs(torch.from_numpy(pixels)).last_hidden_state.numpy()
  np.testing.assert_allclose(ours(pixels)['last_hidden_state'], expected, atol=1e-4)
