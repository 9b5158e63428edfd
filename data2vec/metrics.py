"""Training logs: tensorboardX scalars, metrics.jsonl and console progress, on process 0 only."""
import json
import os
import time

import jax
from absl import logging


class MetricWriter:

  def __init__(self, workdir, total_steps):
    self.enabled = jax.process_index() == 0
    self.total_steps = total_steps
    self._last = None  # (step, time) of the previous write, for steps/s
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(workdir)
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

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
