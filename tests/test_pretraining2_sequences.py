"""data2vec 2.0 for speech and text: visible-only encoding against the full forward, the step's
loss against a numpy reference of docs/algorithm.md §8 (targets once per sample from the teacher's
view of the student's front end, shared by the views), and the export of a v2 encoder."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import train as train_lib
from configs import audio2, common, text2, vision2
from data2vec import config_validation, masking, pretraining2, sharding, tasks, trainer, workdirs
from data2vec.models import audio as audio_model
from data2vec.models import registry
from data2vec.models.decoder import decoder_input
from test_objective import np_targets
from test_sharding import FAST_COMPILE, assert_trees_close, mesh_of

B, M = 4, 3
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
NO_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
SPEECH = os.path.join(common.DEFAULT_DATA_DIR, 'speech_pool', 'dataset.json')
GLOSSES = os.path.join(common.DEFAULT_DATA_DIR, 'wordnet_glosses', 'dataset.json')
needs_speech = pytest.mark.skipif(not os.path.exists(SPEECH) and not os.environ.get('CI'),
                                  reason='run `python scripts/prepare_data.py audio` first')
needs_glosses = pytest.mark.skipif(not os.path.exists(GLOSSES) and not os.environ.get('CI'),
                                   reason='run `python scripts/prepare_data.py text` first')


@pytest.mark.parametrize('module', [vision2, audio2, text2], ids=lambda m: m.__name__)
@pytest.mark.parametrize('variant', common.VARIANTS)
def test_every_v2_config_is_valid_and_builds(module, variant):
  """Each 2.0 recipe validates and builds (abstractly) the same encoder sizes as v1's."""
  config = module.get_config(variant)
  config_validation.validate(config)
  state = jax.eval_shape(tasks.make(config).init_state)
  assert set(state['params']) == {'encoder', 'decoder'}
  n = sum(np.prod(x.shape) for x in jax.tree.leaves(state['params']['encoder']))
  expected = {'tiny': (1e5, 5e6), 'base': (8e7, 1.3e8), 'large': (2.9e8, 3.6e8)}[variant]
  assert expected[0] < n < expected[1], n


def micro_config(modality, **overrides):
  """A micro v2 config without dropout (the reference draws only the decoder's noise)."""
  config = {'audio': audio2, 'text': text2}[modality].get_config('tiny')
  config.model.update(dict(MICRO, **NO_DROPOUT))
  if modality == 'audio':
    config.model.update(dict(conv_dim=(16,) * 7, num_conv_pos_embedding_groups=2,
                             feat_proj_dropout=0.0, layerdrop=0.0))
  else:
    config.model.update(dict(vocab_size=64, max_position_embeddings=20))
  config.objective.top_k = 2
  config.masking.clone_batch = M
  config.decoder.update(dict(dim=16, num_layers=2, groups=4 if modality == 'audio' else 1,
                             input_dropout=0.0))
  config.optimizer.warmup_steps = 0
  config.batch_size = B
  config.total_steps = 10
  config.probe_every_steps = 0
  for key, value in overrides.items():
    config.update_from_flattened_dict({key: value})
  return config


def audio_batch(config, seed=0, samples=8000):
  rng = np.random.default_rng(seed)
  frames = int(audio_model.feature_lengths(registry.model_config(config), samples))
  kw = {k: config.masking[k] for k in ('mask_prob', 'mask_length', 'masked_fraction')}
  masks = [[masking.speech_view_mask(rng, frames, **kw) for _ in range(M)] for _ in range(B)]
  return {'input_values': rng.normal(size=(B, samples)).astype(np.float32),
          'mask_time_indices': np.array(masks)}


def encoder_of(config, seed=0):
  encoder, _ = pretraining2.build_models(config, nnx.Rngs(seed))
  return encoder


def ids_of(masks):
  """masks [B, M, T] with equal counts -> the kept positions [B, M, K], increasing."""
  return np.stack([[np.flatnonzero(~view) for view in views] for views in masks])


def test_audio_visible_encoding_with_every_frame_is_the_full_encoding():
  encoder = encoder_of(micro_config('audio'))
  batch = audio_batch(micro_config('audio'))
  features, _ = encoder.embed(batch['input_values'])
  t = features.shape[1]
  out = encoder.encode_visible(features, np.zeros((B, 1, t), bool),
                               np.broadcast_to(np.arange(t), (B, 1, t)))
  full = encoder.encode(features)
  for key in ('last_hidden_state', 'ffn_outputs'):
    np.testing.assert_allclose(out[key], full[key], atol=1e-5)


