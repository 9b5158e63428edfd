r"""Exports the pretrained encoder of a workdir as a transformers Data2Vec folder.

  python scripts/export_hf.py --workdir DIR --out HF_DIR [--step N] [--overwrite]

The folder (config.json + model.safetensors) loads with transformers' AutoModel.from_pretrained.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=g-import-not-at-top

from data2vec import hf, pretraining

_WORKDIR = flags.DEFINE_string('workdir', None, 'A training workdir.', required=True)
_OUT = flags.DEFINE_string('out', None, 'The folder to write.', required=True)
_STEP = flags.DEFINE_integer('step', None, 'The checkpoint step (default: the latest).')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace a non-empty --out folder.')


def main(argv):
  del argv
  out = _OUT.value
  if os.path.isdir(out) and os.listdir(out) and not _OVERWRITE.value:
    raise app.UsageError(f'--out {out} is not empty; pass --overwrite to replace it')
  model, step = pretraining.restore_encoder(_WORKDIR.value, _STEP.value)
  hf.save_pretrained(model, out, overwrite=_OVERWRITE.value)
  print(f'exported step {step} of {_WORKDIR.value} to {out}')


if __name__ == '__main__':
  app.run(main)
