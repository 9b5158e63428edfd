"""Targets, heads, losses and collapse monitors vs numpy references of docs/algorithm.md §2-§3."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from configs import audio, text, vision
from data2vec import objective

L, B, T, D = 5, 2, 7, 8


def recipe(modality):
  """The base config's objective block, split by the function that consumes it."""
  o = {'text': text, 'audio': audio, 'vision': vision}[modality].get_config('base').objective
  return {
      'targets': dict(top_k=o.top_k, layer_norm_targets=o.layer_norm_targets,
                      instance_norm_targets=o.instance_norm_targets,
                      post_layer_norm=o.post_layer_norm, drop_first=int(modality == 'vision')),
      'loss': dict(beta=o.loss_beta, reduce_dims=o.loss_reduce, scale=o.loss_scale),
      'head': dict(layers=o.head_layers, pre_norm=o.head_pre_norm),
  }


def np_layer_norm(x, eps=1e-5):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)


def np_instance_norm(x, padded, eps=1e-5):
  """x: [B, T, D]; statistics per (b, d) over the unpadded frames only."""
  out = np.zeros_like(x)
  for b in range(x.shape[0]):
    valid = ~padded[b]
    for d in range(x.shape[2]):
      v = x[b, valid, d]
      out[b, valid, d] = (v - v.mean()) / np.sqrt(v.var() + eps)
  return out


def np_targets(layers, k, per_layer, post_ln, padded=None, drop_first=0):
  padded = np.zeros(layers.shape[1:3], bool) if padded is None else padded
  normed = []
  for layer in layers[-k:]:
    y = layer[:, drop_first:]
    if per_layer == 'instance':
      normed.append(np_instance_norm(y, padded[:, drop_first:]))
    else:
      normed.append(np_layer_norm(y))
  y = sum(normed) / k
  return np_layer_norm(y) if post_ln else y


def np_smooth_l1(x, y, beta):
  d = np.abs(x - y)
  if beta == 0:
    return d ** 2
  return np.where(d < beta, 0.5 * d ** 2 / beta, d - 0.5 * beta)


@pytest.fixture
def layers():
  rng = np.random.default_rng(0)
  # Per-channel offsets and scales so that the two norms give clearly different results.
  return (rng.normal(size=(L, B, T, D)) * rng.uniform(0.5, 3, D) + rng.normal(size=D) * 2)


def test_layer_norm_and_instance_norm(layers):
  x = layers[0]
  np.testing.assert_allclose(objective.layer_norm(x), np_layer_norm(x), atol=1e-5)
  padded = np.zeros((B, T), bool)
  padded[1, 5:] = True
  got = np.asarray(objective.instance_norm(x, ~padded))
  np.testing.assert_allclose(got, np_instance_norm(x, padded), atol=1e-5)
  assert np.all(got[1, 5:] == 0)
  no_padding = np.zeros((B, T), bool)
  np.testing.assert_allclose(objective.instance_norm(x), np_instance_norm(x, no_padding), atol=1e-5)


def test_targets_text_ffn_layer_norm(layers):
  kwargs = recipe('text')['targets'] | {'top_k': 3}
  got = objective.make_targets(layers, **kwargs)
  assert got.dtype == jnp.float32 and got.shape == (B, T, D)
  np.testing.assert_allclose(got, np_targets(layers, 3, 'layer', False), atol=1e-5)
  # Only the top K layers count.
  changed = layers.copy()
  changed[:L - 3] += 10.0
  np.testing.assert_array_equal(got, objective.make_targets(changed, **kwargs))


def test_targets_audio_instance_norm_excludes_padding(layers):
  padded = np.zeros((B, T), bool)
  padded[0, 4:] = True
  kwargs = recipe('audio')['targets'] | {'top_k': 4}
  got = np.asarray(objective.make_targets(layers, valid_mask=~padded, **kwargs))
  np.testing.assert_allclose(got, np_targets(layers, 4, 'instance', False, padded), atol=1e-5)
  garbage = layers.copy()
  garbage[:, 0, 4:] = 1e3
  np.testing.assert_allclose(
      objective.make_targets(garbage, valid_mask=~padded, **kwargs), got, atol=1e-6)


def test_targets_vision_end_of_block_cls_dropped_post_ln(layers):
  hidden_states = np.concatenate([np.zeros((1, B, T, D)), layers])  # the embeddings first
  outputs = objective.layer_outputs({'hidden_states': hidden_states}, 'end')
  got = objective.make_targets(outputs, **recipe('vision')['targets'] |
                               {'top_k': 2})
  assert got.shape == (B, T - 1, D)
  np.testing.assert_allclose(got, np_targets(layers, 2, 'layer', True, drop_first=1), atol=1e-5)
  np.testing.assert_allclose(np.asarray(got).mean(-1), 0, atol=1e-5)


def test_targets_bad_arguments(layers):
  with pytest.raises(ValueError, match='top_k'):
    objective.make_targets(layers, top_k=L + 1, layer_norm_targets=True,
                           instance_norm_targets=False, post_layer_norm=False)
  with pytest.raises(ValueError, match='target_layer'):
    objective.layer_outputs({}, 'attention')


