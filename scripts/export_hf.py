r"""Exports a workdir as a transformers Data2Vec folder: the encoder of a pretraining workdir, the
task head (e.g. Data2VecAudioForCTC, with its labels) of a fine-tuning workdir.

  python scripts/export_hf.py --workdir DIR --out HF_DIR [--step N] [--overwrite] [--rgb]

The folder (config.json, model.safetensors and the preprocessor files of the modality: tokenizer,
feature extractor or image processor, with the sizes and normalisation the workdir trained with;
for CTC a Wav2Vec2Processor with the character vocabulary) loads with transformers'
AutoModel*.from_pretrained and pipeline(..., model=HF_DIR).

--overwrite replaces an earlier export only: a folder holding model weights. Any other non-empty
folder, a file, the workdir or a folder that holds it is refused before anything is read.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=g-import-not-at-top

from data2vec import cli, finetuning, hf, init_from, workdirs
from data2vec.hf import io, preprocessors

_WORKDIR = flags.DEFINE_string('workdir', None, 'A training workdir.', required=True)
_OUT = flags.DEFINE_string('out', None, 'The folder to write.', required=True)
_STEP = flags.DEFINE_integer('step', None, 'The checkpoint step (default: the latest).')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an earlier export in --out.')
_RGB = flags.DEFINE_bool('rgb', False, 'Export a one-channel (grey) vision model as an RGB one '
                         'that averages the channels: transformers image pipelines convert every '
                         'image to RGB.')


def check_out(out, workdir, overwrite):
  """Raises UsageError when --out cannot take the export (module docstring)."""
  if not out or not workdir:
    raise app.UsageError('--out and --workdir must name folders')
  if not os.path.isdir(workdir):
    raise app.UsageError(f'--workdir {workdir} is not a folder')
  if os.path.exists(out) and not os.path.isdir(out):
    raise app.UsageError(f'--out {out} is a file, not a folder')
  real_out, real_workdir = os.path.realpath(out), os.path.realpath(workdir)
  if real_out == real_workdir or real_workdir.startswith(real_out.rstrip(os.sep) + os.sep):
    raise app.UsageError(f'--out {out} is the workdir or holds it')
  if os.path.isdir(out) and os.listdir(out):
    if not overwrite:
      raise app.UsageError(f'--out {out} is not empty; pass --overwrite to replace it')
    if not init_from.is_transformers_folder(out):
      raise app.UsageError(f'--out {out} holds no model weights: it is not an earlier export; '
                           '--overwrite replaces only those')
  cli.check_writable(os.path.dirname(os.path.abspath(out)), '--out')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  out = _OUT.value
  check_out(out, _WORKDIR.value, _OVERWRITE.value)
  config = workdirs.load_config(_WORKDIR.value)
  if _RGB.value and not (config.modality == 'vision' and config.model.num_channels == 1):
    raise app.UsageError('--rgb needs a one-channel vision workdir (config.model.num_channels=1)')
  finetuned = config.get('task') == 'finetune'
  model, step = workdirs.restore_model(_WORKDIR.value, _STEP.value)
  if _RGB.value:
    model = io.rgb_from_grey(model)
  files = (finetuning.export_files if finetuned else preprocessors.export_files)(config,
                                                                                model.config)
  hf.save_pretrained(model, out, overwrite=_OVERWRITE.value, extra_files=files)
  print(f'exported step {step} of {_WORKDIR.value} to {out}')


if __name__ == '__main__':
  cli.run(main)
