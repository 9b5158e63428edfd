"""Training logs: tensorboardX scalars, metrics.jsonl and console progress, on process 0 only."""
import contextlib
import json
import os
import time

import jax
from absl import logging

from data2vec import atomic


def _truncate_after(path, step):
  """Keeps the lines of `path` up to `step`: a resumed run re-logs the steps after it.

  A last line cut short (a kill during a write) is dropped with a warning; a bad line before it
  is an error naming the file and line.
  """
  if not os.path.exists(path):
    return
  with open(path, encoding='utf-8', errors='replace') as f:  # bad bytes: a bad line
    lines = f.readlines()
  kept = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record_step = json.loads(line)['step']
    except (ValueError, KeyError, TypeError) as e:
      if number == len(lines):
        logging.warning('%s: dropping its last line, cut short (%r): an interrupted write', path,
                        line[:80])
        continue
      raise ValueError(f'{path}, line {number}: not a metrics record ({e}); remove the line to '
                       'resume') from None
    if record_step <= step:
      kept.append(line if line.endswith('\n') else line + '\n')
  atomic.write_text(path, ''.join(kept))


class TrainClock:
  """The wall and CPU seconds (user + system of every thread of this process) a run has spent
  training, evaluation excluded, across resumes: the time axis of learning curves (how soon an
  encoder gets good, not how many steps), compile and checkpoint time included."""

  def __init__(self, spent=(0.0, 0.0)):
    """spent: (wall, CPU) seconds of the run before this process (a checkpoint's `totals()`)."""
    self._spent = [float(x) for x in spent]
    self._start = (time.perf_counter(), time.process_time())

  def totals(self):
    """[wall, CPU] seconds so far."""
    now = (time.perf_counter(), time.process_time())
    return [spent + t - t0 for spent, t, t0 in zip(self._spent, now, self._start)]

  @contextlib.contextmanager
  def paused(self):
    """Time inside the block is not counted (an evaluation)."""
    before = self.totals()
    try:
      yield
    finally:
      self._spent = before
      self._start = (time.perf_counter(), time.process_time())

  def read(self):
    wall, cpu = self.totals()
    return {'train_wall_s': wall, 'train_cpu_s': cpu}


class MetricWriter:

  def __init__(self, workdir, total_steps, start_step=0):
    """`start_step`: the step training resumes from; later lines of a previous run are dropped."""
    self.enabled = jax.process_index() == 0
    self.total_steps = total_steps
    self._last = None  # (step, time) of the previous write, for steps/s
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(workdir, purge_step=start_step + 1 if start_step else None)
      path = os.path.join(workdir, 'metrics.jsonl')
      _truncate_after(path, start_step)
      self._jsonl = open(path, 'a')

  def write(self, step, metrics, batch_size):
    """`metrics`: floats already on the host. Adds steps/s, examples/s and prints progress."""
    if not self.enabled:
      return
    now = time.time()
    metrics = dict(metrics)
    if self._last is not None and step > self._last[0]:
      steps_per_sec = (step - self._last[0]) / (now - self._last[1])
      metrics['steps_per_sec'] = steps_per_sec
      metrics['examples_per_sec'] = steps_per_sec * batch_size
    self._last = (step, now)
    for name, value in metrics.items():
      self._tb.add_scalar(name, value, step)
    self._jsonl.write(json.dumps({'step': step, **metrics}) + '\n')
    self._jsonl.flush()
    eta = ''
    if 'steps_per_sec' in metrics:
      eta = f', ETA {(self.total_steps - step) / metrics["steps_per_sec"] / 60:.1f} min'
    shown = ', '.join(f'{k} {v:.4g}' for k, v in metrics.items())
    logging.info('step %d/%d: %s%s', step, self.total_steps, shown, eta)

  def close(self):
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
