r"""train.py with fault-injection hooks for tests/test_reliability.py (subprocess runs).

  python tests/reliability_train.py --config ... --workdir DIR [--step_delay=S]
      [--hang_save_step=N --marker=PATH] [--nan_step=N]

--step_delay: sleep S seconds before each batch, so a signal lands mid-run.
--hang_save_step: when orbax is about to commit the checkpoint of step N (everything written,
  the temporary folder not yet renamed), create --marker and hang, to be killed there.
--nan_step: the batch of step N has NaN pixels (vision).
None of them changes what is computed.
"""
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top
import numpy as np
from orbax.checkpoint._src.path import atomicity

import train
from data2vec import cli, tasks

_STEP_DELAY = flags.DEFINE_float('step_delay', 0.0, 'Seconds to sleep before each batch.')
_HANG_SAVE_STEP = flags.DEFINE_integer('hang_save_step', None, 'Hang while committing this step.')
_MARKER = flags.DEFINE_string('marker', None, 'Created when the hang starts.')
_NAN_STEP = flags.DEFINE_integer('nan_step', None, 'This step gets NaN pixels.')


def hang_before_commit(step, marker):
  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def finalize_or_hang(self):
    if self._final_path.name == str(step):  # pylint: disable=protected-access
      with open(marker, 'w') as f:
        f.write(str(self.get()))
      await asyncio.sleep(3600)
    await finalize(self)

  atomicity.AtomicRenameTemporaryPath.finalize = finalize_or_hang


def faulty_input(make_input, delay, nan_step):
  """make_input whose batches come `delay` seconds late, and NaN at `nan_step`."""

  def make(config, local_batch_size):
    data = make_input(config, local_batch_size)

    class Faulty:
      get_state, set_state = data.get_state, data.set_state

      def __next__(self):
        time.sleep(delay)
        batch = next(data)
        # The iterator state counts the batches taken since the start: this one feeds that step.
        if data.get_state()['next_index'] == nan_step:
          batch = dict(batch, pixel_values=np.full_like(batch['pixel_values'], np.nan))
        return batch

    return Faulty()

  return make


def main(argv):
  if _HANG_SAVE_STEP.value is not None:
    hang_before_commit(_HANG_SAVE_STEP.value, _MARKER.value)
  tasks.make_input = faulty_input(tasks.make_input, _STEP_DELAY.value, _NAN_STEP.value)
  train.main(argv)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  cli.run(main)
