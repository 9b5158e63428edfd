"""Image pipelines on the image sources of data2vec/input_pipeline/images.py: Fashion-MNIST
(bundled) or a prepared image folder (`scripts/prepare_data.py images`), through one code path.

Pretraining: record ids -> shuffle(seed) -> repeat -> this process's slice -> crop, flip and
masks drawn from an RNG seeded by (seed, record, epoch) -> batch -> iterator. Masks: one BEiT block
mask (data2vec, `num_masking_patches`...) or `clone_batch` inverse block masks (data2vec 2.0,
`mask_prob`...). Every
batch is a pure function of its position, so the iterator state (`get_state()`) is a single
index that checkpoints and resumes exactly; a resume needs the same process count.

Evaluation (probes, fine-tuning): the centre square of side `center_crop` x the shorter side
(timm's crop_pct: 0.875 is "resize to 256, crop 224"), resized to the model's size, unaugmented.
Resizing is bilinear with antialiasing when it shrinks (= jax.image.resize 'linear').

Batches follow transformers' layouts: `pixel_values` float32 [B, C, H, W] (NCHW),
`bool_masked_pos` bool [B, num_patches] (row-major patch grid; data2vec 2.0: [B, M, num_patches],
M views per image), True = masked, `label` int32 [B].
"""
import dataclasses
import functools
import math

import numpy as np
import PIL.Image

from data2vec import masking
from data2vec.input_pipeline import images, slicing

def resize(image, size):
  """float32 [h, w, C] -> [C, size, size] (channels first, the models' layout): bilinear, with
  the filter widened by the shrink factor when shrinking (antialiasing), as jax.image.resize
  'linear' does. Pillow's float ('F') resize computes exactly that, ~40x faster than the dense
  weight matrices numpy would need (a 500x375 JPEG to 224: ~1.5 ms a channel)."""
  return np.stack([
      np.asarray(PIL.Image.fromarray(np.ascontiguousarray(image[..., c])).resize(
          (size, size), PIL.Image.Resampling.BILINEAR)) for c in range(image.shape[2])])


