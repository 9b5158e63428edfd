r"""data2vec pretraining.

  python train.py --config configs/vision.py:tiny --workdir /tmp/d2v_vision \
      [--config.total_steps=300 ...]

Rerunning the same command resumes from the last checkpoint in --workdir.
"""
import dataclasses
import logging as std_logging
import os

from absl import app, flags, logging
import jax
import numpy as np
from flax import nnx
from ml_collections import config_flags

from data2vec import checkpoint, ema, metrics, objective, pretraining, sharding
from data2vec import hf

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
  raise NotImplementedError(f'no {config.modality} input pipeline yet: the speech and text '
                            'pipelines are issue #4')


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
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))

  # ---------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(config.mesh)
  dp = sharding.data_parallel_size(mesh)
  if config.batch_size % dp:
    raise ValueError(f'config.batch_size={config.batch_size} is not divisible by the '
                     f'data-parallel size {dp} (mesh data x fsdp)')
  local_batch_size = config.batch_size // jax.process_count()
  repl = sharding.replicated(mesh)

  # ---------------------------------------------------------------- model and optimizer
  tx, lr_schedule = pretraining.make_optimizer(config)
  encoder_def, head_def = pretraining.graph_defs(config)
  init_state = pretraining.init_state_fn(config, tx)
  abstract_state = jax.eval_shape(init_state)
  state_sharding = jax.tree.map(lambda _: repl, abstract_state)
  state = jax.jit(init_state, out_shardings=state_sharding)()
  copy_mask = ema.copy_mask_for(abstract_state['teacher'], config.modality)
  n_params = sum(np.prod(x.shape) for x in jax.tree.leaves(abstract_state['params']['encoder']))
  logging.info('%s encoder: %.2fM parameters', config.modality, n_params / 1e6)

  # ---------------------------------------------------------------- restore or initialise
  ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
  data_iter = make_input(config, local_batch_size)
  if ckpt.latest_step() is not None:
    logging.info('resuming from %s, step %d', ckpt.directory, ckpt.latest_step())
    state, data_state = ckpt.restore(checkpoint.abstract_like(state))
    data_iter.set_state(data_state)
  elif config.init_from:
    state = import_encoder(config, state, tx, state_sharding)
    ckpt.save(0, state, data_iter.get_state())
    if import_only:
      ckpt.wait()
      return state
  elif import_only:
    raise ValueError('import_only needs config.init_from, in a workdir without checkpoints')

  # ---------------------------------------------------------------- train step
  step_fn = pretraining.make_train_step(config, encoder_def, head_def, tx, lr_schedule, copy_mask)
  train_step = jax.jit(step_fn, in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                       out_shardings=(state_sharding, repl), donate_argnums=0)

  # ---------------------------------------------------------------- loop
  step = int(state['step'])
  writer = metrics.MetricWriter(workdir, config.total_steps, start_step=step)
  pending = None  # (step, device metrics): fetched after the next step is dispatched
  compiled = None

  def log(step, device_metrics):
    host = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    for name in ('loss', 'grad_norm'):
      if not np.isfinite(host[name]):
        raise FloatingPointError(f'step {step}: {name} is {host[name]}')
    objective.check_collapse(step, host['target_var'], host['pred_var'],
                             min_target_var=config.min_target_var,
                             min_pred_var=config.min_pred_var,
                             after_step=config.collapse_after_step)
    writer.write(step, host, config.batch_size)

  try:
    while step < config.total_steps:
      batch = sharding.global_batch(next(data_iter), mesh)
      if compiled is None:
        compiled = train_step.lower(state, batch).compile()
        logging.info('compiled the train step; memory: %s', compiled.memory_analysis())
      state, step_metrics = compiled(state, batch)
      step += 1
      if pending is not None:
        log(*pending)
        pending = None
      if step % config.log_every_steps == 0 or step == config.total_steps:
        pending = (step, step_metrics)
      if step % config.checkpoint_every_steps == 0 or step == config.total_steps:
        if pending is not None:  # the log covers every step the checkpoint does
          log(*pending)
          pending = None
        ckpt.save(step, state, data_iter.get_state())
    if pending is not None:
      log(*pending)
  finally:
    # Whatever stops the loop, a checkpoint already started is completed, never half-written.
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
  train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
