r"""Linear probes of a speech encoder on the TTS spoken digits (docs/data.md).

  python eval.py --config configs/probe_audio.py --workdir DIR [--config.random_init=True]
  python eval.py --config configs/probe_audio.py:10 --hf HF_DIR --out DIR
      [--config.input.dataset=NAME]  (a prepared audio set with classes: `prepare_data.py audio`)

"zero".."nine" by 208 synthesized voices, split by voice: the test accent (en-029) and flite
voices (awb, slt) are never heard in train, whose 920 clips give 92 per digit; hence the default
label budgets `10,50,all`. Clips are normalised per utterance as in pretraining and zero-padded
to one length with an attention_mask; features pool the valid frames only.
"""
import ml_collections

from configs import probe_common


def get_config(arg=None):
  config = probe_common.probe_config('audio', arg, default_budgets='10,50,all')
  config.input = ml_collections.ConfigDict(dict(dataset='spoken_digits'))
  return config
