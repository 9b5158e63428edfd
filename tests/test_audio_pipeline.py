"""The speech grain pipeline on synthetic clips of odd lengths and on the real pool: crops, padding,
normalization, masks on the encoder's frames, determinism, resume, sharding; tiny pretraining."""
import functools
import json

import numpy as np
import pytest
import soundfile

import train
from configs import audio as audio_config
from configs import common
from data2vec import masking
from data2vec.input_pipeline import audio
from data2vec.models import audio as audio_model
from data2vec.preparation import audio as audio_prep
from tests.test_speech_data import needs_speech
from flax import nnx

# The real conv stack (receptive field 400 samples, stride 320) on a micro model.
MODEL = audio_model.AudioConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, conv_dim=(8,) * 7,
                                num_conv_pos_embedding_groups=2, num_conv_pos_embeddings=1)
NUM_FRAMES = functools.partial(audio_model.feature_lengths, MODEL, add_adapter=False)
LENGTHS = [2999, 3801, *range(4001, 20001, 517)]  # 2 too short, 31 more, all distinct and odd
KW = dict(dataset='clips', split='train', batch_size=4, seed=5, num_frames=NUM_FRAMES,
          sample_rate=16000, min_sample_size=4000, max_sample_size=12_001, pad=True,
          crop_buckets=(4000, 8000, 12_000), mask_prob=0.65, mask_length=3, min_masks=1,
          num_threads=0, prefetch_buffer_size=0)
def _prepare(root, name, clips_by_split, **kw):
  """DATA_DIR/NAME prepared from 16 kHz wav files of the given float clips."""
  src = root / f'{name}_src'
  for split, clips in clips_by_split.items():
    (src / split).mkdir(parents=True)
    for i, clip in enumerate(clips):
      soundfile.write(src / split / f'{i:03d}.wav', clip, 16000, subtype='FLOAT')
  return audio_prep.prepare(src=src, data_dir=root, name=name, labels='none', workers=1, **kw)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """Clips of the LENGTHS, each noise with its own offset and scale (stored as int16: scaled to
  full scale), in shards of ~2 s, plus 3 test-split clips."""
  root = tmp_path_factory.mktemp('data')
  rng = np.random.default_rng(0)
  clips = [rng.normal(i, 1 + i, n).astype(np.float32) for i, n in enumerate(LENGTHS + [5000] * 3)]
  _prepare(root, 'clips', {'train': clips[:len(LENGTHS)], 'test': clips[len(LENGTHS):]},
           shard_seconds=2.0)
  return root


def _encoder_frames(input_values):
  """The number of frames the encoder's CNN makes of a batch (traced, not run)."""
  features, _ = nnx.eval_shape(
      lambda: audio_model.Data2VecAudioModel(MODEL, rngs=nnx.Rngs(0)).embed(input_values))
  return features.shape[1]


def _take(data_dir, n, **kw):
  it = iter(audio.make_pretrain_dataset(data_dir=data_dir, **{**KW, **kw}))
  return [next(it) for _ in range(n)]


def _originals(data_dir):
  """valid length -> the clip's stored samples (the lengths are distinct)."""
  clips = audio.open_clips(data_dir, 'clips', 'train')
  return {int(n): clips.samples(i) for i, n in enumerate(clips.lengths)}


def test_load_clips_drops_and_counts_short_clips(data_dir):
  source, _, lengths, dropped = audio.load_clips(data_dir, 'clips', 'train', 4000)
  assert dropped == 2 and sorted(lengths) == LENGTHS[2:] and len(source.shards) > 3
  _, _, lengths, dropped = audio.load_clips(data_dir, 'clips', 'test', 4000)
  assert dropped == 0 and list(lengths) == [5000] * 3


def test_padded_batches_line_up_with_the_encoder(data_dir, monkeypatch):
  """pad=True: frames and masks match the model's own conv output and frame mask; spans are
  drawn over exactly each clip's valid frames, so padded frames are never masked."""
  span_lengths, span_mask = [], masking.span_mask

  def recording_span_mask(rng, length, *args, **kwargs):
    span_lengths.append(length)
    return span_mask(rng, length, *args, **kwargs)

  it = iter(audio.make_pretrain_dataset(data_dir=data_dir, **KW))  # built before the patch
  monkeypatch.setattr(masking, 'span_mask', recording_span_mask)
  for _ in range(4):
    batch = next(it)
    values, attention, masks = (batch['input_values'], batch['attention_mask'],
                                batch['mask_time_indices'])
    assert values.shape == attention.shape == (4, 12_001) and values.dtype == np.float32
    assert masks.shape == (4, NUM_FRAMES(12_001)) and masks.dtype == bool
    valid = attention.sum(axis=1)
    assert np.all(values[attention == 0] == 0)
    assert np.all((valid >= 4000) & (valid <= 12_001)) and len(set(valid)) > 1
    assert _encoder_frames(values) == masks.shape[1]
    frame_valid = np.asarray(audio_model.frame_mask(MODEL, attention, masks.shape[1]))
    assert span_lengths[-4:] == list(frame_valid.sum(axis=1))
    assert not np.any(masks & ~frame_valid)
    counts = masks.sum(axis=1)
    assert counts.min() == counts.max() >= 1  # equalized


