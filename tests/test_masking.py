"""Mask generators: the statistics of docs/algorithm.md §4, shapes, padding, seeding, bad input."""
import numpy as np
import pytest

from data2vec import masking

VOCAB = 1000
PAD, MASK = 1, 4
SPECIALS = (0, 2, 3)  # <s> </s> <unk>; <pad> and <mask> are passed on their own


def _text(rng, tokens, **kw):
  return masking.text_mask(rng, tokens, vocab_size=VOCAB, mask_id=MASK, pad_id=PAD,
                           special_ids=SPECIALS, **kw)


def _sequence(rng, length=512, num_pad=0):
  tokens = rng.integers(5, VOCAB, length)
  tokens[0], tokens[length - num_pad - 1] = 0, 2
  tokens[length - num_pad:] = PAD
  return tokens


# ---------------------------------------------------------------------------- seeding


def test_element_rng_is_reproducible_and_distinct():
  def draw(seed, index, epoch):
    rng = masking.element_rng(seed, index, epoch)
    return np.concatenate([
        masking.block_mask(rng, (14, 14), 120),
        masking.span_mask(rng, 300, 0.65, 10),
        _text(rng, np.arange(5, 205))[0],
    ])

  np.testing.assert_array_equal(draw(3, 7, 1), draw(3, 7, 1))
  for other in [(3, 8, 1), (3, 7, 2), (4, 7, 1)]:
    assert not np.array_equal(draw(3, 7, 1), draw(*other)), other
  with pytest.raises(ValueError, match='index'):
    masking.element_rng(0, -1)


# ---------------------------------------------------------------------------- vision


def test_block_mask_distribution_14x14():
  rng = np.random.default_rng(0)
  counts = np.array([masking.block_mask(rng, (14, 14), 120, 16, 196).sum() for _ in range(1000)])
  assert counts.max() <= 120
  assert 0.6 <= np.mean(counts == 120) <= 0.8  # §4.3: ~69%
  assert 119.0 <= counts.mean() <= 120.0        # ~119.5
  assert np.mean(counts >= 118) >= 0.9          # ~95%


@pytest.mark.parametrize('grid,num,lo,hi', [((14, 14), 120, 16, 196), ((7, 7), 30, 4, 49),
                                            ((8, 8), 38, 4, None)])
def test_blocks_respect_area_aspect_and_budget(grid, num, lo, hi):
  rng = np.random.default_rng(1)
  max_blocks = num if hi is None else hi
  for _ in range(200):
    mask, blocks = masking._block_mask(rng, grid, num, lo, hi, 0.3, None)
    canvas = np.zeros(grid, bool)
    for top, left, h, w in blocks:
      remaining = min(num - canvas.sum(), max_blocks)
      assert 0 < h < grid[0] and 0 < w < grid[1]
      # h, w are roundings of sqrt(area*aspect), sqrt(area/aspect) with area in
      # U(lo, remaining) and aspect in [0.3, 1/0.3]: each is within 0.5 of the exact value.
      assert (h + 0.5) * (w + 0.5) >= min(lo, remaining)
      assert (h - 0.5) * (w - 0.5) <= max(lo, remaining)
      assert (h + 0.5) / (w - 0.5) >= 0.3 and (h - 0.5) / (w + 0.5) <= 1 / 0.3
      new = h * w - canvas[top:top + h, left:left + w].sum()
      assert 1 <= new <= remaining
      canvas[top:top + h, left:left + w] = True
    np.testing.assert_array_equal(mask, canvas)
    assert mask.sum() <= num


def test_block_mask_small_grid_reaches_target():
  rng = np.random.default_rng(2)
  counts = np.array([masking.block_mask(rng, (7, 7), 30, 4, 49).sum() for _ in range(500)])
  assert counts.max() <= 30 and np.mean(counts == 30) >= 0.85  # ~95%
  assert masking.block_mask(rng, (8, 8), 38, 4).shape == (64,)


def test_block_mask_rejects_bad_arguments():
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match='num_masking_patches'):
    masking.block_mask(rng, (14, 14), 197)
  with pytest.raises(ValueError, match='min_aspect'):
    masking.block_mask(rng, (14, 14), 120, min_aspect=0.0)
  with pytest.raises(ValueError, match='grid'):
    masking.block_mask(rng, (14, 0), 0)


# ---------------------------------------------------------------------------- speech


def test_audio_rates_before_and_after_equalization():
  rng = np.random.default_rng(3)
  before, after = [], []
  for _ in range(20):
    raw = masking.compute_mask_indices(rng, (8, 500), 0.65, 10, require_same_masks=False)
    equal = masking.equalize(raw, rng)
    assert len(set(equal.sum(1))) == 1
    assert not np.any(equal & ~raw)
    before.append(raw.mean())
    after.append(equal.mean())
  assert 0.47 <= np.mean(before) <= 0.51  # §4.2: ~49%
  assert 0.42 <= np.mean(after) <= 0.48   # ~45%


