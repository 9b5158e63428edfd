"""Fine-tuning batches: the labelled examples of a split, in the layouts of the transformers heads.

Training: example ids -> shuffle(seed) -> repeat -> this process's slice -> prepare (random crop,
flip) -> batch -> iterator. Every random draw comes from `element_rng(seed, id, epoch)`, so every
batch is a pure function of its position: the iterator state (`get_state()`) is one index that
checkpoints and resumes exactly; a resume needs the same process count.
Evaluation: every example of a split once, in order, unaugmented; process p takes examples p,
p + count, ..., and every process yields the same number of full batches, the tail padded with
`valid=False` examples.

Batches carry the argument names of the heads (data2vec.models.heads), so `model(**batch)` runs
once `valid` (evaluation only) is dropped. Every example has the same shape:
  vision: pixel_values float32 [B, C, H, W], labels int32 [B]
  audio:  input_values float32 [B, max_sample_size] (clips normalised per utterance, zero padded),
          attention_mask int32 [B, max_sample_size], labels int32 [B] (classification) or CTC
          token ids [B, U] padded with IGNORE (U: the split's longest transcript)
  text:   input_ids int32 [B, max_length] padded with pad_token_id, attention_mask, labels [B]
"""
import dataclasses

import numpy as np
from absl import logging

from data2vec import masking
from data2vec.hf import preprocessors
from data2vec.input_pipeline import datasets, labelled, slicing, text_data, vision

SPLIT_ORDER = {'train': 0, 'validation': 1, 'test': 2}
IGNORE = -100  # transformers' ignore_index: CTC label padding
CTC_HEAD = 'Data2VecAudioForCTC'


def ctc_vocab(config):
  """{token: id} of a CTC config: preprocessors.ctc_vocab of config.input.characters."""
  return preprocessors.ctc_vocab(config.input.characters)


def dataset_splits(config):
  """The splits of the fine-tuning set (reads dataset.json only)."""
  splits = datasets.load(config.data_dir, config.input.dataset,
                         modality=config.modality).meta['splits']
  return tuple(sorted(splits, key=lambda s: (SPLIT_ORDER.get(s, len(SPLIT_ORDER)), s)))


def class_names(config):
  """The class names of a classification fine-tuning set, in label order: what
  config.model.id2label must be (reads dataset.json only; the bundled sets are prepared sets)."""
  return datasets.load(config.data_dir, config.input.dataset, modality=config.modality).classes


def fill_classes(config):
  """An empty config.model.id2label of a classification head becomes the data set's classes; a
  given one must equal them. Call before the config is validated or written."""
  if config.task != 'finetune' or config.head == CTC_HEAD:
    return
  names = tuple(class_names(config))
  if not config.model.id2label:
    if len(names) < 2:
      raise ValueError(f'config.input.dataset={config.input.dataset!r} has {len(names)} classes: '
                       'fine-tuning a classifier needs a labelled set (class folders)')
    config.model.id2label = names
  elif tuple(config.model.id2label) != names:
    raise ValueError(f'config.model.id2label={tuple(config.model.id2label)} is not the classes '
                     f'of {config.input.dataset!r} {names}; pass --config.model.id2label="()" to '
                     'take them from the data set')


def _check_classes(labels, id2label, where):
  labels = np.asarray(labels, np.int32)
  if labels.min() < 0 or labels.max() >= len(id2label):
    raise ValueError(f'{where}: labels span {labels.min()}..{labels.max()}; config.model.id2label '
                     f'has {len(id2label)} classes')
  return labels


