"""Text pretraining pipeline on a prepared text set (`scripts/prepare_data.py text`: the bundled
python_docs and wordnet_glosses, or `--src ... --name NAME`), read by `text_data.token_arrays`
with the tokenizer and special ids the set carries.

Blocks are packed once (numpy) from the tokenized lines, as fairseq's TokenBlockDataset does:
`complete_doc` packs whole lines (each ending with </s>) up to `max_length - 1` tokens without
crossing a document boundary; `none` cuts the token stream every `max_length - 1` tokens. Then
block ids -> shuffle(seed) -> repeat -> this process's slice -> <s> + block + padding to
`max_length`, a span or BERT mask (`masking.text_mask`; data2vec 2.0: `clone_batch` views,
`masking.token_view_mask`) drawn from an RNG seeded by (seed, block, epoch) -> batch -> iterator.
Every batch is a pure function of its position, so the iterator state (`get_state()`) is a single
index that checkpoints and resumes exactly; a resume needs the same process count.

Batches (static shapes [B, max_length]): `input_ids` int32 (the teacher's uncorrupted input),
`attention_mask` int32 (1 = token), `masked_input_ids` int32 (the student's input) and
`target_mask` bool (the loss positions; never padding). data2vec 2.0 drops the masked tokens
instead of writing <mask>, so there is no `masked_input_ids`; `target_mask` is [B, clone_batch,
max_length], True = masked, each view keeping exactly `masking.num_visible(max_length, mask_prob)`
positions (valid tokens first).
"""
import dataclasses

import numpy as np

from data2vec import masking
from data2vec.input_pipeline import slicing, text_data

BREAK_MODES = ('complete_doc', 'none')


def pack_blocks(line_offsets, doc_offsets, block_size, break_mode):
  """[N, 2] int64 (start, end) token offsets of the blocks of at most `block_size` tokens.

  complete_doc: whole lines, greedily, never across documents; a line longer than a block is
  cut into blocks of its own (fairseq would emit one over-long block, which static shapes forbid).
  none: consecutive `block_size` slices of the whole stream; the last one may be shorter.
  """
  if break_mode not in BREAK_MODES:
    raise ValueError(f'break_mode={break_mode!r} is not one of {BREAK_MODES}')
  if block_size < 1:
    raise ValueError(f'block_size={block_size} must be >= 1 (max_length >= 2)')
  total = int(line_offsets[-1])
  if break_mode == 'none':
    starts = np.arange(0, total, block_size, dtype=np.int64)
    return np.stack([starts, np.minimum(starts + block_size, total)], axis=1)
  blocks = []
  for doc in range(len(doc_offsets) - 1):
    start = end = int(line_offsets[doc_offsets[doc]])
    for line_end in line_offsets[doc_offsets[doc] + 1:doc_offsets[doc + 1] + 1].tolist():
      if line_end - start > block_size and end > start:  # the line does not fit: close the block
        blocks.append((start, end))
        start = end
      while line_end - start > block_size:
        blocks.append((start, start + block_size))
        start += block_size
      end = line_end
    blocks.append((start, end))
  return np.array(blocks, np.int64).reshape(-1, 2)


@dataclasses.dataclass(frozen=True)
class _PretrainExample:
  """(position in this process's slice, block id) -> one masked example: `clone_batch` views
  (data2vec 2.0), or one `text_mask` with `mask_kwargs` when it is None."""
  tokens: np.ndarray
  blocks: np.ndarray
  max_length: int
  vocab_size: int
  special_ids: text_data.SpecialIds
  seed: int
  mask_kwargs: dict
  clone_batch: int | None
  process_index: int
  process_count: int

  def __call__(self, local_index, block):
    epoch = slicing.epoch(local_index, self.process_index, self.process_count, len(self.blocks))
    start, end = self.blocks[block]
    s = self.special_ids
    input_ids = np.full(self.max_length, s.pad, np.int32)
    input_ids[0] = s.bos
    input_ids[1:1 + end - start] = self.tokens[start:end]
    rng = masking.element_rng(self.seed, int(block), epoch)
    valid = input_ids != s.pad
    example = {'input_ids': input_ids, 'attention_mask': valid.astype(np.int32)}
    if self.clone_batch is None:
      masked, example['target_mask'] = masking.text_mask(
          rng, input_ids, vocab_size=self.vocab_size, mask_id=s.mask, pad_id=s.pad,
          special_ids=(s.bos, s.eos, s.unk), **self.mask_kwargs)
      example['masked_input_ids'] = masked.astype(np.int32)
    else:
      example['target_mask'] = np.stack([
          masking.token_view_mask(rng, valid, self.mask_kwargs['mask_prob'])
          for _ in range(self.clone_batch)])
    return example