def test_span_mask_runs_are_whole_spans():
  rng = np.random.default_rng(4)
  for _ in range(20):
    mask = masking.span_mask(rng, 500, 0.65, 10, min_masks=1)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    runs = edges[1::2] - edges[0::2]
    assert runs.min() >= 10 and not mask[-1]  # starts < T - 10: spans end before the last frame


def test_padded_frames_never_masked():
  rng = np.random.default_rng(5)
  lengths = np.array([500, 480, 300, 120, 500, 64, 250, 499])
  for _ in range(10):
    mask = masking.compute_mask_indices(rng, (8, 500), 0.65, 10, lengths=lengths)
    valid = np.arange(500) < lengths[:, None]
    assert not np.any(mask & ~valid)
    assert len(set(mask.sum(1))) == 1 and mask.sum() > 0


def test_span_mask_short_row_fallback():
  # 10 frames, one span of 10: starts come from [0, 2); start 0 would mask the whole row (an
  # error, as fairseq), start 1 masks frames 1..9.
  rng = np.random.default_rng(0)
  errors = 0
  for _ in range(200):
    try:
      mask = masking.span_mask(rng, 10, 0.65, 10, min_masks=1)
    except ValueError as e:
      assert 'masked all' in str(e)
      errors += 1
    else:
      np.testing.assert_array_equal(mask, np.arange(10) >= 1)
  assert 70 <= errors <= 130


def test_span_mask_errors():
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match='lengths'):
    masking.compute_mask_indices(rng, (2, 100), 0.65, 10, lengths=[100, 101])
  with pytest.raises(ValueError, match='mask_prob'):
    masking.span_mask(rng, 100, 1.5, 10)


# ---------------------------------------------------------------------------- text


def test_text_span_masking_rate_and_padding():
  rng = np.random.default_rng(6)
  rates = []
  for _ in range(20):
    tokens = _sequence(rng, num_pad=112)
    masked, target = _text(rng, tokens)
    pad = tokens == PAD
    assert not np.any(target[pad]) and np.array_equal(masked[pad], tokens[pad])
    np.testing.assert_array_equal(masked[target], MASK)  # no random or unchanged tokens
    np.testing.assert_array_equal(masked[~target], tokens[~target])
    rates.append(target[~pad].mean())
  assert abs(np.mean(rates) - 0.31) <= 0.02  # 1 - (1 - 0.35/4)^4


def test_text_bert_option():
  rng = np.random.default_rng(7)
  selected = mask = random = unchanged = 0
  for _ in range(30):
    tokens = _sequence(rng)
    masked, target = _text(rng, tokens, mask_prob=0.15, mask_length=1, random_token_prob=0.1,
                           leave_unmasked_prob=0.1)
    assert target.sum() in (76, 77)  # int(0.15 * 512 + U[0,1))
    np.testing.assert_array_equal(masked[~target], tokens[~target])
    picked, orig = masked[target], tokens[target]
    is_random = (picked != MASK) & (picked != orig)
    assert not np.isin(picked[is_random], SPECIALS + (PAD, MASK)).any()
    selected += target.sum()
    mask += np.sum(picked == MASK)
    random += is_random.sum()
    unchanged += np.sum(picked == orig)
  assert abs(mask / selected - 0.8) <= 0.03
  assert abs(random / selected - 0.1) <= 0.03
  assert abs(unchanged / selected - 0.1) <= 0.03


def test_text_mask_errors():
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match='mask_id'):
    _text(rng, np.array([0, 4, 2]))
  with pytest.raises(ValueError, match='random_token_prob \\+ leave_unmasked_prob'):
    _text(rng, np.arange(5, 50), random_token_prob=0.6, leave_unmasked_prob=0.6)


@pytest.mark.parametrize('mask_prob,adjust,masked', [(0.8, 0.07, 157), (0.75, 0.1, 147)])
def test_inverse_block_mask_counts(mask_prob, adjust, masked):
  """Base / large (docs/algorithm.md §8.3): exactly 196 - int(196 * (1 - mask_prob)) masked."""
  rng = np.random.default_rng(0)
  for _ in range(200):
    mask = masking.inverse_block_mask(rng, (14, 14), mask_prob=mask_prob, mask_length=3,
                                      mask_prob_adjust=adjust)
    assert mask.shape == (196,) and mask.dtype == bool and mask.sum() == masked


