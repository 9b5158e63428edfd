r"""data2vec pretraining and fine-tuning.

  python train.py --config configs/vision.py:tiny --workdir /tmp/d2v_vision \
      [--config.total_steps=300 ...]
  python train.py --config configs/finetune_vision.py:tiny --workdir /tmp/d2v_vision_ft \
      --config.init_from=/tmp/d2v_vision

Rerunning the same command resumes from the last checkpoint in --workdir. One loop runs both
jobs; `config.task` picks the job-specific parts (data2vec/tasks.py), data2vec/trainer.py builds
the step.

A rerun may change only the run-time fields of the config (RUNTIME_CONFIG_FIELDS: how long it
runs, what it logs, saves and checks, where the data lies, how it is sharded and executed); a
config that differs from the workdir's config.json in anything else (the model, data, optimizer,
objective) is refused, naming the fields, before anything is written. SIGTERM (preemption) and
Ctrl-C finish the step, save it and exit (Ctrl-C with status 130; a second one stops at once).
"""
import collections
import json
import logging as std_logging
import os
import signal

from absl import app, flags, logging
import jax
import numpy as np
from ml_collections import config_flags

from data2vec import atomic, checkpoint, cli, config_validation, init_from, metrics, sharding
from data2vec import tasks, trainer, workdirs
from data2vec.input_pipeline import finetune as finetune_input

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints and logs go.')


# What a rerun in the same workdir may change (a field, or a block and everything in it): how
# long the run is, what it logs, saves and checks, where the data lies, how the work is sharded
# and executed. Not what it computes: the model's shape, the data set, the batch, the optimizer,
# the objective, the masking, the seed, the dropouts. (init_from is only read by a new workdir.)
RUNTIME_CONFIG_FIELDS = (
    'total_steps', 'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints', 'data_dir',
    'init_from', 'mesh', 'logical_axis_rules', 'distributed', 'skip_nonfinite',
    'probe_every_steps', 'ridge_probe', 'min_target_var', 'min_pred_var', 'collapse_after_step',
    'eval_every_steps', 'eval_batch_size', 'eval_splits',
    'model.dtype', 'model.scan_layers', 'model.remat_policy', 'model.attention_impl')

# config.skip_nonfinite tolerates a few bad batches, not a run that no longer learns (e.g. data
# that gives a NaN loss on every batch): the run stops with an error, before saving, when more
# than MAX_SKIPPED_FRACTION of the last SKIP_WINDOW steps were skipped, or, at its last step,
# of all its steps (runs shorter than the window). The window is checkpointed with the count.
SKIP_WINDOW = 20
MAX_SKIPPED_FRACTION = 0.5