def load_split(config, split):
  """(inputs, labels) of a split: raw inputs (uint8 images, normalised clips or token ids) and
  per example an int class or an int32 array of CTC token ids. Raises ValueError naming the data
  and the config field when they do not fit together."""
  m, i = config.model, config.input
  where = f'{i.dataset} {split}'
  if config.modality == 'vision':
    source = vision.open_source(config.data_dir, i.dataset, split, m.num_channels)
    return source, _check_classes(source.labels, m.id2label, where)
  if config.modality == 'audio':  # clips (audio.ClipSource) are read on demand
    clips, records = labelled.audio_examples(config.data_dir, i.dataset, split)
    if config.head != CTC_HEAD:
      names = tuple(class_names(config))
      if tuple(m.id2label) != names:
        raise ValueError(f'config.model.id2label={tuple(m.id2label)} is not the classes of '
                         f'{i.dataset!r} {names}; pass --config.model.id2label="()" to take them '
                         'from the data set')
      return clips, _check_classes([int(r['label']) for r in records], m.id2label, where)
    longest = int(clips.lengths.max())
    if longest > i.max_sample_size:  # a crop would cut words out of the transcript
      raise ValueError(f'{where}: clips of up to {longest} samples do not fit '
                       f'config.input.max_sample_size={i.max_sample_size}')
    untranscribed = [r['path'] for r in records if not r['transcript']]
    if untranscribed:
      raise ValueError(f'{where}: {len(untranscribed)} clips have no transcript, e.g. '
                       f'{untranscribed[0]} (prepare_data.py audio --transcripts)')
    vocab = ctc_vocab(config)
    try:
      labels = [np.array(preprocessors.ctc_encode(r['transcript'], vocab), np.int32)
                for r in records]
    except ValueError as e:
      raise ValueError(f'{where}: config.input.characters={i.characters!r}: {e}') from None
    return clips, labels
  if config.modality == 'text':
    # A labelled prepared text set, in its own tokenizer (the bundled WordNet supersenses too).
    text = labelled.text_examples(config.data_dir, i.dataset, split, i.max_length,
                                  vocab_size=m.vocab_size)
    if config.init_from:  # the encoder must read the labelled text in its pretraining tokenizer
      text_data.check_tokenizer(text.vocab, text_data.encoder_tokenizer(config.init_from,
                                                                        config.data_dir))
    if text.classes != tuple(m.id2label):
      raise ValueError(f'{where}: the classes are {text.classes}; config.model.id2label is '
                       f'{tuple(m.id2label)}')
    if text.vocab.size > m.vocab_size or text.vocab.special_ids.pad != m.pad_token_id:
      raise ValueError(f'{where}: {text.vocab.owner} has {text.vocab.size} ids and pads with id '
                       f'{text.vocab.special_ids.pad}; config.model.vocab_size={m.vocab_size}, '
                       f'pad_token_id={m.pad_token_id}')
    return text.ids, _check_classes(text.labels, m.id2label, where)
  raise ValueError(f'modality={config.modality!r} has no fine-tuning data')


# ---------------------------------------------------------------- one example


def change_speed(clip, factor):
  """The clip played `factor` times as fast (tempo and pitch, as sox `speed`): linear
  interpolation at every factor-th sample."""
  return np.interp(np.arange(int(len(clip) / factor)) * factor, np.arange(len(clip)),
                   clip).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _Clip:
  """A normalised clip -> input_values padded to `size` and its attention_mask. With an rng
  (training) the clip's speed changes by a factor drawn from `speed` (no faster than needed to
  fit `size`) and a longer clip is cropped at a random offset; without, its first `size` samples
  are kept."""
  size: int
  speed: tuple[float, float]

  def __call__(self, clip, rng):
    start = 0
    if rng is not None:
      factor = rng.uniform(*self.speed)
      if factor != 1:
        clip = change_speed(clip, max(factor, min(len(clip) / self.size, 1)))
      if len(clip) > self.size:
        start = rng.integers(len(clip) - self.size + 1)
    clip = clip[start:start + self.size]
    values = np.zeros(self.size, np.float32)
    values[:len(clip)] = clip
    return {'input_values': values,
            'attention_mask': (np.arange(self.size) < len(clip)).astype(np.int32)}