def _check_masking(max_length, mask_prob, mask_length, random_token_prob, leave_unmasked_prob,
                   clone_batch):
  """The config.masking fields that span / BERT masks (data2vec) or views (2.0) take."""
  if clone_batch is None:
    if mask_length is None:
      raise ValueError('config.masking.mask_length is needed for span or BERT masks (data2vec); '
                       'give config.masking.clone_batch for data2vec 2.0 views')
    return
  if mask_length not in (None, 1) or random_token_prob or leave_unmasked_prob:
    raise ValueError(f'config.masking.mask_length={mask_length}, random_token_prob='
                     f'{random_token_prob}, leave_unmasked_prob={leave_unmasked_prob}: data2vec '
                     '2.0 (config.masking.clone_batch) drops single tokens and writes no <mask> '
                     'or random ones; leave them out (or 1, 0, 0)')
  if not isinstance(clone_batch, (int, np.integer)) or clone_batch < 1:
    raise ValueError(f'config.masking.clone_batch={clone_batch!r} must be an integer >= 1')
  if not 0 < mask_prob < 1 or masking.num_visible(max_length, mask_prob) < 1:
    raise ValueError(f'config.masking.mask_prob={mask_prob} must be in (0, 1) and keep at least '
                     f'one of the max_length={max_length} positions visible')


def make_pretrain_dataset(*, data_dir, split, batch_size, seed, vocab_size, max_length,
                          mask_prob, mask_length=None, random_token_prob=0.0,
                          leave_unmasked_prob=0.0, clone_batch=None,
                          pad_token_id=text_data.PAD_ID, max_position_embeddings=None,
                          dataset='wordnet_glosses', break_mode='complete_doc',
                          num_epochs=None, process_index=0, process_count=1, num_threads=4,
                          prefetch_buffer_size=8):
  """Masked batches of `batch_size` (per process) blocks of `max_length` tokens.

  The keyword names match `config.model`, `config.masking` and `config.input`; `vocab_size`,
  `pad_token_id` and `max_position_embeddings` are the model's and are checked against the
  set's tokenizer. `clone_batch` (data2vec 2.0) gives that many `masking.token_view_mask` views
  of `mask_prob` per block instead of one span or BERT mask (`mask_length`...).
  `num_epochs=None` repeats forever. Returns a grain IterDataset; `iter()` of it is a
  checkpointable iterator.
  """
  slicing.check_process(process_index, process_count)
  if max_length < 2:
    raise ValueError(f'max_length={max_length} must be >= 2 (<s> and a token)')
  _check_masking(max_length, mask_prob, mask_length, random_token_prob, leave_unmasked_prob,
                 clone_batch)
  vocab = text_data.vocabulary(data_dir, dataset)
  if vocab_size != vocab.size:  # random replacement tokens are drawn from the whole vocabulary
    raise ValueError(f'config.model.vocab_size={vocab_size} but {vocab.owner} has {vocab.size} '
                     'ids')
  if pad_token_id != vocab.special_ids.pad:
    raise ValueError(f'pad_token_id={pad_token_id} (config.model) is not the <pad> id '
                     f'{vocab.special_ids.pad} of {vocab.owner}')
  # RoBERTa positions run up to pad_token_id + max_length; a gather past the table would not fail.
  positions = max_length + pad_token_id + 1
  if max_position_embeddings is not None and positions > max_position_embeddings:
    raise ValueError(f'max_length={max_length} needs max_position_embeddings >= {positions}, '
                     f'the model has {max_position_embeddings}')
  data = text_data.token_arrays(data_dir, dataset, split, vocab_size=vocab_size)
  blocks = pack_blocks(data.line_offsets, data.doc_offsets, max_length - 1, break_mode)  # + <s>
  if len(blocks) < batch_size * process_count:  # e.g. an empty corpus: no batch would ever come
    raise ValueError(f'{data.folder}: the {split} split packs into {len(blocks)} blocks of '
                     f'max_length={max_length}, fewer than one global batch of {batch_size} x '
                     f'{process_count} processes')
  element = _PretrainExample(
      tokens=data.tokens, blocks=blocks, max_length=max_length, vocab_size=vocab_size,
      special_ids=vocab.special_ids, seed=seed,
      mask_kwargs=dict(mask_prob=mask_prob, mask_length=mask_length,
                       random_token_prob=random_token_prob,
                       leave_unmasked_prob=leave_unmasked_prob),
      clone_batch=clone_batch, process_index=process_index, process_count=process_count)
  ds = slicing.train_records(len(blocks), seed=seed, num_epochs=num_epochs,
                             process_index=process_index, process_count=process_count)
  ds = ds.map_with_index(element)
  ds = ds.batch(batch_size, drop_remainder=True)
  return slicing.iterate(ds, num_threads, prefetch_buffer_size)
