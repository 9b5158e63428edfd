"""Speech clips (ClipSource) and the pretraining batches made of them.

`dataset` is a prepared audio set (data2vec/preparation/audio.py: int16 shards of concatenated
16 kHz samples and an index of (shard, offset, num_samples) per clip), read through a ClipSource:
a user's (`prepare_data.py audio --src DIR --name NAME`) or a bundled one (`prepare_data.py
audio`: speech_pool, spoken_digits, spoken_digit_strings; data2vec/preparation/bundled_speech.py).

Clips of the split shorter than `min_sample_size` are dropped (and counted in the log). Then:
clip ids -> shuffle(seed) -> repeat -> this process's slice -> the clip, normalized to zero mean
and unit variance over its whole length (fairseq's `normalize: true`) -> batch -> crop, pad and
span masks. Every random draw comes from the clip's generator `element_rng(seed, id, epoch)` (its
crop offset, then its spans) or the batch's generator (the equalization), so every batch is a pure
function of its position: the iterator state (`get_state()`) is one index that checkpoints and
resumes exactly; a resume needs the same process count.

Static shapes (the train step is compiled once per batch shape):
- `pad=True`: each clip is randomly cropped to at most `max_sample_size` and the batch is padded to
  exactly `max_sample_size`, with `attention_mask` 1 on the real samples. One shape.
- `pad=False` (fairseq): every clip is randomly cropped to the batch's shortest clip (at most
  `max_sample_size`), rounded down to the largest of `crop_buckets` that fits: one shape per
  bucket. No `attention_mask`. `min(crop_buckets) <= min_sample_size`, so one always fits.

Masks are fairseq's `compute_mask_indices` on the encoder's frames: `span_mask` over the
`num_frames(valid samples)` frames of each clip (padded frames are never masked), then `equalize`
cuts every row to the batch's smallest count. `num_frames` must be the encoder's conv output
length, `models.audio.feature_lengths`, so that frames and masks line up.

Batches follow transformers' layouts: `input_values` float32 [B, S], `attention_mask` int32 [B, S]
(pad=True only), `mask_time_indices` bool [B, num_frames(S)].

data2vec 2.0 (`clone_batch` given, pad=False): `mask_time_indices` is [B, clone_batch, F], one
`masking.speech_view_mask` per view from the clip's generator, each with exactly
F - num_visible(F, masked_fraction) masked frames (no batch equalization needed).
"""
import dataclasses
import os
from typing import Callable

import numpy as np
from absl import logging

from data2vec import masking
from data2vec.input_pipeline import datasets, files, slicing

SAMPLE_RATE = 16_000  # of every prepared clip
NORM_EPS = 1e-5  # fairseq normalizes with F.layer_norm's default eps
# int16 PCM -> [-1, 1), the float scale of fairseq's soundfile reads, so that NORM_EPS weighs in
# `normalize` as it does there.
_PCM_DTYPE = np.dtype('<i2')
_PCM_SCALE = np.float32(1 / 32768)


def normalize(x):
  """Zero mean, unit variance over the whole clip (float32)."""
  x = np.asarray(x, np.float64)
  return ((x - x.mean()) / np.sqrt(x.var() + NORM_EPS)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Shard:
  """A 1-D .npy file of int16 PCM samples, read one clip at a time.

  Each read opens the file, seeks to the clip and closes it (no memory map): a prepared set may
  have thousands of shards, and every live map holds a file descriptor.
  """
  path: str
  header: int  # bytes before the first sample
  size: int  # samples

  @classmethod
  def open(cls, path):
    """The shard at `path`, its header checked; errors name the file."""
    try:
      with open(path, 'rb') as f:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                       np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        header = f.tell()
    except (OSError, ValueError, EOFError) as e:
      raise ValueError(f'{path}: not a readable .npy array ({e}); prepare the data set '
                       'again') from None
    if len(shape) != 1 or fortran or dtype != _PCM_DTYPE:
      raise ValueError(f'{path}: {dtype} {shape} is not int16 samples [N]; prepare the data set '
                       'again')
    expected = header + shape[0] * _PCM_DTYPE.itemsize
    if os.path.getsize(path) != expected:
      raise ValueError(f'{path}: {os.path.getsize(path)} bytes, its header says {expected} '
                       '(cut off?); prepare the data set again')
    return cls(str(path), header, shape[0])

  def read(self, offset, num_samples):
    """float32 [num_samples] from sample `offset`, scaled to [-1, 1)."""
    x = np.fromfile(self.path, _PCM_DTYPE, count=num_samples,
                    offset=self.header + offset * _PCM_DTYPE.itemsize)
    if len(x) != num_samples:
      raise ValueError(f'{self.path}: ends before sample {offset + num_samples}; prepare the data '
                       'set again')
    return x.astype(np.float32) * _PCM_SCALE


class ClipSource:
  """The clips of a split: clip i is `index[i]` = (shard, offset, num_samples) in `shards`.

  source[i] -> float32 [num_samples] at 16 kHz, normalised (`normalize`), read on demand;
  source[a:b:c] -> a list of them; `lengths` int64 [N].
  """

  def __init__(self, shards, index, where):
    index = np.asarray(index, np.int64)
    if index.ndim != 2 or index.shape[1] != 3:
      raise ValueError(f'{where}: the index is {index.shape}, not [N, 3]')
    if len(index):
      sizes = np.array([s.size for s in shards] + [0], np.int64)
      shard, offset, length = index.T
      bad = ((shard < 0) | (shard >= len(shards)) | (offset < 0) | (length < 0) |
             (offset + length > sizes[np.clip(shard, 0, len(shards))]))
      if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f'{where}: clip {i} (shard, offset, num_samples) = '
                         f'{tuple(index[i].tolist())} lies outside the {len(shards)} shards; '
                         'prepare the data set again')
    self.shards, self.index, self.where = tuple(shards), index, where

  @property
  def lengths(self):
    return self.index[:, 2]

  def __len__(self):
    return len(self.index)

  def samples(self, i):
    """The stored samples of clip i as float32, not normalised."""
    shard, offset, length = self.index[i]
    return self.shards[shard].read(int(offset), int(length))

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    return normalize(self.samples(i))

  def __iter__(self):
    return (self[i] for i in range(len(self)))


