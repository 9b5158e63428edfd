"""The Fashion-MNIST preparation script and the vision grain pipelines, on tiny synthetic data
written as the bundled Fashion-MNIST is (a prepared set of grey PNGs)."""
import gzip
import importlib.util
import pathlib

import jax
import numpy as np
import pytest

from data2vec.input_pipeline import images, vision
from data2vec.preparation import images as images_prep

NUM_TRAIN, NUM_TEST = 50, 23
PRETRAIN = dict(split='train', image_size=16, patch_size=4, num_channels=1, batch_size=8, seed=3,
                mean=(0.5,), std=(0.5,), num_masking_patches=6, min_num_patches=2,
                max_num_patches=None, min_aspect=0.3, num_threads=0, prefetch_buffer_size=0)
EVAL = dict(image_size=16, num_channels=1, batch_size=8, mean=(0.5,), std=(0.5,), num_threads=0,
            prefetch_buffer_size=0)
NUM_PATCHES = (16 // 4) ** 2


def _load_prepare_data():
  path = pathlib.Path(__file__).resolve().parents[1] / 'scripts' / 'prepare_data.py'
  spec = importlib.util.spec_from_file_location('prepare_data', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


prepare_data = _load_prepare_data()


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """Random images; each label is the record id, so a batch tells which records it holds."""
  root = tmp_path_factory.mktemp('data')
  rng = np.random.default_rng(0)
  splits = {split: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n))
            for split, n in (('train', NUM_TRAIN), ('test', NUM_TEST))}
  images_prep.prepare_arrays(data_dir=root, name='fashion_mnist', splits=splits,
                             classes=[str(i) for i in range(NUM_TRAIN)], source='random',
                             shard_size=16)
  return root


def _test_images(data_dir):
  source = images.open_split(data_dir, 'fashion_mnist', 'test')
  return np.stack([source[i][..., 0] for i in range(len(source))])


def _take(ds, n):
  it = iter(ds)
  return [next(it) for _ in range(n)]


def _eval_all(data_dir, split='train', **kw):
  batches = list(vision.make_eval_dataset(data_dir=data_dir, split=split, **{**EVAL, **kw}))
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _write_idx(path, array, magic=None):
  magic = bytes([0, 0, 8, array.ndim]) if magic is None else magic
  header = magic + np.asarray(array.shape, '>u4').tobytes()
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


# --- prepare_data ---------------------------------------------------------------------------------


def test_convert_fashion_mnist_round_trips_idx(tmp_path):
  rng = np.random.default_rng(1)
  arrays = {'train_images': rng.integers(0, 256, (7, 28, 28)), 'train_labels': np.arange(7) % 10,
            'test_images': rng.integers(0, 256, (3, 28, 28)), 'test_labels': np.array([9, 0, 4])}
  for name, fname in prepare_data.FASHION_MNIST_FILES.items():
    _write_idx(tmp_path / fname, arrays[name])
  prepare_data.convert_fashion_mnist(tmp_path, tmp_path / 'out')
  for split in ('train', 'test'):
    source = images.open_split(tmp_path / 'out', 'fashion_mnist', split)
    assert source.num_channels == 1
    got = np.stack([source[i] for i in range(len(source))])
    assert got.dtype == np.uint8 and got.shape[-1] == 1
    np.testing.assert_array_equal(got[..., 0], arrays[f'{split}_images'])
    np.testing.assert_array_equal(source.labels, arrays[f'{split}_labels'])
  assert not list((tmp_path / 'out').rglob('*.tmp'))


def test_read_idx_rejects_truncated_payload(tmp_path):
  path = tmp_path / 'train-images-idx3-ubyte.gz'
  _write_idx(path, np.zeros((4, 28, 28)))
  with gzip.open(path, 'rb') as f:
    data = f.read()
  with gzip.open(path, 'wb') as f:
    f.write(data[:-100])
  with pytest.raises(ValueError, match='train-images-idx3-ubyte.gz'):
    prepare_data.read_idx(path, 3)


def test_read_idx_rejects_truncated_gzip(tmp_path):
  path = tmp_path / 't10k-labels-idx1-ubyte.gz'
  _write_idx(path, np.arange(5000) % 10)
  path.write_bytes(path.read_bytes()[:-40])
  with pytest.raises(ValueError, match='t10k-labels-idx1-ubyte.gz'):
    prepare_data.read_idx(path, 1)


def test_read_idx_rejects_wrong_magic(tmp_path):
  path = tmp_path / 'labels.gz'
  _write_idx(path, np.arange(5), magic=bytes([0, 0, 8, 3]))  # claims 3 dims
  with pytest.raises(ValueError, match='labels.gz.*magic'):
    prepare_data.read_idx(path, 1)


# --- pretraining pipeline -----------------------------------------------------------------------


