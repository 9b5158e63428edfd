"""Learning-rate schedules and the AdamW optimizer of the data2vec recipes.

docs/algorithm.md §6 gives the recipes' constants.
"""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

# The shared Encoder (held as `encoder` by every model) stacks its layers along a leading axis.
STACKED_PATTERN = '(^|/)encoder/layers/'


def learning_rate_schedule(kind, *, peak_lr, total_steps, warmup_steps=0, min_lr=0.0,
                           phase_ratio=None, init_lr_scale=0.01, final_lr_scale=0.01):
  """An optax schedule: step (the number of updates taken, may be traced) -> learning rate.

  'tri_stage' (fairseq `tri_stage_lr_scheduler`, audio): the warm-up, hold and decay lengths are
    int(total_steps * phase_ratio[i]); linear from init_lr_scale * peak_lr to peak_lr, hold, then
    exponential decay to final_lr_scale * peak_lr, which is kept afterwards.
  'cosine' (data2vec_vision / BEiT `cosine_scheduler`): warm-up np.linspace(0, peak_lr,
    warmup_steps), then min_lr + (peak_lr - min_lr) (1 + cos(pi i / (total_steps - warmup_steps)))
    / 2 for the i-th step after it; min_lr after total_steps.
  'constant': peak_lr, after the same linear warm-up as 'cosine'.
  'linear' (fairseq `polynomial_decay` with power 1 and end lr 0, the RoBERTa fine-tuning
    recipe): the same warm-up, then linear from peak_lr to 0 at total_steps.
  """
  if peak_lr <= 0 or total_steps <= 0:
    raise ValueError(f'peak_lr={peak_lr} and total_steps={total_steps} must be > 0')
  if kind == 'tri_stage':
    if phase_ratio is None or len(phase_ratio) != 3 or not math.isclose(sum(phase_ratio), 1.0):
      raise ValueError(f'tri_stage needs phase_ratio (warm-up, hold, decay) summing to 1, got '
                       f'{phase_ratio}')
    if warmup_steps:
      raise ValueError('tri_stage takes its warm-up from phase_ratio; set warmup_steps=0')
    return _tri_stage(peak_lr, *(int(total_steps * r) for r in phase_ratio),
                      init_lr_scale, final_lr_scale)
  if phase_ratio is not None:
    raise ValueError(f'phase_ratio is only used by tri_stage, not {kind!r}')
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(f'warmup_steps={warmup_steps} must be in [0, total_steps={total_steps}]')
  if kind == 'cosine':
    return _warmup(peak_lr, warmup_steps,
                   optax.cosine_decay_schedule(peak_lr, max(total_steps - warmup_steps, 1),
                                               alpha=min_lr / peak_lr))
  if kind == 'constant':
    return _warmup(peak_lr, warmup_steps, optax.constant_schedule(peak_lr))
  if kind == 'linear':
    return _warmup(peak_lr, warmup_steps,
                   optax.linear_schedule(peak_lr, 0.0, max(total_steps - warmup_steps, 1)))
  raise ValueError(f"lr schedule kind={kind!r} is not one of 'tri_stage', 'cosine', 'constant', "
                   "'linear'")


def _warmup(peak_lr, warmup_steps, after):
  """np.linspace(0, peak_lr, warmup_steps)[step] during warm-up, then `after` from 0."""
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak_lr * step / max(warmup_steps - 1, 1)
    return jnp.where(step < warmup_steps, warm, after(step - warmup_steps))
  return schedule


def _tri_stage(peak_lr, warmup, hold, decay, init_lr_scale, final_lr_scale):
  init_lr = init_lr_scale * peak_lr
  decay_factor = -math.log(final_lr_scale) / decay if decay else 0.0

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = init_lr + (peak_lr - init_lr) / max(warmup, 1) * step
    decayed = peak_lr * jnp.exp(-decay_factor * (step - warmup - hold))
    return jnp.where(step < warmup, warm,
                     jnp.where(step < warmup + hold, peak_lr,
                               jnp.where(step <= warmup + hold + decay, decayed,
                                         final_lr_scale * peak_lr)))
  return schedule