def test_cropped_batches_use_the_largest_bucket_that_fits(data_dir):
  """pad=False: every clip cropped to the batch's shortest, rounded down to a bucket."""
  kw = dict(pad=False, num_epochs=1, max_sample_size=100_000)
  sizes = set()
  for batch in _take(data_dir, 7, **kw):
    assert set(batch) == {'input_values', 'mask_time_indices'}
    size = batch['input_values'].shape[1]
    sizes.add(size)
    assert size in KW['crop_buckets']
    assert batch['mask_time_indices'].shape == (4, _encoder_frames(batch['input_values']))
    assert np.all(batch['input_values'].std(axis=1) > 0.5)  # real samples to the end
  assert len(sizes) > 1
  # The bucket is the largest one that fits the shortest clip of the batch.
  for batch, originals in zip(_take(data_dir, 7, pad=True, num_epochs=1, max_sample_size=100_000),
                              _take(data_dir, 7, **kw)):
    shortest = batch['attention_mask'].sum(axis=1).min()
    assert originals['input_values'].shape[1] == max(b for b in KW['crop_buckets'] if b <= shortest)


def test_clips_are_normalized_then_cropped(data_dir):
  originals = _originals(data_dir)
  long_clips = [audio.normalize(c) for n, c in originals.items() if n > 12_001]

  def is_window(values):
    for full in long_clips:
      for start in np.flatnonzero(np.abs(full - values[0]) < 1e-6):
        if np.allclose(full[start:start + len(values)], values, atol=1e-5):
          return True
    return False

  windows = 0
  for batch in _take(data_dir, 7, num_epochs=1):
    for values, n in zip(batch['input_values'], batch['attention_mask'].sum(axis=1)):
      if n < 12_001:  # the whole clip: exactly its normalization
        np.testing.assert_allclose(values[:n], audio.normalize(originals[n]), atol=1e-5)
        assert abs(values[:n].mean()) < 1e-4 and abs(values[:n].std() - 1) < 1e-3
      else:  # a window of a long clip normalized as a whole (fairseq), not per window
        assert is_window(values)
        assert abs(values.mean()) > 1e-3 or abs(values.std() - 1) > 1e-3
        windows += 1
  assert windows >= 5


def test_every_clip_once_per_epoch_and_processes_are_disjoint(data_dir):
  def valid_lengths(**kw):
    batches = _take(data_dir, 31 // (4 * kw.get('process_count', 1)), num_epochs=1,
                    max_sample_size=100_000, **kw)
    return [int(n) for b in batches for n in b['attention_mask'].sum(axis=1)]

  single = valid_lengths()
  assert len(set(single)) == len(single) == 28 and set(single) <= set(LENGTHS[2:])
  halves = [valid_lengths(process_index=p, process_count=2) for p in (0, 1)]
  assert not set(halves[0]) & set(halves[1])
  assert len(halves[0]) == len(halves[1]) == 12


def test_deterministic_per_seed(data_dir):
  a, b, c = _take(data_dir, 3), _take(data_dir, 3), _take(data_dir, 3, seed=6)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert not all(np.array_equal(x['input_values'], z['input_values']) for x, z in zip(a, c))


def test_epochs_redraw_masks(data_dir):
  """The spans of a clip seen again in the next epoch are drawn anew."""
  masks = {}  # clip (its length) -> [mask in epoch 0, mask in epoch 1]
  for batch in _take(data_dir, 15, num_epochs=2, max_sample_size=100_000):
    for mask, n in zip(batch['mask_time_indices'], batch['attention_mask'].sum(axis=1)):
      masks.setdefault(int(n), []).append(mask)
  pairs = [m for m in masks.values() if len(m) == 2]
  assert len(pairs) >= 20
  assert sum(not np.array_equal(a, b) for a, b in pairs) >= 0.9 * len(pairs)


def test_resume_mid_epoch_gives_the_identical_next_batch(data_dir):
  ds = audio.make_pretrain_dataset(data_dir=data_dir, **KW)
  it = iter(ds)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = next(it)
  resumed = iter(ds)
  resumed.set_state(json.loads(json.dumps(state)))  # the state survives a JSON checkpoint
  got = next(resumed)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key])


