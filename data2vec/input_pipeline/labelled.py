"""Labelled examples of the speech and text probe / fine-tuning sets (DATA.md), whole and in file
order: speech clips read on demand (`audio.ClipSource`), token ids in memory.

The linear and ridge probes (data2vec/evaluators/data.py) and the fine-tuning pipelines build on
these: they order, shuffle, crop and pad. Preprocessing matches pretraining, so a pretrained
encoder sees its kind of input: clips normalised per utterance (`audio.normalize`), glosses
tokenized with the pretraining BPE into `<s> ... </s>` as the pretraining blocks are framed.
Fashion-MNIST's arrays come from `vision.load_arrays`.
"""
import dataclasses

import numpy as np

from data2vec.input_pipeline import audio, datasets, files, speech_data, text_data

AUDIO_DATASETS = ('spoken_digits', 'spoken_digit_strings')  # speech_pool has no labels


def audio_examples(data_dir, dataset, split):
  """(clips, records) of a split of a synthesized speech set or a prepared audio set, in file
  order.

  clips: an audio.ClipSource, clips[i] float32 [num_samples] at 16 kHz, normalised to zero mean
  and unit variance over the clip. records: one dict per clip. Synthesized sets: their manifest
  dicts (speech_data.MANIFEST_FIELDS): `label` is the digit '0'..'9' (spoken_digits) or the digit
  string (spoken_digit_strings), `transcript` the spoken words, `speaker` the voice (splits are
  voice-disjoint). Prepared sets: the rows of {split}.jsonl (data2vec/preparation/audio.py):
  `label` an int (the index into dataset.json's classes, -1 unlabelled), `transcript` ('' none).
  """
  if not datasets.is_bundled(dataset):
    prepared = datasets.load(data_dir, dataset, modality='audio')
    clips = audio.prepared_source(prepared, split)
    path = prepared.path / f'{split}.jsonl'
    records = files.read_jsonl(path, 'audio') if path.is_file() else None
    if records is None or len(records) != len(clips):
      raise ValueError(f'{path}: {"missing" if records is None else f"{len(records)} rows"}, '
                       f'the index has {len(clips)} clips; prepare {prepared.path} again')
    return clips, records
  if dataset not in AUDIO_DATASETS:
    raise ValueError(f'dataset={dataset!r} is not a labelled speech set {AUDIO_DATASETS}')
  samples, records = speech_data.load_split(data_dir, dataset, split)
  return audio.bundled_source(samples, records, f'{dataset} {split}'), records


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


@dataclasses.dataclass(frozen=True)
class TextExamples:
  """A split of a labelled text set: `ids` one int32 array `<s> ... </s>` per example, `labels`
  int32 [N] indices into `classes`, and the Vocabulary the ids are in."""
  ids: list
  labels: np.ndarray
  classes: tuple
  vocab: text_data.Vocabulary


def text_examples(data_dir, dataset, split, tokenizer, max_length):
  """The examples of a split of the WordNet supersense set (tokenized here with `tokenizer`, as
  `supersense_examples`) or of a prepared labelled text set (its documents, tokenized when
  prepared: `tokenizer` is ignored), each of at most `max_length` ids.

  A document is `<s>`, its lines' ids (each line ends with </s>), cut to max_length - 1 ids and
  then ended with </s> when longer: a one-line document reads like a gloss.
  """
  vocab = text_data.vocabulary(data_dir, dataset, tokenizer)
  if datasets.is_bundled(dataset):
    if dataset != 'wordnet_supersense':
      raise ValueError(f'config.input.dataset={dataset!r} has no labels; the labelled text sets '
                       'are wordnet_supersense and prepared sets with classes')
    ids, labels = supersense_examples(data_dir, split, vocab.tokenizer_dir, max_length)
    classes = tuple(text_data.load_supersense(data_dir, 'validation')[2])
    return TextExamples(ids, labels, classes, vocab)
  if max_length < 3:
    raise ValueError(f'max_length={max_length} leaves no room for a token between <s> and </s>')
  ds = datasets.load(data_dir, dataset, modality='text')
  if not ds.classes:
    raise ValueError(f'config.input.dataset={dataset!r} has no classes ({ds.path}): prepare it '
                     'with class folders (--labels folders) or a "label" field in its records')
  data = text_data.token_arrays(data_dir, dataset, tokenizer, split)
  labels = files.load_npy(ds.path / f'{split}_labels.npy', 'text', mmap_mode=None)
  if (labels.dtype != np.int32 or labels.shape != (len(data.doc_offsets) - 1,) or
      labels.min(initial=0) < 0 or labels.max(initial=0) >= len(ds.classes)):
    raise ValueError(f'{ds.path / f"{split}_labels.npy"}: not int32 [{len(data.doc_offsets) - 1}] '
                     f'class ids below {len(ds.classes)}; prepare the data set again')
  s = vocab.special_ids
  starts = data.line_offsets[data.doc_offsets[:-1]]
  ends = np.minimum(data.line_offsets[data.doc_offsets[1:]], starts + max_length - 1)
  ids = []
  for start, end in zip(starts.tolist(), ends.tolist()):
    x = np.empty(end - start + 1, np.int32)
    x[0] = s.bos
    x[1:] = data.tokens[start:end]
    x[-1] = s.eos  # a cut document: its last kept id becomes </s>
    ids.append(x)
  return TextExamples(ids, labels, ds.classes, vocab)