def test_inverse_block_mask_keeps_blocks_visible():
  """Without the count's equalisation the visible patches are the union of clamped 3x3 squares
  around the drawn centres: a numpy loop written from the spec gives the same cells."""
  grid, mask_length = (6, 9), 3
  num = grid[0] * grid[1]
  # mask_prob_adjust chosen so that the blocks cover about the target: few cells equalised.
  mask_prob, adjust = 0.7, 0.0
  for seed in range(50):
    centres = np.random.default_rng(seed).integers(num, size=int(num * 0.3 / 9))
    expected = np.zeros(grid, bool)
    for c in centres:
      for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
          r = min(max(c // grid[1] + dr, 0), grid[0] - 1)
          q = min(max(c % grid[1] + dc, 0), grid[1] - 1)
          expected[r, q] = True
    mask = masking.inverse_block_mask(np.random.default_rng(seed), grid, mask_prob=mask_prob,
                                      mask_length=mask_length, mask_prob_adjust=adjust)
    visible = ~mask.reshape(grid)
    target, drawn = int(num * (1 - mask_prob)), int(expected.sum())
    assert visible.sum() == target
    # Equalisation only removes drawn cells (too many) or only adds undrawn ones (too few).
    if drawn >= target:
      assert not (visible & ~expected).any()
    else:
      assert (visible | ~expected).all() and expected.sum() <= visible.sum()


def test_inverse_block_mask_is_seeded_and_checked():
  kw = dict(mask_prob=0.8, mask_length=3, mask_prob_adjust=0.07)
  a = masking.inverse_block_mask(np.random.default_rng(5), (14, 14), **kw)
  b = masking.inverse_block_mask(np.random.default_rng(5), (14, 14), **kw)
  np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match='mask_length=1 >= 2'):
    masking.inverse_block_mask(np.random.default_rng(0), (14, 14), **dict(kw, mask_length=1))


# ---------------------------------------------------------------------------- data2vec 2.0


@pytest.mark.parametrize('length,mask_prob,kept', [(196, 0.8, 39), (196, 0.75, 49),
                                                   (512, 0.48, 266), (512, 0.5, 256)])
def test_num_visible(length, mask_prob, kept):
  """docs/algorithm.md §8.3: images base / large, text base / large."""
  assert masking.num_visible(length, mask_prob) == kept


@pytest.mark.parametrize('count', [0, 3, 10, 17, 40])
def test_set_count_adds_or_removes_only_what_is_needed(count):
  selected = np.zeros(40, bool)
  selected[[1, 4, 5, 9, 20, 21, 22, 30, 31, 39]] = True
  out = masking.set_count(np.random.default_rng(count), selected, count)
  assert out.dtype == bool and out.sum() == count and selected.sum() == 10  # a copy
  if count <= 10:
    assert not np.any(out & ~selected)  # only removed
  else:
    assert np.all(out[selected])  # only added
  np.testing.assert_array_equal(out, masking.set_count(np.random.default_rng(count), selected,
                                                       count))


def test_set_count_is_uniform_and_checked():
  selected = np.arange(20) < 10
  hits = sum(masking.set_count(np.random.default_rng(s), selected, 5) for s in range(4000))
  np.testing.assert_allclose(hits[:10] / 4000, 0.5, atol=0.05)  # each kept with p = 5 / 10
  with pytest.raises(ValueError, match='count=21'):
    masking.set_count(np.random.default_rng(0), selected, 21)


@pytest.mark.parametrize('length', [50, 321, 1000])
def test_speech_view_mask_count_and_spans(length):
  for seed in range(20):
    mask = masking.speech_view_mask(np.random.default_rng(seed), length, mask_prob=0.5,
                                    mask_length=5, masked_fraction=0.4)
    assert mask.shape == (length,) and mask.sum() == length - masking.num_visible(length, 0.4)
    # The same generator state gives span_mask's spans, which set_count only trims or extends.
    spans = masking.span_mask(np.random.default_rng(seed), length, 0.5, 5, 1)
    target = mask.sum()
    assert np.all(mask[spans]) if spans.sum() <= target else not np.any(mask & ~spans)
  with pytest.raises(ValueError, match='masked_fraction'):
    masking.speech_view_mask(np.random.default_rng(0), length, mask_prob=0.5, mask_length=5,
                             masked_fraction=1.2)


def test_token_view_mask_keeps_exactly_num_visible_valid_tokens_first():
  rng = np.random.default_rng(8)
  for num_valid in (512, 400, 266, 100, 1):
    valid = np.arange(512) < num_valid
    for _ in range(5):
      kept = ~masking.token_view_mask(rng, valid, 0.48)
      assert kept.sum() == 266
      if num_valid >= 266:
        assert not np.any(kept & ~valid)  # no pad kept while a valid token is masked
      else:
        assert np.all(kept[valid])  # too few valid tokens: all kept, padding fills the rest
  scattered = rng.random(512) < 0.7
  kept = ~masking.token_view_mask(rng, scattered, 0.48)
  assert kept.sum() == 266 and not np.any(kept & ~scattered)


def test_token_view_mask_is_uniform_and_seeded():
  valid = np.arange(40) < 30
  draws = 4000
  counts = sum(~masking.token_view_mask(np.random.default_rng(s), valid, 0.5)
               for s in range(draws))
  # 20 of the 30 valid tokens kept: each with p = 2/3 (binomial sd ~0.0075 over 4000 draws).
  np.testing.assert_allclose(counts[:30] / draws, 2 / 3, atol=0.03)
  assert not counts[30:].any()
  a, b = (masking.token_view_mask(np.random.default_rng(1), valid, 0.5) for _ in range(2))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, masking.token_view_mask(np.random.default_rng(2), valid, 0.5))
  with pytest.raises(ValueError, match='mask_prob'):
    masking.token_view_mask(np.random.default_rng(0), valid, -0.1)
