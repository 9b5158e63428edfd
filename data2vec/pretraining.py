"""The data2vec v1 train step: EMA teacher on the full input, student on the masked input.

The state is a plain pytree {step, params: {encoder, head}, teacher, opt_state, rng}; the step is
one function for `jax.jit` that merges the NNX graph definitions inside (ARCHITECTURE.md).
"""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from data2vec import ema, objective, optimizer
from data2vec.models import audio, text, vision

MODELS = {
    'text': (text.TextConfig, text.Data2VecTextModel),
    'audio': (audio.AudioConfig, audio.Data2VecAudioModel),
    'vision': (vision.VisionConfig, vision.Data2VecVisionModel),
}


def load_workdir_config(workdir):
  """The config a workdir was trained with (its config.json)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: is {workdir} a training workdir?')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def model_config(config):
  model_cls, _ = MODELS[config.modality]
  return model_cls.from_dict(config.model.to_dict())


def build_models(config, rngs):
  """The student encoder and the regression head of `config` (random init)."""
  cfg = model_config(config)
  encoder = MODELS[config.modality][1](cfg, rngs=rngs)
  obj = config.objective
  head = objective.RegressionHead(cfg.hidden_size, layers=obj.head_layers,
                                  pre_norm=obj.head_pre_norm, rngs=rngs)
  return encoder, head


def make_optimizer(config):
  """(optax transformation, learning-rate schedule) of `config.optimizer`."""
  o = config.optimizer
  schedule = optimizer.learning_rate_schedule(
      o.schedule, peak_lr=o.peak_lr, total_steps=config.total_steps, warmup_steps=o.warmup_steps,
      min_lr=o.min_lr, phase_ratio=o.phase_ratio, init_lr_scale=o.init_lr_scale,
      final_lr_scale=o.final_lr_scale)
  tx = optimizer.make_optimizer(schedule, b1=o.b1, b2=o.b2, eps=o.eps,
                                weight_decay=o.weight_decay, clip_norm=o.clip_norm,
                                exclude_1d=not o.decay_1d_params,
                                exclude_patterns=tuple(o.no_decay_patterns))
  return tx, schedule


def graph_defs(config):
  """The NNX graph definitions of the encoder and the head (no parameters allocated)."""
  encoder, head = nnx.eval_shape(lambda: build_models(config, nnx.Rngs(0)))
  return nnx.graphdef(encoder), nnx.graphdef(head)


def init_state_fn(config, tx):
  """A function () -> the initial train state, to run under `jax.jit(out_shardings=...)`."""

  def init_state():
    encoder, head = build_models(config, nnx.Rngs(config.seed))
    params = {'encoder': nnx.to_pure_dict(nnx.state(encoder)),
              'head': nnx.to_pure_dict(nnx.state(head))}
    # The teacher starts as an exact copy of the student's encoder.
    return dict(step=jnp.zeros((), jnp.int32), params=params, teacher=params['encoder'],
                opt_state=tx.init(params), rng=jax.random.PRNGKey(config.seed))

  return init_state


def restore_encoder(workdir, step=None):
  """The student encoder of a workdir's checkpoint (default: the latest) as an nnx model."""
  from data2vec import checkpoint  # pylint: disable=g-import-not-at-top
  config = load_workdir_config(workdir)
  ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints, read_only=True)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f'{ckpt.directory} holds no checkpoint')
  tx, _ = make_optimizer(config)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          jax.eval_shape(init_state_fn(config, tx)))
  state, _ = ckpt.restore(abstract, step)
  ckpt.close()
  encoder_def, _ = graph_defs(config)
  return nnx.merge(encoder_def, state['params']['encoder']), int(state['step'])


# Per modality: run teacher and student, return the student's final output at every position,
# the mask of positions with a loss, the teacher's per-layer outputs and the padding mask.

def _vision(student, teacher, batch, rng, target_layer):
  t = teacher(batch['pixel_values'])
  s = student(batch['pixel_values'], bool_masked_pos=batch['bool_masked_pos'], rng=rng)
  # Drop the cls token from both: the loss is on masked patches.
  return (s['last_hidden_state'][:, 1:], batch['bool_masked_pos'],
          objective.layer_outputs(t, target_layer)[:, :, 1:], None)