@pytest.mark.parametrize('modality,beta,per_token,scale', [
    ('text', 4.0, np.sum, 1.0),
    ('vision', 2.0, np.mean, 1.0),
    ('audio', 0.0, np.sum, 1 / math.sqrt(D)),
])
def test_regression_losses(modality, beta, per_token, scale):
  rng = np.random.default_rng(1)
  pred = rng.normal(size=(B, T, D)) * 4  # both smooth-L1 branches are hit
  target = rng.normal(size=(B, T, D))
  mask = rng.uniform(size=(B, T)) < 0.5
  want = (per_token(np_smooth_l1(pred, target, beta), -1) * scale)[mask].sum()
  total, count = objective.regression_loss(pred, target, mask,
                                           **recipe(modality)['loss'])
  assert count == mask.sum()
  np.testing.assert_allclose(total, want, rtol=1e-5)
  np.testing.assert_allclose(
      objective.mean_regression_loss(pred, target, mask,
                                     **recipe(modality)['loss']),
      want / mask.sum(), rtol=1e-5)


def test_loss_conventions_match_torch():
  """fairseq's elementwise losses: F.mse_loss for beta 0, F.smooth_l1_loss(beta) otherwise."""
  torch = pytest.importorskip('torch')
  x = np.linspace(-6, 6, 24, dtype=np.float32).reshape(3, 8)
  tx, ty = torch.tensor(x), torch.zeros(3, 8)
  for beta in (0.0, 2.0, 4.0):
    if beta == 0:
      want = torch.nn.functional.mse_loss(tx, ty, reduction='none')
    else:
      want = torch.nn.functional.smooth_l1_loss(tx, ty, beta=beta, reduction='none')
    got, _ = objective.regression_loss(x, np.zeros_like(x), None, beta=beta, reduce_dims='sum',
                                       scale=1.0)
    np.testing.assert_allclose(got, want.sum().item(), rtol=1e-6)


def test_loss_is_normalized_by_the_global_count():
  rng = np.random.default_rng(2)
  pred, target = rng.normal(size=(8, T, D)), rng.normal(size=(8, T, D))
  mask = np.zeros((8, T), bool)
  mask[:4, :1] = True  # shards with very different counts
  mask[4:, :6] = True
  kwargs = dict(beta=0.0, reduce_dims='sum', scale=1.0)
  per_token = ((pred - target) ** 2).sum(-1)
  want = per_token[mask].sum() / mask.sum()
  sums, counts = zip(*(objective.regression_loss(pred[i:i + 4], target[i:i + 4], mask[i:i + 4],
                                                 **kwargs) for i in (0, 4)))
  np.testing.assert_allclose(sum(sums) / sum(counts), want, rtol=1e-5)
  assert not np.isclose(np.mean([s / c for s, c in zip(sums, counts)]), want, rtol=1e-3)
  # Sharded over the batch, the jitted mean is still the global one.
  sharding = NamedSharding(Mesh(np.array(jax.devices()[:8]), ('data',)), P('data'))
  args = [jax.device_put(jnp.asarray(a, jnp.float32), sharding) for a in (pred, target)]
  loss = jax.jit(lambda p, t, m: objective.mean_regression_loss(p, t, m, **kwargs))(
      *args, jax.device_put(mask, sharding))
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_loss_bad_arguments():
  x = np.zeros((2, D))
  with pytest.raises(ValueError, match='beta'):
    objective.regression_loss(x, x, None, beta=-1.0, reduce_dims='sum', scale=1.0)
  with pytest.raises(ValueError, match='reduce_dims'):
    objective.regression_loss(x, x, None, beta=0.0, reduce_dims='max', scale=1.0)


def test_collapse_statistics():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(B, T, D)) * rng.uniform(0.1, 2, D) + 5.0
  mask = rng.uniform(size=(B, T)) < 0.6
  rows = x[mask]
  want = np.sqrt(rows.var(0, ddof=1) + 1e-6).mean()
  np.testing.assert_allclose(objective.variance_stat(x, mask), want, rtol=1e-5)
  np.testing.assert_allclose(objective.variance_stat(rows), want, rtol=1e-5)
  metrics = objective.collapse_metrics(np.zeros_like(x), x, mask)
  np.testing.assert_allclose(metrics['target_var'], want, rtol=1e-5)
  np.testing.assert_allclose(metrics['pred_var'], 1e-3, rtol=1e-5)  # sqrt(eps)

  check = lambda step, t, p: objective.check_collapse(step, t, p, min_target_var=0.1,
                                                      min_pred_var=0.01, after_step=5000)
  check(5000, 0.0, 0.0)  # not checked yet
  check(5001, 0.2, 0.02)
  with pytest.raises(RuntimeError, match='target_var'):
    check(5001, 0.05, 0.02)
  with pytest.raises(RuntimeError, match='pred_var'):
    check(6000, 0.2, metrics['pred_var'])


def np_gelu(x):
  return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


@pytest.mark.parametrize('modality', ['text', 'audio', 'vision'])
def test_regression_heads(modality):
  head = objective.RegressionHead(D, **recipe(modality)['head'],
                                  rngs=nnx.Rngs(0))
  p = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(head, nnx.Param)))
  x = np.random.default_rng(4).normal(size=(B, T, D)).astype(np.float32)
  want = x
  if modality == 'vision':
    want = np_layer_norm(want, 1e-6) * p['norm']['scale'] + p['norm']['bias']
  if modality == 'text':
    assert p['hidden']['kernel'].shape == (D, 2 * D)
    want = np_gelu(want @ p['hidden']['kernel'] + p['hidden']['bias'])
  want = want @ p['proj']['kernel'] + p['proj']['bias']
  assert set(p) == {'text': {'hidden', 'proj'}, 'audio': {'proj'},
                    'vision': {'norm', 'proj'}}[modality]
  np.testing.assert_allclose(head(x), want, atol=1e-5)
  with pytest.raises(ValueError, match='layers'):
    objective.RegressionHead(D, layers=3, pre_norm=False, rngs=nnx.Rngs(0))
