"""Speech pretraining batches of the clips that `scripts/prepare_data.py audio` prepared.

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
"""
import dataclasses
from typing import Callable

import grain
import numpy as np
from absl import logging

from data2vec import masking
from data2vec.input_pipeline import speech_data

NORM_EPS = 1e-5  # fairseq normalizes with F.layer_norm's default eps


def normalize(x):
  """Zero mean, unit variance over the whole clip (float32)."""
  x = np.asarray(x, np.float64)
  return ((x - x.mean()) / np.sqrt(x.var() + NORM_EPS)).astype(np.float32)


def load_clips(data_dir, dataset, split, min_sample_size):
  """(audio [N] memory-mapped, starts [C], lengths [C]) of the split's clips that have at least
  min_sample_size samples, and the number of shorter clips left out."""
  audio, records = speech_data.load_split(data_dir, dataset, split)
  kept = [r for r in records if r['num_samples'] >= min_sample_size]
  if not kept:
    raise ValueError(f'{dataset} {split}: none of its {len(records)} clips has '
                     f'min_sample_size={min_sample_size} samples')
  starts = np.array([r['offset'] for r in kept], np.int64)
  lengths = np.array([r['num_samples'] for r in kept], np.int64)
  return audio, starts, lengths, len(records) - len(kept)


@dataclasses.dataclass(frozen=True)
class _Clip:
  """(position in this process's slice, clip id) -> the normalized clip and its rng key."""
  audio: np.ndarray
  starts: np.ndarray
  lengths: np.ndarray
  process_index: int
  process_count: int

  def __call__(self, local_index, clip):
    # Position in the global (all-process) stream; shuffle/repeat count epochs the same way.
    epoch = (self.process_index + local_index * self.process_count) // len(self.starts)
    start = self.starts[clip]
    return {'audio': normalize(self.audio[start:start + self.lengths[clip]]),
            'clip': int(clip), 'epoch': epoch}


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
    masks = np.zeros((len(examples), int(self.num_frames(size))), bool)
    for row, (e, n, f) in enumerate(zip(examples, lengths, frames)):
      rng = masking.element_rng(self.seed, e['clip'], e['epoch'])
      start = rng.integers(len(e['audio']) - n + 1)
      values[row, :n] = e['audio'][start:start + n]
      masks[row, :f] = masking.span_mask(rng, int(f), **self.mask_kwargs)
    # The batch's own stream: a spawn key of another length than the clips' (epoch, id).
    global_batch = self.process_index + batch_index * self.process_count
    rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(global_batch,)))
    batch = {'input_values': values, 'mask_time_indices': masking.equalize(masks, rng)}
    if self.pad:
      batch['attention_mask'] = (np.arange(size) < lengths[:, None]).astype(np.int32)
    return batch


def make_pretrain_dataset(*, data_dir, dataset, split, batch_size, seed, num_frames, sample_rate,
                          min_sample_size, max_sample_size, pad, crop_buckets, mask_prob,
                          mask_length, min_masks, num_epochs=None, process_index=0,
                          process_count=1, num_threads=4, prefetch_buffer_size=8):
  """Cropped, span-masked batches of `batch_size` (per process) clips (see the module docstring).

  The keyword names match `config.input` and `config.masking`; num_frames: samples -> encoder
  frames, vectorized (`functools.partial(models.audio.feature_lengths, model_config)`).
  `num_epochs=None` repeats forever. Returns a grain IterDataset; `iter()` of it is a
  checkpointable iterator.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in [0, process_count={process_count})')
  if sample_rate != speech_data.SAMPLE_RATE:
    raise ValueError(f'sample_rate={sample_rate}: the prepared clips are '
                     f'{speech_data.SAMPLE_RATE} Hz')
  if not 0 < min_sample_size <= max_sample_size:
    raise ValueError(f'need 0 < min_sample_size={min_sample_size} <= '
                     f'max_sample_size={max_sample_size}')
  if int(num_frames(min_sample_size)) < 1:
    raise ValueError(f'min_sample_size={min_sample_size} is shorter than one encoder frame')
  crop_buckets = tuple(sorted(crop_buckets or ()))
  if not pad and (not crop_buckets or crop_buckets[0] > min_sample_size
                  or crop_buckets[-1] > max_sample_size):
    raise ValueError(f'pad=False needs crop_buckets={crop_buckets} in [.., max_sample_size='
                     f'{max_sample_size}] with the smallest <= min_sample_size={min_sample_size}')
  audio, starts, lengths, dropped = load_clips(data_dir, dataset, split, min_sample_size)
  logging.info('%s %s: %d clips (%.2f h); %d shorter than min_sample_size=%d left out', dataset,
               split, len(starts), lengths.sum() / sample_rate / 3600, dropped, min_sample_size)
  clip = _Clip(audio=audio, starts=starts, lengths=lengths, process_index=process_index,
               process_count=process_count)
  collate = _Collate(num_frames=num_frames, seed=seed, max_sample_size=max_sample_size, pad=pad,
                     crop_buckets=crop_buckets,
                     mask_kwargs=dict(mask_prob=mask_prob, mask_length=mask_length,
                                      min_masks=min_masks),
                     process_index=process_index, process_count=process_count)
  ds = grain.MapDataset.range(len(starts)).shuffle(seed=seed).repeat(num_epochs)
  ds = ds[process_index::process_count].map_with_index(clip)
  ds = ds.batch(batch_size, drop_remainder=True, batch_fn=_as_list).map_with_index(collate)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                              prefetch_buffer_size=prefetch_buffer_size))
