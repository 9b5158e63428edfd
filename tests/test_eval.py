"""Probes: metrics, determinism, feature shapes per modality, eval.py's JSON, random_init, HF
folders, and the ridge probe logged during pretraining."""
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import eval as eval_lib
import train
from configs import probe_vision
from data2vec import checkpoint, hf, optimizer, pretraining, sharding, workdirs
from data2vec.evaluators import data, features, linear, ridge
from data2vec.models import audio, text, vision
from tests.test_train import micro_vision_config, needs_fashion_mnist, read_metrics, restore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _blobs(seed, per_class, num_classes=3, dim=8, spread=0.5):
  """Gaussian clusters around fixed random centres: (x [N, dim] float32, y [N])."""
  centres = np.random.default_rng(123).normal(size=(num_classes, dim))
  rng = np.random.default_rng(seed)
  y = np.repeat(np.arange(num_classes), per_class)
  return (centres[y] + spread * rng.normal(size=(len(y), dim))).astype(np.float32), y


CLASSIFIER = dict(steps=50, l2_reg=1e-4, layer_norm=True)


def test_classification_metrics_by_hand():
  labels = np.array([0, 0, 1, 1, 2, 2])
  preds = np.array([0, 1, 1, 1, 2, 0])
  m = linear.classification_metrics(labels, preds, 3)
  assert m['accuracy'] == pytest.approx(4 / 6)
  assert m['per_class_accuracy'] == pytest.approx([0.5, 1.0, 0.5])
  # F1 = 2TP / (2TP + FP + FN): class 0: 2/4, class 1: 4/5, class 2: 2/3.
  assert m['macro_f1'] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
  # A class without test examples (a small class of a user's folder) is left out of the macro
  # average; one the classifier predicted wrongly still counts as a false positive elsewhere.
  m4 = linear.classification_metrics(labels, np.array([0, 1, 1, 1, 2, 3]), 4)
  assert m4['per_class_accuracy'][3] is None
  assert m4['macro_f1'] == pytest.approx((2 / 3 + 0.8 + 2 / 3) / 3)
  with pytest.raises(ValueError, match='no test examples'):
    linear.classification_metrics(labels[:0], preds[:0], 3)


def test_subsample_per_class():
  labels = np.repeat(np.arange(4), 10)[np.random.default_rng(0).permutation(40)]
  idx = linear.subsample_per_class(labels, 4, 3, seed=7)
  assert np.bincount(labels[idx], minlength=4).tolist() == [3] * 4
  np.testing.assert_array_equal(idx, linear.subsample_per_class(labels, 4, 3, seed=7))
  assert not np.array_equal(idx, linear.subsample_per_class(labels, 4, 3, seed=8))
  assert len(linear.subsample_per_class(labels, 4, 0, seed=7)) == 40
  with pytest.raises(ValueError, match='labels_per_class=11: class 0 has only 10'):
    linear.subsample_per_class(labels, 4, 11, seed=0)


def test_linear_probe_is_deterministic_and_learns():
  # Overlapping clusters, so that accuracies depend on which labels were drawn.
  train_x, train_y = _blobs(0, per_class=50, spread=1.5)
  test_x, test_y = _blobs(1, per_class=50, spread=1.5)
  run = lambda seed, budget, labels=train_y: linear.probe(
      train_x, labels, test_x, test_y, 3, labels_per_class=budget, seed=seed,
      classifier=CLASSIFIER)
  first = run(0, 5)
  assert first == run(0, 5)
  assert first['num_train_examples'] == 15
  assert [run(seed, 5)['accuracy'] for seed in (1, 2)] != [first['accuracy']] * 2
  assert run(0, 0)['accuracy'] > 0.7  # chance is 1/3
  # Labels unrelated to the inputs: the probe cannot beat chance by much.
  assert run(0, 0, np.random.default_rng(0).permutation(train_y))['accuracy'] < 0.45


def test_ridge_accuracy():
  train_x, train_y = _blobs(0, per_class=40)
  test_x, test_y = _blobs(1, per_class=40)
  assert ridge.ridge_accuracy(train_x, train_y, test_x, test_y, num_classes=3, l2_reg=1.0) > 0.95
  shuffled = np.random.default_rng(0).permutation(train_y)
  assert ridge.ridge_accuracy(train_x, shuffled, test_x, test_y, num_classes=3,
                              l2_reg=1.0) < 0.6
  # Without regularisation the solve is least squares on the design matrix.
  mean, std = train_x.mean(0), train_x.std(0) + 1e-5
  design = lambda x: np.c_[(x - mean) / std, np.full(len(x), ridge.BIAS_FEATURE)]
  coef = np.linalg.lstsq(design(train_x.astype(np.float64)), 2 * np.eye(3)[train_y] - 1,
                         rcond=None)[0]
  expected = np.mean(np.argmax(design(test_x) @ coef, 1) == test_y)
  assert ridge.ridge_accuracy(train_x, train_y, test_x, test_y, num_classes=3,
                              l2_reg=0.0) == pytest.approx(expected)


