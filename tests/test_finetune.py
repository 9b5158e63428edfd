"""Fine-tuning through train.py: every task learns, init from a workdir or a transformers folder,
frozen parameters, layer decay vs BEiT, CTC decoding and CER, resume, export to a pipeline."""
import dataclasses
import functools
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import train
from configs import audio, common, finetune_audio, finetune_text, finetune_vision, text, vision
from data2vec import config_validation, finetuning, hf, init_from, optimizer, workdirs
from data2vec.hf import preprocessors
from data2vec.input_pipeline import finetune as finetune_input
from data2vec.models import registry
from tests.test_train import (interrupt_and_rerun, micro_vision_config, needs_fashion_mnist,
                              read_metrics)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = common.DEFAULT_DATA_DIR
_needs = lambda path, what: pytest.mark.skipif(
    not os.path.exists(os.path.join(DATA, path)) and not os.environ.get('CI'),
    reason=f'run `python scripts/prepare_data.py {what}` first')
needs_speech = _needs('spoken_digit_strings/dataset.json', 'audio')
needs_supersense = _needs('wordnet_supersense/dataset.json', 'text')

MICRO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
MICRO_MODEL = {
    'vision': dict(MICRO, patch_size=7),
    # 320 samples a frame, as the real CNN: 200 frames for the longest digit string.
    'audio': dict(MICRO, conv_dim=(16,) * 4, conv_kernel=(10, 4, 4, 4), conv_stride=(5, 4, 4, 4),
                  num_conv_pos_embeddings=1, num_conv_pos_embedding_groups=2,
                  classifier_proj_size=16),
    'text': MICRO,
}
CONFIGS = {'vision': finetune_vision, 'audio': finetune_audio, 'text': finetune_text}
PRETRAINING = {'vision': vision, 'audio': audio, 'text': text}


def micro_config(modality, arg='tiny', **overrides):
  """A tiny fine-tune config shrunk so that a step takes milliseconds."""
  config = CONFIGS[modality].get_config(arg)
  config.model.update(MICRO_MODEL[modality])
  config.update(dict(batch_size=16, total_steps=20, log_every_steps=1, checkpoint_every_steps=10,
                     eval_every_steps=0))
  config.optimizer.update(dict(peak_lr=3e-3, warmup_steps=0) if modality != 'audio' else
                          dict(peak_lr=3e-3))
  if modality == 'text':
    config.input.max_length = 32
  if modality == 'audio':
    config.freeze_finetune_updates = 0
  config.update(overrides)
  return config


def flat(tree):
  """{'a/b/0/c': leaf} of a nested dict (nnx lists give integer keys)."""
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
  return {jax.tree_util.keystr(p, simple=True, separator='/'): v for p, v in leaves}


# ---------------------------------------------------------------- configs


FINETUNE_CONFIGS = ([(m, v) for m in ('vision', 'text') for v in common.VARIANTS] +
                    [('audio', f'{j},{v}') for j in finetune_audio.JOBS for v in common.VARIANTS])


@pytest.mark.parametrize('modality,arg', FINETUNE_CONFIGS)
def test_every_finetune_config_is_valid(modality, arg):
  config = CONFIGS[modality].get_config(arg)
  config_validation.validate(config)
  for key in ('total_steps', 'batch_size', 'seed', 'log_every_steps', 'checkpoint_every_steps',
              'keep_checkpoints', 'data_dir', 'model', 'mesh'):
    assert key in config, key
  # The encoder is the pretraining config's: a pretraining workdir of the variant fits it.
  encoder = PRETRAINING[modality].get_config(config.variant).model
  differ = {k for k in encoder if encoder[k] != config.model[k]}
  assert differ <= set(init_from.RUNTIME_FIELDS + init_from.HEAD_FIELDS[modality]), differ


@pytest.mark.parametrize('mutate,error', [
    (dict(layer_decay=0.0), r'config\.layer_decay=0\.0: must be in \(0, 1\]'),
    (dict(head='Data2VecVisionForSemanticSegmentation'), r'config\.head=.*must be one of'),
    (dict(eval_splits=('validation',)), r"config\.eval_splits=.*must name some of the splits "
                                        r"\('train', 'test'\)"),
    (dict(task='distill'), r"config\.task='distill': must be one of \('pretrain', 'pretrain2', 'finetune'\)"),
    (dict(ema=None), r'config\.ema: unknown key \(configs/finetune_vision\.py'),
])
def test_bad_vision_finetune_values_name_the_field(mutate, error):
  config = finetune_vision.get_config('tiny')
  config.update(mutate)
  with pytest.raises(config_validation.ConfigError, match=error):
    config_validation.validate(config)