def test_audio_views_ignore_their_masked_frames_and_see_their_kept_ones():
  """Masked frames are zeroed before the positional conv: their content cannot reach the view."""
  encoder = encoder_of(micro_config('audio'))
  batch = audio_batch(micro_config('audio'))
  features, _ = encoder.embed(batch['input_values'])
  masks = batch['mask_time_indices']
  ids = ids_of(masks)
  out = np.asarray(encoder.encode_visible(features, masks, ids)['last_hidden_state'])
  assert out.shape == (B * M, ids.shape[-1], MICRO['hidden_size'])
  noise = np.random.default_rng(1).normal(size=features.shape).astype(np.float32)
  changed = np.where(masks[:, 0, :, None], features + noise, features)
  other = np.asarray(encoder.encode_visible(changed, masks[:, :1], ids[:, :1])['last_hidden_state'])
  np.testing.assert_allclose(other, out[::M], atol=1e-5)  # view 0 of every clip
  kept = np.where(~masks[:, 0, :, None], features + noise, features)
  moved = np.asarray(encoder.encode_visible(kept, masks[:, :1], ids[:, :1])['last_hidden_state'])
  assert not np.allclose(moved, out[::M], atol=1e-3)
  with pytest.raises(ValueError, match='do not line up'):
    encoder.encode_visible(features, masks, ids[:, :, :-1].reshape(B * M, -1))


def first_step(config, batch):
  """(task, initial state, the metrics of one unsharded step on `batch`)."""
  train = trainer.build_train_step(config, mesh_of((1, 1, 1)))
  state = train.init()
  initial = jax.device_get(state)
  _, metrics = jax.jit(train.task.train_step(jax.eval_shape(train.task.init_state)))(state, batch)
  return train.task, initial, jax.device_get(metrics)


def reference_loss(pred, targets, masks, valid, scale):
  """The mean over every view's masked (valid) positions of the L2 summed over D, times scale:
  pred [B * M, N, D], targets [B, N, D] shared by a sample's views, masks [B, M, N]."""
  loss_sum, count = 0.0, 0
  for b in range(masks.shape[0]):
    for v in range(masks.shape[1]):
      scored = masks[b, v] & valid[b]
      loss_sum += ((pred[b * M + v, scored] - targets[b, scored]) ** 2).sum() * scale
      count += scored.sum()
  return loss_sum / count


def decoded(task, state, config, visible, ids, length):
  """The decoder's prediction [B * M, length, D] from the student's visible outputs [B * M, K, D]
  at ids [B, M, K], with the noise of the step's first rng."""
  decoder = nnx.merge(task.graph_defs['decoder'], state['params']['decoder'])
  _, noise_rng = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(config.seed), 0))
  b, m, k = ids.shape
  return np.asarray(decoder(decoder_input(visible, ids.reshape(b * m, k), length,
                                          config.decoder.noise_std, noise_rng)))


def test_audio_loss_matches_the_numpy_reference():
  config = micro_config('audio')
  batch = audio_batch(config)
  task, state, metrics = first_step(config, batch)
  encoder = nnx.merge(task.graph_defs['encoder'], state['params']['encoder'])
  features, _ = encoder.embed(batch['input_values'])
  # Targets: the teacher (= the student at step 0) on the whole clip's CNN features, top-2 FFN
  # outputs instance-normed over time, averaged (no final norm).
  targets = np_targets(np.asarray(encoder.encode(features)['ffn_outputs']), 2, 'instance', False)
  masks = batch['mask_time_indices']
  t = masks.shape[-1]
  keep = masking.num_visible(t, config.masking.masked_fraction)
  assert (masks.sum(-1) == t - keep).all()
  ids = ids_of(masks)
  x = np.asarray(encoder.encode_visible(features, masks, ids)['last_hidden_state'])
  pred = decoded(task, state, config, x, ids, t)
  expected = reference_loss(pred, targets, masks, np.ones((B, t), bool),
                            MICRO['hidden_size'] ** -0.5)
  np.testing.assert_allclose(metrics['loss'], expected, rtol=1e-4)
  np.testing.assert_allclose(metrics['masked_fraction'], (t - keep) / t, rtol=1e-6)
  assert 'cls_loss' not in metrics