def center_crop_box(height, width, fraction):
  """(top, left, h, w) of the centred square of side fraction * min(height, width)."""
  side = max(1, round(fraction * min(height, width)))
  return (height - side) // 2, (width - side) // 2, side, side


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
class Transform:
  """uint8 [h, w, c] -> normalised float32 pixel_values [C, size, size]: with an rng a random
  resized crop and flip (pretraining, fine-tuning), without one the centre crop (evaluation).
  Grey images are repeated to C channels."""
  size: int
  num_channels: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  crop_scale: tuple[float, float] = (0.08, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip: bool = True
  center_crop: float = 1.0

  def __post_init__(self):
    for name in ('mean', 'std'):
      if len(getattr(self, name)) not in (1, self.num_channels):
        raise ValueError(f'{name}={getattr(self, name)} needs 1 or num_channels='
                         f'{self.num_channels} values')
    if min(self.std) <= 0:
      raise ValueError(f'std={self.std} must be positive')
    if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
      raise ValueError(f'crop_scale={self.crop_scale} must satisfy 0 < min <= max <= 1')
    if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
      raise ValueError(f'crop_ratio={self.crop_ratio} must satisfy 0 < min <= max')
    if not 0 < self.center_crop <= 1:
      raise ValueError(f'center_crop={self.center_crop} must be in (0, 1]')

  def __call__(self, image, rng=None):
    if rng is None:
      top, left, h, w = center_crop_box(*image.shape[:2], self.center_crop)
    else:
      top, left, h, w = random_resized_crop_box(rng, *image.shape[:2], self.crop_scale,
                                                self.crop_ratio)
    image = image[top:top + h, left:left + w]
    if rng is not None and self.flip and rng.random() < 0.5:
      image = image[:, ::-1]
    x = resize(image.astype(np.float32) / 255, self.size)
    x = np.broadcast_to(x, (self.num_channels, self.size, self.size))
    mean = np.asarray(self.mean, np.float32)[:, None, None]
    std = np.asarray(self.std, np.float32)[:, None, None]
    return ((x - mean) / std).astype(np.float32)


def _views(count, rng, **kwargs):
  """`count` inverse block masks [count, num_patches] of one image."""
  return np.stack([masking.inverse_block_mask(rng, **kwargs) for _ in range(count)])


@dataclasses.dataclass(frozen=True)
class _PretrainExample:
  """(position in this process's slice, record id) -> one augmented, masked example."""
  source: object
  transform: Transform
  seed: int
  masks: object  # rng -> the example's bool_masked_pos
  process_index: int
  process_count: int

  def __call__(self, local_index, record):
    epoch = slicing.epoch(local_index, self.process_index, self.process_count, len(self.source))
    rng = masking.element_rng(self.seed, record, epoch)
    return {
        'pixel_values': self.transform(self.source[record], rng),
        'bool_masked_pos': self.masks(rng),
        'label': np.int32(self.source.labels[record]),
    }


@dataclasses.dataclass(frozen=True)
class _EvalExample:
  """Record id, or None for the padding -> example; `valid` is False on the padding."""
  source: object
  transform: Transform

  def __call__(self, record):
    if record is None:
      shape = (self.transform.num_channels, self.transform.size, self.transform.size)
      return {'pixel_values': np.zeros(shape, np.float32), 'label': np.int32(0),
              'valid': np.False_}
    return {'pixel_values': self.transform(self.source[record]),
            'label': np.int32(self.source.labels[record]), 'valid': np.True_}


def open_source(data_dir, dataset, split, num_channels):
  """The image source of `split`, checked against the model's `num_channels`."""
  source = images.open_split(data_dir, dataset, split)
  images.check_channels(source.num_channels, num_channels, dataset)
  return source


def make_pretrain_dataset(*, data_dir, split, image_size, patch_size, num_channels, batch_size,
                          seed, mean, std, num_masking_patches=None, min_num_patches=16,
                          max_num_patches=None, min_aspect=0.3, mask_prob=None, mask_length=3,
                          mask_prob_adjust=0.0, clone_batch=1, crop_scale=(0.08, 1.0),
                          crop_ratio=(3 / 4, 4 / 3), flip=True, center_crop=1.0,
                          dataset='fashion_mnist',
                          num_epochs=None, process_index=0, process_count=1, num_threads=4,
                          prefetch_buffer_size=8):
  """Augmented, block-masked batches of `batch_size` (per process) images.

  The keyword names match `config.model`, `config.masking` and `config.input`: masks are BEiT
  blocks when `num_masking_patches` is given, `clone_batch` inverse block masks
  (masking.inverse_block_mask) when `mask_prob` is. `num_epochs=None` repeats forever. Returns a
  grain IterDataset; `iter()` of it is a checkpointable iterator.
  """
  slicing.check_process(process_index, process_count)
  if image_size % patch_size:
    raise ValueError(f'image_size={image_size} is not a multiple of patch_size={patch_size}')
  source = open_source(data_dir, dataset, split, num_channels)
  transform = Transform(image_size, num_channels, tuple(mean), tuple(std), tuple(crop_scale),
                        tuple(crop_ratio), flip, center_crop)
  grid = (image_size // patch_size,) * 2
  if (num_masking_patches is None) == (mask_prob is None):
    raise ValueError('give config.masking either num_masking_patches (data2vec) or mask_prob '
                     f'(data2vec 2.0), got {num_masking_patches} and {mask_prob}')
  if mask_prob is None:
    masks = functools.partial(masking.block_mask, grid=grid,
                              num_masking_patches=num_masking_patches,
                              min_num_patches=min_num_patches, max_num_patches=max_num_patches,
                              min_aspect=min_aspect)
  else:
    masks = functools.partial(_views, clone_batch, grid=grid, mask_prob=mask_prob,
                              mask_length=mask_length, mask_prob_adjust=mask_prob_adjust)
  element = _PretrainExample(source=source, transform=transform, seed=seed, masks=masks,
                             process_index=process_index, process_count=process_count)
  ds = slicing.train_records(len(source), seed=seed, num_epochs=num_epochs,
                             process_index=process_index, process_count=process_count)
  ds = ds.map_with_index(element).batch(batch_size, drop_remainder=True)
  return slicing.iterate(ds, num_threads, prefetch_buffer_size)


def make_eval_dataset(*, data_dir, split, image_size, num_channels, batch_size, mean, std,
                      center_crop=1.0, dataset='fashion_mnist', process_index=0, process_count=1,
                      num_threads=4, prefetch_buffer_size=8):
  """Every example of `split` once, in order, unaugmented: `pixel_values`, `label`, `valid`.

  Process p gets records p, p + count, ... (slicing.eval_batches), the tail padded with
  `valid=False` examples.
  """
  slicing.check_process(process_index, process_count)
  source = open_source(data_dir, dataset, split, num_channels)
  element = _EvalExample(source, Transform(image_size, num_channels, tuple(mean), tuple(std),
                                           center_crop=center_crop))
  return slicing.eval_batches(element, len(source), batch_size, process_index=process_index,
                              process_count=process_count, num_threads=num_threads,
                              prefetch_buffer_size=prefetch_buffer_size)
