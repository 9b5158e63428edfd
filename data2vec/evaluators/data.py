"""Labelled probe data per modality: every example of a split once, in a fixed order, unaugmented.

`input_config` is the `input` block of a probe config, or of a train config with the dataset
replaced by PROBE_DATASETS (the ridge probe): dataset, plus vision's normalisation or text's
max_length (a text set carries its tokenizer). Speech and text come as padded sequences with an
`attention_mask`, all of one length, so that one compiled forward serves every batch: text to
`max_length` tokens, speech to the longest clip of the data set (any split) rounded up to
AUDIO_LENGTH_MULTIPLE. One length also keeps a clip's features independent of its batch: the
speech encoder zeroes padded frames once, before its positional conv stack (as transformers and
fairseq do), so the last valid frames see what the first conv layers make of the padding.
"""
import dataclasses

import ml_collections
import numpy as np

from data2vec.input_pipeline import audio, datasets, images, labelled, slicing, text_data

# Each modality's labelled set: what the ridge probe during pretraining reads.
PROBE_DATASETS = {'vision': 'fashion_mnist', 'audio': 'spoken_digits',
                  'text': 'wordnet_supersense'}
# The bundled text corpora's probe: WordNet supersenses or, for the general English corpus, the
# out-of-domain Debian package descriptions, in the corpus's tokenizer.
TEXT_PROBE_DATASETS = {'wordnet_glosses': 'wordnet_supersense',
                       'python_docs': 'wordnet_supersense_gpt2',
                       'english': 'debian_packages'}
# Input keys of a probe config that must equal the pretraining config's: the encoder has to see
# its inputs as in pretraining (speech is normalised per clip either way; text's tokenizer is
# the labelled set's, checked by check_input).
PRETRAINING_INPUT_KEYS = {'vision': ('mean', 'std'), 'audio': (), 'text': ()}
AUDIO_LENGTH_MULTIPLE = 1600  # 0.1 s
RAW_IMAGE_SIZE = 32
# The speech and text files group their examples by voice / label; a fixed shuffle makes the
# first N examples (num_train_examples, the ridge probe) a fair sample of the split.
ORDER_SEED = 0


def probe_dataset(config):
  """The ridge probe's labelled set: config.ridge_probe.dataset, or '' for the pretraining set
  when it is a labelled prepared set with a test split, else the modality's bundled probe set;
  text needs labelled text in the encoder's tokenizer: the bundled corpora's TEXT_PROBE_DATASETS,
  a user's pretraining set itself, or a ridge_probe.dataset in that tokenizer (checked)."""
  if config.ridge_probe.dataset:
    if config.modality == 'text':  # the encoder reads its pretraining set's tokenizer
      trained = text_data.vocabulary(config.data_dir, config.input.dataset)
      text_data.check_tokenizer(
          text_data.vocabulary(config.data_dir, config.ridge_probe.dataset,
                               field='config.ridge_probe.dataset'),
          text_data.EncoderTokenizer(trained.sha256, trained.tokenizer_dir, trained.owner))
    return config.ridge_probe.dataset
  name = config.input.dataset
  if name in TEXT_PROBE_DATASETS:
    return TEXT_PROBE_DATASETS[name]
  if name == PROBE_DATASETS[config.modality] or (datasets.is_bundled(name) and
                                                  config.modality != 'text'):
    return PROBE_DATASETS[config.modality]
  dataset = datasets.load(config.data_dir, name, modality=config.modality)
  if len(dataset.classes) > 1 and {'train', 'test'} <= set(dataset.meta['splits']):
    return name
  if config.modality == 'text':
    raise ValueError(f'config.probe_every_steps={config.probe_every_steps}: the ridge probe of '
                     f'a text encoder reads labelled text in its tokenizer, and '
                     f'config.input.dataset={name!r} has no classes and test split; set '
                     'config.probe_every_steps=0, or prepare the set with labels')
  return PROBE_DATASETS[config.modality]


def probe_input(config):
  """The ridge probe's input block: the train config's, with the probe's labelled set."""
  return ml_collections.ConfigDict({**config.input.to_dict(), 'dataset': probe_dataset(config)})


def num_classes(data_dir, dataset, modality):
  """The classes of a labelled prepared set (bundled or not); an error naming
  config.input.dataset for an unlabelled one or one of another modality (reads dataset.json
  only)."""
  classes = datasets.load(data_dir, dataset, modality=modality).classes
  if len(classes) < 2:
    raise ValueError(f'config.input.dataset={dataset!r} has {len(classes)} classes: a probe '
                     'needs a labelled set (prepare it with class folders, --labels folders)')
  return len(classes)


