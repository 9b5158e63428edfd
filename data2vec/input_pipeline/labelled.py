"""Labelled examples of the speech and text probe / fine-tuning sets, whole and in file order:
speech clips read on demand (`audio.ClipSource`), token ids in memory.

The linear and ridge probes (data2vec/evaluators/data.py) and the fine-tuning pipelines build on
these: they order, shuffle, crop and pad. Preprocessing matches pretraining, so a pretrained
encoder sees its kind of input: clips normalised per utterance (`audio.normalize`), text in the
tokenizer of the set (which must be the encoder's: text_data.check_tokenizer), framed as
`<s> ... </s>` as the pretraining blocks are.
Fashion-MNIST's arrays come from `vision.load_arrays`.
"""
import dataclasses

import numpy as np

from data2vec.input_pipeline import audio, datasets, files, text_data


def audio_examples(data_dir, dataset, split):
  """(clips, records) of a split of a prepared audio set (bundled or a user's), in file order.

  clips: an audio.ClipSource, clips[i] float32 [num_samples] at 16 kHz, normalised to zero mean
  and unit variance over the clip. records: the rows of {split}.jsonl
  (data2vec/preparation/audio.py), one per clip: `label` an int (the index into dataset.json's
  classes, -1 unlabelled), `transcript` ('' none). spoken_digits: label 0-9 ('zero'..'nine'),
  transcript the digit; spoken_digit_strings: unlabelled, transcript the digits ('5270427'); both
  name the voice in `speaker` (splits are voice-disjoint).
  """
  prepared = datasets.load(data_dir, dataset, modality='audio')
  clips = audio.prepared_source(prepared, split)
  path = prepared.path / f'{split}.jsonl'
  records = files.read_jsonl(path, 'audio') if path.is_file() else None
  if records is None or len(records) != len(clips):
    raise ValueError(f'{path}: {"missing" if records is None else f"{len(records)} rows"}, '
                     f'the index has {len(clips)} clips; prepare {prepared.path} again')
  return clips, records


@dataclasses.dataclass(frozen=True)
class TextExamples:
  """A split of a labelled text set: `ids` one int32 array `<s> ... </s>` per example, `labels`
  int32 [N] indices into `classes`, and the Vocabulary the ids are in."""
  ids: list
  labels: np.ndarray
  classes: tuple
  vocab: text_data.Vocabulary


def text_examples(data_dir, dataset, split, max_length, vocab_size=None):
  """The examples of a split of a labelled prepared text set (the bundled WordNet supersenses
  too), tokenized when prepared, each of at most `max_length` ids; `vocab_size` (the model's)
  bounds the ids when given (text_data.token_arrays).

  A document is `<s>`, its lines' ids (each line ends with </s>), cut to max_length - 1 ids and
  then ended with </s> when longer: a one-line document (a gloss) is `<s> gloss </s>`.
  """
  if max_length < 3:
    raise ValueError(f'max_length={max_length} leaves no room for a token between <s> and </s>')
  ds = datasets.load(data_dir, dataset, modality='text')
  if not ds.classes:
    raise ValueError(f'config.input.dataset={dataset!r} has no classes ({ds.path}): prepare it '
                     'with class folders (--labels folders) or a "label" field in its records')
  data = text_data.token_arrays(data_dir, dataset, split, vocab_size=vocab_size)
  vocab = data.vocab
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
