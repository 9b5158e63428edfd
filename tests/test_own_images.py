"""A user's image folder end to end, on real files no test generated: the Tux Paint stamps
(tuxpaint-stamps-default: 796 PNGs in 16 category folders, RGBA / grey+alpha / palette / colour-key
images of many sizes). Prepare -> pretrain at 224 px -> kill and resume -> probe -> fine-tune, and
the bad inputs of the preparation."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import PIL.Image
import pytest

import eval as eval_script
import train
from configs import finetune_vision, probe_vision, vision
from data2vec.evaluators import data as probe_data
from data2vec.input_pipeline import datasets, images
from data2vec.input_pipeline import vision as vision_input
from data2vec.preparation import images as images_prep
from data2vec.preparation import shards, sources
from tests.test_train import interrupt_and_rerun, read_metrics

STAMPS = pathlib.Path('/usr/share/tuxpaint/stamps')
ROOT = pathlib.Path(__file__).resolve().parents[1]
needs_stamps = pytest.mark.skipif(
    not STAMPS.is_dir() and not os.environ.get('CI'),  # CI prepares the audio data: never skipped
    reason='run `python scripts/prepare_data.py audio` first (it installs tuxpaint-stamps-default)')
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _prepare(data_dir, src=STAMPS, name='stamps', **kw):
  kw = {'labels': 'folders', 'val_fraction': 0.1, 'test_fraction': 0.3, 'workers': 2, **kw}
  return images_prep.prepare(src=src, data_dir=data_dir, name=name, **kw)


@pytest.fixture(scope='module')
def stamps(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('data')
  _prepare(data_dir, shard_size=256)
  return data_dir


def _pngs():
  return sorted(STAMPS.rglob('*.png'))


# ---------------------------------------------------------------- preparation


@needs_stamps
def test_stamps_prepare_with_labels_from_folders(stamps):
  dataset = datasets.load(stamps, 'stamps', modality='vision')
  classes = sorted(p.name for p in STAMPS.iterdir() if p.is_dir() and list(p.rglob('*.png')))
  assert dataset.classes == tuple(classes) and len(classes) == 16
  assert sum(dataset.meta['splits'].values()) == len(_pngs())  # every stamp decodes
  assert dataset.meta['skipped']['count'] == 0
  for split in ('train', 'validation', 'test'):
    source = images.open_split(stamps, 'stamps', split)
    assert len(source) == len(source.labels) == dataset.num_examples(split)
    # Labels are the files' category folders, in the file order of the split.
    files = sorted(p for p in _pngs() if sources.holdout_split(
        p.relative_to(STAMPS).as_posix(), 0.1, 0.3) == split)
    expected = [classes.index(p.relative_to(STAMPS).parts[0]) for p in files]
    assert source.labels.tolist() == expected
    image = source[len(source) // 2]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
  assert len(dataset.meta['shards']['train']) == -(-dataset.num_examples('train') // 256)


@needs_stamps
def test_every_stamp_mode_decodes_to_rgb_on_white():
  """RGBA, grey + alpha, palette with transparency and an RGB colour key: transparent pixels
  become white paper; the opaque ones keep their colour."""
  seen = set()
  for path in _pngs():
    with PIL.Image.open(path) as image:
      mode = (image.mode, 'transparency' in image.info)
      if mode in seen:
        continue
      seen.add(mode)
      rgba = np.asarray(image.convert('RGBA')).astype(np.float64)
    got = images.decode_image(path.read_bytes())
    assert got.shape == rgba.shape[:2] + (3,) and got.dtype == np.uint8
    alpha = rgba[..., 3:] / 255
    expected = rgba[..., :3] * alpha + 255 * (1 - alpha)
    assert np.abs(got - expected).max() <= 1, mode
  assert {('RGBA', False), ('LA', False), ('P', True), ('RGB', True)} <= seen


def test_jpeg_decodes_with_libjpeg_turbo_and_cmyk_falls_back(tmp_path):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (40, 60, 3), np.uint8)
  for mode in ('RGB', 'CMYK', 'L'):
    out = tmp_path / f'{mode}.jpg'
    PIL.Image.fromarray(pixels).convert(mode).save(out, quality=95)
    got = images.decode_image(out.read_bytes())
    with PIL.Image.open(out) as reference:
      expected = np.asarray(reference.convert('RGB'))
    assert got.shape == (40, 60, 3)
    assert np.abs(got.astype(int) - expected).mean() < 2, mode
  with pytest.raises(ValueError, match='not a readable image'):
    images.decode_image(b'\xff\xd8 not really a jpeg')


@pytest.mark.parametrize('in_size,out_size', [(375, 224), (500, 224), (28, 28), (20, 28), (7, 3)])
def test_resize_is_jax_image_resize_with_antialiasing(in_size, out_size):
  x = np.random.default_rng(0).random((in_size, in_size + 5, 3), np.float32)
  ours = vision_input.resize(x, out_size)
  ref = jax.image.resize(x, (out_size, out_size, 3), 'linear', antialias=True)
  np.testing.assert_allclose(ours, np.transpose(np.asarray(ref), (2, 0, 1)), atol=5e-5)


@needs_stamps
def test_rerun_is_idempotent_and_never_damages_a_prepared_set(stamps, capsys):
  before = {p.name: p.stat().st_mtime_ns for p in (stamps / 'stamps').iterdir()}
  _prepare(stamps, shard_size=256)
  assert 'already prepared' in capsys.readouterr().out
  # Other options without --overwrite: refused, nothing touched.
  with pytest.raises(ValueError, match='--overwrite'):
    _prepare(stamps, shard_size=128)
  assert {p.name: p.stat().st_mtime_ns for p in (stamps / 'stamps').iterdir()} == before
  assert not (stamps / 'stamps.partial').exists() or not any(
      (stamps / 'stamps.partial').glob('*.array_record'))


@needs_stamps
def test_killed_preparation_resumes_with_the_shards_it_wrote(tmp_path, monkeypatch):
  src = tmp_path / 'src'
  shutil.copytree(STAMPS / 'food', src / 'food')
  shutil.copytree(STAMPS / 'plants', src / 'plants')
  write = images_prep._write_shard
  calls = []

  def dies_after_two(job):
    if len(calls) == 2:
      raise KeyboardInterrupt  # a kill between shards
    calls.append(job[0])
    return write(job)

  monkeypatch.setattr(images_prep, '_write_shard', dies_after_two)
  with pytest.raises(KeyboardInterrupt):
    _prepare(tmp_path, src=src, name='food', shard_size=16, workers=1)
  assert not (tmp_path / 'food').exists()
  monkeypatch.setattr(images_prep, '_write_shard', lambda job: calls.append(job[0]) or write(job))
  _prepare(tmp_path, src=src, name='food', shard_size=16, workers=1)
  dataset = datasets.load(tmp_path, 'food')
  total = -(-dataset.num_examples('train') // 16) + -(-dataset.num_examples('test') // 16) + (
      -(-dataset.num_examples('validation') // 16))
  assert len(calls) == total and len(set(calls)) == total  # no shard written twice
  assert sum(dataset.meta['splits'].values()) == 67 + 39
  assert not (tmp_path / 'food.partial').exists()


# ---------------------------------------------------------------- bad input


def _cli(*args):
  return subprocess.run([sys.executable, 'scripts/prepare_data.py', *map(str, args)], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


@needs_stamps
def test_undecodable_files_are_skipped_and_counted_or_fail_with_strict(tmp_path):
  src = tmp_path / 'src'
  for name in ('animals', 'food'):
    (src / name).mkdir(parents=True)
    for i, png in enumerate(sorted((STAMPS / name).rglob('*.png'))[:6]):
      shutil.copy(png, src / name / f'{i}.png')
  data = (src / 'food' / sorted(os.listdir(src / 'food'))[0]).read_bytes()
  (src / 'food' / 'cut.png').write_bytes(data[:len(data) // 3])  # a truncated download
  (src / 'animals' / 'garbage.jpg').write_bytes(b'\xff\xd8\xff\xe0' + bytes(200))
  out = _cli('images', '--src', src, '--name', 'mixed', '--data_dir', tmp_path / 'data',
             '--workers', 1, '--val_fraction', 0, '--test_fraction', 0)
  assert out.returncode == 0, out.stderr
  assert 'skipped 2 images' in out.stdout and 'cut.png' in out.stdout
  meta = datasets.load(tmp_path / 'data', 'mixed').meta
  assert meta['skipped']['count'] == 2 and meta['splits'] == {'train': 12}
  assert any('garbage.jpg' in line for line in meta['skipped']['first'])
  strict = _cli('images', '--src', src, '--name', 'mixed2', '--data_dir', tmp_path / 'data',
                '--workers', 1, '--strict')
  assert strict.returncode != 0 and 'Traceback' not in strict.stderr
  assert '2 images could not be decoded (--strict)' in strict.stderr
  assert not (tmp_path / 'data' / 'mixed2').exists()


@pytest.mark.parametrize('setup,args,error', [
    (lambda d: None, ['--name', 'x'], 'not a folder'),
    (lambda d: d.mkdir(), ['--name', 'x'], 'holds no image files'),
    (lambda d: (d.mkdir(), (d / 'notes.txt').write_text('hi')), ['--name', 'x'],
     'holds no image files'),
    (lambda d: d.mkdir(), ['--name', 'fashion_mnist'], 'is a bundled data set'),
    (lambda d: d.mkdir(), ['--name', '../up'], '--name='),
    (lambda d: d.mkdir(), [], 'needs --name'),
    (lambda d: d.mkdir(), ['--name', 'x', '--val_fraction', '0.7', '--test_fraction', '0.5'],
     'leave no training data'),
])
def test_bad_preparation_input_is_one_line(tmp_path, setup, args, error):
  src = tmp_path / 'src'
  setup(src)
  out = _cli('images', '--src', src, '--data_dir', tmp_path / 'data', *args)
  assert out.returncode != 0
  assert 'Traceback' not in out.stderr and error in out.stderr, out.stderr
  assert len(out.stderr.strip().splitlines()) == 1


def test_split_folders_and_a_flat_folder(tmp_path):
  paths = ['train/cat/a.png', 'train/dog/b.png', 'val/cat/c.png', 'test/dog/d.png']
  listed, classes = sources.assign(tmp_path, paths)
  assert classes == ('cat', 'dog')
  assert [(s.split, s.label) for s in listed] == [('train', 0), ('train', 1), ('validation', 0),
                                                   ('test', 1)]
  listed, classes = sources.assign(tmp_path, ['a.png', 'b.jpg'], labels='auto')
  assert classes == () and {s.label for s in listed} == {sources.UNLABELLED}
  with pytest.raises(ValueError, match='outside them'):
    sources.assign(tmp_path, ['train/cat/a.png', 'other/b.png'])
  with pytest.raises(ValueError, match='not inside a class folder'):
    sources.assign(tmp_path, ['cat/a.png', 'b.png'], labels='folders')


# ---------------------------------------------------------------- training and evaluation


def stamps_config(config, data_dir):
  """A small model on the base recipe's input: 224-px RGB, 16-px patches, ImageNet statistics."""
  config.model.update(dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, image_size=224, patch_size=16, num_channels=3))
  config.input.update(dict(dataset='stamps', mean=IMAGENET_MEAN, std=IMAGENET_STD,
                           center_crop=0.875))
  config.update(dict(data_dir=str(data_dir), batch_size=8))
  config.optimizer.warmup_steps = 1
  return config


