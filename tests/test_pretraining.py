"""The train step of every modality on synthetic batches: EMA bookkeeping and global-batch loss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import audio, text, vision
from data2vec import ema, masking, optimizer, pretraining, sharding
from data2vec.models import audio as audio_model
from data2vec.models import registry

MICRO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
B = 8


def micro_config(modality):
  config = {'vision': vision, 'text': text, 'audio': audio}[modality].get_config('tiny')
  config.model.update(MICRO)
  config.objective.top_k = 2
  config.total_steps = 10
  config.optimizer.warmup_steps = 0  # the first step must move the student
  if modality == 'vision':
    config.model.patch_size = 7
  if modality == 'text':
    config.model.update(dict(vocab_size=64, max_position_embeddings=20))
  if modality == 'audio':
    config.model.update(dict(conv_dim=(16,) * 7, num_conv_pos_embedding_groups=2))
  return config


def synthetic_batch(config, seed=0):
  rng = np.random.default_rng(seed)
  if config.modality == 'vision':
    grid = (config.model.image_size // config.model.patch_size,) * 2
    masks = [masking.block_mask(rng, grid, 8, min_num_patches=2) for _ in range(B)]
    return {'pixel_values': rng.normal(size=(B, 1, 28, 28)).astype(np.float32),
            'bool_masked_pos': np.stack(masks)}
  if config.modality == 'text':
    ids = rng.integers(5, 64, size=(B, 16))
    mask = np.ones((B, 16), np.int32)
    mask[0, 10:] = 0  # one padded row
    ids[0, 10:] = config.model.pad_token_id
    corrupted = [masking.text_mask(rng, row[m > 0], vocab_size=64, mask_id=4, pad_id=1)
                 for row, m in zip(ids, mask)]
    masked_ids, target = ids.copy(), np.zeros((B, 16), bool)
    for i, (row, t) in enumerate(corrupted):
      masked_ids[i, :len(row)], target[i, :len(t)] = row, t
    return {'input_ids': ids.astype(np.int32), 'attention_mask': mask,
            'masked_input_ids': masked_ids.astype(np.int32), 'target_mask': target}
  cfg = registry.model_config(config)
  frames = int(audio_model.feature_lengths(cfg, 8000))
  return {'input_values': rng.normal(size=(B, 8000)).astype(np.float32),
          'mask_time_indices': masking.compute_mask_indices(rng, (B, frames), 0.65, 3)}


def init(config):
  tx, schedule = optimizer.from_config(config)
  encoder_def, head_def = pretraining.graph_defs(config)
  state = jax.jit(pretraining.init_state_fn(config, tx))()
  copy_mask = ema.copy_mask_for(state['teacher'], config.modality)
  step = pretraining.make_train_step(config, encoder_def, head_def, tx, schedule, copy_mask)
  return state, step, copy_mask


@pytest.mark.parametrize('modality', ['vision', 'text', 'audio'])
def test_train_step_updates_student_then_teacher(modality):
  config = micro_config(modality)
  state, step_fn, copy_mask = init(config)
  step_fn = jax.jit(step_fn)
  batch = synthetic_batch(config)
  before = jax.device_get(state)
  state, metrics = step_fn(state, batch)
  after = jax.device_get(state)
  assert int(after['step']) == 1
  assert np.isfinite(float(metrics['loss'])) and float(metrics['loss']) > 0
  assert 0 < float(metrics['masked_fraction']) < 1
  # The student moved; the teacher followed the post-update student by the per-leaf rule.
  tau = float(metrics['tau'])
  assert tau == pytest.approx(ema.tau_schedule(1, config.ema.tau0, config.ema.tau_e,
                                                config.ema.tau_n))
  flat = lambda t: jax.tree.leaves(t)
  moved = [not np.array_equal(a, b) for a, b in zip(flat(before['params']['encoder']),
                                                    flat(after['params']['encoder']))]
  assert any(moved)
  for copy, t0, s1, t1 in zip(flat(copy_mask), flat(before['teacher']),
                              flat(after['params']['encoder']), flat(after['teacher'])):
    expected = s1 if copy else tau * t0 + (1 - tau) * s1
    np.testing.assert_allclose(t1, expected, rtol=1e-6, atol=1e-7)
  assert any(flat(copy_mask)) == (modality != 'vision')  # vision averages everything


@pytest.mark.parametrize('modality', ['vision', 'audio'])
def test_loss_does_not_depend_on_the_batch_sharding(modality):
  """Sum over the masked positions of the global batch / their global count (docs/algorithm.md
  decision 6)."""
  config = micro_config(modality)
  state, step_fn, _ = init(config)
  batch = synthetic_batch(config, seed=1)
  single = jax.jit(step_fn)(state, batch)[1]
  mesh = sharding.make_mesh(config.mesh)  # 8 fake devices along 'data'
  assert sharding.data_parallel_size(mesh) == 8
  sharded_fn = jax.jit(step_fn, in_shardings=(sharding.replicated(mesh),
                                              sharding.batch_sharding(mesh)))
  sharded = sharded_fn(state, sharding.global_batch(batch, mesh))[1]
  for name in ('loss', 'target_var', 'pred_var', 'grad_norm'):
    np.testing.assert_allclose(sharded[name], single[name], rtol=1e-5, err_msg=name)


def test_audio_teacher_sees_the_unmasked_student_features():
  """Masking the student must not change the targets: the teacher encodes unmasked features."""
  config = micro_config('audio')
  state, step_fn, _ = init(config)
  batch = synthetic_batch(config)
  forward = pretraining.FORWARD['audio']
  encoder_def, _ = pretraining.graph_defs(config)
  from flax import nnx  # pylint: disable=g-import-not-at-top
  model = nnx.merge(encoder_def, state['params']['encoder'])
  _, _, layers_masked, _ = forward(model, model, batch, None, 'ffn')
  unmasked = dict(batch, mask_time_indices=np.zeros_like(batch['mask_time_indices']))
  _, _, layers_unmasked, _ = forward(model, model, unmasked, None, 'ffn')
  np.testing.assert_array_equal(layers_masked, layers_unmasked)
  reference = model(jnp.asarray(batch['input_values']))['ffn_outputs']
  np.testing.assert_allclose(layers_masked, reference, atol=1e-5)
