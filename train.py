r"""data2vec pretraining.

  python train.py --config configs/vision.py:tiny --workdir /tmp/d2v_vision \
      [--config.total_steps=300 ...]

Rerunning the same command resumes from the last checkpoint in --workdir.
"""
import dataclasses
import functools
import logging as std_logging
import os

from absl import app, flags, logging
import jax
import numpy as np
from flax import nnx
from ml_collections import config_flags

from data2vec import checkpoint, config_validation, ema, metrics, objective, pretraining, sharding
from data2vec import hf
from data2vec.evaluators import ridge

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints and logs go.')


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
    from data2vec.models import audio as audio_model  # pylint: disable=g-import-not-at-top
    # Masks live on the encoder's frames: the conv output lengths of the clips' samples.
    num_frames = functools.partial(audio_model.feature_lengths, pretraining.model_config(config),
                                   add_adapter=False)
    ds = audio_input.make_pretrain_dataset(
        data_dir=config.data_dir, split='train', batch_size=local_batch_size, seed=config.seed,
        num_frames=num_frames, process_index=jax.process_index(),
        process_count=jax.process_count(), **config.masking, **config.input)
    return iter(ds)
  raise NotImplementedError(f'no {config.modality} input pipeline')


# Model config fields that do not change the weights: they may differ from an imported folder.
RUNTIME_FIELDS = ('dtype', 'scan_layers', 'remat_policy', 'attention_impl', 'hidden_dropout',
                  'attention_dropout', 'activation_dropout', 'feat_proj_dropout',
                  'drop_path_rate', 'layerdrop')


def import_encoder(config, state, tx, state_sharding):
  """Puts the encoder of the transformers folder `config.init_from` into student and teacher."""
  model_cfg = pretraining.model_config(config)
  imported = hf.load_pretrained(config.init_from)
  runtime = {f: getattr(model_cfg, f) for f in RUNTIME_FIELDS if hasattr(model_cfg, f)}
  imported_cfg = dataclasses.replace(imported.config, **runtime)
  if imported_cfg != model_cfg:
    diff = {f.name: (getattr(imported_cfg, f.name), getattr(model_cfg, f.name))
            for f in dataclasses.fields(model_cfg)
            if getattr(imported_cfg, f.name) != getattr(model_cfg, f.name)}
    raise ValueError(f'config.init_from={config.init_from} does not match config.model '
                     f'(field: (folder, config)): {diff}')
  encoder = jax.device_put(nnx.to_pure_dict(nnx.state(imported)),
                           state_sharding['params']['encoder'])
  params = dict(state['params'], encoder=encoder)
  opt_state = jax.jit(tx.init, out_shardings=state_sharding['opt_state'])(params)
  logging.info('initialised the encoder from %s', config.init_from)
  return dict(state, params=params, teacher=encoder, opt_state=opt_state)


