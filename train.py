r"""data2vec pretraining and fine-tuning.

  python train.py --config configs/vision.py:tiny --workdir /tmp/d2v_vision \
      [--config.total_steps=300 ...]
  python train.py --config configs/finetune_vision.py:tiny --workdir /tmp/d2v_vision_ft \
      --config.init_from=/tmp/d2v_vision

Rerunning the same command resumes from the last checkpoint in --workdir. One loop runs both
jobs; `config.task` picks the job-specific parts (data2vec/pretraining.py or finetuning.py).
"""
import logging as std_logging
import os

from absl import app, flags, logging
import jax
import numpy as np
from ml_collections import config_flags

from data2vec import atomic, checkpoint, config_validation, finetuning, metrics, pretraining
from data2vec import sharding
from data2vec.input_pipeline import finetune as finetune_input

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints and logs go.')


# The jobs train.py runs, by config.task: each module's make_input and Task give the job-specific
# parts.
TASKS = {'pretrain': pretraining, 'finetune': finetuning}


def make_input(config, local_batch_size):
  """The batch iterator of this process (checkpointable: get_state/set_state)."""
  return TASKS[config.task].make_input(config, local_batch_size)


def train_and_evaluate(config, workdir, *, import_only=False):
  """Pretrains or fine-tunes per `config`, resuming from `workdir` if it holds a checkpoint.

  import_only: stop after writing the step-0 checkpoint of `config.init_from` (import_hf.py).
  """
  # ---------------------------------------------------------------- setup
  sharding.initialize_distributed(config.distributed)
  finetune_input.fill_classes(config)  # an empty id2label: the data set's classes
  config_validation.validate(config)  # before anything is written, allocated or compiled
  local_batch_size = config.batch_size // jax.process_count()
  data_iter = make_input(config, local_batch_size)  # opens the data: bad files fail here
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    atomic.write_text(os.path.join(workdir, 'config.json'),
                      config.to_json_best_effort(indent=2, sort_keys=True))

  # ---------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(config.mesh)
  repl = sharding.replicated(mesh)

  # ---------------------------------------------------------------- model and optimizer
  task = TASKS[config.task].Task(config)
  abstract_state = jax.eval_shape(task.init_state)
  state_sharding = sharding.state_shardings(abstract_state, task.graph_defs, task.tx, mesh,
                                            config.logical_axis_rules)
  state = jax.jit(task.init_state, out_shardings=state_sharding)()
  for name, params in abstract_state['params'].items():
    n_params = sum(np.prod(x.shape) for x in jax.tree.leaves(params))
    logging.info('%s %s: %.2fM parameters', config.modality, name, n_params / 1e6)

  # ---------------------------------------------------------------- restore or initialise
  ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
  skipped = 0  # updates skipped for non-finite values (config.skip_nonfinite), checkpointed
  if ckpt.latest_step() is not None:
    state, host_state = ckpt.restore(checkpoint.abstract_like(state))
    data_iter.set_state(host_state['data'])
    skipped = host_state['skipped']
    logging.info('resuming from %s, step %d', ckpt.directory, int(state['step']))
  elif config.init_from:
    state = task.init_from(state, state_sharding)
    logging.info('initialised the encoder from %s', config.init_from)
    ckpt.save(0, state, {'data': data_iter.get_state(), 'skipped': skipped})
    if import_only:
      ckpt.wait()
      return state
  elif import_only:
    raise ValueError('import_only needs config.init_from, in a workdir without checkpoints')

  # ---------------------------------------------------------------- train step
  train_step = jax.jit(task.train_step(abstract_state),
                       in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                       out_shardings=(state_sharding, repl), donate_argnums=0)
  evaluate = task.evaluator(mesh)  # state -> metrics (a probe, a test set), or None

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
    task.check(step, host)
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
      eval_due = evaluate is not None and task.evaluate_at(step)
      if eval_due:  # done before the next step donates these params; logged with them
        step_metrics = {**step_metrics, **evaluate(state)}
      if pending is not None:
        log(*pending)
      pending = (step, step_metrics,
                 step % config.log_every_steps == 0 or step == config.total_steps or eval_due)
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
