"""The data2vec v1 train step: EMA teacher on the full input, student on the masked input.

The state is a plain pytree {step, params: {encoder, head}, teacher, opt_state, rng}; the step is
one function for `jax.jit` that merges the NNX graph definitions inside (ARCHITECTURE.md).
`Task` is what train.py's loop runs (finetuning.Task is the fine-tuning one); `load_encoder` reads
the encoder that `config.init_from` names, for both.
"""
import dataclasses
import functools
import importlib
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx, traverse_util

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
    try:
      config = json.load(f)
    except ValueError as e:  # e.g. a file cut short
      raise ValueError(f'{path}: not a JSON file ({e})') from None
  if not isinstance(config, dict) or 'modality' not in config:
    raise ValueError(f'{path}: not the config.json of a training workdir (no modality)')
  return ml_collections.ConfigDict(config)


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


def keep_if_nonfinite(metrics, old, new):
  """(`old` where the step's loss, gradient or new parameter norm is not finite, else `new`;
  1.0 if so, else 0.0). Such a step keeps the previous state (the batch is still consumed) and is
  counted in `skipped` (config.skip_nonfinite)."""
  skip = ~(jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm']) &
           jnp.isfinite(metrics['param_norm']))
  return jax.tree.map(lambda o, n: jnp.where(skip, o, n), old, new), skip.astype(jnp.float32)


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
      (params, teacher, opt_state), metrics['skipped'] = keep_if_nonfinite(
          metrics, (state['params'], state['teacher'], state['opt_state']),
          (params, teacher, opt_state))
    new_state = dict(step=step + 1, params=params, teacher=teacher, opt_state=opt_state,
                     rng=state['rng'])
    return new_state, metrics

  return train_step


# ---------------------------------------------------------------- the encoder of config.init_from

# Model config fields that do not change the weights: they may differ from the source.
RUNTIME_FIELDS = ('dtype', 'scan_layers', 'remat_policy', 'attention_impl', 'hidden_dropout',
                  'attention_dropout', 'activation_dropout', 'feat_proj_dropout',
                  'drop_path_rate', 'layerdrop')
# Fields that only task heads read (and weights that only exist for them: poolers, the mask
# token, SpecAugment's embedding, which `merge_encoder` keeps or drops): they may differ too.
HEAD_FIELDS = {
    'text': ('add_pooling_layer', 'bos_token_id', 'eos_token_id', 'id2label', 'problem_type',
             'classifier_dropout', 'tie_word_embeddings'),
    'audio': ('vocab_size', 'final_dropout', 'ctc_loss_reduction', 'ctc_zero_infinity',
              'use_weighted_layer_sum', 'classifier_proj_size', 'tdnn_dim', 'tdnn_kernel',
              'tdnn_dilation', 'xvector_output_dim', 'pad_token_id', 'bos_token_id',
              'eos_token_id', 'id2label', 'problem_type', 'mask_time_prob', 'mask_time_length',
              'mask_time_min_masks', 'mask_feature_prob', 'mask_feature_length',
              'mask_feature_min_masks'),
    'vision': ('add_pooling_layer', 'use_mask_token', 'out_indices', 'pool_scales',
               'use_auxiliary_head', 'auxiliary_loss_weight', 'auxiliary_channels',
               'auxiliary_num_convs', 'auxiliary_concat_input', 'semantic_loss_ignore_index',
               'id2label', 'problem_type'),
}


def is_transformers_folder(path):
  return any(os.path.isfile(os.path.join(path, f))
             for f in ('model.safetensors', 'pytorch_model.bin'))


def load_encoder(source, modality, model_cfg):
  """The encoder parameters (a pure dict) of `source`: a transformers folder (a base model, or a
  task head's encoder) or a training workdir (the latest student encoder of a
  pretraining run, the head's encoder of a fine-tuning run).

  Raises ValueError naming the fields where the source's config differs from `model_cfg` (the
  encoder it goes into) in what shapes the weights or the outputs.
  """
  if is_transformers_folder(source):
    from data2vec import hf  # pylint: disable=g-import-not-at-top
    model = hf.load_pretrained(source)
    base = MODELS[modality][1]
    if model.model_type != base.model_type:
      raise ValueError(f'config.init_from={source} holds a {model.model_type} model, not '
                       f'{base.model_type}')
    if not isinstance(model, base):  # a task head: its encoder
      model = getattr(model, importlib.import_module(f'data2vec.hf.{modality}').PREFIX)
  else:
    source_config = load_workdir_config(source)
    if source_config.get('modality') != modality:
      raise ValueError(f'config.init_from={source} is a {source_config.get("modality")} '
                       f'workdir, not {modality}')
    if source_config.get('task') == 'finetune':
      from data2vec import finetuning  # pylint: disable=g-import-not-at-top
      model, step = finetuning.restore_model(source)
      model = getattr(model, finetuning.PREFIX[modality])
    else:
      model, step = restore_encoder(source)
    logging.info('%s: the encoder of step %d', source, step)
  ignored = RUNTIME_FIELDS + HEAD_FIELDS[modality]
  diff = {f.name: (getattr(model.config, f.name), getattr(model_cfg, f.name))
          for f in dataclasses.fields(model_cfg)
          if f.name not in ignored and getattr(model.config, f.name) != getattr(model_cfg, f.name)}
  if diff:
    raise ValueError(f'config.init_from={source} does not match config.model (field: (source, '
                     f'config)): {diff}')
  return nnx.to_pure_dict(nnx.state(model))


