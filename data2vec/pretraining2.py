"""data2vec 2.0 pretraining (docs/algorithm.md §8) for images, speech and text.

The teacher (EMA) encodes each sample once, whole; its targets are shared by the M views
(`clone_batch`) that the student encodes, each with only its visible positions (the encoders'
`encode_visible`). A conv decoder (models/decoder.py) fills the masked positions with noise and
predicts the targets there; images add a cls loss. Per modality a forward gives the shared loss
its `Views`. The state is {step, params: {encoder, decoder}, teacher, opt_state, rng}; `Task` has
the members of pretraining.Task.
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from data2vec import ema, masking, objective, optimizer, pretraining, update
from data2vec.models import registry
from data2vec.models.decoder import ConvDecoder, decoder_input
from data2vec.models.layers import dropout

# The batch key of each modality's view masks [B, M, N] (True = masked).
MASK_KEYS = {'vision': 'bool_masked_pos', 'audio': 'mask_time_indices', 'text': 'target_mask'}


def build_models(config, rngs):
  """The student encoder and the decoder of `config` (random init)."""
  cfg = registry.model_config(config)
  encoder = registry.MODELS[config.modality][1](cfg, rngs=rngs)
  d = config.decoder
  decoder = ConvDecoder(cfg, dim=d.dim, num_layers=d.num_layers, kernel_size=d.kernel_size,
                        groups=d.groups, residual=d.residual,
                        grid=cfg.window_size if config.modality == 'vision' else None,
                        projection_hidden=d.projection_hidden or None, rngs=rngs)
  return encoder, decoder


def visible_ids(masks, num_visible):
  """masks [B, M, N] bool (True = masked, `num_visible` False per row) -> the visible positions
  [B, M, num_visible] int32, in increasing order."""
  return jnp.argsort(masks, axis=-1, stable=True)[..., :num_visible].astype(jnp.int32)


def num_visible(config, length):
  """The positions every view keeps of `length` (the pipelines' masks keep exactly as many)."""
  m = config.masking
  return masking.num_visible(length, m.masked_fraction if config.modality == 'audio'
                             else m.mask_prob)


class Views(NamedTuple):
  """A modality forward's output: B samples of N positions, M views of K visible positions each."""
  visible: jax.Array  # [B * M, K, D] the student's outputs at the visible positions
  layers: jax.Array  # [L, B, N, D] the teacher's per-layer outputs on the whole input
  valid: Any  # [B, N] bool, True = valid, or None (no padding)
  cls: Any  # [B * M, D] the student's cls output (images), or None


def _vision(student, teacher, batch, ids, target_layer, rng):
  pixels = batch['pixel_values']
  layers = objective.layer_outputs(teacher(pixels), target_layer)[:, :, 1:]  # cls dropped
  x = student.encode_visible(pixels, ids, rng=rng)['last_hidden_state']  # [B * M, 1 + K, D]
  return Views(x[:, 1:], layers, None, x[:, 0])


def _audio(student, teacher, batch, ids, target_layer, rng):
  embed_rng, encode_rng = jax.random.split(rng)
  features, _ = student.embed(batch['input_values'], rng=embed_rng)  # [B, T, D]
  # The teacher encodes the student's CNN features whole; its positional conv, LayerNorm and
  # blocks are averaged (docs/algorithm.md §8.2).
  layers = objective.layer_outputs(teacher.encode(jax.lax.stop_gradient(features)), target_layer)
  x = student.encode_visible(features, batch['mask_time_indices'], ids, rng=encode_rng)
  return Views(x['last_hidden_state'], layers, None, None)


def _text(student, teacher, batch, ids, target_layer, rng):
  embed_rng, encode_rng = jax.random.split(rng)
  valid = jnp.asarray(batch['attention_mask']).astype(bool)
  embedded = student.embeddings(batch['input_ids'], rng=embed_rng)  # [B, T, D]
  # Only the blocks are averaged: the teacher encodes the student's embedding output, its dropout
  # included (docs/algorithm.md §8.2).
  layers = objective.layer_outputs(teacher.encoder(jax.lax.stop_gradient(embedded), mask=valid),
                                   target_layer)
  x = student.encode_visible(embedded, valid, ids, rng=encode_rng)
  return Views(x['last_hidden_state'], layers, valid, None)


FORWARD = {'vision': _vision, 'audio': _audio, 'text': _text}


def make_train_step(config, encoder_def, decoder_def, tx, lr_schedule, copy_mask):
  """Returns train_step(state, batch) -> (state, metrics) for `jax.jit`.

  batch: the modality's inputs and its view masks [B, M, N] under MASK_KEYS (True = masked).
  """
  obj, dec, forward = config.objective, config.decoder, FORWARD[config.modality]

  def loss_fn(params, teacher_params, batch, rng):
    student = nnx.merge(encoder_def, params['encoder'])
    teacher = nnx.merge(encoder_def, teacher_params)
    decoder = nnx.merge(decoder_def, params['decoder'])
    masks = jnp.asarray(batch[MASK_KEYS[config.modality]])
    b, m, n = masks.shape
    encode_rng, noise_rng = jax.random.split(rng)
    ids = visible_ids(masks, num_visible(config, n))  # [B, M, K]
    views = forward(student, teacher, batch, ids, obj.target_layer, encode_rng)
    # Targets once per sample, from the teacher (no dropout of its own) on the whole input.
    targets = objective.make_targets(
        jax.lax.stop_gradient(views.layers), top_k=obj.top_k,
        layer_norm_targets=obj.layer_norm_targets,
        instance_norm_targets=obj.instance_norm_targets, post_layer_norm=obj.post_layer_norm,
        valid_mask=views.valid)
    x = views.visible
    if dec.input_dropout:
      x = dropout(x, dec.input_dropout, jax.random.fold_in(noise_rng, 1))
    pred = decoder(decoder_input(x, ids.reshape(b * m, -1), n, dec.noise_std, noise_rng))
    pred = pred.astype(jnp.float32)
    shared = jnp.repeat(targets, m, axis=0)  # [B*M, N, D]: the views share their sample's targets
    mask = masks.reshape(b * m, n)
    if views.valid is not None:
      mask &= jnp.repeat(views.valid, m, axis=0)
    loss_sum, count = objective.regression_loss(pred, shared, mask, beta=obj.loss_beta,
                                                reduce_dims=obj.loss_reduce,
                                                scale=obj.loss_scale)
    loss = loss_sum / jnp.maximum(count, 1)
    metrics = {'target_var': objective.variance_stat(shared, mask),
               'pred_var': objective.variance_stat(pred, mask),
               'masked_fraction': count / mask.size}
    if views.cls is not None:
      # fairseq adds cls_loss x sample_size x the cls regression summed over views before
      # dividing by sample_size: the cls term is a sum over the global batch's views, not a mean.
      cls_sum, _ = objective.regression_loss(
          views.cls.astype(jnp.float32), jnp.repeat(targets.mean(1), m, axis=0), None,
          beta=0.0, reduce_dims='sum', scale=obj.loss_scale)
      loss += obj.cls_loss * cls_sum
      metrics['cls_loss'] = cls_sum
    return loss, metrics

  return update.make_step(loss_fn, tx=tx, lr_schedule=lr_schedule,
                          skip_nonfinite=config.skip_nonfinite,
                          teacher_update=ema.teacher_update_fn(config.ema, copy_mask))


class Task(pretraining.Task):
  """What train.py runs for data2vec 2.0: v1's Task with the decoder in place of the regression
  head and the v2 step (the encoder's place, the probe and the collapse check are v1's)."""

  def __init__(self, config):  # pylint: disable=super-init-not-called
    self.config = config
    self.tx, self.lr_schedule = optimizer.from_config(config)
    self.graph_defs = dict(zip(('encoder', 'decoder'),
                               pretraining.graph_defs(config, build_models)))
    self.init_state = pretraining.init_state_fn(config, self.tx, build_models, 'decoder')

  def train_step(self, abstract_state):
    """train_step(state, batch) -> (state, metrics), for `jax.jit`."""
    copy_mask = ema.copy_mask_for(abstract_state['teacher'], self.config.modality,
                                  ema.V2_COPY_PATTERNS[self.config.modality])
    return make_train_step(self.config, self.graph_defs['encoder'], self.graph_defs['decoder'],
                           self.tx, self.lr_schedule, copy_mask)