@needs_speech
@pytest.mark.parametrize('pad', [False, True])
def test_mask_fractions_on_real_lengths(pad):
  """On the real pool with the tiny recipe's masking: the masks per batch match fairseq's
  compute_mask_indices on the same frame lengths, drawn independently."""
  config = audio_config.get_config('tiny')
  num_frames = functools.partial(audio_model.feature_lengths,
                                 audio_model.AudioConfig(**config.model.to_dict()),
                                 add_adapter=False)
  kw = dict(config.input.to_dict(), pad=pad, max_sample_size=48_000 if pad else 16_000)
  it = iter(audio.make_pretrain_dataset(
      data_dir=common.DEFAULT_DATA_DIR, split='train', batch_size=16, seed=0,
      num_frames=num_frames, num_threads=0, prefetch_buffer_size=0, **config.masking, **kw))
  rng = np.random.default_rng(1)
  ours, reference = [], []
  for _ in range(60):
    batch = next(it)
    masks = batch['mask_time_indices']
    samples = batch['attention_mask'].sum(axis=1) if pad else np.full(16, 16_000)
    frames = num_frames(samples)
    valid = np.arange(masks.shape[1]) < frames[:, None]
    assert not np.any(masks & ~valid)
    ours.append(masks.sum() / valid.sum())
    ref = masking.compute_mask_indices(rng, masks.shape, lengths=frames, **config.masking)
    reference.append(ref.sum() / valid.sum())
  assert abs(np.mean(ours) - np.mean(reference)) < 0.025, (np.mean(ours), np.mean(reference))
  assert (0.2 if pad else 0.28) < np.mean(ours) < 0.45


def test_rejects_bad_arguments(data_dir):
  cases = {
      'sample_rate=22050': dict(sample_rate=22050),
      'min_sample_size=300': dict(min_sample_size=300, crop_buckets=(300,)),  # < 1 frame
      'min_sample_size=5000 <= max_sample_size=4000': dict(min_sample_size=5000,
                                                           max_sample_size=4000),
      r'crop_buckets=\(8000,\)': dict(pad=False, crop_buckets=(8000,)),  # > min_sample_size
      r'crop_buckets=\(\)': dict(pad=False, crop_buckets=()),
      'process_index=2': dict(process_index=2, process_count=2),
      "split='dev'": dict(split='dev'),
      "dataset='librispeech'": dict(dataset='librispeech'),
      'none of its 33 clips': dict(min_sample_size=30_000, max_sample_size=30_000),
  }
  for message, kw in cases.items():
    with pytest.raises(ValueError, match=message):
      audio.make_pretrain_dataset(data_dir=data_dir, **{**KW, **kw})
  with pytest.raises(ValueError, match=r"split='validation': .* splits \['test', 'train'\]"):
    audio.make_pretrain_dataset(data_dir=data_dir, **{**KW, 'split': 'validation'})


@needs_speech
def test_tiny_audio_pretraining_learns(tmp_path):
  """A short version of the tiny recipe on a 320-clip slice of the real pool: the loss falls and
  the targets keep their variance."""
  pool = audio.open_clips(common.DEFAULT_DATA_DIR, 'speech_pool', 'train')
  with open(f'{common.DEFAULT_DATA_DIR}/speech_pool/train.jsonl', encoding='utf-8') as f:
    records = [json.loads(line) for line in f]
  usable = [i for i, n in enumerate(pool.lengths) if n >= 16_000]
  picked = usable[::len(usable) // 320][:320]  # spread over every source
  assert len({records[i]['source'] for i in picked}) == 5
  # int16 samples -> float wav -> int16: the clips as stored (full scale kept).
  _prepare(tmp_path / 'data', 'pool_slice', {'train': [pool.samples(i) for i in picked]})

  config = audio_config.get_config('tiny')
  config.data_dir = str(tmp_path / 'data')
  config.input.dataset = 'pool_slice'
  config.total_steps = 120
  config.ema.tau_n = 120
  config.log_every_steps = 20
  config.checkpoint_every_steps = 120
  config.probe_every_steps = 0  # the slice has no spoken digits
  train.train_and_evaluate(config, str(tmp_path / 'workdir'))
  with open(tmp_path / 'workdir' / 'metrics.jsonl') as f:
    logged = [json.loads(line) for line in f]
  assert [m['step'] for m in logged] == list(range(20, 121, 20))
  first, last = logged[0], logged[-1]
  assert last['loss'] < 0.7 * first['loss'], (first['loss'], last['loss'])
  assert min(m['target_var'] for m in logged) > max(0.2, config.min_target_var)
  assert all(np.isfinite(m['grad_norm']) for m in logged)
  assert 0.2 < last['masked_fraction'] < 0.5
