r"""Linear probes of a text encoder on WordNet noun glosses -> supersense (DATA.md).

  python eval.py --config configs/probe_text.py --workdir DIR [--config.random_init=True]
  python eval.py --config configs/probe_text.py:10 --hf HF_DIR --out DIR

The 10 largest noun supersenses (50,492 train / 6,498 test glosses, split by gloss). A gloss is
`<s> tokens </s>` with the pretraining BPE (configs/text.py:tiny's; set
`--config.input.tokenizer=gpt2` for the base recipe's), truncated to `max_length` ids: 64 keeps
all of ~98% of the glosses (median 23) at half the cost of the 128 the tiny encoder could take.
"""
import ml_collections

from configs import probe_common, text


def get_config(arg=None):
  config = probe_common.probe_config('text', arg)
  config.input = ml_collections.ConfigDict(dict(
      dataset='wordnet_supersense', tokenizer=text.get_config('tiny').input.tokenizer,
      max_length=64))
  return config
