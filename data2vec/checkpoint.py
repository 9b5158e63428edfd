"""Orbax checkpoints of the train state plus the data-iterator state.

Orbax writes each step into a temporary folder and renames it when complete, so a kill during a
save leaves the previous checkpoint as the latest; a training run removes such leftovers when it
starts. Restores always go against an abstract state that carries the current shardings, so a
checkpoint restores onto any mesh.

Each checkpoint also records a checksum of the state. A latest checkpoint that does not restore
(truncated or corrupted files, a checksum that does not match) is reported with a warning naming
it, and the previous one is used. A state with a non-finite value is never saved.
"""
import glob
import os
import shutil
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

CORRUPT_SUFFIX = '.corrupt-'  # + a time: orbax ignores step folders renamed so
TMP_PATTERN = '*.orbax-checkpoint-tmp*'  # orbax's folder of a save in progress


@jax.jit
def _summary(state):
  """(every floating-point leaf is finite, a uint32 wrapping sum of the bits of every leaf).

  The sum changes with any single flipped bit and does not depend on the sharding, so it
  fingerprints a state cheaply on device.
  """
  finite, checksum = jnp.bool_(True), jnp.uint32(0)
  for x in jax.tree.leaves(state):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    if jnp.issubdtype(x.dtype, jnp.floating):
      finite &= jnp.all(jnp.isfinite(x))
    if x.dtype == jnp.bool_ or x.dtype.itemsize == 1:
      bits = x.astype(jnp.uint32)
    elif x.dtype.itemsize == 2:
      bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    else:  # 4 bytes, or 8 bytes as two uint32 words
      bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    checksum += jnp.sum(bits, dtype=jnp.uint32)
  return finite, checksum


def _summarize(state):
  """(finite, checksum) on the host; both are replicated, so any local shard holds them."""
  return [np.asarray(x.addressable_data(0)).item() for x in _summary(state)]


def saved_steps(workdir):
  """The steps of the finished checkpoints in `workdir` (orbax names their folders by the step;
  a save in progress or a damaged one set aside has a suffix), without opening any."""
  folder = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(folder):
    return []
  return sorted(int(name) for name in os.listdir(folder)
                if name.isdigit() and os.path.isdir(os.path.join(folder, name)))


def _raised_in_orbax(error):
  tb = error.__traceback__
  while tb is not None:
    if f'{os.sep}orbax{os.sep}' in tb.tb_frame.f_code.co_filename:
      return True
    tb = tb.tb_next
  return False


