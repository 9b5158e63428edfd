"""The text pretraining pipeline: packing, masking, determinism, resume, process slices (a
synthetic prepared text set), and on the bundled corpus the mask fractions and a short tiny
pretraining."""
import json

import numpy as np
import pytest

import train
from configs import common, text, text2
from data2vec.input_pipeline import datasets
from data2vec.input_pipeline import text as text_input
from data2vec import masking
from data2vec.input_pipeline import text_data
from tests.test_text_data import needs_text_data
from tests.test_train import read_metrics

VOCAB = 50
PRETRAIN = dict(dataset='synthetic', split='train', batch_size=8, seed=3, vocab_size=VOCAB, max_length=24,
                mask_prob=0.35, mask_length=4, num_threads=0, prefetch_buffer_size=0)
BERT = dict(mask_prob=0.15, mask_length=1, random_token_prob=0.1, leave_unmasked_prob=0.1)
# data2vec 2.0: config.masking is {mask_prob, clone_batch}; 12 of 24 positions kept per view.
V2 = {**{k: v for k, v in PRETRAIN.items() if k != 'mask_length'}, 'mask_prob': 0.48,
      'clone_batch': 3}
SPECIALS = np.arange(len(text_data.SPECIAL_TOKENS))


def _documents(rng, num_docs):
  """Token lines ending with </s>: mostly short, some longer than a block of 23."""
  docs = []
  for _ in range(num_docs):
    lengths = rng.choice([1, 3, 7, 12, 30], size=rng.integers(1, 8), p=[.2, .3, .2, .2, .1])
    docs.append([np.append(rng.integers(5, VOCAB, n - 1), text_data.EOS_ID) for n in lengths])
  return docs


def _arrays(docs):
  lines = [line for doc in docs for line in doc]
  return (np.concatenate(lines).astype(np.uint16),
          np.cumsum([0] + [len(line) for line in lines]),
          np.cumsum([0] + [len(doc) for doc in docs]))


def write_set(root, name, splits, vocab_size=VOCAB):
  """A prepared text set DATA_DIR/NAME of {split: (tokens, line_offsets, doc_offsets)}: the
  files and the dataset.json fields that data2vec/preparation/text.py writes and text_data
  reads (no tokenizer folder: the pipeline reads ids)."""
  folder = root / name
  folder.mkdir(parents=True)
  for split, arrays in splits.items():
    for kind, array in zip(('tokens', 'line_offsets', 'doc_offsets'), arrays):
      np.save(folder / f'{split}_{kind}.npy', array)
  meta = {'format': 'text', 'version': datasets.FORMAT_VERSION, 'name': name, 'classes': None,
          'vocab_size': vocab_size, 'special_ids': text_data.SpecialIds().as_dict(),
          'tokenizer_sha256': '0' * 64, 'token_dtype': 'uint16',
          'splits': {s: len(a[2]) - 1 for s, a in splits.items()},
          'max_token_id': {s: int(a[0].max(initial=0)) for s, a in splits.items()}}
  (folder / datasets.META_FILE).write_text(json.dumps(meta))
  return folder


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('data')
  rng = np.random.default_rng(0)
  write_set(root, 'synthetic', {s: _arrays(_documents(rng, 40)) for s in ('train', 'validation')})
  return root


def _take(ds, n):
  it = iter(ds)
  return [next(it) for _ in range(n)]


def _stack(batches):
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _block_contents(data_dir, break_mode='complete_doc', max_length=24):
  data = text_data.token_arrays(data_dir, 'synthetic', 'train')
  tokens, line_offsets, doc_offsets = data.tokens, data.line_offsets, data.doc_offsets
  blocks = text_input.pack_blocks(line_offsets, doc_offsets, max_length - 1, break_mode)
  return tokens, blocks


# --- packing ------------------------------------------------------------------------------------