def merge_encoder(target, source, where):
  """`target` (a pure dict of parameters, abstract or concrete) with every leaf that `source`
  also has replaced by the source's; logs the leaves only one side has (a pooler, a mask token)."""
  target, source = traverse_util.flatten_dict(target), traverse_util.flatten_dict(source)
  name = lambda key: '/'.join(map(str, key))
  bad = {name(k): (np.shape(v), np.shape(source[k])) for k, v in target.items()
         if k in source and np.shape(v) != np.shape(source[k])}
  if bad:
    raise ValueError(f'{where}: parameter shapes differ (ours, source): {bad}')
  for what, keys in (('kept their initialisation', set(target) - set(source)),
                     ('not used', set(source) - set(target))):
    if keys:
      logging.info('%s: %s: %s', where, what, sorted(map(name, keys)))
  return traverse_util.unflatten_dict({k: source.get(k, v) for k, v in target.items()})


# ---------------------------------------------------------------- train.py's job


def make_input(config, local_batch_size):
  """The pretraining batch iterator of this process (checkpointable: get_state/set_state)."""
  if config.modality == 'vision':
    from data2vec.input_pipeline import vision as vision_input  # pylint: disable=g-import-not-at-top
    m = config.model
    ds = vision_input.make_pretrain_dataset(
        data_dir=config.data_dir, split='train', image_size=m.image_size,
        patch_size=m.patch_size, num_channels=m.num_channels, batch_size=local_batch_size,
        seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count(),
        **config.masking, **config.input)
    return iter(ds)
  if config.modality == 'text':
    from data2vec.input_pipeline import text as text_input  # pylint: disable=g-import-not-at-top
    m = config.model
    ds = text_input.make_pretrain_dataset(
        data_dir=config.data_dir, split='train', vocab_size=m.vocab_size,
        pad_token_id=m.pad_token_id, max_position_embeddings=m.max_position_embeddings,
        batch_size=local_batch_size, seed=config.seed, process_index=jax.process_index(),
        process_count=jax.process_count(), **config.masking, **config.input)
    return iter(ds)
  if config.modality == 'audio':
    from data2vec.input_pipeline import audio as audio_input  # pylint: disable=g-import-not-at-top
    # Masks live on the encoder's frames: the conv output lengths of the clips' samples.
    num_frames = functools.partial(audio.feature_lengths, model_config(config), add_adapter=False)
    ds = audio_input.make_pretrain_dataset(
        data_dir=config.data_dir, split='train', batch_size=local_batch_size, seed=config.seed,
        num_frames=num_frames, process_index=jax.process_index(),
        process_count=jax.process_count(), **config.masking, **config.input)
    return iter(ds)
  raise NotImplementedError(f'no {config.modality} input pipeline')


class Task:
  """What train.py runs to pretrain, besides `make_input`: the state and the graph definitions of
  its shardings, the import of `config.init_from`, the step, the ridge probe and the collapse
  check. (finetuning.Task has the same members.)"""

  def __init__(self, config):
    self.config = config
    self.tx, self.lr_schedule = make_optimizer(config)
    self.graph_defs = dict(zip(('encoder', 'head'), graph_defs(config)))
    self.init_state = init_state_fn(config, self.tx)

  def init_from(self, state, state_sharding):
    """Puts the encoder of `config.init_from` into student and teacher."""
    source = load_encoder(self.config.init_from, self.config.modality, model_config(self.config))
    encoder = merge_encoder(state['params']['encoder'], source, self.config.init_from)
    encoder = jax.device_put(encoder, state_sharding['params']['encoder'])
    params = dict(state['params'], encoder=encoder)
    opt_state = jax.jit(self.tx.init, out_shardings=state_sharding['opt_state'])(params)
    return dict(state, params=params, teacher=encoder, opt_state=opt_state)

  def train_step(self, abstract_state):
    copy_mask = ema.copy_mask_for(abstract_state['teacher'], self.config.modality)
    return make_train_step(self.config, self.graph_defs['encoder'], self.graph_defs['head'],
                           self.tx, self.lr_schedule, copy_mask)

  def evaluator(self, mesh):
    """The ridge probe of the student encoder (state -> metrics), or None when off."""
    if not self.config.probe_every_steps:
      return None
    from data2vec.evaluators import ridge  # pylint: disable=g-import-not-at-top
    probe = ridge.RidgeProbe(self.config, self.graph_defs['encoder'], mesh)
    return lambda state: probe(state['params']['encoder'])

  def evaluate_at(self, step):
    return step % self.config.probe_every_steps == 0

  def check(self, step, metrics):
    """Raises on a collapse of targets or predictions (a logged step's host metrics)."""
    c = self.config
    objective.check_collapse(step, metrics['target_var'], metrics['pred_var'],
                             min_target_var=c.min_target_var, min_pred_var=c.min_pred_var,
                             after_step=c.collapse_after_step)
