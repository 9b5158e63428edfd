r"""Linear probes of a text encoder on WordNet noun glosses -> supersense.

  python eval.py --config configs/probe_text.py --workdir DIR [--config.random_init=True]
  python eval.py --config configs/probe_text.py:10 --hf HF_DIR --out DIR

The 10 largest noun supersenses (50,492 train / 6,498 test glosses, split by gloss). A gloss is
`<s> tokens </s>` in the tokenizer of the encoder's pretraining data: wordnet_supersense has the
8k BPE of configs/text.py:tiny (wordnet_glosses); pass
`--config.input.dataset=wordnet_supersense_gpt2` for an encoder pretrained on python_docs (the
base recipe, GPT-2's BPE). eval.py refuses a set in another tokenizer. Truncated to `max_length`
ids: 64 keeps all of ~98% of the glosses (median 23) at half the cost of the 128 the tiny encoder
could take.
"""
import ml_collections

from configs import probe_common


def get_config(arg=None):
  config = probe_common.probe_config('text', arg)
  config.input = ml_collections.ConfigDict(dict(
      dataset='wordnet_supersense', max_length=64))
  return config