@needs_speech
def test_train_py_runs_audio2_and_exports_to_transformers(tmp_path):
  """A v2 speech run on the bundled pool (the pipeline's views), exported: transformers loads a
  Data2VecAudioModel with identical outputs."""
  transformers = pytest.importorskip('transformers')
  torch = pytest.importorskip('torch')
  config = micro_config('audio', **{'total_steps': 2, 'checkpoint_every_steps': 2,
                                   'batch_size': 8})
  workdir, out = str(tmp_path / 'w'), str(tmp_path / 'hf')
  train_lib.train_and_evaluate(config, workdir)
  subprocess.run([sys.executable, 'scripts/export_hf.py', '--workdir', workdir, '--out', out],
                 cwd=REPO, check=True, capture_output=True)
  theirs = transformers.AutoModel.from_pretrained(out).eval()
  ours, step = workdirs.restore_model(workdir)
  assert step == 2 and isinstance(theirs, transformers.Data2VecAudioModel)
  values = np.random.default_rng(0).normal(size=(2, 8000)).astype(np.float32)
  with torch.no_grad():
    expected = theirs(torch.from_numpy(values)).last_hidden_state.numpy()
  np.testing.assert_allclose(ours(values)['last_hidden_state'], expected, atol=1e-4)


def text_batch(config, seed=0, length=16, batch=B):
  """Token rows, the first padded after 10 tokens, with M token_view_mask views each."""
  rng = np.random.default_rng(seed)
  m = config.model
  ids = rng.integers(5, m.vocab_size, size=(batch, length)).astype(np.int32)
  valid = np.ones((batch, length), bool)
  valid[0, 10:] = False
  ids[~valid] = m.pad_token_id
  masks = [[masking.token_view_mask(rng, row, config.masking.mask_prob) for _ in range(M)]
           for row in valid]
  return {'input_ids': ids, 'attention_mask': valid.astype(np.int32), 'target_mask': np.array(masks)}


def test_text_loss_matches_the_numpy_reference():
  """Padding included: the teacher's blocks encode the student's embeddings of the whole row
  (the padding masked), the instance norm and the loss skip the padded positions."""
  config = micro_config('text')
  batch = text_batch(config)
  task, state, metrics = first_step(config, batch)
  encoder = nnx.merge(task.graph_defs['encoder'], state['params']['encoder'])
  valid = batch['attention_mask'].astype(bool)
  embedded = encoder.embeddings(batch['input_ids'])
  layers = np.asarray(encoder.encoder(embedded, mask=valid)['ffn_outputs'])
  targets = np_targets(layers, 2, 'instance', False, padded=~valid)
  masks = batch['target_mask']
  t = masks.shape[-1]
  keep = masking.num_visible(t, config.masking.mask_prob)
  ids = ids_of(masks)
  assert ids.shape[-1] == keep
  x = np.asarray(encoder.encode_visible(embedded, valid, ids)['last_hidden_state'])
  pred = decoded(task, state, config, x, ids, t)
  expected = reference_loss(pred, targets, masks, valid, config.objective.loss_scale)
  np.testing.assert_allclose(metrics['loss'], expected, rtol=1e-4)
  scored = masks & valid[:, None]
  np.testing.assert_allclose(metrics['masked_fraction'], scored.sum() / masks.size, rtol=1e-6)


def test_text_teacher_averages_the_blocks_only():
  """The 2.0 text teacher takes the student's embedding output: its own embeddings are copies
  (they cannot matter), its blocks move by the EMA."""
  config = micro_config('text')
  train = trainer.build_train_step(config, mesh_of((1, 1, 1)))
  state = train.init()
  before = jax.device_get(state)
  state, metrics = jax.jit(train.task.train_step(jax.eval_shape(train.task.init_state)))(
      state, text_batch(config))
  after = jax.device_get(state)
  tau = float(metrics['tau'])
  np.testing.assert_array_equal(after['teacher']['embeddings']['word_embeddings']['embedding'],
                                after['params']['encoder']['embeddings']['word_embeddings'][
                                    'embedding'])
  jax.tree.map(lambda t0, s1, t1: np.testing.assert_allclose(t1, tau * t0 + (1 - tau) * s1,
                                                             rtol=1e-6, atol=1e-7),
               before['teacher']['encoder'], after['params']['encoder']['encoder'],
               after['teacher']['encoder'])


def test_text2_tiny_step_trains_on_a_2x2x2_mesh_like_one_device():
  config = micro_config('text', batch_size=8)
  runs = []
  for shape in ((1, 1, 1), (2, 2, 2)):
    mesh = mesh_of(shape)
    train = trainer.build_train_step(config, mesh)
    state, losses = train.init(), []
    for i in range(2):
      batch = sharding.global_batch(text_batch(config, seed=i, batch=8), mesh)
      compiled = train.compile(state, batch, FAST_COMPILE)
      state, metrics = compiled(state, batch)
      losses.append(float(metrics['loss']))
    runs.append((losses, jax.device_get(state)))
  np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-5, atol=1e-5)
  assert_trees_close(runs[1][1]['params'], runs[0][1]['params'])


