"""Exports of every pipeline task load in `transformers.pipeline(task, model=DIR)` offline
(HF_HUB_OFFLINE=1, a fresh process) and predict what our model predicts."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import vision as vision_configs
from data2vec import hf
from data2vec.hf import io, preprocessors
from data2vec.input_pipeline import vision as vision_pipeline
from data2vec.models import registry
from data2vec.models.audio import AudioConfig
from data2vec.models.heads import audio as audio_heads
from data2vec.models.heads import text as text_heads
from data2vec.models.heads import vision as vision_heads
from data2vec.models.text import TextConfig
from data2vec.models.vision import VisionConfig
from tests.test_text_heads import build, forward

tokenizers = pytest.importorskip('tokenizers')

SENTENCES = ['the cat sat on the mat', 'the dog sat on the log', 'where did the cat sit',
             'a cat and a dog met on a mat', 'the mat was red and the log was brown']
MASKED = 'the cat <mask> on the mat'
QUESTION, CONTEXT = 'where did the cat sit', 'the cat sat on the mat and the dog sat on the log'
LABELS = ('B-ANIMAL', 'B-PLACE', 'I-PLACE')  # no 'O': the pipeline would drop those tokens
TEXT = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
            max_position_embeddings=64, type_vocab_size=1)
AUDIO = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
             conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=1,
             conv_pos_kernel_size=5, num_conv_pos_embedding_groups=2)
VISION = dict(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=24,
              image_size=16, patch_size=4, num_channels=1, use_mean_pooling=True,
              out_indices=(1, 2, 3, 4), pool_scales=(1, 2), auxiliary_channels=8)
MEAN, STD = (0.3,), (0.4,)
SAMPLING_RATE = 16000

# Runs in a fresh process with HF_HUB_OFFLINE=1: every pipeline from its folder alone.
RUNNER = f'''
import json, sys
import numpy as np
import transformers
from PIL import Image
root = sys.argv[1]
audio = {{'raw': np.load(root + '/audio.npy'), 'sampling_rate': {SAMPLING_RATE}}}
image = Image.open(root + '/image.png')
run = lambda task, *args, **kwargs: transformers.pipeline(task, model=root + '/' + task)(
    *args, **kwargs)
out = {{
    'fill-mask': run('fill-mask', {MASKED!r}),
    'text-classification': run('text-classification', {SENTENCES[1]!r}),
    'token-classification': run('token-classification', {SENTENCES[0]!r}),
    'automatic-speech-recognition': run('automatic-speech-recognition', dict(audio)),
    'audio-classification': run('audio-classification', dict(audio)),
    'image-classification': run('image-classification', image),
    'image-segmentation': [dict(r, mask=np.asarray(r['mask']).tolist())
                           for r in run('image-segmentation', image)],
}}
# transformers 5 removed the question-answering pipeline: its Auto classes from the folder alone.
folder = root + '/question-answering'
tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
inputs = tokenizer({QUESTION!r}, {CONTEXT!r}, return_tensors='pt')
logits = transformers.AutoModelForQuestionAnswering.from_pretrained(folder)(**inputs)
out['question-answering'] = dict(input_ids=inputs['input_ids'][0].tolist(),
                                 start_logits=logits.start_logits[0].tolist(),
                                 end_logits=logits.end_logits[0].tolist())
json.dump(out, open(root + '/predictions.json', 'w'), default=float)
'''


def _tokenizer_dir(path):
  """A byte-level BPE trained on SENTENCES, saved as RoBERTa tokenizer files."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, \
      trainers  # pylint: disable=g-import-not-at-top,g-multiple-import
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.RobertaProcessing(('</s>', 2), ('<s>', 0), add_prefix_space=False)
  specials = [AddedToken(t, special=True, normalized=False, lstrip=t == '<mask>')
              for t in ('<s>', '<pad>', '</s>', '<unk>', '<mask>')]
  tok.train_from_iterator(SENTENCES, trainers.BpeTrainer(
      vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False))
  os.makedirs(path)
  tok.save(os.path.join(path, 'tokenizer.json'))
  names = dict(bos_token='<s>', eos_token='</s>', unk_token='<unk>', sep_token='</s>',
               pad_token='<pad>', cls_token='<s>', mask_token='<mask>')
  with open(os.path.join(path, 'tokenizer_config.json'), 'w') as f:
    json.dump({'tokenizer_class': 'RobertaTokenizer', 'add_prefix_space': False,
               'trim_offsets': True, 'model_max_length': 512, **names}, f)
  return tok


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _normalize(audio):
  """Wav2Vec2FeatureExtractor's do_normalize: zero mean, unit variance per utterance."""
  return (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """Our model of every task, the pipelines' predictions on the exports, and the inputs."""
  root = str(tmp_path_factory.mktemp('exports'))
  tok = _tokenizer_dir(os.path.join(root, 'tokenizer'))
  text_cfg = TextConfig(**TEXT, vocab_size=tok.get_vocab_size())
  text_files = preprocessors.tokenizer_files(
      os.path.join(root, 'tokenizer'),
      model_max_length=text_cfg.max_position_embeddings - text_cfg.pad_token_id - 1)
  vocab = preprocessors.ctc_vocab('abcdefghij')
  audio_cfg = AudioConfig(**AUDIO, vocab_size=len(vocab), id2label=('yes', 'no', 'maybe'))
  vision_cfg = VisionConfig(**VISION, id2label=('shirt', 'shoe', 'bag', 'coat'))
  # The image pipelines convert every image to RGB: export the grey model as an RGB one.
  image_files = preprocessors.image_processor_files(image_size=16, mean=MEAN, std=STD,
                                                    num_channels=3)
  exports = {
      'fill-mask': (text_heads.Data2VecTextForMaskedLM, text_cfg, text_files),
      'text-classification': (text_heads.Data2VecTextForSequenceClassification,
                              TextConfig(**TEXT, vocab_size=tok.get_vocab_size(),
                                         id2label=('negative', 'neutral', 'positive')), text_files),
      'token-classification': (text_heads.Data2VecTextForTokenClassification,
                               TextConfig(**TEXT, vocab_size=tok.get_vocab_size(), id2label=LABELS),
                               text_files),
      'question-answering': (text_heads.Data2VecTextForQuestionAnswering, text_cfg, text_files),
      'automatic-speech-recognition': (audio_heads.Data2VecAudioForCTC, audio_cfg,
                                       preprocessors.ctc_processor_files(vocab)),
      'audio-classification': (audio_heads.Data2VecAudioForSequenceClassification, audio_cfg,
                               preprocessors.feature_extractor_files()),
      'image-classification': (vision_heads.Data2VecVisionForImageClassification, vision_cfg,
                               image_files),
      'image-segmentation': (vision_heads.Data2VecVisionForSemanticSegmentation, vision_cfg,
                             image_files),
  }
  models = {}
  for seed, (task, (cls, cfg, files)) in enumerate(exports.items()):
    models[task] = build(cls, cfg, seed=seed)
    export = io.rgb_from_grey(models[task]) if task.startswith('image') else models[task]
    hf.save_pretrained(export, os.path.join(root, task), extra_files=files)
  rng = np.random.default_rng(0)
  t = np.arange(SAMPLING_RATE // 4) / SAMPLING_RATE
  audio = (np.sin(2 * np.pi * 440 * t) + 0.3 * rng.normal(size=t.shape)).astype(np.float32)
  np.save(os.path.join(root, 'audio.npy'), audio)
  image = rng.integers(0, 256, (16, 16), dtype=np.uint8)
  Image.fromarray(image, mode='L').save(os.path.join(root, 'image.png'))
  env = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1')
  run = subprocess.run([sys.executable, '-c', RUNNER, root], env=env, capture_output=True,
                       text=True)
  assert run.returncode == 0, run.stderr[-3000:]
  with open(os.path.join(root, 'predictions.json')) as f:
    predictions = json.load(f)
  return dict(models=models, tokenizer=tok, predictions=predictions, vocab=vocab, audio=audio,
              image=image)


def _logits(model, **inputs):
  return np.asarray(forward(model, **{k: np.asarray([v]) for k, v in inputs.items()})['logits'])[0]


def test_fill_mask(exported):
  models, tok, predictions = (exported[k] for k in ('models', 'tokenizer', 'predictions'))
  ids = tok.encode(MASKED).ids
  logits = _logits(models['fill-mask'], input_ids=ids)
  probs = _softmax(logits[ids.index(tok.token_to_id('<mask>'))])
  top = np.argsort(-probs)[:5]
  got = predictions['fill-mask']
  assert [p['token'] for p in got] == top.tolist()
  np.testing.assert_allclose([p['score'] for p in got], probs[top], atol=1e-5)


def test_text_classification(exported):
  models, tok, predictions = (exported[k] for k in ('models', 'tokenizer', 'predictions'))
  model = models['text-classification']
  probs = _softmax(_logits(model, input_ids=tok.encode(SENTENCES[1]).ids))
  [got] = predictions['text-classification']
  assert got['label'] == model.config.id2label[probs.argmax()]
  np.testing.assert_allclose(got['score'], probs.max(), atol=1e-5)


def test_token_classification(exported):
  models, tok, predictions = (exported[k] for k in ('models', 'tokenizer', 'predictions'))
  ids = tok.encode(SENTENCES[0]).ids
  probs = _softmax(_logits(models['token-classification'], input_ids=ids))
  got = predictions['token-classification']
  assert [p['index'] for p in got] == list(range(1, len(ids) - 1))  # every word piece, no specials
  assert [p['entity'] for p in got] == [LABELS[i] for i in probs[1:-1].argmax(-1)]
  np.testing.assert_allclose([p['score'] for p in got], probs[1:-1].max(-1), atol=1e-5)


def test_question_answering(exported):
  models, tok, predictions = (exported[k] for k in ('models', 'tokenizer', 'predictions'))
  got = predictions['question-answering']
  ids = tok.encode(QUESTION, CONTEXT).ids
  assert got['input_ids'] == ids
  out = forward(models['question-answering'], input_ids=np.asarray([ids]))
  np.testing.assert_allclose(out['start_logits'][0], got['start_logits'], atol=1e-5)
  np.testing.assert_allclose(out['end_logits'][0], got['end_logits'], atol=1e-5)


def test_automatic_speech_recognition(exported):
  model = exported['models']['automatic-speech-recognition']
  ids = _logits(model, input_values=_normalize(exported['audio'])).argmax(-1)
  text = preprocessors.ctc_decode(ids, exported['vocab'])
  assert text  # a random model that emits only blanks would test nothing
  assert exported['predictions']['automatic-speech-recognition'] == {'text': text}


def _top5(model, logits, got):
  probs = _softmax(logits)
  top = np.argsort(-probs)[:5]
  assert [p['label'] for p in got] == [model.config.id2label[i] for i in top]
  np.testing.assert_allclose([p['score'] for p in got], probs[top], atol=1e-5)


def test_audio_classification(exported):
  model = exported['models']['audio-classification']
  _top5(model, _logits(model, input_values=_normalize(exported['audio'])),
        exported['predictions']['audio-classification'])


def _pixels(image):
  """The vision input pipeline's normalisation (resize to image_size, /255, mean / std)."""
  return (vision_pipeline.resize(image[..., None].astype(np.float32) / 255, 16) - MEAN[0]) / STD[0]


def test_image_classification(exported):
  model = exported['models']['image-classification']
  _top5(model, _logits(model, pixel_values=_pixels(exported['image'])),
        exported['predictions']['image-classification'])


def test_image_segmentation(exported):
  model = exported['models']['image-segmentation']
  logits = _logits(model, pixel_values=_pixels(exported['image']))  # [labels, 16, 16]: image size
  segmentation = logits.argmax(0)
  got = exported['predictions']['image-segmentation']
  assert len(got) > 1  # several classes: the masks say something
  assert [p['label'] for p in got] == [model.config.id2label[i] for i in np.unique(segmentation)]
  for p in got:
    label = model.config.id2label.index(p['label'])
    np.testing.assert_array_equal(np.asarray(p['mask']) == 255, segmentation == label)


@pytest.mark.parametrize('num_channels', [1, 3])
def test_image_processor_normalizes_as_the_vision_input_pipeline(num_channels, tmp_path):
  transformers = pytest.importorskip('transformers')
  config = vision_configs.get_config('tiny')
  model_config = registry.model_config(config)
  model_config = dataclasses.replace(model_config, num_channels=num_channels)
  for name, text in preprocessors.export_files(config, model_config).items():
    (tmp_path / name).write_text(text)
  processor = transformers.AutoImageProcessor.from_pretrained(tmp_path)
  image = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
  pil = Image.fromarray(image, mode='L').convert('RGB' if num_channels == 3 else 'L')
  got = processor(pil, return_tensors='np')['pixel_values'][0]
  pixels = vision_pipeline.Transform(
      model_config.image_size, num_channels, tuple(config.input.mean), tuple(config.input.std))
  np.testing.assert_allclose(got, pixels(image[..., None]), atol=1e-5)  # no rng: evaluation
