"""Host-side mask generators (numpy): text spans, speech spans, BEiT image blocks.

The recipes and their statistics: docs/algorithm.md §4.

Every generator is a pure function of the `np.random.Generator` it is given. A data pipeline seeds
one per element with `element_rng(seed, index, epoch)`, so masks are reproducible and survive a
resume. Speech rows must end with the same number of masked frames across a batch (fairseq's
`require_same_masks`), so a pipeline maps `span_mask` per element, pads the rows to [B, T] and calls
`equalize` once per batch with a batch-level generator (e.g. `element_rng(seed, batch_index,
epoch)`); `compute_mask_indices` does both steps in one call.
"""
import math

import numpy as np


def element_rng(seed, index, epoch=0):
  """The generator of one data element: the (epoch, index) child stream of `seed`."""
  for name, value in (('seed', seed), ('index', index), ('epoch', epoch)):
    if not isinstance(value, (int, np.integer)) or value < 0:
      raise ValueError(f'{name} must be a non-negative integer, got {value!r}')
  return np.random.default_rng(
      np.random.SeedSequence(int(seed), spawn_key=(int(epoch), int(index))))


def _spans(starts, span, size):
  """Indices covered by spans of `span` from each start, clipped to [0, size); may repeat."""
  idx = (np.asarray(starts)[:, None] + np.arange(span)).reshape(-1)
  return idx[idx < size]


def _check_prob(name, value):
  if not 0.0 <= value <= 1.0:
    raise ValueError(f'{name} must be in [0, 1], got {value}')


