"""Image pipelines on the arrays written by `scripts/prepare_data.py vision` (Fashion-MNIST).

Pretraining: record ids -> shuffle(seed) -> repeat -> this process's slice -> crop, flip and
BEiT block mask drawn from an RNG seeded by (seed, record, epoch) -> batch -> iterator. Every
batch is a pure function of its position, so the iterator state (`get_state()`) is a single
index that checkpoints and resumes exactly; a resume needs the same process count.

Batches follow transformers' layouts: `pixel_values` float32 [B, C, H, W] (NCHW),
`bool_masked_pos` bool [B, num_patches] (row-major patch grid), `label` int32 [B].
"""
import dataclasses
import functools
import math
import pathlib

import grain
import numpy as np

from data2vec import masking
from data2vec.input_pipeline import files

DATASETS = ('fashion_mnist',)
SPLITS = ('train', 'test')


def load_arrays(data_dir, dataset, split):
  """Returns (images uint8 [N, H, W], labels [N]) memory-mapped from DATA_DIR/dataset/."""
  if dataset not in DATASETS:
    raise ValueError(f'dataset={dataset!r} is not one of {DATASETS}')
  if split not in SPLITS:
    raise ValueError(f'split={split!r} is not one of {SPLITS}')
  arrays = []
  for kind in ('images', 'labels'):
    path = pathlib.Path(data_dir) / dataset / f'{split}_{kind}.npy'
    if not path.is_file():
      raise ValueError(f'{path} does not exist; run '
                       f'`python scripts/prepare_data.py vision --data_dir {data_dir}`')
    arrays.append(files.load_npy(path, 'vision'))
  images, labels = arrays
  if images.ndim != 3 or images.dtype != np.uint8 or labels.shape != images.shape[:1]:
    raise ValueError(f'{pathlib.Path(data_dir) / dataset}: {split} images {images.dtype} '
                     f'{images.shape} and labels {labels.shape} are not uint8 [N, H, W] and [N]')
  if not len(images):
    raise ValueError(f'{path.with_name(f"{split}_images.npy")} holds no images')
  return images, labels