def test_pretrain_batch_shapes_dtypes_and_range(data_dir):
  batches = _take(vision.make_pretrain_dataset(data_dir=data_dir, **PRETRAIN), 3)
  for b in batches:
    assert b['pixel_values'].shape == (8, 1, 16, 16) and b['pixel_values'].dtype == np.float32
    assert b['bool_masked_pos'].shape == (8, NUM_PATCHES) and b['bool_masked_pos'].dtype == bool
    assert b['label'].shape == (8,) and b['label'].dtype == np.int32
    # Bilinear interpolation of [0, 1] pixels stays in [0, 1], so (x - .5) / .5 is in [-1, 1].
    assert b['pixel_values'].min() >= -1 and b['pixel_values'].max() <= 1
    assert b['pixel_values'].std() > 0.1
  labels = np.concatenate([b['label'] for b in batches])
  assert len(set(labels)) == len(labels)  # 24 distinct records within the first epoch


def test_pretrain_three_channels_repeat_grey(data_dir):
  kw = {**PRETRAIN, 'num_channels': 3, 'mean': (0.1, 0.2, 0.3), 'std': (0.5, 0.5, 0.5)}
  x = _take(vision.make_pretrain_dataset(data_dir=data_dir, **kw), 1)[0]['pixel_values']
  assert x.shape == (8, 3, 16, 16)
  np.testing.assert_allclose(x[:, 1] - x[:, 0], -0.2, atol=1e-5)
  np.testing.assert_allclose(x[:, 2] - x[:, 0], -0.4, atol=1e-5)


def test_pretrain_mask_counts(data_dir):
  batches = _take(vision.make_pretrain_dataset(data_dir=data_dir, **PRETRAIN), 6)
  counts = np.concatenate([b['bool_masked_pos'].sum(axis=1) for b in batches])
  # Block masking never exceeds the target and falls short only when no block fits (rare).
  assert counts.max() <= 6 and counts.min() >= 2
  assert counts.mean() >= 5.5
  masks = np.concatenate([b['bool_masked_pos'] for b in batches])
  assert len({m.tobytes() for m in masks}) > len(masks) // 2  # masks differ between examples


def test_identity_augmentation_equals_eval_pixels(data_dir):
  kw = {**PRETRAIN, 'crop_scale': (1.0, 1.0), 'crop_ratio': (1.0, 1.0), 'flip': False}
  batch = _take(vision.make_pretrain_dataset(data_dir=data_dir, **kw), 1)[0]
  ref = _eval_all(data_dir)
  np.testing.assert_allclose(batch['pixel_values'], ref['pixel_values'][batch['label']], atol=1e-6)


def test_flip_mirrors_about_half(data_dir):
  kw = {**PRETRAIN, 'crop_scale': (1.0, 1.0), 'crop_ratio': (1.0, 1.0), 'flip': True}
  batches = _take(vision.make_pretrain_dataset(data_dir=data_dir, **kw), 6)
  ref = _eval_all(data_dir)['pixel_values']
  flipped = []
  for b in batches:
    for x, label in zip(b['pixel_values'], b['label']):
      same, mirrored = np.allclose(x, ref[label], atol=1e-6), np.allclose(x, ref[label][..., ::-1],
                                                                         atol=1e-6)
      assert same or mirrored
      flipped.append(mirrored)
  assert 0.2 < np.mean(flipped) < 0.8


def test_random_crops_change_the_image(data_dir):
  batch = _take(vision.make_pretrain_dataset(data_dir=data_dir, **PRETRAIN), 1)[0]
  ref = _eval_all(data_dir)['pixel_values'][batch['label']]
  assert not np.allclose(batch['pixel_values'], ref, atol=1e-3)


def test_pretrain_is_deterministic_per_seed(data_dir):
  a = _take(vision.make_pretrain_dataset(data_dir=data_dir, **PRETRAIN), 3)
  b = _take(vision.make_pretrain_dataset(data_dir=data_dir, **PRETRAIN), 3)
  c = _take(vision.make_pretrain_dataset(data_dir=data_dir, **{**PRETRAIN, 'seed': 4}), 3)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not np.array_equal(a[0]['label'], c[0]['label'])
  assert not np.array_equal(a[0]['pixel_values'], c[0]['pixel_values'])


def test_epochs_reshuffle_and_reaugment(data_dir):
  # 50 records, batches of 10: batches 0-4 are epoch 0, batches 5-9 are epoch 1.
  kw = {**PRETRAIN, 'batch_size': 10}
  batches = _take(vision.make_pretrain_dataset(data_dir=data_dir, **kw), 10)
  epoch0 = np.concatenate([b['label'] for b in batches[:5]])
  epoch1 = np.concatenate([b['label'] for b in batches[5:]])
  assert sorted(epoch0) == sorted(epoch1) == list(range(NUM_TRAIN))
  assert not np.array_equal(epoch0, epoch1)
  pixels = {e: {int(l): x for b in bs for l, x in zip(b['label'], b['pixel_values'])}
            for e, bs in ((0, batches[:5]), (1, batches[5:]))}
  assert not np.allclose(pixels[0][0], pixels[1][0])  # record 0 is cropped afresh in epoch 1