@needs_glosses
def test_train_py_runs_text2_and_exports_to_transformers(tmp_path):
  """A v2 text run on the bundled glosses (the pipeline's views, the tiny model), exported:
  transformers loads a Data2VecTextModel with identical outputs, padding included."""
  transformers = pytest.importorskip('transformers')
  torch = pytest.importorskip('torch')
  config = text2.get_config('tiny')
  config.model.update(dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64))
  config.update(dict(batch_size=8, total_steps=2, checkpoint_every_steps=2, probe_every_steps=0))
  config.input.max_length = 32
  config.objective.top_k = 2
  config.decoder.update(dict(dim=16, num_layers=2, projection_hidden=32))
  config.optimizer.warmup_steps = 0
  workdir, out = str(tmp_path / 'w'), str(tmp_path / 'hf')
  train_lib.train_and_evaluate(config, workdir)
  subprocess.run([sys.executable, 'scripts/export_hf.py', '--workdir', workdir, '--out', out],
                 cwd=REPO, check=True, capture_output=True)
  theirs = transformers.AutoModel.from_pretrained(out).eval()
  ours, step = workdirs.restore_model(workdir)
  assert step == 2 and isinstance(theirs, transformers.Data2VecTextModel)
  ids = np.random.default_rng(0).integers(5, 8000, size=(2, 12)).astype(np.int64)
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  ids[1, 7:] = config.model.pad_token_id
  with torch.no_grad():
    expected = theirs(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
  got = np.asarray(ours(ids, attention_mask=mask)['last_hidden_state'])
  np.testing.assert_allclose(got[mask > 0], expected.last_hidden_state.numpy()[mask > 0],
                             atol=1e-4)


def test_alibi_slopes_are_the_papers():
  np.testing.assert_allclose(audio_model.alibi_slopes(8), 2.0 ** -np.arange(1, 9), rtol=1e-6)
  # 12 heads: the 8-head slopes, then every other one of the 16-head slopes (2^-0.5, 2^-1.5, ..).
  np.testing.assert_allclose(audio_model.alibi_slopes(12),
                             np.concatenate([2.0 ** -np.arange(1, 9),
                                             2.0 ** -(np.arange(4) + 0.5)]), rtol=1e-6)


def test_alibi_biases_the_kept_frames_by_their_true_distance():
  """ALiBi (model.use_alibi): -|i - j| x slope x max(scale, 0), at a view's kept positions, the
  full encoding recovered with every frame kept, masked frames still unseen."""
  config = micro_config('audio', **{'model.use_alibi': True})
  encoder = encoder_of(config)
  encoder.alibi_scale[...] = np.array([0.5, -2.0], np.float32)  # the second clamps to 0
  batch = audio_batch(config)
  features, _ = encoder.embed(batch['input_values'])
  masks = batch['mask_time_indices']
  ids = ids_of(masks).reshape(B * M, -1)
  slopes = audio_model.alibi_slopes(2) * np.array([0.5, 0.0])
  expected = -np.abs(ids[:, None, :, None] - ids[:, None, None, :]) * slopes[:, None, None]
  np.testing.assert_allclose(encoder._alibi(ids), expected, rtol=1e-6)  # pylint: disable=protected-access
  t = features.shape[1]
  out = encoder.encode_visible(features, np.zeros((B, 1, t), bool),
                               np.broadcast_to(np.arange(t), (B, 1, t)))
  np.testing.assert_allclose(out['last_hidden_state'], encoder.encode(features)['last_hidden_state'],
                             atol=1e-5)
  plain = encoder_of(micro_config('audio'))  # the same weights (same seed), no ALiBi
  assert not np.allclose(plain.encode(features)['last_hidden_state'],
                         encoder.encode(features)['last_hidden_state'], atol=1e-3)
  encoder.alibi_scale[...] = np.zeros(2, np.float32)
  np.testing.assert_allclose(plain.encode(features)['last_hidden_state'],
                             encoder.encode(features)['last_hidden_state'], atol=1e-5)


@needs_speech
def test_an_alibi_encoder_trains_and_its_export_is_refused_naming_the_field(tmp_path):
  config = micro_config('audio', **{'total_steps': 1, 'checkpoint_every_steps': 1,
                                    'batch_size': 8, 'model.use_alibi': True})
  workdir = str(tmp_path / 'w')
  train_lib.train_and_evaluate(config, workdir)
  run = subprocess.run([sys.executable, 'scripts/export_hf.py', '--workdir', workdir, '--out',
                        str(tmp_path / 'hf')], cwd=REPO, capture_output=True, text=True)
  assert run.returncode != 0 and 'Traceback' not in run.stderr
  assert 'use_alibi=True has no Data2VecAudioModel equivalent' in run.stderr
  assert not os.path.exists(tmp_path / 'hf')
