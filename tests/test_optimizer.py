"""Schedules vs numpy transcriptions of fairseq / BEiT, the decay mask and one AdamW update."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data2vec import optimizer


def fairseq_tri_stage(peak, max_update, phase_ratio, init_scale=0.01, final_scale=0.01):
  """fairseq TriStageLRSchedule: the lr after `num_updates` updates, for every step."""
  warmup, hold, decay = (int(max_update * r) for r in phase_ratio)
  init_lr = init_scale * peak
  rate = (peak - init_lr) / warmup if warmup else 0
  factor = -math.log(final_scale) / decay

  def lr(n):
    if n < warmup:
      return init_lr + rate * n
    if n < warmup + hold:
      return peak
    if n <= warmup + hold + decay:
      return peak * math.exp(-factor * (n - warmup - hold))
    return final_scale * peak
  return lr


def beit_cosine(base, final, total, warmup):
  """data2vec_vision utils.cosine_scheduler with niter_per_ep=1 (one value per step)."""
  warm = np.linspace(0, base, warmup) if warmup > 0 else np.array([])
  iters = np.arange(total - warmup)
  rest = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
  return np.concatenate([warm, rest])


@pytest.mark.parametrize('total,ratio', [(1000, (0.03, 0.9, 0.07)), (200, (0.1, 0.4, 0.5))])
def test_tri_stage_matches_fairseq(total, ratio):
  schedule = optimizer.learning_rate_schedule('tri_stage', peak_lr=5e-4, total_steps=total,
                                              phase_ratio=ratio)
  steps = np.arange(total + 20)
  got = np.asarray(jax.jit(jax.vmap(schedule))(steps))
  want = np.array([fairseq_tri_stage(5e-4, total, ratio)(n) for n in steps])
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Anchors of the recipe: 1% at the start, the peak, exponential down to 1%.
  warmup, hold, decay = (int(total * r) for r in ratio)
  np.testing.assert_allclose(got[[0, warmup, warmup + hold, warmup + hold + decay, -1]],
                             [5e-6, 5e-4, 5e-4, 5e-6, 5e-6], rtol=1e-5)
  mid = warmup + hold + decay // 2
  np.testing.assert_allclose(got[mid], 5e-4 * 0.01 ** ((decay // 2) / decay), rtol=1e-5)


@pytest.mark.parametrize('warmup', [0, 1, 10])
def test_cosine_matches_beit(warmup):
  schedule = optimizer.learning_rate_schedule('cosine', peak_lr=2e-3, total_steps=60,
                                              warmup_steps=warmup, min_lr=1e-5)
  got = np.asarray(jax.vmap(schedule)(np.arange(70)))
  np.testing.assert_allclose(got[:60], beit_cosine(2e-3, 1e-5, 60, warmup), rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(got[60:], 1e-5, rtol=1e-5)


def test_linear_decays_as_fairseq_polynomial_decay():
  """After the warm-up, fairseq's polynomial_decay with power 1 and end_learning_rate 0."""
  peak, total, warmup = 2e-5, 100, 6
  schedule = optimizer.learning_rate_schedule('linear', peak_lr=peak, total_steps=total,
                                              warmup_steps=warmup)
  got = np.asarray(jax.vmap(schedule)(np.arange(total + 5)))
  np.testing.assert_allclose(got[:warmup], np.linspace(0, peak, warmup), rtol=1e-5)
  n = np.arange(warmup, total + 5)
  want = np.where(n >= total, 0.0, peak * (1 - (n - warmup) / (total - warmup)))
  np.testing.assert_allclose(got[warmup:], want, rtol=1e-5, atol=1e-10)


def test_constant_and_bad_arguments():
  schedule = optimizer.learning_rate_schedule('constant', peak_lr=1e-3, total_steps=100,
                                              warmup_steps=5)
  np.testing.assert_allclose(jax.vmap(schedule)(np.arange(8)),
                             [0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3, 1e-3], rtol=1e-6)
  for kwargs, match in [
      (dict(kind='step'), 'kind'),
      (dict(kind='tri_stage'), 'phase_ratio'),
      (dict(kind='tri_stage', phase_ratio=(0.1, 0.1, 0.1)), 'phase_ratio'),
      (dict(kind='tri_stage', phase_ratio=(0.1, 0.8, 0.1), warmup_steps=5), 'warmup_steps'),
      (dict(kind='cosine', phase_ratio=(0.1, 0.8, 0.1)), 'phase_ratio'),
      (dict(kind='cosine', warmup_steps=200), 'warmup_steps'),
  ]:
    with pytest.raises(ValueError, match=match):
      optimizer.learning_rate_schedule(peak_lr=1e-3, total_steps=100, **kwargs)


