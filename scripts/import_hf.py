r"""Starts a workdir from a transformers Data2Vec folder.

  python scripts/import_hf.py --hf HF_DIR --config configs/vision.py:base --workdir DIR
  python train.py --config configs/vision.py:base --workdir DIR   # continues from the import

Writes the step-0 checkpoint of DIR with the folder's encoder as student and teacher; the
config's model block must describe the same architecture (a mismatch is reported by field).
Equivalent to passing --config.init_from=HF_DIR to train.py. With a fine-tune config
(configs/finetune_*.py) the encoder goes into the task head; a task head's folder gives its
encoder. DIR must hold no checkpoint (an import starts a run; train.py resumes one); a bad folder
is reported before anything is written.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=g-import-not-at-top

import train  # defines --config and --workdir
from data2vec import cli

_HF = flags.DEFINE_string('hf', None, 'A transformers Data2Vec folder.', required=True)
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  if not FLAGS.workdir or not _HF.value:
    raise app.UsageError('--workdir and --hf must name folders')
  if not os.path.isdir(_HF.value):
    raise app.UsageError(f'--hf {_HF.value} is not a folder')
  config = FLAGS.config
  config.init_from = _HF.value
  train.train_and_evaluate(config, FLAGS.workdir, import_only=True)
  print(f'{FLAGS.workdir}: step-0 checkpoint with the encoder of {_HF.value}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  cli.run(main)