def prepared_source(dataset, split):
  """The ClipSource of a split of a prepared set (datasets.Dataset): its index and shards only."""
  dataset.check_split(split)
  index_path = dataset.path / f'{split}_index.npy'
  if not index_path.is_file():
    raise ValueError(f'{index_path} does not exist; prepare {dataset.path} again')
  index = files.load_npy(index_path, 'audio', mmap_mode=None)
  if index.shape[1:] != (3,) or len(index) != dataset.num_examples(split):
    raise ValueError(f'{index_path}: {index.shape} rows, dataset.json says '
                     f'{dataset.num_examples(split)} clips; prepare {dataset.path} again')
  shards = [Shard.open(dataset.path / name) for name in dataset.meta['shards'][split]]
  return ClipSource(shards, index, f'{dataset.path} {split}')


def open_clips(data_dir, dataset, split, field='config.input.dataset'):
  """The ClipSource of a split of a prepared audio set (bundled or a user's)."""
  return prepared_source(datasets.load(data_dir, dataset, modality='audio', field=field), split)


def longest_clip(data_dir, dataset, field='config.input.dataset'):
  """Samples of the longest clip of any split (from the indexes only)."""
  prepared = datasets.load(data_dir, dataset, modality='audio', field=field)
  return max(int(prepared_source(prepared, split).lengths.max(initial=0))
             for split in prepared.meta['splits'])


def load_clips(data_dir, dataset, split, min_sample_size):
  """(ClipSource of the split, ids [C] of its clips that have at least min_sample_size samples,
  their lengths [C], the number of shorter clips left out)."""
  source = open_clips(data_dir, dataset, split)
  ids = np.flatnonzero(source.lengths >= min_sample_size)
  if not len(ids):
    raise ValueError(f'{dataset} {split}: none of its {len(source)} clips has '
                     f'min_sample_size={min_sample_size} samples')
  return source, ids, source.lengths[ids], len(source) - len(ids)


@dataclasses.dataclass(frozen=True)
class _Clip:
  """(position in this process's slice, clip id) -> the normalized clip and its rng key."""
  source: ClipSource
  ids: np.ndarray  # clip id -> its index in `source`
  process_index: int
  process_count: int

  def __call__(self, local_index, clip):
    epoch = slicing.epoch(local_index, self.process_index, self.process_count, len(self.ids))
    return {'audio': self.source[self.ids[clip]], 'clip': int(clip), 'epoch': epoch}


def _as_list(examples):
  return list(examples)