def _text(student, teacher, batch, rng, target_layer):
  # The teacher sees the uncorrupted sequence (decision 1, not fairseq's padded copy).
  t = teacher(batch['input_ids'], attention_mask=batch['attention_mask'])
  s = student(batch['masked_input_ids'], attention_mask=batch['attention_mask'], rng=rng)
  return s['last_hidden_state'], batch['target_mask'], objective.layer_outputs(t, target_layer), None


def _audio(student, teacher, batch, rng, target_layer):
  # The CNN and projection are shared: the teacher encodes the student's unmasked features.
  embed_rng = encode_rng = None
  if rng is not None:
    embed_rng, encode_rng = jax.random.split(rng)
  features, padding = student.embed(batch['input_values'], batch.get('attention_mask'),
                                    rng=embed_rng)
  s = student.encode(features, padding, batch['mask_time_indices'], rng=encode_rng)
  t = teacher.encode(jax.lax.stop_gradient(features), padding)
  mask = batch['mask_time_indices'] if padding is None else batch['mask_time_indices'] & padding
  return s['last_hidden_state'], mask, objective.layer_outputs(t, target_layer), padding


FORWARD = {'vision': _vision, 'text': _text, 'audio': _audio}


def make_train_step(config, encoder_def, head_def, tx, lr_schedule, copy_mask):
  """Returns train_step(state, batch) -> (state, metrics) for `jax.jit`."""
  obj, forward = config.objective, FORWARD[config.modality]

  def loss_fn(params, teacher_params, batch, rng):
    student = nnx.merge(encoder_def, params['encoder'])
    teacher = nnx.merge(encoder_def, teacher_params)
    head = nnx.merge(head_def, params['head'])
    x, mask, layers, padding = forward(student, teacher, batch, rng, obj.target_layer)
    targets = objective.make_targets(
        jax.lax.stop_gradient(layers), top_k=obj.top_k,
        layer_norm_targets=obj.layer_norm_targets,
        instance_norm_targets=obj.instance_norm_targets, post_layer_norm=obj.post_layer_norm,
        padding_mask=None if padding is None else ~padding)  # objective: True = padded
    pred = head(x).astype(jnp.float32)
    scale = obj.loss_scale if obj.loss_scale is not None else 1 / jnp.sqrt(pred.shape[-1])
    loss_sum, count = objective.regression_loss(pred, targets, mask, beta=obj.loss_beta,
                                                reduce_dims=obj.loss_reduce, scale=scale)
    # The mean over the masked positions of the *global* batch (decision 6).
    loss = loss_sum / jnp.maximum(count, 1)
    metrics = {'target_var': objective.variance_stat(targets, mask),
               'pred_var': objective.variance_stat(pred, mask),
               'masked_fraction': count / mask.size}
    return loss, metrics

  def train_step(state, batch):
    step = state['step']
    rng = jax.random.fold_in(state['rng'], step)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state['params'], state['teacher'], batch, rng)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    # fairseq sets the decay for the new update count, then steps the EMA towards the
    # post-update student.
    tau = ema.tau_schedule(step + 1, config.ema.tau0, config.ema.tau_e, config.ema.tau_n)
    teacher = ema.ema_update(state['teacher'], params['encoder'], tau, copy_mask)
    metrics.update(loss=loss, lr=lr_schedule(step), tau=tau, grad_norm=optax.tree.norm(grads),
                   param_norm=optax.tree.norm(params))
    if config.skip_nonfinite:
      # A non-finite loss, gradient or new parameter keeps the previous student, teacher and
      # optimizer state (the batch is still consumed); `skipped` reports it.
      skip = ~(jnp.isfinite(loss) & jnp.isfinite(metrics['grad_norm']) &
               jnp.isfinite(metrics['param_norm']))
      params, teacher, opt_state = jax.tree.map(
          lambda old, new: jnp.where(skip, old, new),
          (state['params'], state['teacher'], state['opt_state']), (params, teacher, opt_state))
      metrics['skipped'] = skip.astype(jnp.float32)
    new_state = dict(step=step + 1, params=params, teacher=teacher, opt_state=opt_state,
                     rng=state['rng'])
    return new_state, metrics

  return train_step