@pytest.mark.parametrize('block_size', [1, 5, 23, 200])
def test_complete_doc_blocks_are_greedy_whole_lines_within_documents(block_size):
  rng = np.random.default_rng(block_size)
  tokens, line_offsets, doc_offsets = _arrays(_documents(rng, 30))
  blocks = text_input.pack_blocks(line_offsets, doc_offsets, block_size, 'complete_doc')
  assert blocks[0, 0] == 0 and blocks[-1, 1] == len(tokens)
  np.testing.assert_array_equal(blocks[1:, 0], blocks[:-1, 1])  # every token once, in order
  assert np.all(blocks[:, 1] > blocks[:, 0]) and np.all(blocks[:, 1] - blocks[:, 0] <= block_size)
  line_ends = set(line_offsets.tolist())
  doc_starts = line_offsets[doc_offsets[:-1]]
  for start, end in blocks:
    # No block crosses a document start, and a block starting at a line boundary ends at one
    # unless the line alone is longer than a block.
    assert not np.any((doc_starts > start) & (doc_starts < end))
    line = np.searchsorted(line_offsets, start, side='right') - 1
    if end not in line_ends:
      assert line_offsets[line + 1] - line_offsets[line] > block_size
    elif start in line_ends and end not in doc_starts and end < len(tokens):
      # Greedy: the next line would not have fitted.
      nxt = np.searchsorted(line_offsets, end)
      assert line_offsets[nxt + 1] - start > block_size


def test_none_mode_cuts_the_stream_into_full_blocks():
  tokens, line_offsets, doc_offsets = _arrays(_documents(np.random.default_rng(1), 30))
  blocks = text_input.pack_blocks(line_offsets, doc_offsets, 23, 'none')
  np.testing.assert_array_equal(blocks[:, 0], np.arange(0, len(tokens), 23))
  assert np.all(blocks[:-1, 1] - blocks[:-1, 0] == 23) and blocks[-1, 1] == len(tokens)


def test_pack_rejects_an_unknown_break_mode():
  with pytest.raises(ValueError, match='break_mode'):
    text_input.pack_blocks(np.array([0, 3]), np.array([0, 1]), 8, 'eos')


# --- batches and masks --------------------------------------------------------------------------


@pytest.mark.parametrize('break_mode', ['complete_doc', 'none'])
def test_batches_hold_bos_a_block_and_padding(data_dir, break_mode):
  tokens, blocks = _block_contents(data_dir, break_mode)
  contents = {tokens[s:e].tobytes() for s, e in blocks}
  batches = _take(text_input.make_pretrain_dataset(data_dir=data_dir, break_mode=break_mode,
                                                   **PRETRAIN), 3)
  seen = set()
  for b in batches:
    assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
        'input_ids': ((8, 24), np.int32), 'attention_mask': ((8, 24), np.int32),
        'masked_input_ids': ((8, 24), np.int32), 'target_mask': ((8, 24), bool)}
    for ids, attention in zip(b['input_ids'], b['attention_mask']):
      n = attention.sum()
      np.testing.assert_array_equal(attention, np.arange(24) < n)  # right padding only
      assert ids[0] == text_data.BOS_ID and np.all(ids[n:] == text_data.PAD_ID)
      content = ids[1:n].astype(np.uint16).tobytes()
      assert content in contents
      seen.add(content)
  assert len(seen) == 24  # distinct blocks within the first epoch


def test_span_masks_replace_targets_with_mask_and_never_touch_padding(data_dir):
  b = _stack(_take(text_input.make_pretrain_dataset(data_dir=data_dir, **PRETRAIN), 6))
  target, valid = b['target_mask'], b['attention_mask'].astype(bool)
  assert not np.any(target & ~valid)
  np.testing.assert_array_equal(b['masked_input_ids'][target], text_data.MASK_ID)
  np.testing.assert_array_equal(b['masked_input_ids'][~target], b['input_ids'][~target])
  # int(0.35 * n / 4 + U) spans of 4 per row, clipped at the end and merged when they overlap.
  counts, lengths = target.sum(1), valid.sum(1)
  assert np.all(counts <= 4 * np.floor(0.35 * lengths / 4 + 1))


def test_bert_masks_80_10_10(data_dir):
  ds = text_input.make_pretrain_dataset(data_dir=data_dir, **{**PRETRAIN, **BERT})
  b = _stack(_take(ds, 30))
  target, valid = b['target_mask'], b['attention_mask'].astype(bool)
  assert not np.any(target & ~valid)
  # Exactly int(0.15 * n + U) positions per row (spans of 1 never overlap).
  lengths = valid.sum(1)
  assert np.all((target.sum(1) >= np.floor(0.15 * lengths)) &
                (target.sum(1) <= np.floor(0.15 * lengths) + 1))
  got, orig = b['masked_input_ids'][target], b['input_ids'][target]
  masked, same = np.mean(got == text_data.MASK_ID), np.mean(got == orig)
  assert 0.72 < masked < 0.88 and 0.05 < same < 0.17, (masked, same)
  random = got[(got != text_data.MASK_ID) & (got != orig)]
  assert len(random) and not np.isin(random, SPECIALS).any() and random.max() < VOCAB


