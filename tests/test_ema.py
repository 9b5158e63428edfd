"""The tau schedule, the EMA rule and the copy/average split against numpy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data2vec import ema
from data2vec.models.encoder import Encoder
from data2vec.models.layers import TransformerConfig


def np_tau(step, tau0, tau_e, tau_n):
  """docs/algorithm.md §1.2: linear from tau0 to tau_e over tau_n updates, then tau_e."""
  if step >= tau_n:
    return tau_e
  return tau0 + (tau_e - tau0) * step / tau_n


@pytest.mark.parametrize('step', [0, 1, 7500, 15000, 29999, 30000, 100000])
def test_tau_schedule(step):
  got = jax.jit(lambda s: ema.tau_schedule(s, 0.999, 0.9999, 30000))(step)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_tau(step, 0.999, 0.9999, 30000), rtol=1e-7)


def test_tau_schedule_constant():
  for step in (0, 10, 10**6):
    assert ema.tau_schedule(step, 0.9998, 0.9998, 1000) == np.float32(0.9998)
    assert ema.tau_schedule(step, 0.999, 0.9999, 0) == np.float32(0.9999)


def audio_like_params(rng):
  shapes = {
      'feature_extractor': {'conv_layers': {'0': {'conv': {'kernel': (3, 1, 4)}}}},
      'feature_projection': {'projection': {'kernel': (4, 6), 'bias': (6,)}},
      'masked_spec_embed': (6,),
      'encoder': {
          'pos_conv_embed': {'layers': {'0': {'conv': {'kernel': (5, 3, 6)}}}},
          'layer_norm': {'scale': (6,), 'bias': (6,)},
          'layers': {'attention': {'query': {'kernel': (2, 6, 6)}}},
      },
  }
  return jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), shapes,
                      is_leaf=lambda s: isinstance(s, tuple))


def test_copy_mask_audio_and_text():
  params = audio_like_params(np.random.default_rng(0))
  mask = ema.copy_mask_for(params, 'audio')
  flat = {jax.tree_util.keystr(p, simple=True, separator='/'): m
          for p, m in jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert flat == {
      'feature_extractor/conv_layers/0/conv/kernel': True,
      'feature_projection/projection/kernel': True,
      'feature_projection/projection/bias': True,
      'masked_spec_embed': True,
      'encoder/pos_conv_embed/layers/0/conv/kernel': True,
      'encoder/layer_norm/scale': False,
      'encoder/layer_norm/bias': False,
      'encoder/layers/attention/query/kernel': False,
  }
  text = {'embeddings': {'word_embeddings': {'embedding': 0.0}, 'LayerNorm': {'scale': 0.0}},
          'encoder': {'layers': {'embeddings_like': {'kernel': 0.0}}}}
  assert ema.copy_mask_for(text, 'text') == {
      'embeddings': {'word_embeddings': {'embedding': True}, 'LayerNorm': {'scale': True}},
      'encoder': {'layers': {'embeddings_like': {'kernel': False}}}}


def test_copy_mask_vision_averages_a_real_encoder():
  cfg = TransformerConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=16)
  params = nnx.to_pure_dict(nnx.state(Encoder(cfg, rngs=nnx.Rngs(0)), nnx.Param))
  mask = ema.copy_mask_for({'encoder': params}, 'vision')
  assert not any(jax.tree.leaves(mask)) and len(jax.tree.leaves(mask)) == 16


def test_copy_mask_bad_input():
  params = audio_like_params(np.random.default_rng(0))
  with pytest.raises(ValueError, match='modality'):
    ema.copy_mask_for(params, 'video')
  with pytest.raises(ValueError, match='matches no audio'):
    ema.copy_mask_for(params, 'audio', patterns=('pos_conv$',))


def test_ema_update_copies_and_averages():
  rng = np.random.default_rng(1)
  teacher = audio_like_params(rng)
  student = jax.tree.map(lambda x: (x + rng.normal(size=x.shape)).astype(np.float32), teacher)
  mask = ema.copy_mask_for(teacher, 'audio')
  step = jax.jit(lambda t, s, tau: ema.ema_update(t, s, tau, mask))
  want, got = teacher, teacher
  for n in range(1, 4):
    tau = np_tau(n, 0.5, 0.9, 4)
    want = jax.tree.map(lambda t, s, c: s if c else tau * t + (1 - tau) * s, want, student, mask)
    got = step(got, student, ema.tau_schedule(n, 0.5, 0.9, 4))
    # The student moves on after each step.
    student = jax.tree.map(lambda x: (x * 0.9 + 0.1).astype(np.float32), student)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7), got, want)
  assert np.all(jax.tree.leaves(jax.tree.map(lambda g: g.dtype == jnp.float32, got)))


def test_ema_update_tau_one_and_bfloat16_student():
  rng = np.random.default_rng(2)
  teacher = audio_like_params(rng)
  student = jax.tree.map(lambda x: jnp.asarray(x + 1, jnp.bfloat16), teacher)
  mask = ema.copy_mask_for(teacher, 'audio')
  got = ema.ema_update(teacher, student, 1.0, mask)
  for g, t, s, c in zip(*map(jax.tree.leaves, (got, teacher, student, mask))):
    assert g.dtype == jnp.float32
    np.testing.assert_array_equal(g, np.asarray(s, np.float32) if c else t)