@dataclasses.dataclass(frozen=True)
class _Tokens:
  """Token ids -> input_ids padded to `size` with pad_id, and the attention_mask."""
  size: int
  pad_id: int

  def __call__(self, ids, rng):
    del rng
    input_ids = np.full(self.size, self.pad_id, np.int32)
    input_ids[:len(ids)] = ids
    return {'input_ids': input_ids,
            'attention_mask': (np.arange(self.size) < len(ids)).astype(np.int32)}


def _prepare_fn(config):
  m, i = config.model, config.input
  if config.modality == 'vision':
    transform = vision.Transform(
        size=m.image_size, num_channels=m.num_channels, mean=tuple(i.mean), std=tuple(i.std),
        crop_scale=tuple(i.crop_scale), crop_ratio=tuple(i.crop_ratio), flip=i.flip,
        center_crop=i.center_crop)
    return lambda image, rng: {'pixel_values': transform(image, rng)}
  if config.modality == 'audio':
    return _Clip(i.max_sample_size, tuple(i.speed))
  return _Tokens(i.max_length, m.pad_token_id)


def _label_fn(labels):
  """labels[index] as an array of one shape: CTC ids padded to the longest with IGNORE."""
  if np.ndim(labels[0]) == 0:
    return lambda index: np.int32(labels[index])
  width = max(len(x) for x in labels)

  def padded(index):
    out = np.full(width, IGNORE, np.int32)
    out[:len(labels[index])] = labels[index]
    return out
  return padded


@dataclasses.dataclass(frozen=True)
class _TrainExample:
  """(position in this process's slice, example id) -> the augmented example."""
  inputs: object
  label: object
  prepare: object
  seed: int
  process_index: int
  process_count: int

  def __call__(self, local_index, index):
    epoch = slicing.epoch(local_index, self.process_index, self.process_count, len(self.inputs))
    rng = masking.element_rng(self.seed, index, epoch)
    return {**self.prepare(self.inputs[index], rng), 'labels': self.label(index)}


@dataclasses.dataclass(frozen=True)
class _EvalExample:
  """Example id, or None for the padding -> example; `valid` is False on the padding."""
  inputs: object
  label: object
  prepare: object

  def __call__(self, index):
    valid = index is not None
    index = index if valid else 0  # padding repeats the first example
    return {**self.prepare(self.inputs[index], None), 'labels': self.label(index),
            'valid': np.bool_(valid)}


def make_train_dataset(config, *, batch_size, process_index=0, process_count=1, num_threads=4,
                       prefetch_buffer_size=8):
  """Shuffled, repeating, augmented batches of `batch_size` (per process) train examples.
  Returns a grain IterDataset; `iter()` of it is a checkpointable iterator."""
  slicing.check_process(process_index, process_count)
  inputs, labels = load_split(config, 'train')
  logging.info('%s train: %d examples', config.input.dataset, len(inputs))
  example = _TrainExample(inputs=inputs, label=_label_fn(labels), prepare=_prepare_fn(config),
                          seed=config.seed, process_index=process_index,
                          process_count=process_count)
  ds = slicing.train_records(len(inputs), seed=config.seed, num_epochs=None,
                             process_index=process_index, process_count=process_count)
  ds = ds.map_with_index(example).batch(batch_size, drop_remainder=True)
  return slicing.iterate(ds, num_threads, prefetch_buffer_size)


def make_eval_dataset(config, split, *, batch_size, process_index=0, process_count=1,
                      num_threads=4, prefetch_buffer_size=8):
  """Every example of `split` once, in order, unaugmented, with `valid` (module docstring)."""
  slicing.check_process(process_index, process_count)
  inputs, labels = load_split(config, split)
  example = _EvalExample(inputs=inputs, label=_label_fn(labels), prepare=_prepare_fn(config))
  return slicing.eval_batches(example, len(inputs), batch_size, process_index=process_index,
                              process_count=process_count, num_threads=num_threads,
                              prefetch_buffer_size=prefetch_buffer_size)
