"""The data2vec v1 objective: teacher targets, regression heads, the loss and collapse monitors.

Pure functions over arrays (docs/algorithm.md §2-§3). Targets, norms, losses and statistics are
computed in float32 whatever the compute dtype.
"""
import functools

import jax.numpy as jnp
from flax import nnx

from data2vec import sharding
from data2vec.models.layers import ACTIVATIONS

def layer_outputs(encoder_out, kind):
  """The teacher's per-layer outputs [L, B, T, D] to build targets from.

  'ffn': each block's FFN output before dropout and the residual (text, audio; the paper's
  choice). 'end': each block's output, i.e. hidden_states[1:] (the data2vec_vision code).
  """
  if kind == 'ffn':
    return encoder_out['ffn_outputs']
  if kind == 'end':
    return encoder_out['hidden_states'][1:]
  raise ValueError(f"target_layer={kind!r} is not one of 'ffn', 'end'")


def layer_norm(x, eps=1e-5):
  """Parameter-free LayerNorm over the last axis (biased variance), in float32."""
  x = x.astype(jnp.float32)
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + eps)


def instance_norm(x, valid_mask=None, eps=1e-5):
  """Parameter-free instance norm over time, per (sample, channel), in float32.

  x: [..., B, T, D]; valid_mask: [B, T] bool, True on valid (not padded) frames, or None. Padded
  frames are left out of the statistics (fairseq includes them; v1 pretraining has no padding, so
  this only matters for padded batches) and are zero in the output.
  """
  x = x.astype(jnp.float32)
  if valid_mask is None:
    mean = x.mean(-2, keepdims=True)
    var = jnp.square(x - mean).mean(-2, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps)
  valid = valid_mask[..., None]
  count = jnp.maximum(valid.sum(-2, keepdims=True), 1)
  mean = jnp.where(valid, x, 0).sum(-2, keepdims=True) / count
  var = jnp.where(valid, jnp.square(x - mean), 0).sum(-2, keepdims=True) / count
  return jnp.where(valid, (x - mean) / jnp.sqrt(var + eps), 0)


def make_targets(layer_outputs, *, top_k, layer_norm_targets, instance_norm_targets,
                 post_layer_norm, valid_mask=None, drop_first=0):
  """y = mean of the top-K normalised teacher layers, [B, T - drop_first, D] (docs/algorithm.md §2).

  layer_outputs: [L, B, T, D], FFN outputs or end-of-block outputs, as the caller chooses
  (`layer_outputs(encoder_out, kind)`). Per layer: instance norm over time
  (`instance_norm_targets`, fairseq `instance_norm_target_layer`), then LayerNorm over D
  (`layer_norm_targets`, fairseq `layer_norm_target_layer`); after averaging an optional LayerNorm
  (`post_layer_norm`, DV `post_target_layer_norm`). `drop_first` leading tokens (the vision CLS)
  are removed before any statistics. valid_mask: [B, T], True on valid frames, or None.
  """
  num_layers = layer_outputs.shape[0]
  if not 1 <= top_k <= num_layers:
    raise ValueError(f'top_k={top_k} must be in [1, {num_layers}] (the number of layers)')
  y = layer_outputs[-top_k:, :, drop_first:].astype(jnp.float32)
  if valid_mask is not None:
    valid_mask = valid_mask[:, drop_first:]
  if instance_norm_targets:
    y = instance_norm(y, valid_mask)
  if layer_norm_targets:
    y = layer_norm(y)
  y = y.mean(0)
  return layer_norm(y) if post_layer_norm else y