# --- data2vec 2.0 views ----------------------------------------------------------------------


def test_views_keep_exactly_num_visible_tokens_and_differ(data_dir):
  batches = _take(text_input.make_pretrain_dataset(data_dir=data_dir, **V2), 4)
  v1 = _take(text_input.make_pretrain_dataset(data_dir=data_dir, **PRETRAIN), 4)
  for b, a in zip(batches, v1):
    assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
        'input_ids': ((8, 24), np.int32), 'attention_mask': ((8, 24), np.int32),
        'target_mask': ((8, 3, 24), bool)}  # no masked_input_ids: masked tokens are dropped
    for k in ('input_ids', 'attention_mask'):  # the same blocks in the same order as data2vec
      np.testing.assert_array_equal(b[k], a[k])
  b = _stack(batches)
  kept, valid = ~b['target_mask'], b['attention_mask'].astype(bool)[:, None]
  assert np.all(kept.sum(-1) == masking.num_visible(24, 0.48))
  # Valid tokens are kept first: a pad only when every valid token of the row is kept.
  assert np.all(~np.any(kept & ~valid, -1) | np.all(kept | ~valid, -1))
  assert np.any(kept & ~valid)  # some rows are shorter than 12 tokens
  differ = [not np.array_equal(v[0], v[1]) and not np.array_equal(v[1], v[2])
            for v, n in zip(b['target_mask'], valid.sum(-1)[:, 0]) if n > 12]
  assert differ and all(differ)


def test_masks_are_drawn_from_the_element_rng(data_dir):
  """Both versions draw a block's masks from element_rng(seed, block, epoch): text_mask once
  (data2vec, as before 2.0 came), token_view_mask once per view (2.0)."""
  tokens, blocks = _block_contents(data_dir)
  block_of = {tokens[s:e].tobytes(): i for i, (s, e) in enumerate(blocks)}
  v1, v2 = (next(iter(text_input.make_pretrain_dataset(data_dir=data_dir, **kw)))
            for kw in (PRETRAIN, V2))
  for row, (ids, n) in enumerate(zip(v1['input_ids'], v1['attention_mask'].sum(1))):
    block = block_of[ids[1:n].astype(np.uint16).tobytes()]
    rng = masking.element_rng(PRETRAIN['seed'], block, 0)
    masked, target = masking.text_mask(rng, ids, mask_prob=0.35, mask_length=4,
                                       vocab_size=VOCAB, mask_id=text_data.MASK_ID,
                                       pad_id=text_data.PAD_ID,
                                       special_ids=(text_data.BOS_ID, text_data.EOS_ID,
                                                    text_data.UNK_ID))
    np.testing.assert_array_equal(v1['masked_input_ids'][row], masked)
    np.testing.assert_array_equal(v1['target_mask'][row], target)
    rng = masking.element_rng(V2['seed'], block, 0)
    views = [masking.token_view_mask(rng, ids != text_data.PAD_ID, 0.48) for _ in range(3)]
    np.testing.assert_array_equal(v2['target_mask'][row], views)


def test_views_are_reproducible_and_resume(data_dir):
  a = _take(text_input.make_pretrain_dataset(data_dir=data_dir, **V2), 3)
  b = _take(text_input.make_pretrain_dataset(data_dir=data_dir, **V2), 3)
  c = _take(text_input.make_pretrain_dataset(data_dir=data_dir, **{**V2, 'seed': 4}), 3)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not np.array_equal(a[0]['target_mask'], c[0]['target_mask'])
  it = iter(text_input.make_pretrain_dataset(data_dir=data_dir, **V2))
  next(it)
  state, want = it.get_state(), next(it)
  resumed = iter(text_input.make_pretrain_dataset(data_dir=data_dir, **V2))
  resumed.set_state(json.loads(json.dumps(state)))
  np.testing.assert_array_equal(next(resumed)['target_mask'], want['target_mask'])