def text_mask(rng, tokens, *, mask_prob=0.35, mask_length=4, random_token_prob=0.0,
              leave_unmasked_prob=0.0, vocab_size, mask_id, pad_id, special_ids=()):
  """fairseq's MaskTokensDataset with span starts (§4.1) on one token sequence [T].

  `int(mask_prob * n / mask_length + U[0,1))` distinct starts over the n non-pad positions (special
  tokens such as <s> and </s> included, as fairseq) each select `mask_length` positions, clipped at
  the end; overlaps merge. Selected positions become `mask_id`, except a `random_token_prob` share
  that gets a token drawn uniformly from the ids outside `special_ids`, `pad_id` and `mask_id`, and
  a `leave_unmasked_prob` share that keeps its token. BERT masking is mask_prob=0.15, mask_length=1,
  random_token_prob=0.1, leave_unmasked_prob=0.1.

  Returns (masked_tokens [T], target_mask [T] bool). target_mask holds every selected position,
  random and unchanged ones included: the paper's loss (docs/algorithm.md decision 1). fairseq
  scores only
  `masked_tokens == mask_id` (fairseq issue #4229).
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 1:
    raise ValueError(f'tokens must be a 1-D sequence, got shape {tokens.shape}')
  if not 0.0 < mask_prob < 1.0:
    raise ValueError(f'mask_prob must be in (0, 1), got {mask_prob}')
  if mask_length < 1:
    raise ValueError(f'mask_length must be >= 1, got {mask_length}')
  _check_prob('random_token_prob', random_token_prob)
  _check_prob('leave_unmasked_prob', leave_unmasked_prob)
  altered_prob = random_token_prob + leave_unmasked_prob
  if altered_prob > 1.0:
    raise ValueError(f'random_token_prob + leave_unmasked_prob must be <= 1, got {altered_prob}')
  if np.any(tokens == mask_id):
    raise ValueError(f'tokens already contain mask_id={mask_id}')
  # isin, not setdiff1d: the latter sorts the whole vocabulary for every example.
  candidates = np.flatnonzero(~np.isin(np.arange(vocab_size), [pad_id, mask_id, *special_ids]))
  if random_token_prob > 0 and not candidates.size:
    raise ValueError(f'vocab_size={vocab_size} leaves no non-special id for random tokens')

  # Padding is never selected: spans are laid over the non-pad positions only, which set the number
  # of spans and where a span is clipped, as in fairseq where padding is added after masking.
  positions = np.flatnonzero(tokens != pad_id)
  size = positions.size
  num_spans = int(mask_prob * size / mask_length + rng.random())
  starts = rng.choice(size, num_spans, replace=False)
  target_mask = np.zeros(tokens.shape, bool)
  target_mask[positions[_spans(starts, mask_length, size)]] = True

  masked = np.where(target_mask, mask_id, tokens)
  if altered_prob > 0:
    altered = target_mask & (rng.random(tokens.shape) < altered_prob)
    unchanged = altered & (rng.random(tokens.shape) < leave_unmasked_prob / altered_prob)
    randomized = altered & ~unchanged
    masked[unchanged] = tokens[unchanged]
    masked[randomized] = rng.choice(candidates, randomized.sum())
  return masked, target_mask


def span_mask(rng, length, mask_prob, mask_length, min_masks=0):
  """fairseq's `compute_mask_indices` (static spans, §4.2) for one row of `length` valid frames.

  `max(min_masks, int(mask_prob * length / mask_length + U[0,1)))` distinct starts in
  [0, length - mask_length), each masking `mask_length` frames; overlaps merge. Returns bool
  [length].
  """
  if length < 1:
    raise ValueError(f'length must be >= 1, got {length}')
  _check_prob('mask_prob', mask_prob)
  if mask_length < 1:
    raise ValueError(f'mask_length must be >= 1, got {mask_length}')
  if min_masks < 0:
    raise ValueError(f'min_masks must be >= 0, got {min_masks}')
  num_spans = max(min_masks, int(mask_prob * length / mask_length + rng.random()))
  # When the starts do not fit before the last span, fairseq draws them from [0, num_spans]
  # instead and clips the spans at the end.
  high = length - mask_length
  if high <= num_spans:
    high = num_spans + 1
  mask = np.zeros(length, bool)
  mask[_spans(rng.choice(high, num_spans, replace=False), mask_length, length)] = True
  if mask.all():
    raise ValueError(f'span_mask masked all {length} frames (mask_length={mask_length}, '
                     f'min_masks={min_masks}): the row is too short')
  return mask


def equalize(masks, rng):
  """Cuts every row of masks [B, T] to the batch's smallest masked count (fairseq's
  `require_same_masks`) by keeping a uniformly random subset, which may break spans.

  Equal counts give the student static shapes. Returns a new bool [B, T] array.
  """
  masks = np.asarray(masks, bool)
  if masks.ndim != 2:
    raise ValueError(f'masks must be [B, T], got shape {masks.shape}')
  target = masks.sum(axis=1).min()
  out = np.zeros_like(masks)
  for row, mask in zip(out, masks):
    idx = np.flatnonzero(mask)
    if idx.size > target:
      idx = rng.choice(idx, target, replace=False)
    row[idx] = True
  return out


def compute_mask_indices(rng, shape, mask_prob, mask_length, min_masks=1, *, lengths=None,
                         require_same_masks=True):
  """Speech masks [B, T] bool: `span_mask` per row, then `equalize` if `require_same_masks`.

  lengths [B]: the valid (leading) frames of each row, None for all T; for a right-padded
  validity mask this is `mask.sum(-1)`. Padded frames are never masked.
  """
  batch, time = shape
  lengths = np.full(batch, time) if lengths is None else np.asarray(lengths)
  if lengths.shape != (batch,) or np.any(lengths < 1) or np.any(lengths > time):
    raise ValueError(f'lengths must be [B={batch}] values in [1, T={time}], got {lengths}')
  masks = np.zeros((batch, time), bool)
  for row, length in zip(masks, lengths):
    row[:length] = span_mask(rng, int(length), mask_prob, mask_length, min_masks)
  return equalize(masks, rng) if require_same_masks else masks


def block_mask(rng, grid, num_masking_patches, min_num_patches=16, max_num_patches=None,
               min_aspect=0.3, max_aspect=None):
  """BEiT block-wise masking (§4.3) on a (h, w) patch grid. Returns bool [h * w], row-major.

  At most `num_masking_patches` patches are masked; the count can end a little short when no
  block fits (most draws reach it exactly).
  """
  mask, _ = _block_mask(rng, grid, num_masking_patches, min_num_patches, max_num_patches,
                        min_aspect, max_aspect)
  return mask.reshape(-1)


def _block_mask(rng, grid, num_masking_patches, min_num_patches, max_num_patches, min_aspect,
                max_aspect):
  """The [h, w] mask and the (top, left, height, width) of each block in the order placed."""
  if len(grid) != 2 or min(grid) < 1:
    raise ValueError(f'grid must be two positive sizes (h, w), got {grid}')
  height, width = grid
  if not 0 <= num_masking_patches <= height * width:
    raise ValueError(f'num_masking_patches={num_masking_patches} must be in [0, h*w='
                     f'{height * width}]')
  max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches
  if min_num_patches < 1 or max_num_patches < 1:
    raise ValueError(f'min_num_patches={min_num_patches} and max_num_patches={max_num_patches} '
                     'must be >= 1')
  if min_aspect <= 0:
    raise ValueError(f'min_aspect must be > 0, got {min_aspect}')
  max_aspect = 1 / min_aspect if max_aspect is None else max_aspect
  if max_aspect < min_aspect:
    raise ValueError(f'need 0 < min_aspect={min_aspect} <= max_aspect={max_aspect}')
  log_aspect = (math.log(min_aspect), math.log(max_aspect))

  mask = np.zeros(grid, bool)
  blocks = []
  count = 0
  while count < num_masking_patches:
    remaining = min(num_masking_patches - count, max_num_patches)
    block = _place_block(rng, mask, min_num_patches, remaining, log_aspect)
    if block is None:
      break
    top, left, h, w = block
    count += h * w - mask[top:top + h, left:left + w].sum()
    mask[top:top + h, left:left + w] = True
    blocks.append(block)
  return mask, blocks


def _place_block(rng, mask, min_area, max_new, log_aspect):
  """Up to 10 tries for a block adding 1..max_new new patches; None when all fail."""
  height, width = mask.shape
  for _ in range(10):
    # U(min_area, max_new) as Python's random.uniform, so also when max_new < min_area.
    area = min_area + (max_new - min_area) * rng.random()
    aspect = math.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * rng.random())
    h = round(math.sqrt(area * aspect))
    w = round(math.sqrt(area / aspect))
    if h >= height or w >= width:
      continue
    top = int(rng.integers(height - h + 1))
    left = int(rng.integers(width - w + 1))
    if 0 < h * w - mask[top:top + h, left:left + w].sum() <= max_new:
      return top, left, h, w
  return None


def inverse_block_mask(rng, grid, *, mask_prob, mask_length, mask_prob_adjust):
  """data2vec 2.0's image mask (docs/algorithm.md §8.3; fairseq `compute_block_mask_2d` with
  inverse_mask and require_same_masks) on a (h, w) patch grid. Returns bool [h * w], row-major,
  True = masked.

  The *visible* patches are drawn as blocks: int(L * (1 - mask_prob + mask_prob_adjust) /
  mask_length**2) centres uniformly with replacement (L = h * w), the mask_length x mask_length
  square around each (offsets -(mask_length // 2) .. mask_length - 1 - mask_length // 2, clamped
  into the grid), then uniformly random patches are dropped or added to exactly
  int(L * (1 - mask_prob)) visible ones; all others are masked (base: 157 of 196).
  """
  if len(grid) != 2 or min(grid) < 1:
    raise ValueError(f'grid must be two positive sizes (h, w), got {grid}')
  if not 0 < mask_prob < 1 or mask_length < 2 or mask_prob_adjust < 0:
    raise ValueError(f'need 0 < mask_prob={mask_prob} < 1, mask_length={mask_length} >= 2 and '
                     f'mask_prob_adjust={mask_prob_adjust} >= 0')
  height, width = grid
  num = height * width
  num_centres = int(num * (1 - mask_prob + mask_prob_adjust) / mask_length ** 2)
  centres = rng.integers(num, size=num_centres)
  offsets = np.arange(mask_length) - mask_length // 2
  rows = np.clip(centres[:, None] // width + offsets, 0, height - 1)  # [n, B]
  cols = np.clip(centres[:, None] % width + offsets, 0, width - 1)
  visible = np.zeros(grid, bool)
  visible[rows[:, :, None], cols[:, None, :]] = True
  return ~set_count(rng, visible.reshape(-1), num_visible(num, mask_prob))


def num_visible(length, mask_prob):
  """The positions a data2vec 2.0 view keeps of `length`: int(length * (1 - mask_prob)), as
  fairseq's equalised block masks and `random_masking` keep (base images: 39 of 196)."""
  return int(length * (1 - mask_prob))


def set_count(rng, selected, count):
  """selected [T] bool with exactly `count` True: uniformly random True cells cleared, or False
  cells set, as many as needed (fairseq's equalisation of data2vec 2.0 masks). Returns a copy."""
  selected = np.array(selected, bool)
  if not 0 <= count <= selected.size:
    raise ValueError(f'count={count} must be in [0, {selected.size}]')
  have = int(selected.sum())
  if have > count:
    selected[rng.choice(np.flatnonzero(selected), have - count, replace=False)] = False
  elif have < count:
    selected[rng.choice(np.flatnonzero(~selected), count - have, replace=False)] = True
  return selected


def speech_view_mask(rng, length, *, mask_prob, mask_length, masked_fraction, min_masks=1):
  """One data2vec 2.0 speech view [length] bool (True = masked): `span_mask`, then exactly
  length - num_visible(length, masked_fraction) masked frames (`set_count`).

  fairseq equalises a batch's rows to their smallest count, which varies from batch to batch
  (about 0.38 of the frames at mask_prob 0.5, spans of 5, 64 rows: docs/algorithm.md §8.3); a
  fixed fraction keeps the student's shapes static, so the step compiles once.
  """
  _check_prob('masked_fraction', masked_fraction)
  spans = span_mask(rng, length, mask_prob, mask_length, min_masks)
  return set_count(rng, spans, length - num_visible(length, masked_fraction))


def token_view_mask(rng, valid, mask_prob):
  """One data2vec 2.0 text view [T] bool (True = masked) of a row with validity valid [T] bool:
  it keeps num_visible(T, mask_prob) positions, valid tokens chosen uniformly at random first
  (fairseq's `random_masking`, whose sequences are never padded), then padding only when the row
  has fewer valid tokens; every other position is masked."""
  _check_prob('mask_prob', mask_prob)
  valid = np.asarray(valid, bool)
  keep = num_visible(valid.size, mask_prob)
  order = np.concatenate([rng.permutation(np.flatnonzero(valid)), np.flatnonzero(~valid)])
  masked = np.ones(valid.size, bool)
  masked[order[:keep]] = False
  return masked