def stamps_pretrain_config(data_dir, total_steps=6):
  config = stamps_config(vision.get_config('tiny'), data_dir)
  config.objective.top_k = 2
  config.masking.update(dict(num_masking_patches=118, min_num_patches=16, max_num_patches=196))
  config.update(dict(total_steps=total_steps, log_every_steps=1, checkpoint_every_steps=2,
                     probe_every_steps=0))
  config.ema.tau_n = total_steps
  return config


@needs_stamps
def test_pretraining_at_224_px_on_stamps_resumes_exactly(stamps, tmp_path):
  batch = next(iter(vision_input.make_pretrain_dataset(
      data_dir=stamps, split='train', image_size=224, patch_size=16, num_channels=3,
      batch_size=4, seed=0, mean=IMAGENET_MEAN, std=IMAGENET_STD, num_masking_patches=118,
      dataset='stamps')))
  assert batch['pixel_values'].shape == (4, 3, 224, 224)
  assert batch['bool_masked_pos'].shape == (4, 196) and batch['bool_masked_pos'].sum(1).min() > 90
  white = (1 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)  # transparent background
  assert np.isclose(batch['pixel_values'][:, :, 0, 0], white, atol=0.05).any()

  straight, split = tmp_path / 'straight', tmp_path / 'split'
  train.train_and_evaluate(stamps_pretrain_config(stamps), str(straight))
  interrupt_and_rerun(stamps_pretrain_config(stamps), str(split), batches=3)
  a, b = read_metrics(str(straight)), read_metrics(str(split))
  assert [m['step'] for m in b] == list(range(1, 7))
  assert [m['loss'] for m in a] == [m['loss'] for m in b]
  assert all(np.isfinite(m['loss']) for m in a)
  saved = json.loads((straight / 'config.json').read_text())
  assert saved['input']['dataset'] == 'stamps'
  # The ridge probe during pretraining reads the labelled folder itself.
  assert probe_data.probe_dataset(stamps_pretrain_config(stamps)) == 'stamps'

  # The linear probe of the pretrained encoder on the same folder, with eval.py's function.
  probe = probe_vision.get_config('all')
  probe.input.update(dict(dataset='stamps', mean=IMAGENET_MEAN, std=IMAGENET_STD,
                          center_crop=0.875))
  probe.update(dict(data_dir=str(stamps), seeds=(0, 1), batch_size=64))
  probe.classifier.steps = 20
  result = eval_script.evaluate(probe, workdir=str(straight), hf_path=None,
                                out=str(tmp_path / 'probe'))
  assert result['data']['num_classes'] == 16
  assert result['data']['num_test'] == datasets.load(stamps, 'stamps').num_examples('test')
  assert 0 <= result['summary']['all']['accuracy_mean'] <= 1

  # Fine-tuning from it: the head's classes are the folder's.
  config = stamps_config(finetune_vision.get_config('tiny'), stamps)
  config.update(dict(total_steps=4, log_every_steps=2, checkpoint_every_steps=4,
                     eval_every_steps=4, eval_batch_size=64, init_from=str(straight)))
  train.train_and_evaluate(config, str(tmp_path / 'finetune'))
  saved = json.loads((tmp_path / 'finetune' / 'config.json').read_text())
  assert tuple(saved['model']['id2label']) == datasets.load(stamps, 'stamps').classes
  logged = read_metrics(str(tmp_path / 'finetune'))
  assert any('test_accuracy' in m for m in logged), logged[-1]


@needs_stamps
def test_dataset_names_are_checked_before_training(stamps, tmp_path):
  def run(**input_overrides):
    config = stamps_pretrain_config(stamps)
    config.input.update(input_overrides)
    train.train_and_evaluate(config, str(tmp_path / 'w'))

  with pytest.raises(ValueError, match="'python_docs' is a text data set"):
    run(dataset='python_docs')
  with pytest.raises(ValueError, match=r"'nope'.*dataset.json does not exist.*prepare_data.py "
                                       'images'):
    run(dataset='nope')
  config = stamps_pretrain_config(stamps)
  config.model.num_channels = 1
  with pytest.raises(ValueError, match='num_channels=1: the images of .stamps. have 3'):
    train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()  # nothing written for a config that cannot run
  with pytest.raises(ValueError, match="'speech_pool' is a audio data set"):
    probe_data.num_classes(stamps, 'speech_pool', 'vision')