def test_resume_mid_epoch_gives_the_identical_next_batch(data_dir):
  ds = vision.make_pretrain_dataset(data_dir=data_dir, **{**PRETRAIN, 'num_threads': 2,
                                                          'prefetch_buffer_size': 4})
  it = iter(ds)
  for _ in range(8):  # 6 batches per epoch: stop in the middle of the second one
    next(it)
  state = it.get_state()
  expected = [next(it), next(it)]
  resumed = iter(vision.make_pretrain_dataset(data_dir=data_dir, **PRETRAIN))
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_process_slices_are_disjoint_and_match_the_single_process_stream(data_dir):
  kw = {**PRETRAIN, 'batch_size': 5, 'num_epochs': 2}
  per_process = [
      np.concatenate([b['label'] for b in vision.make_pretrain_dataset(
          data_dir=data_dir, process_index=p, process_count=2, **kw)]) for p in range(2)]
  assert len(per_process[0]) == len(per_process[1]) == NUM_TRAIN
  epoch0 = [set(labels[:NUM_TRAIN // 2]) for labels in per_process]
  assert not epoch0[0] & epoch0[1]
  assert epoch0[0] | epoch0[1] == set(range(NUM_TRAIN))
  # Process p holds positions p, p + 2, ... of the single-process stream, augmented identically
  # (the second epoch checks that the epoch is counted in the global stream).
  single = list(vision.make_pretrain_dataset(data_dir=data_dir, **{**kw, 'batch_size': 10}))
  stream = {k: np.concatenate([b[k] for b in single]) for k in single[0]}
  p1 = list(vision.make_pretrain_dataset(data_dir=data_dir, process_index=1, process_count=2,
                                         **kw))
  for k in stream:
    np.testing.assert_array_equal(np.concatenate([b[k] for b in p1]), stream[k][1::2])


def test_pretrain_rejects_bad_arguments(data_dir, tmp_path):
  with pytest.raises(ValueError, match='fashion_mnist/dataset.json does not exist'):
    vision.make_pretrain_dataset(data_dir=tmp_path, **PRETRAIN)
  with pytest.raises(ValueError, match='patch_size'):
    vision.make_pretrain_dataset(data_dir=data_dir, **{**PRETRAIN, 'patch_size': 5})
  with pytest.raises(ValueError, match='std'):
    vision.make_pretrain_dataset(data_dir=data_dir, **{**PRETRAIN, 'std': (0.5, 0.5)})
  with pytest.raises(ValueError, match='split'):
    vision.make_pretrain_dataset(data_dir=data_dir, **{**PRETRAIN, 'split': 'val'})
  with pytest.raises(ValueError, match='process_index'):
    vision.make_pretrain_dataset(data_dir=data_dir, **{**PRETRAIN, 'process_index': 2,
                                                       'process_count': 2})


# --- eval pipeline ------------------------------------------------------------------------------


def test_eval_is_sequential_unaugmented_and_complete(data_dir):
  out = _eval_all(data_dir, split='test')
  assert out['pixel_values'].shape == (24, 1, 16, 16)  # 23 examples padded to 3 batches of 8
  np.testing.assert_array_equal(out['valid'], np.arange(24) < NUM_TEST)
  np.testing.assert_array_equal(out['label'][:NUM_TEST], np.arange(NUM_TEST))


def test_eval_upsamples_like_jax_image_resize(data_dir):
  out = _eval_all(data_dir, split='test', image_size=40)  # the configs upsample (28 -> 224)
  pixels = _test_images(data_dir)
  want = jax.image.resize(pixels[:, None] / 255, (NUM_TEST, 1, 40, 40), 'bilinear')
  np.testing.assert_allclose(out['pixel_values'][:NUM_TEST], (np.asarray(want) - 0.5) / 0.5,
                             atol=1e-5)


def test_eval_process_slices_pad_to_equal_batches(data_dir):
  outs = [_eval_all(data_dir, split='test', process_index=p, process_count=3) for p in range(3)]
  assert [len(o['label']) for o in outs] == [8, 8, 8]  # ceil(23 / 3) = 8 each
  labels = [o['label'][o['valid']] for o in outs]
  np.testing.assert_array_equal(labels[1], np.arange(1, NUM_TEST, 3))
  assert sorted(np.concatenate(labels)) == list(range(NUM_TEST))
