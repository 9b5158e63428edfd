r"""Starts a workdir from a transformers Data2Vec folder.

  python scripts/import_hf.py --hf HF_DIR --config configs/vision.py:base --workdir DIR
  python train.py --config configs/vision.py:base --workdir DIR   # continues from the import

Writes the step-0 checkpoint of DIR with the folder's encoder as student and teacher; the
config's model block must describe the same architecture (a mismatch is reported by field).
Equivalent to passing --config.init_from=HF_DIR to train.py. With a fine-tune config
(configs/finetune_*.py) the encoder goes into the task head; a task head's folder gives its
encoder.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=g-import-not-at-top

import train  # defines --config and --workdir
from data2vec import config_validation

_HF = flags.DEFINE_string('hf', None, 'A transformers Data2Vec folder.', required=True)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = FLAGS.config
  config.init_from = _HF.value
  with config_validation.one_line_errors():
    train.train_and_evaluate(config, FLAGS.workdir, import_only=True)
  print(f'{FLAGS.workdir}: step-0 checkpoint with the encoder of {_HF.value}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=config_validation.parse_flags)
