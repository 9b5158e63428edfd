"""Data2VecAudioModel vs transformers, both ways; round trip, bf16, scan, config errors."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from flax import nnx

from data2vec import hf
from data2vec.hf import audio as hf_audio
from data2vec.models.audio import AudioConfig, Data2VecAudioModel, feature_lengths, frame_mask

TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=2,
            conv_pos_kernel_size=5, num_conv_pos_embedding_groups=2)
LENGTHS = (3000, 2401, 1999)  # samples per row; the batch is padded to the longest

# name -> (config overrides, with attention_mask, with mask_time_indices)
HF_CASES = {
    'padded': ({}, True, False),
    'padded_time_mask': ({}, True, True),
    'conv_bias': ({'conv_bias': True}, False, True),
    'adapter': ({'add_adapter': True, 'output_hidden_size': 8, 'num_adapter_layers': 2},
                True, False),
    'sizes': ({'hidden_size': 24, 'num_attention_heads': 3, 'num_hidden_layers': 3,
               'intermediate_size': 40, 'conv_dim': (6, 10, 12), 'conv_kernel': (7, 3, 2),
               'conv_stride': (4, 2, 2), 'conv_pos_kernel_size': 4,
               'num_conv_pos_embedding_groups': 4, 'num_conv_pos_embeddings': 3,
               'hidden_act': 'relu', 'layer_norm_eps': 1e-6}, True, True),
}
OUR_CASES = {
    'tiny': {},
    'adapter_no_proj': {'add_adapter': True, 'conv_bias': True, 'conv_pos_kernel_size': 4,
                        'mask_time_prob': 0.0},  # no masked_spec_embed, no adapter projection
}


def _inputs(cfg, padded, time_mask):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(len(LENGTHS), max(LENGTHS))).astype(np.float32)  # padding is noise too
  mask = (np.arange(max(LENGTHS)) < np.array(LENGTHS)[:, None]).astype(np.int64) if padded else None
  frames = int(feature_lengths(cfg, max(LENGTHS), add_adapter=False))
  mti = rng.random((len(LENGTHS), frames)) < 0.3 if time_mask else None
  return x, mask, mti


def _run_hf(model, x, mask, mti):
  as_torch = lambda a: None if a is None else torch.from_numpy(a)
  with torch.no_grad():
    return model(as_torch(x), attention_mask=as_torch(mask), mask_time_indices=as_torch(mti),
                 output_hidden_states=True)


def _assert_same_outputs(ours, theirs, atol=1e-4):
  close = lambda a, b: np.testing.assert_allclose(np.asarray(a), b.numpy(), atol=atol, rtol=0)
  close(ours['last_hidden_state'], theirs.last_hidden_state)
  close(ours['extract_features'], theirs.extract_features)
  assert ours['hidden_states'].shape[0] == len(theirs.hidden_states)
  for ours_h, theirs_h in zip(ours['hidden_states'], theirs.hidden_states):
    close(ours_h, theirs_h)


def _randomize(model):
  """Overwrites every tensor, so zero-initialised biases and LayerNorm weights are tested too."""
  torch.manual_seed(0)
  with torch.no_grad():
    for name, p in model.state_dict().items():
      if name == 'masked_spec_embed':
        p.uniform_()
      elif 'layer_norm.weight' in name:
        p.copy_(1 + 0.1 * torch.randn_like(p))
      else:
        p.copy_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize('case', sorted(HF_CASES))
def test_loads_transformers_model(case, tmp_path):
  overrides, padded, time_mask = HF_CASES[case]
  torch.manual_seed(0)
  theirs = transformers.Data2VecAudioModel(
      transformers.Data2VecAudioConfig(**{**TINY, **overrides})).eval()
  _randomize(theirs)
  theirs.save_pretrained(tmp_path)
  ours = hf.load_pretrained(str(tmp_path))
  x, mask, mti = _inputs(ours.config, padded, time_mask)
  out = ours(x, mask, mti)
  _assert_same_outputs(out, _run_hf(theirs, x, mask, mti))
  if padded:
    expected = theirs._get_feature_vector_attention_mask(  # pylint: disable=protected-access
        out['hidden_states'].shape[2], torch.from_numpy(mask), add_adapter=False)
    np.testing.assert_array_equal(out['valid_frames'], expected.numpy())
    assert not np.asarray(out['valid_frames']).all()


def test_feature_lengths_and_frame_mask():
  hf_config = transformers.Data2VecAudioConfig(**TINY, add_adapter=True, adapter_stride=3)
  theirs = transformers.Data2VecAudioModel(hf_config)
  cfg = hf_audio.config_from_hf(hf_config.to_dict())
  lengths = np.array([12, 400, 401, 1999, 2000, 3000])  # 12 samples: 0 frames, torch wraps around
  for add_adapter in (False, True):
    expected = theirs._get_feat_extract_output_lengths(  # pylint: disable=protected-access
        torch.from_numpy(lengths), add_adapter=add_adapter).numpy()
    np.testing.assert_array_equal(feature_lengths(cfg, lengths, add_adapter=add_adapter), expected)
    np.testing.assert_array_equal(
        feature_lengths(cfg, jnp.asarray(lengths), add_adapter=add_adapter), expected)
    as_ints = [feature_lengths(cfg, int(n), add_adapter=add_adapter) for n in lengths]
    assert as_ints == list(expected)
  mask = (np.arange(3000) < lengths[:, None]).astype(np.int64)
  frames = int(feature_lengths(cfg, 3000, add_adapter=False))
  expected = theirs._get_feature_vector_attention_mask(  # pylint: disable=protected-access
      frames, torch.from_numpy(mask), add_adapter=False).numpy()
  np.testing.assert_array_equal(frame_mask(cfg, mask, frames), expected)


@pytest.mark.parametrize('case', sorted(OUR_CASES))
def test_exports_to_transformers_and_back(case, tmp_path):
  cfg = AudioConfig(**{**TINY, **OUR_CASES[case]})
  ours = Data2VecAudioModel(cfg, rngs=nnx.Rngs(0))
  hf.save_pretrained(ours, str(tmp_path))
  theirs, info = transformers.Data2VecAudioModel.from_pretrained(tmp_path, output_loading_info=True)
  assert not any(info.values()), info
  theirs.eval()
  x, mask, mti = _inputs(cfg, True, cfg.has_masked_spec_embed)
  _assert_same_outputs(ours(x, mask, mti), _run_hf(theirs, x, mask, mti))

  again = hf.load_pretrained(str(tmp_path))
  assert again.config == cfg
  before, after = (nnx.to_pure_dict(nnx.state(m, nnx.Param)) for m in (ours, again))
  assert jax.tree.structure(before) == jax.tree.structure(after)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    assert a.dtype == b.dtype and np.array_equal(a, b)


def test_init_matches_transformers(tmp_path):
  """Same distributions per tensor: constants equal, random ones with the same spread."""
  sizes = dict(TINY, hidden_size=128, num_attention_heads=4, intermediate_size=256,
               conv_dim=(128, 128), conv_pos_kernel_size=19, num_conv_pos_embedding_groups=16,
               num_hidden_layers=1, num_conv_pos_embeddings=1, conv_bias=True, add_adapter=True,
               output_hidden_size=64, num_adapter_layers=1)
  torch.manual_seed(0)
  theirs = transformers.Data2VecAudioModel(transformers.Data2VecAudioConfig(**sizes)).state_dict()
  hf.save_pretrained(Data2VecAudioModel(AudioConfig(**sizes), rngs=nnx.Rngs(0)), str(tmp_path))
  ours = safetensors.numpy.load_file(tmp_path / 'model.safetensors')
  assert set(ours) == set(theirs)
  for key, value in theirs.items():
    value = value.numpy()
    if value.std() == 0:
      np.testing.assert_array_equal(ours[key], value, err_msg=key)
    else:
      np.testing.assert_allclose(ours[key].std(), value.std(), rtol=0.25, err_msg=key)
      sampling_error = value.std() / np.sqrt(value.size)
      np.testing.assert_allclose(ours[key].mean(), value.mean(), atol=6 * sampling_error,
                                 err_msg=key)


def test_config_fields_match_transformers():
  defaults = transformers.Data2VecAudioConfig().to_dict()
  handled = set(hf_audio.FIELDS + hf_audio.NO_EFFECT_FIELDS + hf_audio.CHECKED_FIELDS)
  assert set(defaults) <= handled
  assert set(hf_audio.FIELDS) <= {f.name for f in dataclasses.fields(AudioConfig)}
  # transformers resolves output_hidden_size=None to hidden_size; we keep None.
  assert hf_audio.config_from_hf(defaults) == AudioConfig(output_hidden_size=768)
  cfg = AudioConfig(**TINY, add_adapter=True, eos_token_id=(2, 3), tdnn_dim=(7, 9))
  rebuilt = transformers.AutoConfig.for_model(**hf_audio.config_to_hf(cfg)).to_dict()
  assert hf_audio.config_from_hf(rebuilt) == dataclasses.replace(cfg, output_hidden_size=16)


def test_bfloat16_close_to_float32():
  cfg = AudioConfig(**TINY)
  f32 = Data2VecAudioModel(cfg, rngs=nnx.Rngs(0))
  b16 = Data2VecAudioModel(dataclasses.replace(cfg, dtype='bfloat16'), rngs=nnx.Rngs(0))
  for p in jax.tree.leaves(nnx.state(b16, nnx.Param)):
    assert p.dtype == jnp.float32
  x, mask, mti = _inputs(cfg, True, True)
  ref = np.asarray(f32(x, mask, mti)['last_hidden_state'])
  out = b16(x, mask, mti)['last_hidden_state']
  assert out.dtype == jnp.bfloat16
  out = np.asarray(out, np.float32)
  assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 5e-2


@pytest.mark.parametrize('train', [False, True])
def test_scan_matches_loop(train):
  cfg = AudioConfig(**TINY)
  loop = Data2VecAudioModel(cfg, rngs=nnx.Rngs(0))
  scan = Data2VecAudioModel(dataclasses.replace(cfg, scan_layers=True), rngs=nnx.Rngs(0))
  x, mask, mti = _inputs(cfg, True, True)
  rng = jax.random.key(1) if train else None
  a, b = loop(x, mask, mti, rng=rng), scan(x, mask, mti, rng=rng)
  for k in ('last_hidden_state', 'hidden_states', 'ffn_outputs'):
    np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=0)


def test_embed_then_encode_is_call():
  cfg = AudioConfig(**TINY)
  model = Data2VecAudioModel(cfg, rngs=nnx.Rngs(0))
  x, mask, mti = _inputs(cfg, True, True)
  features, valid_frames = model.embed(x, mask)
  split = model.encode(features, valid_frames, mti)
  full = model(x, mask, mti)
  np.testing.assert_array_equal(split['last_hidden_state'], full['last_hidden_state'])
  np.testing.assert_array_equal(valid_frames, full['valid_frames'])
  assert model.embed(x)[1] is None
  trained = model.encode(features, valid_frames, mti, rng=jax.random.key(0))
  assert not np.allclose(trained['last_hidden_state'], full['last_hidden_state'])


def _hf_dict(**changes):
  return {**transformers.Data2VecAudioConfig(**TINY).to_dict(), **changes}


@pytest.mark.parametrize('build, field', [
    (lambda: hf_audio.config_from_hf(_hf_dict(hidden_act='gelu_fast')), 'hidden_act'),
    (lambda: hf_audio.config_from_hf(_hf_dict(feat_extract_activation='selu')),
     'feat_extract_activation'),
    (lambda: hf_audio.config_from_hf(_hf_dict(apply_spec_augment=False)), 'apply_spec_augment'),
    (lambda: hf_audio.config_from_hf(_hf_dict(num_feat_extract_layers=3)),
     'num_feat_extract_layers'),
    (lambda: hf_audio.config_from_hf(_hf_dict(conv_kernel=[10])), 'conv_kernel'),
    (lambda: hf_audio.config_from_hf(_hf_dict(num_conv_pos_embedding_groups=3)),
     'num_conv_pos_embedding_groups'),
    (lambda: hf_audio.config_from_hf(_hf_dict(some_new_field=1)), 'some_new_field'),
    (lambda: hf_audio.config_to_hf(AudioConfig(norm_first=True)), 'norm_first'),
])
def test_unsupported_config_raises(build, field):
  with pytest.raises(ValueError, match=field):
    build()


def test_unsupported_calls_raise():
  cfg = AudioConfig(**TINY, mask_time_prob=0.0, add_adapter=True)
  model = Data2VecAudioModel(cfg, rngs=nnx.Rngs(0))
  x, mask, mti = _inputs(cfg, True, True)
  with pytest.raises(ValueError, match='masked_spec_embed'):
    model(x, mask, mti)
  with pytest.raises(ValueError, match='layerdrop'):
    model(x, mask, rng=jax.random.key(0))
