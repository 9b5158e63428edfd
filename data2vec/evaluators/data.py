"""Labelled probe data per modality: every example of a split once, in a fixed order, unaugmented.

`input_config` is the `input` block of a probe config, or of a train config with the dataset
replaced by PROBE_DATASETS (the ridge probe): dataset, plus vision's normalisation or text's
tokenizer and max_length. Speech and text come as padded sequences with an `attention_mask`, all
of one length, so that one compiled forward serves every batch: text to `max_length` tokens,
speech to the longest clip of the data set (any split) rounded up to AUDIO_LENGTH_MULTIPLE. One
length also keeps a clip's features independent of its batch: the speech encoder zeroes padded
frames once, before its positional conv stack (as transformers and fairseq do), so the last
valid frames see what the first conv layers make of the padding.
"""
import dataclasses

import grain
import ml_collections
import numpy as np

from data2vec.input_pipeline import labelled, speech_data, text_data

NUM_CLASSES = {'fashion_mnist': 10, 'spoken_digits': 10, 'wordnet_supersense': 10}
# Each modality's labelled set (DATA.md): what the ridge probe during pretraining reads.
PROBE_DATASETS = {'vision': 'fashion_mnist', 'audio': 'spoken_digits',
                  'text': 'wordnet_supersense'}
# Input keys of a probe config that must equal the pretraining config's: the encoder has to see
# its inputs as in pretraining (speech is normalised per clip either way).
PRETRAINING_INPUT_KEYS = {'vision': ('mean', 'std'), 'audio': (), 'text': ('tokenizer',)}
AUDIO_LENGTH_MULTIPLE = 1600  # 0.1 s
# The speech and text files group their examples by voice / label; a fixed shuffle makes the
# first N examples (num_train_examples, the ridge probe) a fair sample of the split.
ORDER_SEED = 0


def probe_input(config):
  """The ridge probe's input block: the train config's, with the modality's labelled set."""
  return ml_collections.ConfigDict(
      {**config.input.to_dict(), 'dataset': PROBE_DATASETS[config.modality]})


def check_input(modality, input_config, model_config, data_dir):
  """Errors naming the field when the encoder (None: raw inputs) cannot take these inputs; cheap
  (reads no examples)."""
  dataset = input_config.dataset
  if dataset != PROBE_DATASETS[modality]:
    raise ValueError(f'config.input.dataset={dataset!r}: the {modality} probe set is '
                     f'{PROBE_DATASETS[modality]!r}')
  if modality != 'text' or model_config is None:
    return
  vocab_size = text_data.tokenizer_vocab_size(
      text_data.tokenizer_dir(data_dir, input_config.tokenizer))
  if vocab_size > model_config.vocab_size:
    raise ValueError(f'config.input.tokenizer={input_config.tokenizer!r} has {vocab_size} ids; '
                     f'the encoder embeds {model_config.vocab_size}')
  # RoBERTa positions start after pad_token_id (ids pad + 1 .. pad + max_length).
  max_length = model_config.max_position_embeddings - model_config.pad_token_id - 1
  if input_config.max_length > max_length:
    raise ValueError(f'config.input.max_length={input_config.max_length} exceeds the '
                     f'{max_length} positions of the encoder')


def labelled_batches(modality, *, data_dir, input_config, split, model_config, batch_size,
                     process_index=0, process_count=1):
  """(batches with `label` and `valid`, num_classes) of `split`.

  Process p gets examples p, p + count, ... of the order; every process yields the same number of
  full batches (so collectives line up), the tail padded with `valid=False` examples.
  model_config: the encoder's (VisionConfig, ...); None probes the raw inputs (vision: at their
  native resolution).
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in [0, process_count={process_count})')
  dataset = input_config.dataset
  if modality == 'vision':
    batches = _vision_batches(data_dir, input_config, split, model_config, batch_size,
                              process_index, process_count)
    return batches, NUM_CLASSES[dataset]
  if modality == 'audio':
    examples, records = labelled.audio_examples(data_dir, dataset, split)
    labels = np.array([int(r['label']) for r in records], np.int32)
    _, all_records = speech_data.load(data_dir, dataset)
    longest = max(r['num_samples'] for r in all_records)
    key, pad = 'input_values', np.float32(0)
    length = -(-longest // AUDIO_LENGTH_MULTIPLE) * AUDIO_LENGTH_MULTIPLE
  elif modality == 'text':
    examples, labels = labelled.supersense_examples(
        data_dir, split, text_data.tokenizer_dir(data_dir, input_config.tokenizer),
        input_config.max_length)
    key, length, pad = 'input_ids', input_config.max_length, np.int32(text_data.PAD_ID)
  else:
    raise ValueError(f'modality={modality!r} has no probe data')
  order = np.random.default_rng(ORDER_SEED).permutation(len(examples))
  element = _PaddedExample(examples=examples, labels=labels, order=order, key=key, length=length,
                           pad=pad, process_index=process_index, process_count=process_count)
  return _batched(element, len(examples), batch_size, process_count), NUM_CLASSES[dataset]


def _batched(element, num_examples, batch_size, process_count):
  per_process = -(-num_examples // process_count)
  length = -(-per_process // batch_size) * batch_size
  ds = grain.MapDataset.range(length).map(element).batch(batch_size)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=4, prefetch_buffer_size=8))


def _vision_batches(data_dir, input_config, split, model_config, batch_size, process_index,
                    process_count):
  from data2vec.input_pipeline import vision  # pylint: disable=g-import-not-at-top
  if model_config is None:
    images, _ = vision.load_arrays(data_dir, input_config.dataset, split)
    image_size, num_channels = images.shape[1], 1
  else:
    image_size, num_channels = model_config.image_size, model_config.num_channels
  return vision.make_eval_dataset(
      data_dir=data_dir, split=split, image_size=image_size, num_channels=num_channels,
      batch_size=batch_size, mean=input_config.mean, std=input_config.std,
      dataset=input_config.dataset, process_index=process_index, process_count=process_count)


@dataclasses.dataclass(frozen=True)
class _PaddedExample:
  """Position in this process's padded slice -> {key: [length], attention_mask, label, valid}.

  `pad` (a numpy scalar) fills the padding and sets the dtype.
  """
  examples: list
  labels: np.ndarray
  order: np.ndarray
  key: str
  length: int
  pad: np.generic
  process_index: int
  process_count: int

  def __call__(self, local_index):
    position = self.process_index + local_index * self.process_count
    values = np.full(self.length, self.pad)
    mask = np.zeros(self.length, np.int32)
    if position >= len(self.order):
      return {self.key: values, 'attention_mask': mask, 'label': np.int32(0), 'valid': np.False_}
    example = self.order[position]
    sequence = self.examples[example]
    values[:len(sequence)] = sequence
    mask[:len(sequence)] = 1
    return {self.key: values, 'attention_mask': mask, 'label': np.int32(self.labels[example]),
            'valid': np.True_}