@pytest.mark.parametrize('mutate,error', [
    (dict(freeze_finetune_updates=1500), r'config\.freeze_finetune_updates=1500: must be in '
                                         r'\[0, config\.total_steps=1500\)'),
    (dict(layer_decay=0.5), r'config\.layer_decay: unknown key'),
])
def test_bad_audio_finetune_values_name_the_field(mutate, error):
  config = finetune_audio.get_config('ctc')
  config.update(mutate)
  with pytest.raises(config_validation.ConfigError, match=error):
    config_validation.validate(config)


def test_ctc_alphabet_must_fit_the_vocabulary():
  config = finetune_audio.get_config('ctc')
  config.input.characters = '0123456789abc'
  with pytest.raises(config_validation.ConfigError, match=r'config\.input\.characters=.*'
                     r'config\.model\.vocab_size=15'):
    config_validation.validate(config)


# ---------------------------------------------------------------- learning rates and freezing


def test_layer_decay_scales_match_beit_on_transformers_names():
  """BEiT's get_num_layer_for_vit on the transformers state-dict keys, vs our stacked scales."""
  config = micro_config('vision')
  config.model.num_hidden_layers = layers = 3
  finetune_input.fill_classes(config)  # id2label (): Fashion-MNIST's classes
  model = nnx.eval_shape(lambda: finetuning.build_model(config, nnx.Rngs(0)))
  params = {'model': nnx.to_pure_dict(nnx.state(model))}
  decay = 0.6
  ours = flat(optimizer.layer_decay_scales(params, num_layers=layers, decay=decay))

  def beit_layer(key):
    block = re.search(r'\.encoder\.layer\.(\d+)\.', key)
    if block:
      return int(block.group(1)) + 1
    return 0 if '.embeddings.' in key else layers + 1

  keys = 0
  for row in hf.io.weight_rows(model):
    scales = np.asarray(ours['model/' + row.ours]).reshape(-1)  # one, or one per layer
    names = [row.theirs.format(i=i) for i in range(layers)] if '{i}' in row.theirs else \
        [row.theirs]
    assert len(scales) == len(names), row
    for scale, key in zip(scales, names):
      assert scale == pytest.approx(decay ** (layers + 1 - beit_layer(key)), rel=1e-6), key
      keys += 1
  assert keys > 40


@needs_speech
def test_frozen_cnn_and_freeze_period():
  """freeze_feature_encoder: the CNN never moves; freeze_finetune_updates=2: the first two
  updates move the head only (weight decay included), the third the encoder too."""
  config = micro_config('audio', 'ctc', freeze_finetune_updates=2)
  config.optimizer.weight_decay = 0.1
  task = finetuning.Task(config)
  state = jax.jit(task.init_state)()
  step = jax.jit(task.train_step(jax.eval_shape(task.init_state)))
  rng = np.random.default_rng(0)
  batch = {'input_values': rng.normal(size=(2, 8000)).astype(np.float32),
           'attention_mask': np.ones((2, 8000), np.int32),
           'labels': np.array([[5, 6, 7], [8, 9, -100]], np.int32)}
  history = [flat(state['params'])]
  for _ in range(3):
    state, metrics = step(state, batch)
    history.append(flat(state['params']))
  assert np.isfinite(metrics['loss'])
  moved = lambda a, b, pattern: {k for k in a if re.search(pattern, k)
                                 and not np.array_equal(a[k], b[k])}
  cnn, encoder, head = '/feature_extractor/', '^model/data2vec_audio/', '^model/lm_head/'
  assert not moved(history[0], history[3], cnn)
  assert not moved(history[0], history[2], encoder)
  assert moved(history[0], history[1], head) == {'model/lm_head/kernel', 'model/lm_head/bias'}
  third = moved(history[2], history[3], encoder)
  assert any('/encoder/layers/' in k for k in third) and not any(cnn in k for k in third)