def _flat(tree, prefix=''):
  """{'a.b': leaf} of nested dicts."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f'{prefix}{key}.'))
    else:
      flat[prefix + key] = value
  return flat


def _describe(run):
  """'a vision pretrain run (variant tiny, hidden_size=128)' of a config as a dict."""
  return (f"a {run.get('modality')} {run.get('task')} run (variant {run.get('variant')}, "
          f"hidden_size={run.get('model', {}).get('hidden_size')})")


def check_workdir(config, workdir, *, import_only=False):
  """Whether `workdir` holds checkpoints to resume. Raises ValueError, before anything is written,
  when it cannot take this run: a file; a config.json whose run this config does not continue
  (it differs outside RUNTIME_CONFIG_FIELDS); checkpoints when importing (`import_only`)."""
  if not workdir:
    raise ValueError('--workdir is empty: name the folder of the run')
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f'--workdir {workdir} is a file, not a folder')
  steps = checkpoint.saved_steps(workdir)
  if import_only and steps:
    raise ValueError(f'{workdir} already holds checkpoints (latest: step {max(steps)}): an '
                     'import starts a new workdir (train.py resumes this one)')
  if import_only and not config.init_from:
    raise ValueError('import_only needs config.init_from')
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return bool(steps)
  saved = workdirs.load_config(workdir).to_dict()
  ours = json.loads(config.to_json_best_effort())  # as config.json holds it: tuples are lists
  if (saved.get('modality'), saved.get('task')) != (ours['modality'], ours['task']):
    raise ValueError(f'{workdir} holds {_describe(saved)}; this config is {_describe(ours)}: use '
                     'a new --workdir')
  old, new = _flat(saved), _flat(ours)
  runtime = lambda f: any(f == r or f.startswith(r + '.') for r in RUNTIME_CONFIG_FIELDS)
  changed = [f for f in sorted(set(old) & set(new)) if old[f] != new[f] and not runtime(f)]
  if changed:
    shown = '; '.join(f'config.{f}={new[f]!r} ({old[f]!r} there)' for f in changed[:6])
    more = f' and {len(changed) - 6} more' if len(changed) > 6 else ''
    raise ValueError(
        f'{workdir} holds {_describe(saved)} that this config does not continue: {shown}{more}. '
        'A rerun may change only run-time fields (total_steps, the log / checkpoint / eval '
        'intervals, keep_checkpoints, data_dir, mesh, model.dtype, ...: '
        'train.RUNTIME_CONFIG_FIELDS); use a new --workdir for another run')
  for what, fields in (('this config adds', set(new) - set(old)),
                       ('this config lacks', set(old) - set(new))):
    if fields:  # keys of another version of the code, not the user's change: allowed
      logging.warning('%s: %s the keys %s', path, what, sorted(fields))
  rerun = [f for f in sorted(set(old) & set(new)) if old[f] != new[f]]
  if rerun:
    logging.info('run-time fields changed since the last run: %s',
                 ', '.join(f'{f}: {old[f]!r} -> {new[f]!r}' for f in rerun))
  return bool(steps)


def train_and_evaluate(config, workdir, *, import_only=False):
  """Pretrains or fine-tunes per `config`, resuming from `workdir` if it holds a checkpoint.

  import_only: stop after writing the step-0 checkpoint of `config.init_from` (import_hf.py), in a
  workdir without checkpoints.
  """
  # ---------------------------------------------------------------- setup
  sharding.initialize_distributed(config.distributed)
  finetune_input.fill_classes(config)  # an empty id2label: the data set's classes
  config_validation.validate(config)  # before anything is written, allocated or compiled
  workdir = os.path.abspath(workdir) if workdir else workdir
  resuming = check_workdir(config, workdir, import_only=import_only)
  if config.init_from and not resuming:
    init_from.check(config.init_from)

  # ---------------------------------------------------------------- mesh, step and data
  mesh = sharding.make_mesh(config.mesh)
  train = trainer.build_train_step(config, mesh)  # nothing allocated yet
  task = train.task
  data_iter = tasks.make_input(config, config.batch_size // jax.process_count())  # opens files
  for name, params in train.abstract_state['params'].items():
    n_params = sum(np.prod(x.shape) for x in jax.tree.leaves(params))
    logging.info('%s %s: %.2fM parameters', config.modality, name, n_params / 1e6)

  # ---------------------------------------------------------------- restore or initialise
  state = None  # a resumed run restores into train.abstract_state: no second state
  if not resuming:
    state = train.init()
    if config.init_from:  # reads the source before anything is written: a bad folder fails here
      state = init_from.apply(task, state, train.state_sharding)
      logging.info('initialised the encoder from %s', config.init_from)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    atomic.write_text(os.path.join(workdir, 'config.json'),
                      config.to_json_best_effort(indent=2, sort_keys=True))
  ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
  skipped = 0  # updates skipped for non-finite values (config.skip_nonfinite), checkpointed
  recent = collections.deque(maxlen=SKIP_WINDOW)  # 1 per skipped step of the last ones, too
  host_state = lambda: {'data': data_iter.get_state(), 'skipped': skipped,
                        'recent_skipped': list(recent), 'train_time': clock.totals()}
  clock = metrics.TrainClock()
  if resuming:
    state, restored = ckpt.restore(train.abstract_state)
    data_iter.set_state(restored['data'])
    skipped = restored['skipped']
    recent.extend(restored.get('recent_skipped', ()))
    clock = metrics.TrainClock(restored.get('train_time', (0.0, 0.0)))
    logging.info('resuming from %s, step %d', ckpt.directory, int(state['step']))
  elif config.init_from:
    ckpt.save(0, state, host_state())
    if import_only:
      ckpt.wait()
      ckpt.close()
      return state

  evaluate = task.evaluator(mesh)  # state -> metrics (a probe, a test set), or None

  # ---------------------------------------------------------------- loop
  step = int(state['step'])
  writer = metrics.MetricWriter(workdir, config.total_steps, start_step=step)
  pending = None  # (step, device metrics, write): fetched after the next step is dispatched
  compiled = {}  # batch shapes -> executable (audio crop buckets give a few shapes)
  preemption = checkpoint.PreemptionNotice()
  interrupted = False  # by Ctrl-C: saved, then KeyboardInterrupt

  def log(step, device_metrics, write):
    """Checks the metrics of every step for non-finite values; writes them if `write`."""
    nonlocal skipped
    host = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    if config.skip_nonfinite:
      skipped += int(host['skipped'])
      recent.append(int(host['skipped']))
      host['skipped'] = skipped
      bound = MAX_SKIPPED_FRACTION
      if len(recent) == SKIP_WINDOW and sum(recent) > bound * SKIP_WINDOW:
        what = f'{sum(recent)} of the last {SKIP_WINDOW} updates'
      elif step == config.total_steps and skipped > bound * step:
        what = f'{skipped} of the {step} updates'
      else:
        what = None
      if what:
        raise FloatingPointError(
            f'step {step}: {what} were skipped for a non-finite loss, gradient or parameter norm '
            f'(config.skip_nonfinite=True allows at most {bound:.0%}): the run no longer learns; '
            f'stopped before saving it (latest checkpoint: step {ckpt.latest_step()}). Check the '
            'data (e.g. token ids beyond the vocabulary) and the learning rate')
    else:
      for name in ('loss', 'grad_norm', 'param_norm'):
        if not np.isfinite(host[name]):
          raise FloatingPointError(
              f'step {step}: {name} is {host[name]}; stopped before saving it (latest checkpoint: '
              f'step {ckpt.latest_step()}). config.skip_nonfinite=True skips such updates')
    if not write:
      return
    task.check(step, host)
    writer.write(step, {**host, **clock.read()}, config.batch_size)

  try:
    while step < config.total_steps:
      batch = sharding.global_batch(next(data_iter), mesh)
      shapes = tuple((k, v.shape) for k, v in sorted(batch.items()))
      if shapes not in compiled:
        compiled[shapes] = train.compile(state, batch)
        logging.info('compiled the train step for %s; memory: %s', shapes,
                     compiled[shapes].memory_analysis())
      state, step_metrics = compiled[shapes](state, batch)
      step += 1
      eval_due = evaluate is not None and task.evaluate_at(step)
      if eval_due:  # done before the next step donates these params; logged with them
        with clock.paused():
          step_metrics = {**step_metrics, **evaluate(state)}
      if pending is not None:
        log(*pending)
      pending = (step, step_metrics,
                 step % config.log_every_steps == 0 or step == config.total_steps or eval_due)
      preempted = preemption.reached(step)  # SIGTERM or Ctrl-C: save this step, then exit
      if step % config.checkpoint_every_steps == 0 or step == config.total_steps or preempted:
        log(*pending)  # every step a checkpoint covers has been checked
        pending = None
        ckpt.save(step, state, host_state())
      if preempted:
        interrupted = preemption.signal == signal.SIGINT
        if not interrupted:
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
  if interrupted:
    raise KeyboardInterrupt(f'saved step {step}; rerun the same command to continue')
  return state


def quiet_library_logs():
  """orbax and grain log every checkpoint phase at INFO; keep the console for progress lines."""
  noisy = ('/orbax/', '/grain/')
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= std_logging.WARNING or not any(n in r.pathname for n in noisy))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  quiet_library_logs()
  if not _WORKDIR.value:  # --workdir= would train into the current folder
    raise app.UsageError('--workdir is required: the folder of the run')
  train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  cli.run(main)