# ------------------------------------------------------------------ features per modality

def _vision_case():
  cfg = vision.VisionConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=32, image_size=8, patch_size=4, num_channels=1)
  pixels = np.random.default_rng(0).normal(size=(3, 1, 8, 8)).astype(np.float32)
  tokens = np.ones((3, 5), bool)
  tokens[:, 0] = False  # the cls token is not pooled
  return vision.Data2VecVisionModel, cfg, {'pixel_values': pixels}, tokens


def _text_case():
  cfg = text.TextConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=24)
  lengths = np.array([7, 4, 2])
  mask = np.arange(7)[None] < lengths[:, None]
  ids = np.random.default_rng(0).integers(3, 50, (3, 7))
  batch = {'input_ids': np.where(mask, ids, cfg.pad_token_id), 'attention_mask': mask.astype(int)}
  return text.Data2VecTextModel, cfg, batch, mask


def _audio_case():
  cfg = audio.AudioConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 2),
                          conv_kernel=(10, 3), num_conv_pos_embeddings=2,
                          conv_pos_kernel_size=5, num_conv_pos_embedding_groups=2)
  lengths = np.array([3000, 2401, 1999])
  mask = np.arange(3000)[None] < lengths[:, None]
  waves = np.random.default_rng(0).normal(size=(3, 3000)).astype(np.float32)
  frames = np.asarray(audio.frame_mask(cfg, mask, 299))  # 3000 samples -> 299 frames
  return (audio.Data2VecAudioModel, cfg,
          {'input_values': np.where(mask, waves, 0), 'attention_mask': mask.astype(int)}, frames)


def test_pool_averages_the_chosen_layers_over_the_chosen_tokens():
  hidden = np.random.default_rng(0).normal(size=(4, 2, 5, 3)).astype(np.float32)  # L+1 = 4
  tokens = np.array([[1, 1, 0, 0, 0], [0, 1, 1, 1, 1]], bool)
  for layer, num_layers, layers in ((-1, 1, [3]), (-1, 2, [2, 3]), (1, 2, [0, 1]), (0, 1, [0])):
    expected = np.stack([hidden[layers].mean(0)[b, tokens[b]].mean(0) for b in range(2)])
    np.testing.assert_allclose(features.pool(hidden, tokens, layer, num_layers), expected,
                               rtol=1e-6)


@pytest.mark.parametrize('modality,case', [('vision', _vision_case), ('text', _text_case),
                                           ('audio', _audio_case)])
def test_feature_shapes_per_modality(modality, case):
  """[B, D] float32 features: the mean over the right tokens of the top two layers."""
  model_cls, cfg, batch, tokens = case()
  model = model_cls(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.graphdef(model), nnx.to_pure_dict(nnx.state(model))
  fn = features.feature_fn(graphdef, modality, -1, 2)
  both = jax.jit(lambda p, b: (features.FORWARD[modality](nnx.merge(graphdef, p), b), fn(p, b)))
  (hidden, got_tokens), got = both(params, batch)
  assert hidden.shape[:2] == (cfg.num_hidden_layers + 1, 3)
  np.testing.assert_array_equal(got_tokens, tokens)
  assert got.shape == (3, cfg.hidden_size) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, features.pool(hidden, tokens, -1, 2), rtol=1e-5, atol=1e-6)


def test_text_features_ignore_padding():
  model_cls, cfg, batch, mask = _text_case()
  model = model_cls(cfg, rngs=nnx.Rngs(0))
  fn = jax.jit(features.feature_fn(nnx.graphdef(model), 'text', -1, 1))
  params = nnx.to_pure_dict(nnx.state(model))
  padded = fn(params, batch)
  n = mask[1].sum()
  alone = fn(params, {k: v[1:2, :n] for k, v in batch.items()})
  np.testing.assert_allclose(padded[1:2], alone, rtol=1e-5, atol=1e-6)


def test_bad_layer_choices_raise():
  features.check_layers(6, -7, 1)  # hidden_states[0]: the embeddings
  with pytest.raises(ValueError, match='features.layer=7'):
    features.check_layers(6, 7, 1)
  with pytest.raises(ValueError, match='features.num_layers=3'):
    features.check_layers(6, 1, 3)


