"""The preprocessor files of an export, so that `transformers.pipeline(task, model=DIR)` works from
the folder alone; and the CTC character vocabulary they describe.

Each `*_files` function returns {file name: text} for `save_pretrained(..., extra_files=...)`;
none needs transformers. The files say what our input pipelines do:
  text:   the RoBERTa tokenizer folder the model was trained with (tokenizer.json, ...);
  audio:  Wav2Vec2FeatureExtractor: 16 kHz mono, zero mean / unit variance per utterance;
          for CTC also a Wav2Vec2CTCTokenizer over `ctc_vocab` (Wav2Vec2Processor);
  vision: BeitImageProcessor: bilinear resize to image_size, /255, (x - mean) / std.
"""
import json
import os

# CTC token ids: the blank is the pad token, id 0, as AudioConfig's pad_token_id; then
# AudioConfig's bos / eos ids, the unknown character, and '|', which stands for a space.
CTC_SPECIALS = ('<pad>', '<s>', '</s>', '<unk>')
WORD_DELIMITER = '|'
# A tokenizer folder may hold these; tokenizer.json and tokenizer_config.json are required.
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
                   'vocab.json', 'merges.txt')
_PIL_BILINEAR = 2


def _json(d):
  return json.dumps(d, indent=2, sort_keys=True) + '\n'


def tokenizer_files(tokenizer_dir, *, model_max_length):
  """The files of a tokenizer folder, with the exported model's own model_max_length (for RoBERTa
  positions: max_position_embeddings - pad_token_id - 1)."""
  files = {}
  for name in TOKENIZER_FILES:
    path = os.path.join(tokenizer_dir, name)
    if os.path.exists(path):
      with open(path, encoding='utf-8') as f:
        files[name] = f.read()
  missing = [n for n in TOKENIZER_FILES[:2] if n not in files]
  if missing:
    raise FileNotFoundError(f'{tokenizer_dir} has no {missing}: not a tokenizer folder')
  config = json.loads(files['tokenizer_config.json'])
  files['tokenizer_config.json'] = _json({**config, 'model_max_length': model_max_length})
  return files


def _feature_extractor(sampling_rate, do_normalize):
  return {'feature_extractor_type': 'Wav2Vec2FeatureExtractor', 'feature_size': 1,
          'sampling_rate': sampling_rate, 'padding_value': 0.0, 'padding_side': 'right',
          'do_normalize': do_normalize, 'return_attention_mask': True}


def feature_extractor_files(*, sampling_rate=16000, do_normalize=True):
  """Wav2Vec2FeatureExtractor's preprocessor_config.json. The attention mask is always returned:
  our audio models take padded batches with one (their feature encoder has LayerNorms)."""
  return {'preprocessor_config.json': _json(_feature_extractor(sampling_rate, do_normalize))}


def ctc_vocab(characters):
  """{token: id}: CTC_SPECIALS, WORD_DELIMITER, then the sorted `characters` (no space: the
  delimiter stands for it)."""
  chars = sorted(set(characters) - {' '})
  clash = sorted(set(chars) & (set(CTC_SPECIALS) | {WORD_DELIMITER}))
  if clash:
    raise ValueError(f'characters {clash} clash with the special tokens')
  return {t: i for i, t in enumerate(CTC_SPECIALS + (WORD_DELIMITER,) + tuple(chars))}


def ctc_encode(text, vocab):
  """Text -> CTC label ids (a space is WORD_DELIMITER). Raises on a character not in `vocab`."""
  unknown = sorted(set(text) - set(vocab) - {' '})
  if unknown:
    raise ValueError(f'{text!r} has characters {unknown} outside the CTC vocabulary')
  return [vocab[WORD_DELIMITER if c == ' ' else c] for c in text]


def ctc_decode(ids, vocab):
  """Greedy CTC decoding of per-frame ids, as the ASR pipeline decodes (Wav2Vec2CTCTokenizer):
  collapse repeats, drop the blank (pad), delimiter -> space, strip. Other specials stay as text
  (a model trained on ctc_encode labels never emits them)."""
  tokens = {i: t for t, i in vocab.items()}
  out, previous = [], None
  for i in (int(i) for i in ids):
    if i != previous and i != vocab[CTC_SPECIALS[0]]:
      out.append(' ' if tokens[i] == WORD_DELIMITER else tokens[i])
    previous = i
  return ''.join(out).strip()