@functools.lru_cache(maxsize=256)
def _bilinear_weights(in_size, out_size):
  """[out_size, in_size] half-pixel-centre bilinear weights, edges clamped (= jax.image.resize)."""
  x = np.clip((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0, in_size - 1)
  lo = np.floor(x).astype(np.int64)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = (x - lo).astype(np.float32)
  w = np.zeros((out_size, in_size), np.float32)
  np.add.at(w, (np.arange(out_size), lo), 1 - frac)
  np.add.at(w, (np.arange(out_size), hi), frac)
  return w


def resize(image, size):
  """Bilinear resize of a float [h, w] image to [size, size] (no antialiasing: for upsampling)."""
  h, w = image.shape
  return _bilinear_weights(h, size) @ image @ _bilinear_weights(w, size).T


def random_resized_crop_box(rng, height, width, scale, ratio):
  """torchvision's RandomResizedCrop box (top, left, h, w): 10 tries, then a centre crop."""
  log_ratio = np.log(ratio)
  for _ in range(10):
    area = height * width * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = round(math.sqrt(area * aspect))
    h = round(math.sqrt(area / aspect))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  aspect = width / height
  if aspect < min(ratio):
    w, h = width, round(width / min(ratio))
  elif aspect > max(ratio):
    w, h = round(height * max(ratio)), height
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


@dataclasses.dataclass(frozen=True)
class _Pixels:
  """uint8 [h, w] -> normalized float32 [C, size, size]; grey is repeated to C channels."""
  size: int
  num_channels: int
  mean: tuple[float, ...]
  std: tuple[float, ...]

  def __post_init__(self):
    for name in ('mean', 'std'):
      if len(getattr(self, name)) not in (1, self.num_channels):
        raise ValueError(f'{name}={getattr(self, name)} needs 1 or num_channels='
                         f'{self.num_channels} values')
    if min(self.std) <= 0:
      raise ValueError(f'std={self.std} must be positive')

  def __call__(self, image):
    x = resize(image.astype(np.float32) / 255, self.size)
    x = np.broadcast_to(x, (self.num_channels, self.size, self.size))
    mean = np.asarray(self.mean, np.float32)[:, None, None]
    std = np.asarray(self.std, np.float32)[:, None, None]
    return (x - mean) / std


@dataclasses.dataclass(frozen=True)
class _PretrainExample:
  """(position in this process's slice, record id) -> one augmented, masked example."""
  images: np.ndarray
  labels: np.ndarray
  pixels: _Pixels
  seed: int
  crop_scale: tuple[float, float]
  crop_ratio: tuple[float, float]
  flip: bool
  grid: tuple[int, int]
  mask_kwargs: dict
  process_index: int
  process_count: int

  def __call__(self, local_index, record):
    # Position in the global (all-process) stream; shuffle/repeat count epochs the same way.
    epoch = (self.process_index + local_index * self.process_count) // len(self.images)
    rng = masking.element_rng(self.seed, record, epoch)
    image = self.images[record]
    top, left, h, w = random_resized_crop_box(rng, *image.shape, self.crop_scale, self.crop_ratio)
    image = image[top:top + h, left:left + w]
    if self.flip and rng.random() < 0.5:
      image = image[:, ::-1]
    return {
        'pixel_values': self.pixels(image),
        'bool_masked_pos': masking.block_mask(rng, self.grid, **self.mask_kwargs),
        'label': np.int32(self.labels[record]),
    }


@dataclasses.dataclass(frozen=True)
class _EvalExample:
  """Position in this process's padded slice -> example; `valid` is False on the padding."""
  images: np.ndarray
  labels: np.ndarray
  pixels: _Pixels
  process_index: int
  process_count: int

  def __call__(self, local_index):
    record = self.process_index + local_index * self.process_count
    if record >= len(self.images):
      shape = (self.pixels.num_channels, self.pixels.size, self.pixels.size)
      return {'pixel_values': np.zeros(shape, np.float32), 'label': np.int32(0),
              'valid': np.False_}
    return {'pixel_values': self.pixels(self.images[record]),
            'label': np.int32(self.labels[record]), 'valid': np.True_}


def _check_process(process_index, process_count):
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in [0, process_count={process_count})')


def make_pretrain_dataset(*, data_dir, split, image_size, patch_size, num_channels, batch_size,
                          seed, mean, std, num_masking_patches, min_num_patches=16,
                          max_num_patches=None, min_aspect=0.3, crop_scale=(0.08, 1.0),
                          crop_ratio=(3 / 4, 4 / 3), flip=True, dataset='fashion_mnist',
                          num_epochs=None, process_index=0, process_count=1, num_threads=4,
                          prefetch_buffer_size=8):
  """Augmented, block-masked batches of `batch_size` (per process) images.

  The keyword names match `config.model`, `config.masking` and `config.input`. `num_epochs=None`
  repeats forever. Returns a grain IterDataset; `iter()` of it is a checkpointable iterator.
  """
  _check_process(process_index, process_count)
  if image_size % patch_size:
    raise ValueError(f'image_size={image_size} is not a multiple of patch_size={patch_size}')
  if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
    raise ValueError(f'crop_scale={crop_scale} must satisfy 0 < min <= max <= 1')
  if not 0 < crop_ratio[0] <= crop_ratio[1]:
    raise ValueError(f'crop_ratio={crop_ratio} must satisfy 0 < min <= max')
  images, labels = load_arrays(data_dir, dataset, split)
  grid = (image_size // patch_size,) * 2
  element = _PretrainExample(
      images=images, labels=labels, pixels=_Pixels(image_size, num_channels, tuple(mean),
                                                   tuple(std)),
      seed=seed, crop_scale=tuple(crop_scale), crop_ratio=tuple(crop_ratio), flip=flip,
      grid=grid,
      mask_kwargs=dict(num_masking_patches=num_masking_patches, min_num_patches=min_num_patches,
                       max_num_patches=max_num_patches, min_aspect=min_aspect),
      process_index=process_index, process_count=process_count)
  ds = grain.MapDataset.range(len(images)).shuffle(seed=seed).repeat(num_epochs)
  ds = ds[process_index::process_count].map_with_index(element)
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                              prefetch_buffer_size=prefetch_buffer_size))


def make_eval_dataset(*, data_dir, split, image_size, num_channels, batch_size, mean, std,
                      dataset='fashion_mnist', process_index=0, process_count=1, num_threads=4,
                      prefetch_buffer_size=8):
  """Every example of `split` once, in order, unaugmented: `pixel_values`, `label`, `valid`.

  Process p gets records p, p + count, ...; every process yields the same number of full
  batches (so collectives line up), the tail padded with `valid=False` examples.
  """
  _check_process(process_index, process_count)
  images, labels = load_arrays(data_dir, dataset, split)
  per_process = -(-len(images) // process_count)
  length = -(-per_process // batch_size) * batch_size
  element = _EvalExample(images=images, labels=labels,
                         pixels=_Pixels(image_size, num_channels, tuple(mean), tuple(std)),
                         process_index=process_index, process_count=process_count)
  ds = grain.MapDataset.range(length).map(element).batch(batch_size)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                              prefetch_buffer_size=prefetch_buffer_size))