def test_probe_config_label_budgets():
  assert probe_vision.get_config().labels_per_class == (10, 100, 0)
  assert probe_vision.get_config('1,all').labels_per_class == (1, 0)
  with pytest.raises(ValueError, match="'ten' is not a positive number"):
    probe_vision.get_config('ten')


# ------------------------------------------------------------------ eval.py on a workdir

def small_probe_config(**overrides):
  """Two label budgets, two seeds, the first examples of each split: seconds on CPU.

  overrides: flattened keys, e.g. {'features.layer': 5}.
  """
  config = probe_vision.get_config('5,all')
  config.update(dict(seeds=(0, 1), num_train_examples=400, num_test_examples=300,
                     batch_size=100))
  config.classifier.steps = 100
  config.update_from_flattened_dict(overrides)
  return config


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('pretrained'))
  config = micro_vision_config(total_steps=4, log_every_steps=1, checkpoint_every_steps=4,
                               probe_every_steps=2)
  config.ridge_probe.update(dict(num_train=64, num_test=48))
  train.train_and_evaluate(config, path)
  return path, config


@needs_fashion_mnist
def test_eval_writes_json_and_tensorboard_deterministically(workdir, tmp_path):
  path, _ = workdir
  result = eval_lib.evaluate(small_probe_config(), workdir=path, out=str(tmp_path / 'a'))
  assert result['name'] == 'probe_vision_step4'
  with open(tmp_path / 'a' / 'probe_vision_step4.json') as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(result))
  result = written  # the schema below is the file's
  assert any(f.startswith('events.out.tfevents')
             for f in os.listdir(tmp_path / 'a' / 'probe_vision_step4'))
  assert result['source'] == dict(workdir=path, hf=None, random_init=False, raw_features=False,
                                  step=4, init_seed=None)
  assert result['data'] == dict(dataset='fashion_mnist', eval_split='test', num_train=400,
                                num_test=300, num_classes=10, feature_dim=32)
  assert result['config']['labels_per_class'] == [5, 0]
  assert result['encoder_config']['hidden_size'] == 32
  assert [(r['labels_per_class'], r['seed']) for r in result['runs']] == [(5, 0), (5, 1), (0, 0),
                                                                       (0, 1)]
  for r in result['runs']:
    assert set(r) == {'labels_per_class', 'seed', 'num_train_examples', 'train_accuracy',
                      'accuracy', 'macro_f1', 'per_class_accuracy'}
    assert len(r['per_class_accuracy']) == 10 and 0 <= r['macro_f1'] <= 1
    assert r['num_train_examples'] == (50 if r['labels_per_class'] else 400)
  for name, n in (('5_per_class', 5), ('all', 0)):
    accs = [r['accuracy'] for r in result['runs'] if r['labels_per_class'] == n]
    assert result['summary'][name]['accuracy_mean'] == pytest.approx(np.mean(accs))
    assert result['summary'][name]['accuracy_std'] == pytest.approx(np.std(accs, ddof=1))
  again = eval_lib.evaluate(small_probe_config(), workdir=path, out=str(tmp_path / 'b'))
  assert again['runs'] == result['runs']


@needs_fashion_mnist
def test_random_init_skips_the_restore(workdir, tmp_path, monkeypatch):
  path, config = workdir
  untrained = str(tmp_path / 'untrained')  # the config, no checkpoint
  os.makedirs(untrained)
  shutil.copy(os.path.join(path, 'config.json'), untrained)

  def no_restore(*args, **kwargs):
    raise AssertionError('random_init read a checkpoint')

  monkeypatch.setattr(workdirs, 'restore_model', no_restore)
  monkeypatch.setattr(checkpoint.Checkpointer, 'restore', no_restore)
  probe = small_probe_config(random_init=True)
  result = eval_lib.evaluate(probe, workdir=untrained)
  assert result['name'] == 'probe_vision_random_init'
  assert result['source']['init_seed'] == config.seed and result['source']['step'] is None
  assert os.path.exists(os.path.join(untrained, 'eval', 'probe_vision_random_init.json'))
  # The identical architecture, initialised as pretraining started (its step-0 encoder).
  model, _ = eval_lib.load_encoder(probe, workdir=untrained)
  tx, _ = optimizer.from_config(config)
  initial = jax.jit(pretraining.init_state_fn(config, tx))()['params']['encoder']
  # (jit and eager round the depth-scaled init differently, hence allclose.)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8),
               nnx.to_pure_dict(nnx.state(model)), initial)
  monkeypatch.undo()
  trained = eval_lib.evaluate(small_probe_config(), workdir=path, out=str(tmp_path / 'trained'))
  assert trained['runs'] != result['runs']