def ctc_processor_files(vocab, *, sampling_rate=16000, do_normalize=True):
  """Wav2Vec2Processor: the feature extractor plus a Wav2Vec2CTCTokenizer over `vocab`."""
  if tuple(vocab)[:len(CTC_SPECIALS) + 1] != CTC_SPECIALS + (WORD_DELIMITER,) or \
      sorted(vocab.values()) != list(range(len(vocab))):
    raise ValueError(f'vocab does not start with {CTC_SPECIALS + (WORD_DELIMITER,)} or its ids '
                     'are not 0..n-1: build it with ctc_vocab')
  pad, bos, eos, unk = CTC_SPECIALS
  specials = {'pad_token': pad, 'bos_token': bos, 'eos_token': eos, 'unk_token': unk}
  extractor = {**_feature_extractor(sampling_rate, do_normalize),
               'processor_class': 'Wav2Vec2Processor'}
  tokenizer = {'tokenizer_class': 'Wav2Vec2CTCTokenizer', 'processor_class': 'Wav2Vec2Processor',
               'word_delimiter_token': WORD_DELIMITER, 'replace_word_delimiter_char': ' ',
               'do_lower_case': False, **specials}
  return {'preprocessor_config.json': _json(extractor), 'tokenizer_config.json': _json(tokenizer),
          'special_tokens_map.json': _json(specials),
          'vocab.json': json.dumps(vocab, indent=2, ensure_ascii=False) + '\n'}


def image_processor_files(*, image_size, mean, std, num_channels, center_crop=1.0):
  """BeitImageProcessor's preprocessor_config.json. image_size: an int or (height, width); `mean`
  / `std` may have one value for every channel (a grey image repeated to num_channels), as the
  vision input pipeline allows. center_crop < 1 (config.input.center_crop): resize to
  image_size / center_crop, then crop the centre image_size, as the evaluation pipeline does
  (which crops the centre square of a non-square image first, where BeitImageProcessor squashes
  it)."""
  height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
  crop = {'do_center_crop': False}
  if center_crop < 1:
    crop = {'do_center_crop': True, 'crop_size': {'height': height, 'width': width}}
    height, width = round(height / center_crop), round(width / center_crop)
  stats = {}
  for name, values in (('image_mean', mean), ('image_std', std)):
    values = [float(v) for v in values]
    if len(values) not in (1, num_channels):
      raise ValueError(f'{name}={values} needs 1 or num_channels={num_channels} values')
    stats[name] = values * (num_channels // len(values))
  return {'preprocessor_config.json': _json({
      'image_processor_type': 'BeitImageProcessor', 'do_resize': True,
      'size': {'height': height, 'width': width}, 'resample': _PIL_BILINEAR,
      **crop, 'do_rescale': True, 'rescale_factor': 1 / 255,
      'do_normalize': True, **stats, 'do_reduce_labels': False})}


def export_files(config, model_config):
  """The preprocessor files for an export of a model trained with `config` (a workdir's config):
  the data side comes from config.input, the model side from the exported model's config."""
  if config.modality == 'vision':
    return image_processor_files(image_size=model_config.image_size, mean=config.input.mean,
                                 std=config.input.std, num_channels=model_config.num_channels,
                                 center_crop=config.input.get('center_crop', 1.0))
  if config.modality == 'audio':
    return feature_extractor_files(sampling_rate=config.input.sample_rate)
  if config.modality == 'text':
    from data2vec.input_pipeline import text_data  # pylint: disable=g-import-not-at-top
    # RoBERTa positions start after pad_token_id: this many tokens fit.
    max_length = model_config.max_position_embeddings - model_config.pad_token_id - 1
    vocab = text_data.vocabulary(config.data_dir, config.input.dataset)
    return tokenizer_files(vocab.tokenizer_dir,  # the set's tokenizer (its tokenizer.json as is)
                           model_max_length=max_length)
  raise ValueError(f'modality={config.modality!r} is not one of vision, audio, text')