def _ignore_reads_of_failed_restores():
  """orbax leaves the reads of a failed restore running; each one that ends after orbax closed
  its event loop reports `RuntimeError: Event loop is closed`, or orbax's own "Encountered error
  while reading array index" once its coroutine is closed, as an unraisable exception: a
  traceback on stderr, dozens per failure. A failure is reported by `restore` (a warning or its
  error), so they are noise: this hook drops them and hands anything else to the previous one."""
  previous = sys.unraisablehook
  if getattr(previous, 'drops_closed_loop_reads', False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    closed_loop = isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'
    if not (closed_loop or (error is not None and _raised_in_orbax(error))):
      previous(unraisable)

  hook.drops_closed_loop_reads = True
  sys.unraisablehook = hook


def _first_line(error):
  """A one-line description of an exception (tensorstore errors span many lines)."""
  lines = str(error).strip().splitlines()
  return f'{type(error).__name__}: {lines[0][:300] if lines else ""}'


class Checkpointer:

  def __init__(self, workdir, *, keep, read_only=False):
    """read_only: for readers (export, evaluation) next to a run that may be training: they
    neither delete a save in progress nor set a damaged checkpoint aside."""
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self._read_only = read_only
    if not read_only and jax.process_index() == 0:
      # Now, not in orbax's background cleanup, which an early exit would interrupt.
      for path in glob.glob(os.path.join(self.directory, TMP_PATTERN)):
        logging.warning('removing %s, a save that did not finish', path)
        shutil.rmtree(path)
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=('state', 'data', 'meta'),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                             read_only=read_only))

  def latest_step(self):
    return self._manager.latest_step()

  def path(self, step):
    return os.path.join(self.directory, str(step))

  def save(self, step, state, data_state):
    """Starts an asynchronous save; device buffers are copied before this returns.

    Raises FloatingPointError, writing nothing, when the state holds a NaN or an inf.
    """
    finite, checksum = _summarize(state)
    if not finite:
      raise FloatingPointError(f'step {step}: the train state holds a non-finite value; not '
                               f'saved (latest checkpoint: {self.latest_step()})')
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave({'checksum': checksum})), force=True)

  def restore(self, abstract_state, step=None):
    """Returns (state, data_state) of `step`, by default of the latest checkpoint that restores.

    Without `step`, a checkpoint that fails (unreadable files, wrong checksum) is named in a
    warning and the one before it is tried; once one restores, a writer renames the failed ones
    to `<step>.corrupt-<time>` so that the steps can be saved again. Raises ValueError when none
    restores (nothing is renamed then: the cause may be a config that does not match).
    """
    steps = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f'{self.directory} holds no checkpoint')
    _ignore_reads_of_failed_restores()  # a failure is reported below, once
    failed = {}
    for s in steps:
      try:
        state, data_state = self._restore_checked(s, abstract_state)
      except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many types)
        failed[s] = _first_line(e)
        if s != steps[-1]:
          logging.warning('checkpoint %s does not restore (%s); falling back to the previous one',
                          self.path(s), failed[s])
        continue
      self._set_aside(failed)
      return state, data_state
    if step is not None:
      raise ValueError(f'checkpoint {self.path(step)} does not restore: {failed[step]}')
    raise ValueError(f'no checkpoint in {self.directory} restores: ' +
                     '; '.join(f'{self.path(s)}: {error}' for s, error in failed.items()))

  def _restore_checked(self, step, abstract_state):
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    state = restored['state']
    checksum = _summarize(state)[1]
    if checksum != restored['meta']['checksum']:
      raise ValueError(f'state checksum {checksum} != {restored["meta"]["checksum"]} saved')
    return state, restored['data']

  def _set_aside(self, steps):
    if not steps or self._read_only:
      return
    if jax.process_index() == 0:
      for s in steps:
        target = self.path(s) + CORRUPT_SUFFIX + time.strftime('%Y%m%d-%H%M%S')
        os.rename(self.path(s), target)
        logging.warning('renamed the damaged checkpoint %s to %s', self.path(s), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('checkpoint set aside')
    self._manager.reload()

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()


class PreemptionNotice:
  """`reached(step)`: whether the job was told to stop (SIGTERM, or Ctrl-C) and should save and
  exit; `signal` says which.

  One process: handlers record SIGTERM and SIGINT until `close()` (Python allows handlers in the
  main thread only; elsewhere both keep their default; an ignored SIGINT stays ignored). A second
  Ctrl-C raises KeyboardInterrupt at once. Several processes: JAX's preemption service
  (jax.distributed) catches SIGTERM and names a step all processes reach.
  """

  def __init__(self):
    self._received = threading.Event()
    self.signal = None
    self._previous = {}
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(sig) is not signal.SIG_IGN:
          # (None: a handler not installed from Python; the default stands in for it.)
          self._previous[sig] = signal.signal(sig, self._record) or signal.SIG_DFL

  def _record(self, signum, frame):
    del frame
    if self.signal is None:
      self.signal = signum
    self._received.set()
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, self._previous[signal.SIGINT])  # a second Ctrl-C: at once
      logging.warning('interrupted: saving after this step (Ctrl-C again stops at once)')

  def reached(self, step):
    if jax.process_count() > 1:
      return ocp.multihost.reached_preemption(step)
    return self._received.is_set()

  def close(self):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}
