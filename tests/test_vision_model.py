"""Data2VecVisionModel: transformers parity both ways, exact round trip, bf16, scan, bad configs."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from data2vec import hf
from data2vec.hf import vision as hf_vision
from data2vec.models.vision import Data2VecVisionModel, VisionConfig

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            image_size=16, patch_size=4)
# (transformers config fields, add_pooling_layer)
CASES = {
    'layer_bias_mask_mean_pool': (
        dict(TINY, use_relative_position_bias=True, use_mask_token=True), True),
    'shared_bias_abs_pos_mask_cls_pool': (
        dict(TINY, use_shared_relative_position_bias=True, use_absolute_position_embeddings=True,
             use_mask_token=True, use_mean_pooling=False), True),
    'sizes_one_channel_no_layer_scale': (
        dict(hidden_size=24, num_hidden_layers=3, num_attention_heads=2, intermediate_size=40,
             image_size=15, patch_size=5, num_channels=1, layer_scale_init_value=0.0,
             layer_norm_eps=1e-6, use_mean_pooling=False), False),
}


def _config(name, **overrides):
  fields, pool = CASES[name]
  return dataclasses.replace(hf_vision.config_from_hf(fields),
                             **{'add_pooling_layer': pool, **overrides})


def _inputs(cfg, masked):
  rng = np.random.default_rng(0)
  pixels = rng.normal(size=(2, cfg.num_channels, cfg.image_size, cfg.image_size)).astype(np.float32)
  mask = rng.random((2, cfg.num_patches)) < 0.4 if masked else None
  return pixels, mask


def _noise(name, shape, rng):
  """Random values for a parameter: norm scales around 1, bias tables large enough to matter."""
  scale = 1.0 if 'relative_position_bias_table' in name else 0.1
  norm_scale = name.endswith('/scale') or ('layernorm' in name and name.endswith('.weight'))
  return (rng.normal(size=shape) * scale + norm_scale).astype(np.float32)


def _hf_model(name):
  """A transformers model with EVERY parameter overwritten (zero tables, tokens, lambdas too)."""
  fields, pool = CASES[name]
  torch.manual_seed(0)
  model = transformers.Data2VecVisionModel(transformers.Data2VecVisionConfig(**fields),
                                           add_pooling_layer=pool)
  rng = np.random.default_rng(1)
  with torch.no_grad():
    for key, p in model.named_parameters():
      p.copy_(torch.from_numpy(_noise(key, tuple(p.shape), rng)))
  return model.eval()


def _randomize(model, seed):
  """Overwrites every parameter of our model, as _hf_model does."""
  rng = np.random.default_rng(seed)
  state = nnx.state(model, nnx.Param)
  flat, treedef = jax.tree.flatten_with_path(nnx.to_pure_dict(state))
  names = ['/'.join(str(getattr(k, 'key', k)) for k in path) for path, _ in flat]
  values = [jnp.asarray(_noise(n, leaf.shape, rng)) for n, (_, leaf) in zip(names, flat)]
  nnx.replace_by_pure_dict(state, jax.tree.unflatten(treedef, values))
  nnx.update(model, state)
  return model


def _hf_outputs(model, pixels, mask):
  with torch.no_grad():
    out = model(torch.from_numpy(pixels),
                bool_masked_pos=None if mask is None else torch.from_numpy(mask),
                output_hidden_states=True)
  result = {'last_hidden_state': out.last_hidden_state.numpy(),
            'hidden_states': np.stack([h.numpy() for h in out.hidden_states])}
  if out.pooler_output is not None:
    result['pooler_output'] = out.pooler_output.numpy()
  return result


def _assert_close(ours, theirs, atol=1e-4):
  assert set(theirs) <= set(ours)
  assert ('pooler_output' in ours) == ('pooler_output' in theirs)
  for key, value in theirs.items():
    np.testing.assert_allclose(np.asarray(ours[key], np.float32), value, atol=atol, rtol=0,
                               err_msg=key)


def _masks(cfg):
  return (False, True) if cfg.use_mask_token else (False,)


def _params(model):
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize('name', sorted(CASES))
def test_transformers_to_ours_parity(name, tmp_path):
  theirs = _hf_model(name)
  theirs.save_pretrained(tmp_path)
  ours = hf.load_pretrained(str(tmp_path), add_pooling_layer=CASES[name][1])
  assert ours.config == _config(name)
  for masked in _masks(ours.config):
    pixels, mask = _inputs(ours.config, masked)
    out = ours(jnp.asarray(pixels), None if mask is None else jnp.asarray(mask))
    _assert_close(out, _hf_outputs(theirs, pixels, mask))
    layers = ours.config.num_hidden_layers
    assert out['ffn_outputs'].shape == (layers,) + out['last_hidden_state'].shape


@pytest.mark.parametrize('name', sorted(CASES))
def test_ours_to_transformers_and_back(name, tmp_path):
  cfg = _config(name)
  ours = _randomize(Data2VecVisionModel(cfg, rngs=nnx.Rngs(0)), seed=1)
  hf.save_pretrained(ours, str(tmp_path / 'ours'))
  theirs, info = transformers.Data2VecVisionModel.from_pretrained(
      tmp_path / 'ours', add_pooling_layer=cfg.add_pooling_layer, output_loading_info=True)
  assert not any(info.values()), info
  for masked in _masks(cfg):
    pixels, mask = _inputs(cfg, masked)
    out = ours(jnp.asarray(pixels), None if mask is None else jnp.asarray(mask))
    _assert_close(out, _hf_outputs(theirs.eval(), pixels, mask))
  # ... and back through transformers' own writer: every parameter bit-identical.
  theirs.save_pretrained(tmp_path / 'theirs')
  back = hf.load_pretrained(str(tmp_path / 'theirs'), add_pooling_layer=cfg.add_pooling_layer)
  assert back.config == cfg
  jax.tree.map(np.testing.assert_array_equal, _params(back), _params(ours))


def test_config_defaults_and_round_trip():
  hf_defaults = transformers.Data2VecVisionConfig().to_dict()
  assert hf_vision.config_from_hf(hf_defaults) == VisionConfig()
  for name in CASES:
    cfg = _config(name, add_pooling_layer=False)
    d = hf_vision.config_to_hf(cfg)
    rebuilt = transformers.AutoConfig.for_model(**d).to_dict()
    assert hf_vision.config_from_hf(rebuilt) == cfg
    assert {k: rebuilt[k] for k in CASES[name][0]} == CASES[name][0]


def test_pooler_detected_from_tensor_keys():
  fields = CASES['layer_bias_mask_mean_pool'][0]
  base = {'embeddings.cls_token', 'encoder.layer.0.lambda_1'}
  pooler = {'pooler.layernorm.weight', 'pooler.layernorm.bias'}
  assert hf_vision.config_from_hf(fields, tensor_keys=base | pooler).add_pooling_layer
  assert not hf_vision.config_from_hf(fields, tensor_keys=base).add_pooling_layer


def test_bfloat16_close_to_float32():
  cfg = _config('shared_bias_abs_pos_mask_cls_pool')
  ours = _randomize(Data2VecVisionModel(cfg, rngs=nnx.Rngs(0)), seed=2)
  bf16 = Data2VecVisionModel(dataclasses.replace(cfg, dtype='bfloat16'), rngs=nnx.Rngs(0))
  nnx.update(bf16, nnx.state(ours, nnx.Param))
  pixels, mask = _inputs(cfg, True)
  ref = ours(jnp.asarray(pixels), jnp.asarray(mask))['last_hidden_state']
  out = bf16(jnp.asarray(pixels), jnp.asarray(mask))['last_hidden_state']
  assert out.dtype == jnp.bfloat16
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(_params(bf16)))
  rel = np.linalg.norm(np.asarray(out, np.float32) - ref) / np.linalg.norm(ref)
  assert rel < 5e-2, rel


@pytest.mark.parametrize('name', ['layer_bias_mask_mean_pool', 'shared_bias_abs_pos_mask_cls_pool'])
def test_scan_matches_loop(name):
  cfg = _config(name)
  loop = _randomize(Data2VecVisionModel(cfg, rngs=nnx.Rngs(0)), seed=3)
  scan = Data2VecVisionModel(dataclasses.replace(cfg, scan_layers=True), rngs=nnx.Rngs(0))
  nnx.update(scan, nnx.state(loop, nnx.Param))
  pixels, mask = _inputs(cfg, True)
  a = loop(jnp.asarray(pixels), jnp.asarray(mask))
  b = scan(jnp.asarray(pixels), jnp.asarray(mask))
  for key in a:
    np.testing.assert_allclose(b[key], a[key], atol=1e-5, rtol=0, err_msg=key)


def test_training_rng_is_stochastic_and_reproducible():
  cfg = _config('layer_bias_mask_mean_pool', hidden_dropout=0.1, attention_dropout=0.1,
                drop_path_rate=0.5)
  model = _randomize(Data2VecVisionModel(cfg, rngs=nnx.Rngs(0)), seed=4)
  pixels = jnp.asarray(_inputs(cfg, False)[0])
  a, b, c = (model(pixels, rng=jax.random.key(k))['last_hidden_state'] for k in (0, 0, 1))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert not np.allclose(a, model(pixels)['last_hidden_state'])


@pytest.mark.parametrize('make, field', [
    (lambda: VisionConfig(use_relative_position_bias=True, use_shared_relative_position_bias=True),
     'use_relative_position_bias'),
    (lambda: VisionConfig(image_size=224, patch_size=15), 'patch_size'),
    (lambda: VisionConfig(image_size=(32, 16), patch_size=8, use_relative_position_bias=True),
     'image_size'),
    (lambda: hf_vision.config_from_hf({'hidden_act': 'quick_gelu'}), 'hidden_act'),
    (lambda: hf_vision.config_from_hf({'use_fancy_thing': True}), 'use_fancy_thing'),
    (lambda: hf_vision.config_to_hf(VisionConfig(layerdrop=0.1)), 'layerdrop'),
    (lambda: hf_vision.config_to_hf(VisionConfig(key_bias=True)), 'key_bias'),
])
def test_unsupported_config_raises(make, field):
  with pytest.raises(ValueError, match=field):
    make()


def test_bad_inputs_raise():
  model = Data2VecVisionModel(_config('sizes_one_channel_no_layer_scale'), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='image_size'):
    model(jnp.zeros((1, 1, 20, 20)))
  with pytest.raises(ValueError, match='num_channels'):
    model(jnp.zeros((1, 3, 15, 15)))
  with pytest.raises(ValueError, match='use_mask_token'):
    model(jnp.zeros((1, 1, 15, 15)), jnp.zeros((1, 9), bool))


def _visible_model():
  cfg = VisionConfig(**TINY, use_absolute_position_embeddings=True, layer_scale_init_value=0.0,
                     use_mean_pooling=False, add_pooling_layer=True)
  return Data2VecVisionModel(cfg, rngs=nnx.Rngs(3)), cfg


def test_encode_visible_with_every_patch_is_the_full_forward():
  model, cfg = _visible_model()
  pixels, _ = _inputs(cfg, masked=False)
  ids = np.broadcast_to(np.arange(cfg.num_patches), (2, 1, cfg.num_patches))
  got, full = model.encode_visible(pixels, jnp.asarray(ids)), model(pixels)
  for key in ('last_hidden_state', 'hidden_states', 'ffn_outputs', 'pooler_output'):
    np.testing.assert_allclose(got[key], full[key], atol=1e-5)


def test_encode_visible_drops_the_other_patches_and_keeps_positions():
  """M=2 views of 5 patches: outputs do not depend on the other patches' pixels, views are
  independent rows, and a permuted ids_keep permutes the outputs (positions travel along)."""
  model, cfg = _visible_model()
  pixels, _ = _inputs(cfg, masked=False)
  rng = np.random.default_rng(1)
  ids = np.stack([np.stack([rng.permutation(cfg.num_patches)[:5] for _ in range(2)])
                  for _ in range(2)])  # [B=2, M=2, K=5]
  out = model.encode_visible(pixels, jnp.asarray(ids))['last_hidden_state']  # [4, 6, D]
  assert out.shape == (4, 6, cfg.hidden_size)
  changed = pixels.copy().reshape(2, cfg.num_channels, 4, 4, 4, 4)  # [B, C, gh, p, gw, p]
  hidden = np.ones((2, 16), bool)
  hidden[0, ids[0].reshape(-1)] = hidden[1, ids[1].reshape(-1)] = False
  for b in range(2):
    for patch in np.flatnonzero(hidden[b]):
      changed[b, :, patch // 4, :, patch % 4, :] = 100.0
  again = model.encode_visible(changed.reshape(pixels.shape), jnp.asarray(ids))
  np.testing.assert_allclose(again['last_hidden_state'], out, atol=1e-5)
  one = model.encode_visible(pixels[:1], jnp.asarray(ids[:1, 1:]))['last_hidden_state']
  np.testing.assert_allclose(one[0], out[1], atol=1e-5)  # sample 0, view 1 on its own
  order = rng.permutation(5)
  permuted = model.encode_visible(pixels, jnp.asarray(ids[..., order]))['last_hidden_state']
  np.testing.assert_allclose(permuted[:, 1:], out[:, 1:][:, order], atol=1e-5)
  np.testing.assert_allclose(permuted[:, 0], out[:, 0], atol=1e-5)


def test_encode_visible_needs_absolute_positions_only():
  model = Data2VecVisionModel(_config('layer_bias_mask_mean_pool'), rngs=nnx.Rngs(0))
  pixels, _ = _inputs(model.config, masked=False)
  with pytest.raises(ValueError, match='use_absolute_position_embeddings=True and no relative'):
    model.encode_visible(pixels, jnp.zeros((2, 1, 3), jnp.int32))
