"""data2vec 2.0 pretraining (docs/algorithm.md §8), images so far.

The teacher (EMA of the encoder) encodes each image once, whole; its targets are shared by the
M views (`clone_batch`) that the student encodes, each with only its visible patches
(Data2VecVisionModel.encode_visible). A conv decoder (models/decoder.py) fills the masked
positions with noise and predicts the targets there; the cls output regresses the targets' mean.
The state is {step, params: {encoder, decoder}, teacher, opt_state, rng}; `Task` has the members
of pretraining.Task.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from data2vec import ema, objective, optimizer, pretraining, update
from data2vec.models import registry
from data2vec.models.decoder import ConvDecoder, decoder_input


def build_models(config, rngs):
  """The student encoder and the decoder of `config` (random init)."""
  if config.modality != 'vision':
    raise NotImplementedError(f'data2vec 2.0 is built for vision so far, not {config.modality}')
  cfg = registry.model_config(config)
  encoder = registry.MODELS[config.modality][1](cfg, rngs=rngs)
  d = config.decoder
  decoder = ConvDecoder(cfg, dim=d.dim, num_layers=d.num_layers, kernel_size=d.kernel_size,
                        groups=d.groups, residual=d.residual, grid=cfg.window_size,
                        projection_hidden=d.projection_hidden or None, rngs=rngs)
  return encoder, decoder


def visible_ids(masks, num_visible):
  """masks [B, M, N] bool (True = masked, `num_visible` False per row) -> the visible patch ids
  [B, M, num_visible] int32, in increasing order."""
  return jnp.argsort(masks, axis=-1, stable=True)[..., :num_visible].astype(jnp.int32)


def num_visible(config):
  """The visible patches of every view: int(N * (1 - mask_prob)), as the masks are equalised."""
  return int(registry.model_config(config).num_patches * (1 - config.masking.mask_prob))


def make_train_step(config, encoder_def, decoder_def, tx, lr_schedule, copy_mask):
  """Returns train_step(state, batch) -> (state, metrics) for `jax.jit`.

  batch: pixel_values [B, C, H, W], bool_masked_pos [B, M, N] (True = masked).
  """
  obj, keep = config.objective, num_visible(config)

  def loss_fn(params, teacher_params, batch, rng):
    student = nnx.merge(encoder_def, params['encoder'])
    teacher = nnx.merge(encoder_def, teacher_params)
    decoder = nnx.merge(decoder_def, params['decoder'])
    pixels, masks = batch['pixel_values'], batch['bool_masked_pos']
    b, m, n = masks.shape
    # Targets once per image, from the teacher on the whole image (no dropout), cls dropped.
    layers = objective.layer_outputs(teacher(pixels), obj.target_layer)[:, :, 1:]
    targets = objective.make_targets(
        jax.lax.stop_gradient(layers), top_k=obj.top_k,
        layer_norm_targets=obj.layer_norm_targets,
        instance_norm_targets=obj.instance_norm_targets, post_layer_norm=obj.post_layer_norm)
    encode_rng, noise_rng = jax.random.split(rng)
    ids = visible_ids(masks, keep)
    x = student.encode_visible(pixels, ids, rng=encode_rng)['last_hidden_state']  # [B*M, 1+K, D]
    pred = decoder(decoder_input(x[:, 1:], ids.reshape(b * m, keep), n, config.decoder.noise_std,
                                 noise_rng)).astype(jnp.float32)
    shared = jnp.repeat(targets, m, axis=0)  # [B*M, N, D]: the views share their image's targets
    mask = masks.reshape(b * m, n)
    loss_sum, count = objective.regression_loss(pred, shared, mask, beta=obj.loss_beta,
                                                reduce_dims=obj.loss_reduce,
                                                scale=obj.loss_scale)
    # fairseq adds cls_loss x sample_size x the cls regression summed over views before dividing
    # by sample_size: the cls term is a sum over the global batch's views, not a mean.
    cls_sum, _ = objective.regression_loss(
        x[:, 0].astype(jnp.float32), jnp.repeat(targets.mean(1), m, axis=0), None, beta=0.0,
        reduce_dims='sum', scale=obj.loss_scale)
    loss = loss_sum / jnp.maximum(count, 1) + obj.cls_loss * cls_sum
    metrics = {'target_var': objective.variance_stat(shared, mask),
               'pred_var': objective.variance_stat(pred, mask),
               'masked_fraction': count / mask.size, 'cls_loss': cls_sum}
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
    copy_mask = ema.copy_mask_for(abstract_state['teacher'], self.config.modality)
    return make_train_step(self.config, self.graph_defs['encoder'], self.graph_defs['decoder'],
                           self.tx, self.lr_schedule, copy_mask)
