"""The EMA teacher: the tau schedule, the update rule and which parameters are copied instead.

The teacher is a float32 pytree with the same structure as the student's backbone parameters
(a pure dict, `nnx.to_pure_dict`). Pretraining-only heads (the regression head) have no teacher
copy: pass the backbone subtree only. docs/algorithm.md §1.2-§1.3.
"""
import re

import jax
import jax.numpy as jnp

# Regexes searched in each '/'-joined parameter path; matching leaves are copied from the
# student every step (shared between teacher and student), the rest are averaged.
COPY_PATTERNS = {
    # fairseq data2vec_audio: the CNN front end, its projection and the mask embedding are not in
    # the teacher (it uses the student's features), the positional conv is copied (`skip_keys`);
    # the layers and the encoder LayerNorm are averaged.
    'audio': ('feature_extractor', 'feature_projection', 'masked_spec_embed', 'pos_conv_embed'),
    # fairseq data2vec_text: word/position/token-type embeddings and their LayerNorm are copied.
    'text': ('^embeddings/',),
    # data2vec_vision: timm ModelEmaV2 averages the whole model.
    'vision': (),
}
# data2vec 2.0 (docs/algorithm.md §8.2): images average the whole encoder; speech the positional
# conv, LayerNorm and blocks (the teacher takes the student's CNN features); text the blocks only
# (the teacher takes the student's embedding output, so copying the embeddings changes nothing).
V2_COPY_PATTERNS = {
    'audio': ('feature_extractor', 'feature_projection'),
    'text': ('^embeddings/',),
    'vision': (),
}


def tau_schedule(step, tau0, tau_e, tau_n):
  """Linear from tau0 at step 0 to tau_e at step tau_n, then tau_e (fairseq `get_annealed_rate`).

  step: the number of updates taken, including the one the EMA step follows (fairseq calls
  `set_num_updates(n + 1)` after the optimizer step); may be traced. tau_n == 0 or tau0 == tau_e
  gives the constant tau_e.
  """
  if tau_n == 0 or tau0 == tau_e:
    return jnp.asarray(tau_e, jnp.float32)
  remaining = 1.0 - jnp.minimum(jnp.asarray(step, jnp.float32) / tau_n, 1.0)
  return jnp.asarray(tau_e - (tau_e - tau0) * remaining, jnp.float32)


def ema_update(teacher, student, tau, copy_mask):
  """teacher <- tau * teacher + (1 - tau) * student, or <- student where copy_mask, in float32.

  With tau == 1 the averaged leaves stay exactly unchanged (fairseq skips that step), while the
  copied leaves keep tracking the student, i.e. stay shared; no v1 recipe reaches tau == 1.
  """
  tau = jnp.asarray(tau, jnp.float32)

  def update(t, s, copy):
    s = s.astype(jnp.float32)
    return jnp.where(copy, s, tau * t.astype(jnp.float32) + (1.0 - tau) * s)

  return jax.tree.map(update, teacher, student, copy_mask)


def copy_mask_for(params, modality, patterns=None):
  """A bool pytree like params: True for leaves copied from the student, False for averaged ones.

  patterns: regexes searched in the '/'-joined path (e.g. 'encoder/layers/attention/query/kernel');
  default `COPY_PATTERNS[modality]`. Every pattern must match some leaf, so a renamed parameter
  fails loudly instead of silently switching from copied to averaged.
  """
  if modality not in COPY_PATTERNS:
    raise ValueError(f'modality={modality!r} is not one of {sorted(COPY_PATTERNS)}')
  patterns = COPY_PATTERNS[modality] if patterns is None else tuple(patterns)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = [jax.tree_util.keystr(p, simple=True, separator='/') for p, _ in leaves]
  for pattern in patterns:
    if not any(re.search(pattern, path) for path in paths):
      raise ValueError(f'EMA copy pattern {pattern!r} matches no {modality} parameter path')
  return jax.tree_util.tree_unflatten(
      treedef, [any(re.search(pattern, path) for pattern in patterns) for path in paths])


def teacher_update_fn(ema_config, copy_mask):
  """(num_updates, teacher, params) -> (new teacher, tau): the EMA step towards the student's
  encoder (`params['encoder']`) that update.apply_gradients takes. fairseq sets the decay for the
  new update count, then steps the EMA towards the post-update student."""

  def teacher_update(num_updates, teacher, params):
    tau = tau_schedule(num_updates, ema_config.tau0, ema_config.tau_e, ema_config.tau_n)
    return ema_update(teacher, params['encoder'], tau, copy_mask), tau

  return teacher_update