def small_params():
  rng = np.random.default_rng(0)
  shapes = {
      'embeddings': {'cls_token': (1, 1, 4), 'mask_token': (1, 1, 4),
                     'patch_embeddings': {'kernel': (2, 2, 3, 4), 'bias': (4,)}},
      'encoder': {'layers': {'attention': {'query': {'kernel': (2, 4, 4), 'bias': (2, 4)}},
                             'lambda_1': (2, 4),
                             'relative_position_bias': {'table': (2, 7, 2)}}},
      'head': {'norm': {'scale': (4,)}, 'proj': {'kernel': (4, 4)}},
      'pos_conv_embed': {'layers': {'0': {'conv': {'kernel': (3, 4)}}}},  # a list, not stacked
  }
  return jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), shapes,
                      is_leaf=lambda s: isinstance(s, tuple))


def test_weight_decay_mask():
  params = small_params()
  mask = optimizer.weight_decay_mask(params, exclude_1d=True, exclude_patterns=('cls_token',))
  assert mask == {
      'embeddings': {'cls_token': False, 'mask_token': True,
                     'patch_embeddings': {'kernel': True, 'bias': False}},
      'encoder': {'layers': {'attention': {'query': {'kernel': True, 'bias': False}},
                             'lambda_1': False,
                             'relative_position_bias': {'table': True}}},
      'head': {'norm': {'scale': False}, 'proj': {'kernel': True}},
      'pos_conv_embed': {'layers': {'0': {'conv': {'kernel': True}}}},
  }
  assert all(jax.tree.leaves(optimizer.weight_decay_mask(params, exclude_1d=False)))
  with pytest.raises(ValueError, match='pos_embed'):
    optimizer.weight_decay_mask(params, exclude_1d=True, exclude_patterns=('pos_embed',))


def np_adamw(params, grads_per_step, decay, *, lr, b1, b2, eps, wd, clip):
  """torch.optim.AdamW on flat lists, with clip_grad_norm_ first."""
  m = [np.zeros_like(p) for p in params]
  v = [np.zeros_like(p) for p in params]
  params = [p.astype(np.float64) for p in params]
  for t, grads in enumerate(grads_per_step, 1):
    norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads))
    g_clip = [g * min(1.0, clip / norm) for g in grads]
    for i, g in enumerate(g_clip):
      if decay[i]:
        params[i] = params[i] * (1 - lr * wd)
      m[i] = b1 * m[i] + (1 - b1) * g
      v[i] = b2 * v[i] + (1 - b2) * g * g
      m_hat, v_hat = m[i] / (1 - b1 ** t), v[i] / (1 - b2 ** t)
      params[i] = params[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
  return params


def test_adamw_with_mask_and_clipping():
  params = small_params()
  # Norms that differ per step (all above clip_norm): Adam is invariant to a constant scale.
  grads = [jax.tree.map(lambda p: np.cos(p * k) * k, params) for k in (1, 3, 5)]
  kwargs = dict(b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05)
  tx = optimizer.make_optimizer(1e-2, clip_norm=1.0, exclude_1d=True,
                                exclude_patterns=('cls_token',), **kwargs)
  state, got = tx.init(params), params
  for g in grads:
    updates, state = jax.jit(tx.update)(g, state, got)
    got = jax.tree.map(lambda p, u: p + u, got, updates)
  decay = jax.tree.leaves(optimizer.weight_decay_mask(params, exclude_1d=True,
                                                      exclude_patterns=('cls_token',)))
  want = np_adamw(jax.tree.leaves(params), [jax.tree.leaves(g) for g in grads], decay, lr=1e-2,
                  b1=0.9, b2=0.999, eps=1e-8, wd=0.05, clip=1.0)
  for g, w in zip(jax.tree.leaves(got), want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='clip_norm'):
    optimizer.make_optimizer(1e-2, clip_norm=-1.0, **kwargs)