@needs_fashion_mnist
def test_hf_folder_probes_like_its_workdir(workdir, tmp_path):
  path, _ = workdir
  folder = str(tmp_path / 'hf')
  hf.save_pretrained(workdirs.restore_model(path)[0], folder)
  from_hf = eval_lib.evaluate(small_probe_config(), hf_path=folder, out=str(tmp_path / 'out'))
  from_workdir = eval_lib.evaluate(small_probe_config(), workdir=path,
                                   out=str(tmp_path / 'out'))
  assert from_hf['name'] == 'probe_vision_hf'
  for a, b in zip(from_hf['runs'], from_workdir['runs']):
    assert a['accuracy'] == pytest.approx(b['accuracy'], abs=1 / 300)


@needs_fashion_mnist
def test_usage_errors_come_before_any_work(workdir, tmp_path):
  path, _ = workdir
  cases = [
      (dict(), dict(workdir=path, hf_path=path), 'exactly one of --workdir and --hf'),
      (dict(), dict(hf_path=path), '--out is required'),
      (dict(random_init=True, step=4), dict(workdir=path), 'reads no checkpoint'),
      (dict(raw_features=True), dict(workdir=path), 'raw_features=True probes the inputs'),
      ({'features.layer': 5}, dict(workdir=path), 'features.layer=5'),
      ({'input.mean': (0.5,)}, dict(workdir=path), r'config.input.mean=\(0.5,\) differs'),
  ]
  for overrides, kwargs, message in cases:
    with pytest.raises(ValueError, match=message):
      eval_lib.evaluate(small_probe_config(**overrides), **kwargs)
  assert not os.path.exists(os.path.join(path, 'eval', 'probe_vision_step4.json'))


@needs_fashion_mnist
def test_cli_probes_raw_pixels(tmp_path):
  out = str(tmp_path / 'raw')
  proc = subprocess.run(
      [sys.executable, 'eval.py', '--config', 'configs/probe_vision.py:5', '--out', out,
       '--config.raw_features=True', '--config.seeds=(0,)', '--config.num_train_examples=300',
       '--config.num_test_examples=200', '--config.classifier.steps=100'],
      cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  printed = json.loads(proc.stdout)
  assert printed['name'] == 'probe_vision_raw'
  assert printed['data']['feature_dim'] == 28 * 28
  assert printed['summary']['5_per_class']['accuracy_mean'] > 0.3  # chance is 0.1


# ------------------------------------------------------------------ the ridge probe in train.py

@needs_fashion_mnist
def test_ridge_probe_is_logged_with_the_checkpointed_params(workdir):
  path, config = workdir
  logged = {m['step']: m.get('ridge_probe_accuracy') for m in read_metrics(path)}
  assert [s for s, acc in logged.items() if acc is not None] == [2, 4]
  # Recomputed from the step-4 checkpoint: the probe saw the params of its step.
  state, _ = restore(path, config)
  mesh = sharding.make_mesh(config.mesh)
  encoder_def, _ = pretraining.graph_defs(config)
  params = jax.device_put(state['params']['encoder'], sharding.replicated(mesh))
  probe = ridge.RidgeProbe(config, encoder_def, mesh)
  assert probe(params)['ridge_probe_accuracy'] == pytest.approx(logged[4], abs=1e-6)


@needs_fashion_mnist
def test_ridge_probe_of_the_raw_inputs(workdir):
  _, config = workdir  # num_train 64, num_test 48
  x, y = {}, {}
  for split, num in (('train', 64), ('test', 48)):
    batches, _ = data.labelled_batches('vision', data_dir=config.data_dir,
                                       input_config=data.probe_input(config), split=split,
                                       model_config=None, batch_size=config.batch_size)
    rows = -(-num // config.batch_size) * config.batch_size  # RidgeProbe's whole batches
    pixels, labels = zip(*((np.asarray(b['pixel_values']), b['label']) for b, _ in
                           zip(batches, range(rows // config.batch_size))))
    x[split], y[split] = np.concatenate(pixels).reshape(rows, -1), np.concatenate(labels)
  expect = ridge.ridge_accuracy(x['train'], y['train'], x['test'], y['test'], num_classes=10,
                                l2_reg=config.ridge_probe.l2_reg)
  assert ridge.raw_accuracy(config) == expect > 0.3  # chance: 0.1