@dataclasses.dataclass(frozen=True)
class _Collate:
  """(batch position in this process, [examples]) -> the cropped, padded, masked batch."""
  num_frames: Callable[[np.ndarray], np.ndarray]
  seed: int
  max_sample_size: int
  pad: bool
  crop_buckets: tuple[int, ...]
  mask_kwargs: dict
  clone_batch: int | None  # data2vec 2.0's views per clip; None: data2vec's one mask
  process_index: int
  process_count: int

  def __call__(self, batch_index, examples):
    lengths = np.array([min(len(e['audio']), self.max_sample_size) for e in examples])
    if self.pad:
      size = self.max_sample_size
    else:
      size = max(b for b in self.crop_buckets if b <= lengths.min())
      lengths = np.full_like(lengths, size)
    frames = np.asarray(self.num_frames(lengths))
    values = np.zeros((len(examples), size), np.float32)
    views = (self.clone_batch,) if self.clone_batch else ()
    masks = np.zeros((len(examples), *views, int(self.num_frames(size))), bool)
    for row, (e, n, f) in enumerate(zip(examples, lengths, frames)):
      rng = masking.element_rng(self.seed, e['clip'], e['epoch'])
      start = rng.integers(len(e['audio']) - n + 1)
      values[row, :n] = e['audio'][start:start + n]
      if self.clone_batch:  # pad=False: f is every row's frame count
        masks[row] = [masking.speech_view_mask(rng, int(f), **self.mask_kwargs)
                      for _ in range(self.clone_batch)]
      else:
        masks[row, :f] = masking.span_mask(rng, int(f), **self.mask_kwargs)
    if self.clone_batch:  # exact counts: nothing to equalize
      return {'input_values': values, 'mask_time_indices': masks}
    # The batch's own stream: a spawn key of another length than the clips' (epoch, id).
    global_batch = slicing.global_position(batch_index, self.process_index, self.process_count)
    rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(global_batch,)))
    batch = {'input_values': values, 'mask_time_indices': masking.equalize(masks, rng)}
    if self.pad:
      batch['attention_mask'] = (np.arange(size) < lengths[:, None]).astype(np.int32)
    return batch


def make_pretrain_dataset(*, data_dir, dataset, split, batch_size, seed, num_frames, sample_rate,
                          min_sample_size, max_sample_size, pad, crop_buckets, mask_prob,
                          mask_length, min_masks, masked_fraction=None, clone_batch=None,
                          num_epochs=None, process_index=0, process_count=1, num_threads=4,
                          prefetch_buffer_size=8):
  """Cropped, span-masked batches of `batch_size` (per process) clips (see the module docstring).

  The keyword names match `config.input` and `config.masking`; num_frames: samples -> encoder
  frames, vectorized (`functools.partial(models.audio.feature_lengths, model_config)`).
  clone_batch (data2vec 2.0) needs masked_fraction and pad=False.
  `num_epochs=None` repeats forever. Returns a grain IterDataset; `iter()` of it is a
  checkpointable iterator.
  """
  slicing.check_process(process_index, process_count)
  if sample_rate != SAMPLE_RATE:
    raise ValueError(f'sample_rate={sample_rate}: the prepared clips are {SAMPLE_RATE} Hz')
  if not 0 < min_sample_size <= max_sample_size:
    raise ValueError(f'need 0 < min_sample_size={min_sample_size} <= '
                     f'max_sample_size={max_sample_size}')
  if int(num_frames(min_sample_size)) < 1:
    raise ValueError(f'min_sample_size={min_sample_size} is shorter than one encoder frame')
  if clone_batch is not None and (clone_batch < 1 or pad or masked_fraction is None
                                  or not 0 < masked_fraction < 1):
    raise ValueError(f'data2vec 2.0 views (config.masking.clone_batch={clone_batch}) need '
                     f'clone_batch >= 1, config.masking.masked_fraction in (0, 1) (got '
                     f'{masked_fraction}) and config.input.pad=False (got {pad}): every view '
                     'keeps the same number of frames')
  crop_buckets = tuple(sorted(crop_buckets or ()))
  if not pad and (not crop_buckets or crop_buckets[0] > min_sample_size
                  or crop_buckets[-1] > max_sample_size):
    raise ValueError(f'pad=False needs crop_buckets={crop_buckets} in [.., max_sample_size='
                     f'{max_sample_size}] with the smallest <= min_sample_size={min_sample_size}')
  source, ids, lengths, dropped = load_clips(data_dir, dataset, split, min_sample_size)
  logging.info('%s %s: %d clips (%.2f h); %d shorter than min_sample_size=%d left out', dataset,
               split, len(ids), lengths.sum() / sample_rate / 3600, dropped, min_sample_size)
  clip = _Clip(source=source, ids=ids, process_index=process_index, process_count=process_count)
  collate = _Collate(num_frames=num_frames, seed=seed, max_sample_size=max_sample_size, pad=pad,
                     crop_buckets=crop_buckets,
                     mask_kwargs=dict(mask_prob=mask_prob, mask_length=mask_length,
                                      min_masks=min_masks,
                                      **({} if clone_batch is None
                                         else {'masked_fraction': masked_fraction})),
                     clone_batch=clone_batch,
                     process_index=process_index, process_count=process_count)
  ds = slicing.train_records(len(ids), seed=seed, num_epochs=num_epochs,
                             process_index=process_index, process_count=process_count)
  ds = ds.map_with_index(clip)
  ds = ds.batch(batch_size, drop_remainder=True, batch_fn=_as_list).map_with_index(collate)
  return slicing.iterate(ds, num_threads, prefetch_buffer_size)