def test_speed_change_scales_length_and_pitch():
  t = np.arange(16_000) / 16_000
  faster = finetune_input.change_speed(np.sin(2 * np.pi * 440 * t).astype(np.float32), 1.25)
  assert len(faster) == 12_800
  spectrum = np.abs(np.fft.rfft(faster))
  assert np.argmax(spectrum) * 16_000 / len(faster) == pytest.approx(550, abs=1.5)


# ---------------------------------------------------------------- CTC decoding and CER


def reference_edit_distance(a, b):
  @functools.lru_cache(maxsize=None)
  def d(i, j):
    if not i or not j:
      return i + j
    return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))
  return d(len(a), len(b))


def test_edit_distance_and_cer_against_a_recursive_reference():
  assert finetuning.edit_distance('kitten', 'sitting') == 3
  rng = np.random.default_rng(0)
  hyps, refs = [], []
  for _ in range(50):
    hyps.append(''.join(rng.choice(list('0123'), rng.integers(0, 8))))
    refs.append(''.join(rng.choice(list('0123'), rng.integers(1, 8))))
    assert finetuning.edit_distance(hyps[-1], refs[-1]) == reference_edit_distance(hyps[-1],
                                                                                   refs[-1])
  want = sum(map(reference_edit_distance, hyps, refs)) / sum(map(len, refs))
  assert finetuning.character_error_rate(hyps, refs) == pytest.approx(want)


def test_greedy_ctc_decoding_matches_the_transformers_tokenizer(tmp_path):
  transformers = pytest.importorskip('transformers')
  vocab = preprocessors.ctc_vocab('0123456789')
  for name, text in preprocessors.ctc_processor_files(vocab).items():
    (tmp_path / name).write_text(text)
  tokenizer = transformers.Wav2Vec2CTCTokenizer.from_pretrained(str(tmp_path))
  rng = np.random.default_rng(0)
  ids = rng.choice([0, 0, 0, 4, 5, 6, 7, 14], size=(20, 30))  # mostly blank, some '|'
  lengths = rng.integers(0, 31, 20)
  ours = finetuning.ctc_texts(ids, lengths, vocab)
  assert ours == [tokenizer.decode(row[:n]) for row, n in zip(ids, lengths)]
  labels = np.full((2, 4), finetune_input.IGNORE)
  labels[0, :3], labels[1, :1] = preprocessors.ctc_encode('907', vocab), vocab['3']
  assert finetuning.label_texts(labels, vocab) == ['907', '3']


# ---------------------------------------------------------------- train.py end to end


TASKS = [
    pytest.param('vision', 'tiny', 'test_accuracy', marks=needs_fashion_mnist),
    pytest.param('audio', 'digits', 'test_accuracy', marks=needs_speech),
    pytest.param('audio', 'ctc', 'test_cer', marks=needs_speech),
    pytest.param('text', 'tiny', 'validation_accuracy', marks=needs_supersense),
]


@pytest.fixture(scope='module')
def finetuned(tmp_path_factory):
  """(modality, arg, eval split) -> (workdir, config) of a 20-step micro fine-tune, run once."""
  runs = {}

  def run(modality, arg, split):
    if (modality, arg) not in runs:
      config = micro_config(modality, arg, eval_splits=(split,))
      workdir = str(tmp_path_factory.mktemp(f'{modality}_{arg}'))
      train.train_and_evaluate(config, workdir)
      runs[modality, arg] = workdir, config
    return runs[modality, arg]

  return run


@pytest.mark.parametrize('modality,arg,score', TASKS)
def test_a_short_finetune_learns(modality, arg, score, finetuned):
  workdir, _ = finetuned(modality, arg, score.split('_')[0])
  logged = read_metrics(workdir)
  assert [m['step'] for m in logged] == list(range(1, 21))
  losses = [m['loss'] for m in logged]
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05, losses  # beyond the batches' noise
  assert 0 <= logged[-1][score] <= 1 + (score == 'test_cer')


@pytest.fixture(scope='module')
def head_folder(tmp_path_factory):
  """(a transformers folder of a random vision classifier with 3 labels, its encoder's weights)."""
  config = micro_config('vision')
  head_cfg = dataclasses.replace(registry.model_config(config), id2label=('a', 'b', 'c'))
  head = finetuning.HEADS['vision'][config.head](head_cfg, rngs=nnx.Rngs(7))
  folder = str(tmp_path_factory.mktemp('hf'))
  hf.save_pretrained(head, folder, overwrite=True)
  return folder, flat(nnx.to_pure_dict(nnx.state(head.data2vec_vision)))