def train_and_evaluate(config, workdir, *, import_only=False):
  """Pretrains per `config`, resuming from `workdir` if it holds a checkpoint.

  import_only: stop after writing the step-0 checkpoint of `config.init_from` (import_hf.py).
  """
  # ---------------------------------------------------------------- setup
  sharding.initialize_distributed(config.distributed)
  config_validation.validate(config)  # before anything is written, allocated or compiled
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    path = os.path.join(workdir, 'config.json')
    with open(path + '.tmp', 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(path + '.tmp', path)

  # ---------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(config.mesh)
  local_batch_size = config.batch_size // jax.process_count()
  repl = sharding.replicated(mesh)

  # ---------------------------------------------------------------- data
  data_iter = make_input(config, local_batch_size)  # before the model: bad files fail fast

  # ---------------------------------------------------------------- model and optimizer
  tx, lr_schedule = pretraining.make_optimizer(config)
  encoder_def, head_def = pretraining.graph_defs(config)
  init_state = pretraining.init_state_fn(config, tx)
  abstract_state = jax.eval_shape(init_state)
  graph_defs = {'encoder': encoder_def, 'head': head_def}
  state_sharding = sharding.state_shardings(abstract_state, graph_defs, tx, mesh,
                                            config.logical_axis_rules)
  state = jax.jit(init_state, out_shardings=state_sharding)()
  copy_mask = ema.copy_mask_for(abstract_state['teacher'], config.modality)
  n_params = sum(np.prod(x.shape) for x in jax.tree.leaves(abstract_state['params']['encoder']))
  logging.info('%s encoder: %.2fM parameters', config.modality, n_params / 1e6)

  # ---------------------------------------------------------------- restore or initialise
  ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
  skipped = 0  # updates skipped for non-finite values (config.skip_nonfinite), checkpointed
  if ckpt.latest_step() is not None:
    state, host_state = ckpt.restore(checkpoint.abstract_like(state))
    data_iter.set_state(host_state['data'])
    skipped = host_state['skipped']
    logging.info('resuming from %s, step %d', ckpt.directory, int(state['step']))
  elif config.init_from:
    state = import_encoder(config, state, tx, state_sharding)
    ckpt.save(0, state, {'data': data_iter.get_state(), 'skipped': skipped})
    if import_only:
      ckpt.wait()
      return state
  elif import_only:
    raise ValueError('import_only needs config.init_from, in a workdir without checkpoints')

  # ---------------------------------------------------------------- train step
  step_fn = pretraining.make_train_step(config, encoder_def, head_def, tx, lr_schedule, copy_mask)
  train_step = jax.jit(step_fn, in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                       out_shardings=(state_sharding, repl), donate_argnums=0)
  probe = ridge.RidgeProbe(config, encoder_def, mesh) if config.probe_every_steps else None

  # ---------------------------------------------------------------- loop
  step = int(state['step'])
  writer = metrics.MetricWriter(workdir, config.total_steps, start_step=step)
  pending = None  # (step, device metrics, write): fetched after the next step is dispatched
  compiled = {}  # batch shapes -> executable (audio crop buckets give a few shapes)
  preemption = checkpoint.PreemptionNotice()

  def log(step, device_metrics, write):
    """Checks the metrics of every step for non-finite values; writes them if `write`."""
    nonlocal skipped
    host = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    if config.skip_nonfinite:
      skipped += int(host['skipped'])
      host['skipped'] = skipped
    else:
      for name in ('loss', 'grad_norm', 'param_norm'):
        if not np.isfinite(host[name]):
          raise FloatingPointError(
              f'step {step}: {name} is {host[name]}; stopped before saving it (latest checkpoint: '
              f'step {ckpt.latest_step()}). config.skip_nonfinite=True skips such updates')
    if not write:
      return
    objective.check_collapse(step, host['target_var'], host['pred_var'],
                             min_target_var=config.min_target_var,
                             min_pred_var=config.min_pred_var,
                             after_step=config.collapse_after_step)
    writer.write(step, host, config.batch_size)

  try:
    while step < config.total_steps:
      batch = sharding.global_batch(next(data_iter), mesh)
      shapes = tuple((k, v.shape) for k, v in sorted(batch.items()))
      if shapes not in compiled:
        with sharding.use_mesh(mesh, config.logical_axis_rules):  # activation constraints
          compiled[shapes] = train_step.lower(state, batch).compile()
        logging.info('compiled the train step for %s; memory: %s', shapes,
                     compiled[shapes].memory_analysis())
      state, step_metrics = compiled[shapes](state, batch)
      step += 1
      probe_due = probe is not None and step % config.probe_every_steps == 0
      if probe_due:  # done before the next step donates these params; logged with them
        step_metrics = {**step_metrics, **probe(state['params']['encoder'])}
      if pending is not None:
        log(*pending)
      pending = (step, step_metrics,
                 step % config.log_every_steps == 0 or step == config.total_steps or probe_due)
      preempted = preemption.reached(step)  # SIGTERM: save this step and exit cleanly
      if step % config.checkpoint_every_steps == 0 or step == config.total_steps or preempted:
        log(*pending)  # every step a checkpoint covers has been checked
        pending = None
        ckpt.save(step, state, {'data': data_iter.get_state(), 'skipped': skipped})
      if preempted:
        logging.warning('preempted: saved step %d; rerun the same command to continue', step)
        break
    if pending is not None:
      log(*pending)
  finally:
    # Whatever stops the loop, a checkpoint already started is completed, never half-written.
    preemption.close()
    ckpt.wait()
    ckpt.close()
    writer.close()
  return state


def quiet_library_logs():
  """orbax and grain log every checkpoint phase at INFO; keep the console for progress lines."""
  noisy = ('/orbax/', '/grain/')
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= std_logging.WARNING or not any(n in r.pathname for n in noisy))


def main(argv):
  del argv
  quiet_library_logs()
  if _WORKDIR.value is None:
    raise app.UsageError('--workdir is required')
  with config_validation.one_line_errors():
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=config_validation.parse_flags)