def check_input(modality, input_config, model_config, data_dir, encoder=None):
  """Errors naming the field when the encoder (None: raw inputs) cannot take these inputs; cheap
  (reads no examples). `encoder`: its training workdir or transformers folder, whose tokenizer a
  text set must have been tokenized with (text_data.encoder_tokenizer)."""
  dataset = input_config.dataset
  num_classes(data_dir, dataset, modality)
  if modality == 'vision' and model_config is not None:
    images.check_channels(images.num_channels(data_dir, dataset), model_config.num_channels,
                          dataset, field='the encoder\'s num_channels')
  if modality != 'text' or model_config is None:
    return
  vocab = text_data.vocabulary(data_dir, dataset)
  if encoder:
    text_data.check_tokenizer(vocab, text_data.encoder_tokenizer(encoder, data_dir))
  if vocab.size > model_config.vocab_size:
    raise ValueError(f'{vocab.owner} has {vocab.size} ids; the encoder embeds '
                     f'{model_config.vocab_size}')
  if vocab.special_ids.pad != model_config.pad_token_id:
    raise ValueError(f'{vocab.owner} pads with id {vocab.special_ids.pad}; the encoder\'s '
                     f'pad_token_id is {model_config.pad_token_id}')
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
  slicing.check_process(process_index, process_count)
  dataset = input_config.dataset
  if modality == 'vision':
    batches = _vision_batches(data_dir, input_config, split, model_config, batch_size,
                              process_index, process_count)
    return batches, num_classes(data_dir, dataset, modality)
  if modality == 'audio':  # a prepared set, bundled or not: clips read on demand
    examples, records = labelled.audio_examples(data_dir, dataset, split)
    labels = np.array([int(r['label']) for r in records], np.int32)
    longest = audio.longest_clip(data_dir, dataset)  # any split's (prepared: the indexes)
    key, pad = 'input_values', np.float32(0)
    length = -(-longest // AUDIO_LENGTH_MULTIPLE) * AUDIO_LENGTH_MULTIPLE
  elif modality == 'text':
    text = labelled.text_examples(data_dir, dataset, split, input_config.max_length,
                                  vocab_size=None if model_config is None else
                                  model_config.vocab_size)
    examples, labels = text.ids, text.labels
    key, length, pad = 'input_ids', input_config.max_length, np.int32(text.vocab.special_ids.pad)
  else:
    raise ValueError(f'modality={modality!r} has no probe data')
  order = np.random.default_rng(ORDER_SEED).permutation(len(examples))
  element = _PaddedExample(examples=examples, labels=labels, order=order, key=key, length=length,
                           pad=pad)
  batches = slicing.eval_batches(element, len(examples), batch_size, process_index=process_index,
                                 process_count=process_count)
  return batches, num_classes(data_dir, dataset, modality)


def _vision_batches(data_dir, input_config, split, model_config, batch_size, process_index,
                    process_count):
  from data2vec.input_pipeline import vision  # pylint: disable=g-import-not-at-top
  if model_config is None:  # raw pixels: the images' own channels
    source = images.open_split(data_dir, input_config.dataset, split)
    # Fashion-MNIST at its 28 px; a folder's images differ in size: CIFAR's 32 px.
    image_size = source[0].shape[0] if input_config.dataset == 'fashion_mnist' else RAW_IMAGE_SIZE
    num_channels = source.num_channels
  else:
    image_size, num_channels = model_config.image_size, model_config.num_channels
  return vision.make_eval_dataset(
      data_dir=data_dir, split=split, image_size=image_size, num_channels=num_channels,
      batch_size=batch_size, mean=input_config.mean, std=input_config.std,
      center_crop=input_config.center_crop, dataset=input_config.dataset,
      process_index=process_index, process_count=process_count)


@dataclasses.dataclass(frozen=True)
class _PaddedExample:
  """Position in the order, or None for the padding -> {key: [length], attention_mask, label,
  valid}. `pad` (a numpy scalar) fills the padding and sets the dtype.
  """
  examples: list
  labels: np.ndarray
  order: np.ndarray
  key: str
  length: int
  pad: np.generic

  def __call__(self, position):
    values = np.full(self.length, self.pad)
    mask = np.zeros(self.length, np.int32)
    if position is None:
      return {self.key: values, 'attention_mask': mask, 'label': np.int32(0), 'valid': np.False_}
    example = self.order[position]
    sequence = self.examples[example]
    values[:len(sequence)] = sequence
    mask[:len(sequence)] = 1
    return {self.key: values, 'attention_mask': mask, 'label': np.int32(self.labels[example]),
            'valid': np.True_}