def weight_decay_mask(params, *, exclude_1d, exclude_patterns=()):
  """A bool pytree like params: True where weight decay applies.

  exclude_1d: no decay on leaves that are 1-D per layer (biases, LayerNorm scales, layer-scale
  vectors); the leading layer axis of leaves matching `STACKED_PATTERN` does not count.
  exclude_patterns: regexes searched in the '/'-joined path; each must match some leaf.
  Recipes: text and audio decay everything (fairseq adam); vision (DV optim_factory) excludes 1-D
  params, `cls_token` and `pos_embed` (ours: `position_embeddings`, when the model has them); DV
  still decays its 3-D mask token and the relative position bias tables.
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = [jax.tree_util.keystr(p, simple=True, separator='/') for p, _ in leaves]
  for pattern in exclude_patterns:
    if not any(re.search(pattern, path) for path in paths):
      raise ValueError(f'no-weight-decay pattern {pattern!r} matches no parameter path')

  def decays(path, leaf):
    per_layer_ndim = jnp.ndim(leaf) - bool(re.search(STACKED_PATTERN, path))
    if exclude_1d and per_layer_ndim <= 1:
      return False
    return not any(re.search(pattern, path) for pattern in exclude_patterns)

  return jax.tree_util.tree_unflatten(
      treedef, [decays(path, leaf) for path, (_, leaf) in zip(paths, leaves)])


def layer_decay_scales(params, *, num_layers, decay, embeddings_pattern='(^|/)embeddings/'):
  """BEiT's layer-wise lr decay (`get_num_layer_for_vit`): a pytree like params of lr scales
  decay ** (num_layers + 1 - i), where i = 0 for paths matching `embeddings_pattern` (patch
  embedding, cls and mask tokens, positions), 1..num_layers for the blocks, and num_layers + 1
  (scale 1) for everything else (head, final norms, a shared relative position bias). The blocks
  are stacked along axis 0 (`STACKED_PATTERN`), so their scale is a vector shaped to broadcast.
  """
  if not 0 < decay <= 1:
    raise ValueError(f'layer decay {decay} must be in (0, 1]')
  per_block = decay ** (num_layers - np.arange(num_layers, dtype=np.float32))  # i = 1..L

  def scale(path, leaf):
    path = jax.tree_util.keystr(path, simple=True, separator='/')
    if re.search(STACKED_PATTERN, path):
      if np.shape(leaf)[0] != num_layers:
        raise ValueError(f'{path} has {np.shape(leaf)[0]} stacked layers, not {num_layers}')
      return per_block.reshape((-1,) + (1,) * (np.ndim(leaf) - 1))
    return np.float32(decay ** (num_layers + 1) if re.search(embeddings_pattern, path) else 1.0)

  return jax.tree_util.tree_map_with_path(scale, params)


def make_optimizer(learning_rate, *, b1, b2, eps, weight_decay, clip_norm=0.0,
                   exclude_1d=False, exclude_patterns=()):
  """AdamW with decoupled decay (lr * weight_decay * param, as torch AdamW and fairseq adam).

  learning_rate: a float or a schedule. clip_norm > 0 first clips the gradients to that global
  norm (0: off). The decay mask is `weight_decay_mask(params, exclude_1d, exclude_patterns)`.
  """
  mask = lambda params: weight_decay_mask(params, exclude_1d=exclude_1d,
                                          exclude_patterns=exclude_patterns)
  adamw = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)
  if clip_norm < 0:
    raise ValueError(f'clip_norm={clip_norm} must be >= 0 (0 turns clipping off)')
  return optax.chain(optax.clip_by_global_norm(clip_norm), adamw) if clip_norm else adamw


def from_config(config):
  """(optax transformation, learning-rate schedule) of a run's `config.optimizer`."""
  o = config.optimizer
  schedule = learning_rate_schedule(
      o.schedule, peak_lr=o.peak_lr, total_steps=config.total_steps, warmup_steps=o.warmup_steps,
      min_lr=o.min_lr, phase_ratio=o.phase_ratio, init_lr_scale=o.init_lr_scale,
      final_lr_scale=o.final_lr_scale)
  tx = make_optimizer(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                      clip_norm=o.clip_norm, exclude_1d=not o.decay_1d_params,
                      exclude_patterns=tuple(o.no_decay_patterns))
  return tx, schedule