@pytest.mark.parametrize('kw, match', [
    (dict(mask_length=4), 'config.masking.mask_length=4'),
    (dict(random_token_prob=0.1), 'random_token_prob=0.1'),
    (dict(leave_unmasked_prob=0.1), 'leave_unmasked_prob=0.1'),
    (dict(clone_batch=0), 'config.masking.clone_batch=0'),
    (dict(mask_prob=1.0), 'config.masking.mask_prob=1.0'),
    (dict(mask_prob=0.99), 'keep at least one of the max_length=24'),
    (dict(clone_batch=None), 'config.masking.mask_length is needed'),
])
def test_views_reject_data2vec_only_masking(data_dir, kw, match):
  with pytest.raises(ValueError, match=match):
    text_input.make_pretrain_dataset(**{'data_dir': data_dir, **V2, **kw})


def test_views_accept_the_neutral_data2vec_values(data_dir):
  neutral = dict(mask_length=1, random_token_prob=0.0, leave_unmasked_prob=0.0)
  b = next(iter(text_input.make_pretrain_dataset(data_dir=data_dir, **V2, **neutral)))
  assert b['target_mask'].shape == (8, 3, 24)


# --- determinism, epochs, resume, processes -----------------------------------------------------


def test_deterministic_per_seed(data_dir):
  a = _take(text_input.make_pretrain_dataset(data_dir=data_dir, **PRETRAIN), 3)
  b = _take(text_input.make_pretrain_dataset(data_dir=data_dir, **PRETRAIN), 3)
  c = _take(text_input.make_pretrain_dataset(data_dir=data_dir, **{**PRETRAIN, 'seed': 4}), 3)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not np.array_equal(a[0]['input_ids'], c[0]['input_ids'])


def test_epochs_reshuffle_and_remask(data_dir):
  tokens, blocks = _block_contents(data_dir)
  n = len(blocks)
  ds = text_input.make_pretrain_dataset(data_dir=data_dir, **{**PRETRAIN, 'batch_size': 1})
  rows = _stack(_take(ds, 2 * n))
  contents = [ids[1:m].tobytes() for ids, m in zip(rows['input_ids'].astype(np.uint16),
                                                    rows['attention_mask'].sum(1))]
  assert sorted(contents[:n]) == sorted(contents[n:]) == sorted(
      tokens[s:e].tobytes() for s, e in blocks)
  assert contents[:n] != contents[n:]
  first = {c: m for c, m in zip(contents[:n], rows['target_mask'][:n])}
  remasked = [not np.array_equal(first[c], m)
              for c, m in zip(contents[n:], rows['target_mask'][n:])]
  assert np.mean(remasked) > 0.5  # a block is masked afresh in the second epoch


def test_resume_mid_epoch_gives_the_identical_next_batch(data_dir):
  ds = text_input.make_pretrain_dataset(data_dir=data_dir, **{**PRETRAIN, 'num_threads': 2,
                                                              'prefetch_buffer_size': 4})
  it = iter(ds)
  for _ in range(11):
    next(it)
  state = it.get_state()
  expected = [next(it), next(it)]
  resumed = iter(text_input.make_pretrain_dataset(data_dir=data_dir, **PRETRAIN))
  resumed.set_state(json.loads(json.dumps(state)))  # as the checkpoint stores it
  for want in expected:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_process_slices_interleave_the_single_process_stream(data_dir):
  kw = {**PRETRAIN, 'batch_size': 4, 'num_epochs': 2}
  single = _stack(list(text_input.make_pretrain_dataset(data_dir=data_dir,
                                                        **{**kw, 'batch_size': 8})))
  for p in range(2):
    local = _stack(list(text_input.make_pretrain_dataset(data_dir=data_dir, process_index=p,
                                                         process_count=2, **kw)))
    n = len(local['input_ids'])
    for k in single:
      np.testing.assert_array_equal(local[k], single[k][p::2][:n])


def test_rejects_what_does_not_match_the_model_or_the_files(data_dir, tmp_path):
  make = lambda **kw: text_input.make_pretrain_dataset(**{'data_dir': data_dir, **PRETRAIN, **kw})
  with pytest.raises(ValueError, match='vocab_size=8192 .*50 ids'):
    make(vocab_size=8192)
  with pytest.raises(ValueError, match='pad_token_id=0'):
    make(pad_token_id=0)
  with pytest.raises(ValueError, match='max_position_embeddings >= 26'):
    make(max_position_embeddings=25)
  make(max_position_embeddings=26)
  with pytest.raises(ValueError, match='break_mode'):
    make(break_mode='eos')
  with pytest.raises(ValueError, match='split'):
    make(split='test')
  with pytest.raises(ValueError, match='process_index'):
    make(process_index=2, process_count=2)
  with pytest.raises(ValueError, match='dataset.json does not exist'):
    make(data_dir=tmp_path)
  with pytest.raises(ValueError, match='wiki'):
    make(dataset='wiki')
  with pytest.raises(ValueError, match='packs into 94 blocks .* fewer than one global batch of 10 x 10'):
    make(batch_size=10, process_count=10)


