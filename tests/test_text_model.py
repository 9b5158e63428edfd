"""Data2VecTextModel: transformers parity both ways, exact round trip, bf16, scan, config checks,
data2vec 2.0's visible-only encoding."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data2vec import hf, masking
from data2vec.hf import text as hf_text
from data2vec.models.text import Data2VecTextModel, TextConfig, position_ids_from_input_ids

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

# Field names shared by transformers' Data2VecTextConfig and our TextConfig.
TINY = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=24, type_vocab_size=3)
CASES = {
    'padded': TINY,
    'sizes': dict(TINY, hidden_size=48, num_attention_heads=6, num_hidden_layers=3,
                  intermediate_size=64, layer_norm_eps=1e-5, hidden_act='gelu_new',
                  pad_token_id=0, type_vocab_size=1),
    'decoder': dict(TINY, is_decoder=True),
}


def _batch(cfg, lengths=(9, 5, 2), seed=0):
  """Right-padded rows of different lengths; valid tokens are never the pad token."""
  rng = np.random.default_rng(seed)
  t = max(lengths)
  ids = rng.integers(0, cfg.vocab_size - 1, (len(lengths), t))
  ids += ids >= cfg.pad_token_id
  mask = np.arange(t)[None] < np.array(lengths)[:, None]
  return {'input_ids': np.where(mask, ids, cfg.pad_token_id),
          'attention_mask': mask.astype(np.int64),
          'token_type_ids': rng.integers(0, cfg.type_vocab_size, ids.shape)}


def _hf_model(kwargs, seed=0):
  """A transformers model with random values in EVERY tensor (not just those init makes random)."""
  torch.manual_seed(seed)
  model = transformers.Data2VecTextModel(transformers.Data2VecTextConfig(**kwargs))
  rng = np.random.default_rng(seed)
  state = {}
  for k, v in model.state_dict().items():
    value = (rng.uniform(0.5, 1.5, v.shape) if k.endswith('LayerNorm.weight')
             else rng.normal(0, 0.1, v.shape))
    state[k] = torch.from_numpy(value.astype(np.float32))
  model.load_state_dict(state, strict=True)
  return model.eval()


def _hf_outputs(model, batch):
  ffn = []  # the output dense of each layer: the FFN before dropout and the residual
  hooks = [layer.output.dense.register_forward_hook(lambda m, i, o: ffn.append(o))
           for layer in model.encoder.layer]
  with torch.no_grad():
    out = model(**{k: torch.from_numpy(v) for k, v in batch.items()}, output_hidden_states=True)
  for hook in hooks:
    hook.remove()
  return {'last_hidden_state': out.last_hidden_state.numpy(),
          'hidden_states': np.stack([h.numpy() for h in out.hidden_states]),
          'ffn_outputs': np.stack([f.numpy() for f in ffn]),
          'pooler_output': out.pooler_output.numpy()}


def _randomize(model, seed):
  """Adds noise to every parameter, so zero biases, unit norms and padding rows are checked too."""
  rng = np.random.default_rng(seed)
  state = nnx.state(model, nnx.Param)
  noisy = jax.tree.map(lambda p: p + rng.normal(0, 0.1, p.shape).astype(np.float32),
                       nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, noisy)
  nnx.update(model, state)
  return model


def _assert_close(ours, theirs, atol):
  assert set(ours) == set(theirs)
  for name, want in theirs.items():
    np.testing.assert_allclose(np.asarray(ours[name], np.float32), want, atol=atol, rtol=0,
                               err_msg=name)


@pytest.mark.parametrize('case', sorted(CASES))
def test_loads_transformers_checkpoint_with_same_outputs(case, tmp_path):
  hf_model = _hf_model(CASES[case])
  hf_model.save_pretrained(tmp_path)
  model = hf.load_pretrained(str(tmp_path))
  assert model.config.is_decoder == (case == 'decoder')
  batch = _batch(model.config)
  _assert_close(model(**batch), _hf_outputs(hf_model, batch), atol=1e-4)


def test_export_loads_in_transformers_with_same_outputs(tmp_path):
  model = _randomize(Data2VecTextModel(TextConfig(**TINY), rngs=nnx.Rngs(0)), seed=1)
  hf.save_pretrained(model, str(tmp_path))
  hf_model, info = transformers.AutoModel.from_pretrained(str(tmp_path), output_loading_info=True)
  assert isinstance(hf_model, transformers.Data2VecTextModel)
  assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys']
  batch = _batch(model.config)
  _assert_close(model(**batch), _hf_outputs(hf_model.eval(), batch), atol=1e-4)


@pytest.mark.parametrize('pooler', [True, False])
def test_round_trip_is_exact(pooler, tmp_path):
  model = _randomize(Data2VecTextModel(TextConfig(**TINY, add_pooling_layer=pooler),
                                       rngs=nnx.Rngs(0)), seed=2)
  hf.save_pretrained(model, str(tmp_path))
  # config.json cannot say whether there is a pooler (see test_pooler_follows_tensor_keys).
  loaded = hf.load_pretrained(str(tmp_path), add_pooling_layer=pooler)
  assert loaded.config == model.config
  want = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  got = nnx.to_pure_dict(nnx.state(loaded, nnx.Param))
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_init_follows_transformers():
  cfg = TextConfig(**TINY)
  model = Data2VecTextModel(cfg, rngs=nnx.Rngs(0))
  emb = model.embeddings
  for table in (emb.word_embeddings, emb.position_embeddings):
    np.testing.assert_array_equal(table.embedding[...][cfg.pad_token_id], 0)
  np.testing.assert_array_equal(emb.layer_norm.scale[...], 1)
  np.testing.assert_array_equal(emb.layer_norm.bias[...], 0)
  np.testing.assert_array_equal(model.encoder.layers.attention.query.bias[...], 0)
  np.testing.assert_allclose(np.std(emb.word_embeddings.embedding[...]), 0.02, rtol=0.1)
  np.testing.assert_allclose(np.std(model.encoder.layers.intermediate.kernel[...]), 0.02,
                             rtol=0.1)


def test_padding_does_not_change_valid_tokens():
  model = _randomize(Data2VecTextModel(TextConfig(**TINY), rngs=nnx.Rngs(0)), seed=3)
  batch = _batch(model.config, lengths=(9, 5))
  padded = model(**batch)['last_hidden_state'][1, :5]
  alone = model(**{k: v[1:, :5] for k, v in batch.items()})['last_hidden_state'][0]
  np.testing.assert_allclose(padded, alone, atol=1e-5)


def test_bfloat16_close_to_float32():
  cfg = TextConfig(**TINY)
  model = _randomize(Data2VecTextModel(cfg, rngs=nnx.Rngs(0)), seed=4)
  bf16 = Data2VecTextModel(dataclasses.replace(cfg, dtype='bfloat16'), rngs=nnx.Rngs(1))
  nnx.update(bf16, nnx.state(model, nnx.Param))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
  batch = _batch(cfg)
  want = np.asarray(model(**batch)['last_hidden_state'])
  out = bf16(**batch)['last_hidden_state']
  assert out.dtype == jnp.bfloat16
  err = np.linalg.norm(np.asarray(out, np.float32) - want) / np.linalg.norm(want)
  assert err < 5e-2


def test_scan_matches_loop():
  cfg = TextConfig(**TINY)
  model = _randomize(Data2VecTextModel(cfg, rngs=nnx.Rngs(0)), seed=5)
  scanned = Data2VecTextModel(dataclasses.replace(cfg, scan_layers=True), rngs=nnx.Rngs(1))
  nnx.update(scanned, nnx.state(model, nnx.Param))
  batch = _batch(cfg)
  want = {k: np.asarray(v) for k, v in model(**batch).items()}
  _assert_close(scanned(**batch), want, atol=1e-5)


def test_rng_enables_dropout():
  model = Data2VecTextModel(TextConfig(**TINY), rngs=nnx.Rngs(0))
  batch = _batch(model.config)
  eval_out = model(**batch)['last_hidden_state']
  a = model(**batch, rng=jax.random.key(0))['last_hidden_state']
  b = model(**batch, rng=jax.random.key(1))['last_hidden_state']
  assert np.isfinite(a).all()
  assert not np.allclose(a, eval_out) and not np.allclose(a, b)


def test_config_round_trips_through_transformers():
  assert hf_text.config_from_hf(transformers.Data2VecTextConfig().to_dict()) == TextConfig()
  cfg = TextConfig(**CASES['sizes'], is_decoder=True, eos_token_id=(2, 3))
  hf_config = transformers.AutoConfig.for_model(**hf_text.config_to_hf(cfg))
  assert isinstance(hf_config, transformers.Data2VecTextConfig)
  assert hf_text.config_from_hf(hf_config.to_dict()) == cfg


def test_pooler_follows_tensor_keys():
  d = hf_text.config_to_hf(TextConfig(**TINY))
  rows = hf_text.weight_rows(TextConfig(**TINY))
  keys = [r.theirs for r in rows]
  assert hf_text.config_from_hf(d, tensor_keys=keys).add_pooling_layer
  no_pooler = [k for k in keys if not k.startswith('pooler.')]
  assert not hf_text.config_from_hf(d, tensor_keys=no_pooler).add_pooling_layer
  assert len(hf_text.weight_rows(TextConfig(**TINY, add_pooling_layer=False))) == len(rows) - 2


@pytest.mark.parametrize('field, value', [
    ('add_cross_attention', True),
    ('position_embedding_type', 'relative_key'),
    ('pruned_heads', {'0': [1]}),
    ('hidden_act', 'quick_gelu'),
    ('pad_token_id', None),
    ('pad_token_id', 50),
    ('unknown_field', 1),
])
def test_unsupported_hf_config_raises(field, value):
  d = transformers.Data2VecTextConfig(**TINY).to_dict()
  d[field] = value
  with pytest.raises(ValueError, match=field):
    hf_text.config_from_hf(d)


@pytest.mark.parametrize('field, value', [('norm_first', True), ('key_bias', False),
                                          ('type_vocab_size', 0)])
def test_unsupported_text_config_raises(field, value):
  with pytest.raises(ValueError, match=field):
    TextConfig(**dict(TINY, **{field: value}))


@pytest.mark.parametrize('field', ['activation_dropout', 'layerdrop'])
def test_export_of_field_transformers_lacks_raises(field):
  with pytest.raises(ValueError, match=field):
    hf_text.config_to_hf(TextConfig(**TINY, **{field: 0.1}))


def test_too_long_input_raises():
  model = Data2VecTextModel(TextConfig(**TINY), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='max_position_embeddings'):
    model(np.full((1, 23), 5))


# --- data2vec 2.0: visible-only encoding -------------------------------------------------------


def test_encode_visible_with_every_token_is_the_full_model():
  model = _randomize(Data2VecTextModel(TextConfig(**TINY), rngs=nnx.Rngs(0)), seed=6)
  batch = _batch(model.config)
  ids, attention = batch['input_ids'], batch['attention_mask']
  b, t = ids.shape
  out = model.encode_visible(model.embeddings(jnp.asarray(ids)), attention,
                             np.broadcast_to(np.arange(t), (b, 1, t)))
  want = {k: np.asarray(v) for k, v in model(ids, attention).items() if k != 'pooler_output'}
  _assert_close(out, want, atol=1e-5)


def test_encode_visible_equals_the_sequence_with_the_masked_tokens_dropped():
  """Each view is the full model on its kept tokens alone, with their positions in the whole
  sequence: dropping the masked tokens is all that visible-only encoding does."""
  model = _randomize(Data2VecTextModel(TextConfig(**TINY), rngs=nnx.Rngs(0)), seed=7)
  batch = _batch(model.config, lengths=(9, 7, 3))
  ids, attention = batch['input_ids'], batch['attention_mask']
  positions = position_ids_from_input_ids(jnp.asarray(ids), model.config.pad_token_id)
  rng = np.random.default_rng(0)
  # Views as the 2.0 pipeline draws them (4 of 9 kept, valid tokens first), in shuffled order.
  keep = np.stack([[rng.permutation(np.flatnonzero(~masking.token_view_mask(rng, v, 0.5)))
                    for _ in range(2)] for v in attention.astype(bool)])  # [B, M=2, K=4]
  out = model.encode_visible(model.embeddings(jnp.asarray(ids)), attention, keep)
  assert out['last_hidden_state'].shape == (6, 4, 32)
  for row, kept in enumerate(keep.reshape(6, 4)):
    s = row // 2
    want = model(ids[s:s + 1, kept], attention[s:s + 1, kept],
                 position_ids=positions[s:s + 1, kept])
    for name, axis in (('last_hidden_state', 0), ('hidden_states', 1), ('ffn_outputs', 1)):
      np.testing.assert_allclose(np.take(out[name], [row], axis=axis), want[name], atol=1e-5,
                                 err_msg=name)


def test_encode_visible_rejects_bad_shapes():
  model = Data2VecTextModel(TextConfig(**TINY), rngs=nnx.Rngs(0))
  x, mask, ids = jnp.zeros((2, 6, 32)), np.ones((2, 6), np.int32), np.zeros((2, 3, 4), np.int32)
  with pytest.raises(ValueError, match=r'embedded .*\[B, T, D\]'):
    model.encode_visible(jnp.zeros((2, 6, 16)), mask, ids)
  with pytest.raises(ValueError, match=r'ids_keep .*\[B=2, M, K\]'):
    model.encode_visible(x, mask, ids[:1])
  with pytest.raises(ValueError, match='1 <= K <= T=6'):
    model.encode_visible(x, mask, np.zeros((2, 1, 7), np.int32))
  with pytest.raises(ValueError, match='ids_keep'):
    model.encode_visible(x, mask, ids[:, 0])
  with pytest.raises(ValueError, match='attention_mask'):
    model.encode_visible(x, mask[:, :5], ids)
  assert model.encode_visible(x, None, ids)['last_hidden_state'].shape == (6, 4, 32)
