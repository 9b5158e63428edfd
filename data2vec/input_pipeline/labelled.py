"""Labelled examples of the speech and text probe / fine-tuning sets (DATA.md), whole and in file
order, read into memory (a few hundred MB at most).

The linear and ridge probes (data2vec/evaluators/data.py) and the fine-tuning pipelines build on
these: they order, shuffle, crop and pad. Preprocessing matches pretraining, so a pretrained
encoder sees its kind of input: clips normalised per utterance (`audio.normalize`), glosses
tokenized with the pretraining BPE into `<s> ... </s>` as the pretraining blocks are framed.
Fashion-MNIST's arrays come from `vision.load_arrays`.
"""
import numpy as np

from data2vec.input_pipeline import audio, speech_data, text_data

AUDIO_DATASETS = ('spoken_digits', 'spoken_digit_strings')  # speech_pool has no labels


def audio_examples(data_dir, dataset, split):
  """(clips, records) of a split of a synthesized speech set, in manifest order.

  clips: float32 [num_samples] arrays at 16 kHz, each normalised to zero mean and unit variance
  over the clip. records: their manifest dicts (speech_data.MANIFEST_FIELDS): `label` is the digit
  '0'..'9' (spoken_digits) or the digit string (spoken_digit_strings), `transcript` the spoken
  words, `speaker` the voice (splits are voice-disjoint).
  """
  if dataset not in AUDIO_DATASETS:
    raise ValueError(f'dataset={dataset!r} is not a labelled speech set {AUDIO_DATASETS}')
  samples, records = speech_data.load_split(data_dir, dataset, split)
  clips = [audio.normalize(samples[r['offset']:r['offset'] + r['num_samples']]) for r in records]
  return clips, records


def supersense_examples(data_dir, split, tokenizer_dir, max_length):
  """(token ids, labels) of a split of the WordNet noun-gloss supersense set, in file order.

  token ids: one int32 array per gloss, `<s> gloss </s>` of at most `max_length` ids (a longer
  gloss keeps its first max_length - 2 tokens, then </s>), with the tokenizer saved in
  `tokenizer_dir` (text_data.tokenizer_dir(data_dir, 'bpe8k'): the tiny recipe's). Text that
  spells a special token is encoded as text, as in pretraining. labels: int32 [N] in 0..9, the
  class names in text_data.load_supersense's third output. The files group the glosses by label:
  shuffle before taking a subset.
  """
  if max_length < 3:
    raise ValueError(f'max_length={max_length} leaves no room for a token between <s> and </s>')
  texts, labels, _ = text_data.load_supersense(data_dir, split)
  tokenizer = text_data.load_tokenizer(tokenizer_dir)
  tokenizer.encode_special_tokens = True
  ids = [np.array([text_data.BOS_ID, *e.ids[:max_length - 2], text_data.EOS_ID], np.int32)
         for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
  return ids, labels