def test_an_empty_or_truncated_corpus_is_named(tmp_path):
  empty = tmp_path / 'empty'
  no_lines = (np.zeros(0, np.uint16), np.zeros(1, np.int64), np.zeros(1, np.int64))
  folder = write_set(empty, 'synthetic', {'train': no_lines})
  with pytest.raises(ValueError, match='packs into 0 blocks'):
    text_input.make_pretrain_dataset(**{**PRETRAIN, 'data_dir': empty})
  tokens = folder / 'train_tokens.npy'
  tokens.write_bytes(tokens.read_bytes()[:40])
  with pytest.raises(ValueError, match=r'train_tokens.npy: not a readable \.npy array'):
    text_input.make_pretrain_dataset(**{**PRETRAIN, 'data_dir': empty})


# --- the prepared corpus ------------------------------------------------------------------------


@needs_text_data
@pytest.mark.parametrize('break_mode', ['complete_doc', 'none'])
def test_real_mask_fractions(break_mode):
  config = text.get_config('tiny')
  ds = text_input.make_pretrain_dataset(
      data_dir=config.data_dir, dataset=config.input.dataset, split='train',
      vocab_size=config.model.vocab_size,
      max_length=config.input.max_length, break_mode=break_mode, batch_size=32, seed=0,
      num_threads=0, prefetch_buffer_size=0, **config.masking)
  b = _stack(_take(ds, 4))
  valid = b['attention_mask'].astype(bool)
  fraction = b['target_mask'].sum() / valid.sum()
  # 1 - (1 - 0.35 / 4)^4 = 0.306 without clipping at the end of short blocks (docs/algorithm.md
  # §4.1).
  assert 0.27 < fraction < 0.32, fraction
  assert not np.any(b['target_mask'] & ~valid)
  fill = valid.mean()
  assert (0.75 < fill < 0.95) if break_mode == 'complete_doc' else fill > 0.99


@needs_text_data
@pytest.mark.parametrize('variant', ['tiny', 'base'])
def test_real_text2_views(variant):
  """configs/text2.py's blocks (break_mode none) are full: every view keeps valid tokens only."""
  config = text2.get_config(variant)
  ds = text_input.make_pretrain_dataset(
      data_dir=config.data_dir, split='train', vocab_size=config.model.vocab_size,
      pad_token_id=config.model.pad_token_id, batch_size=4, seed=0, num_threads=0,
      prefetch_buffer_size=0, **config.masking, **config.input)
  b = next(iter(ds))
  t, m = config.input.max_length, config.masking.clone_batch
  assert b['target_mask'].shape == (4, m, t)
  assert np.all((~b['target_mask']).sum(-1) == masking.num_visible(t, config.masking.mask_prob))
  assert b['attention_mask'].all()


@needs_text_data
def test_tiny_text_pretraining_learns(tmp_path):
  """A short version of the tiny recipe on its glosses: the loss falls, targets stay spread.

  Shorter blocks and batches keep it within a minute on 2 CPU cores; the schedules are shrunk
  to the run as the vision test does. The full run is scripts/tiny_text_pretraining.sh.
  """
  config = text.get_config('tiny')
  config.total_steps = 80
  config.batch_size = 16
  config.input.max_length = 64
  config.optimizer.warmup_steps = 8
  config.ema.tau_n = 80
  config.log_every_steps = 10
  config.checkpoint_every_steps = 80
  train.train_and_evaluate(config, str(tmp_path))
  logged = read_metrics(str(tmp_path))
  assert [m['step'] for m in logged] == list(range(10, 81, 10))
  first, last = logged[0], logged[-1]
  assert last['loss'] < 0.85 * first['loss'], (first['loss'], last['loss'])
  assert min(m['target_var'] for m in logged) > config.min_target_var
  assert all(np.isfinite(m['grad_norm']) for m in logged)
  assert 0.2 < last['masked_fraction'] < 0.32  # of all positions, padding included