class RegressionHead(nnx.Module):
  """Maps the student's output to the target space; pretraining only (not in the teacher).

  layers=1: Linear(D -> D) (audio `final_proj`, vision `lm_head`); layers=2: Linear(D -> 2D) ->
  GELU -> Linear(2D -> D) (the text `regression_head` of the released config). pre_norm puts an
  affine LayerNorm first (the vision model's final `norm`, eps 1e-6). Weights are N(0, init_std)
  with zero biases.
  """

  def __init__(self, dim, *, layers, pre_norm, norm_eps=1e-6, init_std=0.02,
               dtype=jnp.float32, rngs):
    if layers not in (1, 2):
      raise ValueError(f'head layers={layers} must be 1 or 2')
    linear = functools.partial(nnx.Linear, kernel_init=nnx.initializers.normal(init_std),
                               dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    embed = sharding.axes('embed')
    self.norm = (nnx.LayerNorm(dim, epsilon=norm_eps, dtype=dtype, param_dtype=jnp.float32,
                               scale_metadata=embed, bias_metadata=embed, rngs=rngs)
                 if pre_norm else None)
    self.hidden = (linear(dim, 2 * dim, kernel_metadata=sharding.axes('embed', 'mlp'),
                          bias_metadata=sharding.axes('mlp')) if layers == 2 else None)
    self.proj = linear(2 * dim if layers == 2 else dim, dim,
                       kernel_metadata=sharding.axes('mlp', 'embed'), bias_metadata=embed)

  def __call__(self, x):
    if self.norm is not None:
      x = self.norm(x)
    if self.hidden is not None:
      x = ACTIVATIONS['gelu'](self.hidden(x))  # torch nn.GELU: exact erf
    return self.proj(x)


def regression_loss(pred, target, mask, *, beta, reduce_dims, scale):
  """The summed regression loss over the loss positions, and their count (both float32 scalars).

  pred, target: [..., D]; mask: [...] bool, True where the loss is taken (masked time-steps), or
  None for every position. Elementwise loss: beta == 0 gives (x - y)^2 (fairseq F.mse_loss, no
  1/2); beta > 0 gives smooth L1 (0.5 (x - y)^2 / beta below beta, |x - y| - beta / 2 above).
  Per position it is summed ('sum') or averaged ('mean') over D and multiplied by scale
  (None: 1/sqrt(D), fairseq `loss_scale: null`). Divide the global sum by the global count
  (docs/algorithm.md decision 6): `mean_regression_loss`, or psum both first when summing per shard.
  """
  if beta < 0:
    raise ValueError(f'loss beta={beta} must be >= 0 (0 is L2)')
  if reduce_dims not in ('sum', 'mean'):
    raise ValueError(f"loss reduce_dims={reduce_dims!r} is not one of 'sum', 'mean'")
  if pred.shape != target.shape:
    raise ValueError(f'pred shape {pred.shape} != target shape {target.shape}')
  diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
  if beta == 0:
    elementwise = jnp.square(diff)
  else:
    absdiff = jnp.abs(diff)
    elementwise = jnp.where(absdiff < beta, 0.5 * jnp.square(diff) / beta, absdiff - 0.5 * beta)
  per_position = elementwise.sum(-1) if reduce_dims == 'sum' else elementwise.mean(-1)
  per_position = per_position * (pred.shape[-1] ** -0.5 if scale is None else scale)
  if mask is None:
    return per_position.sum(), jnp.asarray(per_position.size, jnp.float32)
  return jnp.where(mask, per_position, 0).sum(), mask.sum().astype(jnp.float32)


def mean_regression_loss(pred, target, mask, **kwargs):
  """`regression_loss` divided by the number of loss positions (global under jit)."""
  total, count = regression_loss(pred, target, mask, **kwargs)
  return total / jnp.maximum(count, 1.0)


def variance_stat(x, mask=None, eps=1e-6):
  """Mean over D of the per-dimension std over the selected rows (fairseq `compute_var`).

  x: [..., D]; mask: [...] bool selecting the rows (e.g. the masked tokens), or None for all.
  Unbiased variance over the pooled rows, sqrt(var + eps), then the mean over D.
  """
  x = x.astype(jnp.float32).reshape(-1, x.shape[-1])
  keep = (jnp.ones(x.shape[0], bool) if mask is None else mask.reshape(-1))[:, None]
  n = keep.sum()
  mean = jnp.where(keep, x, 0).sum(0) / jnp.maximum(n, 1)
  var = jnp.where(keep, jnp.square(x - mean), 0).sum(0) / jnp.maximum(n - 1, 1)
  return jnp.sqrt(var + eps).mean()


def collapse_metrics(pred, target, mask=None):
  """{'target_var', 'pred_var'}: `variance_stat` of the targets and the head's predictions."""
  return {'target_var': variance_stat(target, mask), 'pred_var': variance_stat(pred, mask)}


def check_collapse(step, target_var, pred_var, *, min_target_var, min_pred_var, after_step):
  """Raises once past `after_step` if a (fetched) variance fell below its minimum (fairseq v1).

  fairseq: after 5,000 updates, target_var < 0.1 or pred_var < 0.01 aborts; thresholds 0 disable.
  """
  if step <= after_step:
    return
  for name, value, minimum in (('target_var', target_var, min_target_var),
                               ('pred_var', pred_var, min_pred_var)):
    if float(value) < minimum:
      raise RuntimeError(f'representation collapse at step {step}: {name}={float(value):.4g} < '
                         f'min_{name}={minimum}')