def assert_same(got, want, keys):
  for k in keys:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@needs_fashion_mnist
def test_init_from_a_transformers_head_folder_takes_its_encoder(head_folder, tmp_path):
  """Fine-tuning and pretraining (import_hf.py) both start from the encoder of a saved head."""
  folder, want = head_folder
  config = micro_config('vision', init_from=folder)
  state = train.train_and_evaluate(config, str(tmp_path / 'ft'), import_only=True)
  got = flat(state['params']['model']['data2vec_vision'])
  assert set(got) == set(want)
  assert_same(got, want, want)

  state = train.train_and_evaluate(micro_vision_config(init_from=folder), str(tmp_path / 'pt'),
                                   import_only=True)
  for tree in (state['params']['encoder'], state['teacher']):
    got = flat(tree)
    assert set(want) - set(got) == {'pooler_norm/scale', 'pooler_norm/bias'}  # no pooler
    assert_same(got, want, got)


@needs_fashion_mnist
def test_init_from_a_pretraining_workdir_loads_its_student(head_folder, tmp_path):
  pretrained = str(tmp_path / 'pt')  # a pretraining workdir: its step-0 student is the folder's
  train.train_and_evaluate(micro_vision_config(init_from=head_folder[0]), pretrained,
                           import_only=True)
  state = train.train_and_evaluate(micro_config('vision', init_from=pretrained),
                                   str(tmp_path / 'ft'), import_only=True)
  got = flat(state['params']['model']['data2vec_vision'])
  want = flat(nnx.to_pure_dict(nnx.state(workdirs.restore_model(pretrained)[0])))
  assert set(got) - set(want) == {'pooler_norm/scale', 'pooler_norm/bias'}  # the head's pooler
  assert_same(got, want, want)
  np.testing.assert_array_equal(got['pooler_norm/scale'], 1)  # kept its initialisation


@needs_fashion_mnist
def test_a_finetune_run_resumes_exactly(finetuned, tmp_path):
  """The 20 steps of `finetuned` == 10 steps, stop, rerun the same command for the rest."""
  straight, config = finetuned('vision', 'tiny', 'test')
  split = str(tmp_path)
  interrupt_and_rerun(config, split, batches=10)
  a, b = (flat(nnx.to_pure_dict(nnx.state(workdirs.restore_model(w)[0])))
          for w in (straight, split))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  (first, *_, last), (_, *_, again) = read_metrics(straight), read_metrics(split)
  assert first['step'] == 1 and last['loss'] == again['loss']
  assert last['test_accuracy'] == again['test_accuracy']


@needs_speech
def test_export_of_a_ctc_finetune_runs_in_the_asr_pipeline(finetuned, tmp_path):
  transformers = pytest.importorskip('transformers')
  torch = pytest.importorskip('torch')
  workdir, config = finetuned('audio', 'ctc', 'test')
  out = str(tmp_path / 'hf')
  run = subprocess.run([sys.executable, 'scripts/export_hf.py', '--workdir', workdir, '--out', out],
                       cwd=REPO, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr[-2000:]
  with open(os.path.join(out, 'config.json')) as f:
    assert json.load(f)['architectures'] == ['Data2VecAudioForCTC']
  vocab = finetune_input.ctc_vocab(config)
  with open(os.path.join(out, 'vocab.json')) as f:
    assert json.load(f) == vocab

  clips, _ = finetune_input.load_split(config, 'test')
  asr = transformers.pipeline('automatic-speech-recognition', model=out)
  ours, _ = workdirs.restore_model(workdir)
  for clip in clips[:3]:
    logits = np.asarray(ours(clip[None])['logits'][0])
    with torch.no_grad():
      theirs = asr.model(torch.from_numpy(clip[None])).logits[0].numpy()
    np.testing.assert_allclose(logits, theirs, atol=1e-4)
    want = finetuning.ctc_texts(np.argmax(logits, -1)[None], [len(logits)], vocab)[0]
    assert asr({'raw': clip, 'sampling_rate': 16000})['text'] == want
