"""`prepare_data.py text --src FILES_OR_DIRS...`: text files -> a tokenized text set.

Inputs, given as files and / or folders (every .txt and .jsonl below a folder, hidden ones left
out; a file given on its own is read as .txt unless it ends in .jsonl), all UTF-8:
  .txt    documents apart by blank lines; each other line is a line of the document (trailing
          white space stripped), as the bundled corpora's {split}.txt
  .jsonl  one document per record, its text in the `text` field (--text_field), split into lines
          the same way; an optional `label` field (--label_field, a string or an integer)
A file that is not UTF-8 is skipped and counted (--strict: an error); malformed input (a record
that is not an object or lacks the text field, ...) is a ValueError naming file:line.

Splits: split folders (train/ val/ test/ ... below a --src folder, data2vec/preparation/sources.py)
split whole files; otherwise each document goes to validation or test with --val_fraction /
--test_fraction by a hash of (its file's path below the --src folder, or its name for a file
given on its own; its index in the file), so the splits depend neither on the listing order nor
on the machine. A split that gets no document is left out.
Classes (--labels): `folders` takes the first folder level below the splits of every --src folder
(the union of their names; a file given on its own has none, an error); `none` leaves the set
unlabelled; `auto` takes the records' label field when any .jsonl record has one (then every
document must: each record, and no .txt file), else `folders` when every file lies in a class
folder, else `none`. Integer record labels are ordered as numbers, strings alphabetically.

Tokenizer (--tokenizer): `bpe:VOCAB` trains a RoBERTa-style byte-level BPE of VOCAB ids on the
train split (`train_bpe`: <s> <pad> </s> <unk> <mask> are ids 0-4); a PATH to a tokenizer.json or
to a transformers tokenizer folder holding one is used as it is, and must define those five
special tokens at any ids: dataset.json records them (`special_ids`) and the pipelines use them
(the model's pad_token_id must equal the <pad> id). A set has one tokenization: the same text in
another tokenizer is another set, prepared with `--tokenizer DATA_DIR/OTHER/tokenizer` to share
OTHER's. dataset.json records the sha256 of tokenizer.json, so that a probe or fine-tuning run
refuses labelled text tokenized by another tokenizer than its encoder's pretraining data
(text_data.check_tokenizer). The bundled sets are prepared this way too
(data2vec/preparation/bundled_text.py).

Writes DATA_DIR/NAME/ (read by text_data.token_arrays and labelled.text_examples):
  dataset.json              format 'text', splits {split: documents}, classes, skipped, labels_from
                            ('folders', 'records' or null), vocab_size, special_ids, tokenizer
                            (the folder below), tokenizer_source, tokenizer_sha256 (of its
                            tokenizer.json), token_dtype, tokens, lines and max_token_id
                            {split: count / largest id}, empty_documents (records without text,
                            left out)
  tokenizer/                tokenizer.json, tokenizer_config.json, special_tokens_map.json (+
                            vocab.json, merges.txt): AutoTokenizer.from_pretrained loads it
  {split}_tokens.npy        uint16 (uint32 above 65536 ids): each line's ids, then </s>
  {split}_line_offsets.npy  int64 [L+1] token offsets of the lines
  {split}_doc_offsets.npy   int64 [D+1] line offsets of the documents
  {split}_labels.npy        int32 [D] class ids (labelled sets only)

Nothing holds the corpus in memory: the BPE reads the train documents file by file, and the files
are tokenized in parallel shards of about SHARD_BYTES, CHUNK_LINES lines at a time, appended to
raw files per shard and split that are joined into the .npy files at the end; resumably, and a
failed run leaves an existing DATA_DIR/NAME as it was (data2vec/preparation/shards.py).
"""
import codecs
import contextlib
import dataclasses
import itertools
import json
import os
import pathlib
import shutil

import numpy as np
import tokenizers

from data2vec import atomic
from data2vec.input_pipeline import text_data
from data2vec.preparation import shards, sources

EXTENSIONS = frozenset({'.txt', '.jsonl'})
SPLITS = ('train', 'validation', 'test')
SHARD_BYTES = 4 << 20  # of input text per shard: a few seconds of tokenizing
CHUNK_LINES = 8192  # lines tokenized at once (one encode_batch)
READ_BYTES = 16 << 20
PARALLEL_MAP_CHUNK = 8  # shards.parallel_map's chunksize
MIN_BPE_VOCAB = 256 + len(text_data.SPECIAL_TOKENS)  # the byte alphabet and the specials
UINT16_IDS = 1 << 16
TOKENIZER_DIR = 'tokenizer'
MODEL_MAX_LENGTH = 512  # tokenizer_config.json: RoBERTa's; an export writes its model's own
# What a transformers tokenizer folder may hold besides model weights (those are not copied).
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
                   'added_tokens.json', 'vocab.json', 'merges.txt')
_NO_LABEL = None  # a document without a record label
_KINDS = ('tokens', 'lines', 'docs', 'labels')  # the raw files of a shard's split


@dataclasses.dataclass(frozen=True)
class _File:
  path: str  # absolute
  key: str  # '{--src folder name}/{path below it}' (a file on its own: its name): the split hash
  split: str | None  # from a split folder; None: one per document, by hash
  label: int  # folder class, or sources.UNLABELLED


# ---------------------------------------------------------------- reading the files


def utf8_problem(path):
  """Why `path` cannot be read as UTF-8 text, or None (read in chunks: any size)."""
  decoder = codecs.getincrementaldecoder('utf-8')()
  offset = 0
  try:
    with open(path, 'rb') as f:
      while chunk := f.read(READ_BYTES):
        decoder.decode(chunk)
        offset += len(chunk)
      decoder.decode(b'', final=True)
  except UnicodeDecodeError as e:
    return f'not UTF-8 ({e.reason} near byte {offset + e.start})'
  except OSError as e:
    return f'unreadable ({e.strerror or e})'
  return None


def text_lines(text):
  """The non-blank lines of a document's text, trailing white space stripped."""
  lines = text.replace('\r\n', '\n').replace('\r', '\n').split('\n')
  return [line.rstrip() for line in lines if line.strip()]


def read_documents(path, text_field='text', label_field='label'):
  """(where 'file:line', [line], record label or None) of each document of a .txt or .jsonl file,
  streamed; a .jsonl record without text gives no lines."""
  with open(path, encoding='utf-8-sig') as f:  # (universal newlines; a BOM is dropped)
    if pathlib.Path(path).suffix.lower() != '.jsonl':
      lines, start = [], 0
      for number, line in enumerate(f, 1):
        if line.strip():
          start = start or number
          lines.append(line.rstrip())
        elif lines:
          yield f'{path}:{start}', lines, _NO_LABEL
          lines, start = [], 0
      if lines:
        yield f'{path}:{start}', lines, _NO_LABEL
      return
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f'{path}:{number}'
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{where}: not a JSON line ({e.msg}, column {e.colno})') from None
      if not isinstance(record, dict):
        raise ValueError(f'{where}: a JSON {type(record).__name__} where a record (object) with '
                         f'a "{text_field}" field belongs')
      text = record.get(text_field)
      if not isinstance(text, str):
        raise ValueError(f'{where}: no "{text_field}" string field (--text_field) in the record '
                         f'(keys {sorted(record)[:8]})')
      label = record.get(label_field, _NO_LABEL)
      if label is not _NO_LABEL and (isinstance(label, bool) or not isinstance(label, (str, int))):
        raise ValueError(f'{where}: "{label_field}" is {label!r}; a label is a string or an '
                         'integer')
      yield where, text_lines(text), label


def _split(file, index, fractions):
  if file.split:
    return file.split
  return sources.holdout_split(f'{file.key}:{index}', *fractions)


# ---------------------------------------------------------------- listing


def list_inputs(src, labels, val_fraction, test_fraction):
  """([_File], folder classes) of the --src files and folders (module docstring)."""
  if labels not in sources.LABEL_MODES:
    raise ValueError(f'--labels={labels!r}: must be one of {sources.LABEL_MODES}')
  sources.check_fractions(val_fraction, test_fraction)
  folders, loose = [], []
  for s in src:
    path = pathlib.Path(s).resolve()
    if path.is_dir():
      folders.append((path, sources.list_files(path, EXTENSIONS, 'text')))
    elif path.is_file():
      loose.append(path)
    else:
      raise ValueError(f'--src={s}: no such file or folder')
  if labels == 'folders' and loose:
    raise ValueError(f'--labels=folders: {loose[0]} is given on its own, not inside a class '
                     'folder of a --src folder')
  assigned = [sources.assign(folder, paths, labels=labels, val_fraction=val_fraction,
                             test_fraction=test_fraction) for folder, paths in folders]
  if labels == 'auto' and (loose or not all(classes for _, classes in assigned)):
    assigned = [(listed, ()) for listed, _ in assigned]  # some files have no class folder
  classes = sorted({c for _, names in assigned for c in names})
  index = {c: i for i, c in enumerate(classes)}
  files, seen = [], set()
  for (folder, paths), (listed, names) in zip(folders, assigned):
    # As sources.assign: split folders split whole files; else each document is hashed.
    by_folder = any(len(q) > 1 and q[0].lower() in sources.SPLIT_FOLDERS
                    for q in (p.split('/') for p in paths))
    for s in listed:
      path = str(folder / s.path)
      label = index[names[s.label]] if names else sources.UNLABELLED
      if path not in seen:
        seen.add(path)
        files.append(_File(path, f'{folder.name}/{s.path}', s.split if by_folder else None, label))
  for path in loose:
    if str(path) not in seen:
      seen.add(str(path))
      files.append(_File(str(path), path.name, None, sources.UNLABELLED))
  return files, tuple(classes)


# ---------------------------------------------------------------- tokenizer


def _roberta_tokenizer(model):
  """A `tokenizers.Tokenizer` of a BPE model with RoBERTa's byte-level pipeline and specials."""
  tokenizer = tokenizers.Tokenizer(model)
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = tokenizers.decoders.ByteLevel()
  tokenizer.post_processor = tokenizers.processors.RobertaProcessing(
      ('</s>', text_data.EOS_ID), ('<s>', text_data.BOS_ID), add_prefix_space=False)
  # As RoBERTa's, <mask> absorbs the space before it: "a <mask>" stands for a word " b".
  specials = [tokenizers.AddedToken(t, special=True, normalized=False, lstrip=t == '<mask>')
              for t in text_data.SPECIAL_TOKENS]
  return tokenizer, specials


def train_bpe(lines, vocab_size):
  """A RoBERTa-style byte-level BPE (`tokenizers.Tokenizer`) trained on an iterable of lines."""
  tokenizer, specials = _roberta_tokenizer(tokenizers.models.BPE())
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tokenizer.train_from_iterator(lines, trainer)
  if tokenizer.get_vocab_size() != vocab_size:
    raise ValueError(f'the BPE reached {tokenizer.get_vocab_size()} tokens, not {vocab_size}: '
                     'the corpus is too small for this vocabulary')
  return tokenizer


def bpe_tokenizer(vocab, merges):
  """A RoBERTa-style tokenizer of a BPE's {token: id} and merges [(a, b)], whose specials are in
  `vocab` at ids 0-4 (they keep them)."""
  tokenizer, specials = _roberta_tokenizer(tokenizers.models.BPE(vocab=vocab, merges=merges))
  tokenizer.add_special_tokens(specials)
  return tokenizer


def save_roberta_tokenizer(tokenizer, out_dir):
  """Writes the files `RobertaTokenizerFast.from_pretrained(out_dir)` loads, atomically."""
  for i, token in enumerate(text_data.SPECIAL_TOKENS):
    if tokenizer.token_to_id(token) != i:
      raise ValueError(f'{token} has id {tokenizer.token_to_id(token)}, expected {i}')
  out_dir = pathlib.Path(out_dir)
  tmp = atomic.fresh_dir(out_dir.with_name(out_dir.name + '.tmp'))
  tokenizer.model.save(str(tmp))  # vocab.json, merges.txt
  tokenizer.save(str(tmp / 'tokenizer.json'))
  names = dict(bos_token='<s>', eos_token='</s>', unk_token='<unk>', sep_token='</s>',
               pad_token='<pad>', cls_token='<s>')
  mask = dict(content='<mask>', lstrip=True, normalized=False, rstrip=False, single_word=False)
  (tmp / 'special_tokens_map.json').write_text(json.dumps({**names, 'mask_token': mask}, indent=2))
  (tmp / 'tokenizer_config.json').write_text(json.dumps(
      {'tokenizer_class': 'RobertaTokenizer', 'model_max_length': MODEL_MAX_LENGTH, **names,
       'mask_token': '<mask>', 'add_prefix_space': False, 'trim_offsets': True,
       'errors': 'replace'}, indent=2))
  atomic.publish_dir(tmp, out_dir)


def tokenize_documents(tokenizer, documents, *, eos_id=text_data.EOS_ID, dtype=np.uint16):
  """(tokens `dtype`, line_offsets int64 [L+1], doc_offsets int64 [D+1]) of a list of documents.

  Every line is encoded on its own and ends with </s> (`eos_id`), as fairseq's binarized text
  does. Text that spells a special token ("<mask>") is encoded as text (this sets the
  tokenizer's `encode_special_tokens`): special ids other than </s> only come from the pipeline.
  """
  if tokenizer.get_vocab_size() > np.iinfo(dtype).max + 1:
    raise ValueError(f'vocab_size={tokenizer.get_vocab_size()} does not fit {np.dtype(dtype)} '
                     'token ids')
  tokenizer.encode_special_tokens = True
  lines = [line for doc in documents for line in doc]
  ids = [e.ids + [eos_id] for e in tokenizer.encode_batch(lines, add_special_tokens=False)]
  line_offsets = np.cumsum([0] + [len(x) for x in ids], dtype=np.int64)
  tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype, line_offsets[-1])
  doc_offsets = np.cumsum([0] + [len(doc) for doc in documents], dtype=np.int64)
  return tokens, line_offsets, doc_offsets


def _check_specials(tokenizer, where):
  ids = {t: tokenizer.token_to_id(t) for t in text_data.SPECIAL_TOKENS}
  missing = [t for t, i in ids.items() if i is None]
  if missing:
    raise ValueError(f'{where}: the tokenizer lacks the special tokens {missing}: the pipelines '
                     f'need RoBERTa\'s {" ".join(text_data.SPECIAL_TOKENS)}')
  if len(set(ids.values())) != len(ids):
    raise ValueError(f'{where}: special tokens share ids {ids}')
  return ids


def _tokenizer_source(spec):
  """(BPE vocabulary size, None) of `bpe:VOCAB`, or (None, tokenizer.json path) of a PATH."""
  if spec.startswith('bpe:'):
    try:
      size = int(spec[len('bpe:'):])
    except ValueError:
      size = 0
    if size < MIN_BPE_VOCAB:
      raise ValueError(f'--tokenizer={spec}: bpe:VOCAB needs an integer VOCAB >= {MIN_BPE_VOCAB} '
                       '(the 256 bytes and 5 special tokens)')
    return size, None
  path = pathlib.Path(spec).resolve()
  file = path / 'tokenizer.json' if path.is_dir() else path
  if not file.is_file():
    raise ValueError(f'--tokenizer={spec}: neither bpe:VOCAB nor a tokenizer.json or a folder '
                     'holding one (a transformers tokenizer saved with save_pretrained)')
  return None, file


def _load_tokenizer(file):
  try:
    return tokenizers.Tokenizer.from_file(str(file))
  except Exception as e:  # pylint: disable=broad-except  (the Rust side raises plain Exception)
    raise ValueError(f'--tokenizer={file}: not a tokenizers file ({e})') from None


def _config_files():
  """tokenizer_config.json and special_tokens_map.json for a bare tokenizer.json, so that
  transformers' AutoTokenizer loads the folder with the specials named."""
  names = dict(bos_token='<s>', eos_token='</s>', unk_token='<unk>', sep_token='</s>',
               pad_token='<pad>', cls_token='<s>', mask_token='<mask>')
  config = {'tokenizer_class': 'PreTrainedTokenizerFast',
            'model_max_length': MODEL_MAX_LENGTH, **names}
  return {'tokenizer_config.json': config, 'special_tokens_map.json': names}


def _save_tokenizer(spec, out_dir, train_lines):
  """Builds (bpe:VOCAB, on `train_lines()`) or copies the tokenizer into out_dir; returns
  {vocab_size, special_ids, token_dtype, tokenizer_sha256}."""
  size, file = _tokenizer_source(spec)
  if size is not None:
    input_errors = []

    def lines():
      try:
        yield from train_lines()
      except ValueError as e:  # bad input, an empty corpus: raised as they are
        input_errors.append(e)
        raise

    try:
      tokenizer = train_bpe(lines(), size)
    except ValueError as e:
      if input_errors:
        raise input_errors[0] from None
      raise ValueError(f'--tokenizer={spec}: {e}') from None  # e.g. a corpus too small for it
    save_roberta_tokenizer(tokenizer, out_dir)
  else:
    tokenizer = _load_tokenizer(file)
    _check_specials(tokenizer, f'--tokenizer={spec}')
    tmp = atomic.fresh_dir(out_dir.with_name(out_dir.name + '.tmp'))
    copied = [n for n in TOKENIZER_FILES if (file.parent / n).is_file()] if (
        file.name == 'tokenizer.json') else []
    for name in copied:
      shutil.copyfile(file.parent / name, tmp / name)
    shutil.copyfile(file, tmp / 'tokenizer.json')
    for name, content in _config_files().items():
      if not (tmp / name).is_file():
        (tmp / name).write_text(json.dumps(content, indent=2) + '\n', encoding='utf-8')
    atomic.publish_dir(tmp, out_dir)
  ids = _check_specials(tokenizer, f'--tokenizer={spec}')
  vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
  return {'vocab_size': vocab_size, 'special_ids': ids,
          'token_dtype': 'uint16' if vocab_size <= UINT16_IDS else 'uint32',
          'tokenizer_sha256': text_data.file_sha256(out_dir / 'tokenizer.json')}


def _no_train_documents(source, num_files):
  return ValueError(f'--src {" ".join(source)}: no document in the train split of the '
                    f'{num_files} files (documents: the non-blank lines of .txt files, .jsonl '
                    'records with text)')


def _train_lines(files, fractions, text_field, label_field, strict, source):
  """The lines of the train documents, file by file (for the BPE)."""
  count = 0
  for file in files:
    reason = utf8_problem(file.path)
    if reason:  # the shards count and report it; --strict fails before the BPE is trained
      if strict:
        shards.report_skipped([(file.path, reason)], 'text files', strict)
      continue
    for index, (_, lines, _) in enumerate(read_documents(file.path, text_field, label_field)):
      if lines and _split(file, index, fractions) == 'train':
        count += len(lines)
        yield from lines
  if not count:
    raise _no_train_documents(source, len(files))


@contextlib.contextmanager
def _one_thread_each(workers):
  """Worker processes tokenize on one thread each (and tokenizers stays quiet about the fork
  after the BPE's threads); a single in-process worker keeps tokenizers' own threads."""
  if workers == 1 or 'TOKENIZERS_PARALLELISM' in os.environ:
    yield
    return
  os.environ['TOKENIZERS_PARALLELISM'] = 'false'
  try:
    yield
  finally:
    del os.environ['TOKENIZERS_PARALLELISM']


# ---------------------------------------------------------------- shards


class _SplitWriter:
  """Appends one split's documents of a shard to raw files: tokens, line lengths (int32), lines
  per document (int32), and (folder label, record label) int32 pairs."""

  def __init__(self, prefix, dtype, eos_id):
    self.paths = {k: pathlib.Path(f'{prefix}.{k}') for k in _KINDS}
    self.dtype, self.eos_id = dtype, eos_id
    self.files = None
    self.pending, self.pending_lines = [], 0
    self.counts = {'documents': 0, 'lines': 0, 'tokens': 0, 'max_token_id': 0}

  def add(self, tokenizer, lines, folder_label, record_label):
    self.pending.append((lines, folder_label, record_label))
    self.pending_lines += len(lines)
    if self.pending_lines >= CHUNK_LINES:
      self.flush(tokenizer)

  def flush(self, tokenizer):
    if not self.pending:
      return
    if self.files is None:  # opened on the first document: an empty split writes nothing
      self.files = {}
      for kind, path in self.paths.items():
        self.files[kind] = open(f'{path}.tmp', 'wb')  # pylint: disable=consider-using-with
    docs = [lines for lines, _, _ in self.pending]
    tokens, line_offsets, _ = tokenize_documents(tokenizer, docs, eos_id=self.eos_id,
                                                 dtype=self.dtype)
    tokens.tofile(self.files['tokens'])
    np.diff(line_offsets).astype(np.int32).tofile(self.files['lines'])
    np.array([len(d) for d in docs], np.int32).tofile(self.files['docs'])
    np.array([(f, r) for _, f, r in self.pending], np.int32).tofile(self.files['labels'])
    self.counts['documents'] += len(docs)
    self.counts['lines'] += len(line_offsets) - 1
    self.counts['tokens'] += len(tokens)
    self.counts['max_token_id'] = max(self.counts['max_token_id'], int(tokens.max(initial=0)))
    self.pending, self.pending_lines = [], 0

  def close(self, tokenizer):
    """Flushes, renames the raw files into place; returns the counts (None: no document)."""
    self.flush(tokenizer)
    if self.files is None:
      return None
    for kind, f in self.files.items():
      f.close()
      os.replace(f'{self.paths[kind]}.tmp', self.paths[kind])
    return self.counts


def _write_shard(job):
  """Tokenizes one shard's files -> summary: per split counts, skipped files, record labels."""
  prefix, files, tokenizer_file, eos_id, dtype, fractions, text_field, label_field = job
  tokenizer = tokenizers.Tokenizer.from_file(tokenizer_file)
  writers = {s: _SplitWriter(f'{prefix}.{s}', np.dtype(dtype), eos_id) for s in SPLITS}
  record_labels = {}  # name -> this shard's id, in order of appearance
  summary = {'skipped': [], 'labelled_at': None, 'unlabelled_at': None, 'text_file': None,
             'empty': 0, 'integer_labels': True}
  for file in (_File(*row) for row in files):
    reason = utf8_problem(file.path)
    if reason:
      summary['skipped'].append((file.path, reason))
      continue
    jsonl = pathlib.Path(file.path).suffix.lower() == '.jsonl'
    if not jsonl:
      summary['text_file'] = summary['text_file'] or file.path
    for index, (where, lines, label) in enumerate(read_documents(file.path, text_field,
                                                                 label_field)):
      record_label = -1
      if label is _NO_LABEL:
        if jsonl:
          summary['unlabelled_at'] = summary['unlabelled_at'] or where
      else:
        summary['labelled_at'] = summary['labelled_at'] or where
        summary['integer_labels'] &= isinstance(label, int)
        record_label = record_labels.setdefault(str(label), len(record_labels))
      if not lines:
        summary['empty'] += 1
        continue
      writers[_split(file, index, fractions)].add(tokenizer, lines, file.label, record_label)
  summary['splits'] = {s: w.close(tokenizer) for s, w in writers.items()}
  summary['record_labels'] = list(record_labels)
  return summary


def _shard_done(output, shard):
  """Whether a shard's summary and raw files are there (a kill while the finished set's shards
  were removed leaves summaries without files)."""
  summary = output.summary(shard)
  return summary is not None and all(
      pathlib.Path(f'{output.shard_path(shard)}.{split}.{kind}').is_file()
      for split, counts in summary['splits'].items() if counts for kind in _KINDS)


def _shards(files, shard_bytes):
  """Consecutive groups of files of about `shard_bytes` (a bigger file: a shard of its own)."""
  groups, group, size = [], [], 0
  for file in files:
    file_size = os.path.getsize(file.path)
    if group and size + file_size > shard_bytes:
      groups.append(group)
      group, size = [], 0
    group.append(file)
    size += file_size
  if group:
    groups.append(group)
  return groups


# ---------------------------------------------------------------- joining the shards


def _write_npy(path, dtype, length, chunks):
  """Writes the 1-D arrays of `chunks` (an iterator) as one .npy of `length` items, atomically."""
  dtype = np.dtype(dtype)
  written = 0
  with atomic.open_for_write(path) as f:
    np.lib.format.write_array_header_1_0(f, {'descr': np.lib.format.dtype_to_descr(dtype),
                                             'fortran_order': False, 'shape': (length,)})
    for chunk in chunks:
      chunk = np.ascontiguousarray(chunk, dtype)
      f.write(chunk.tobytes())
      written += len(chunk)
    if written != length:
      raise ValueError(f'{path}: {written} items written, {length} expected (a shard changed '
                       'while it was read?)')


def _raw_chunks(paths, dtype):
  """The contents of raw files, READ_BYTES at a time."""
  dtype = np.dtype(dtype)
  step = READ_BYTES // dtype.itemsize
  for path in paths:
    data = np.memmap(path, dtype, 'r') if os.path.getsize(path) else np.zeros(0, dtype)
    for start in range(0, len(data), step):
      yield np.array(data[start:start + step])


def _offsets(lengths):
  """0 then the running sum of the length chunks, as int64 chunks."""
  yield np.zeros(1, np.int64)
  total = 0
  for chunk in lengths:
    sums = np.cumsum(chunk, dtype=np.int64) + total
    total = int(sums[-1]) if len(sums) else total
    yield sums


def _label_kind(labels, summaries, folder_classes, label_field):
  """('folders' | 'records' | None, classes) of the run (module docstring)."""
  first = lambda key: next((s[key] for s in summaries if s[key]), None)
  labelled_at = first('labelled_at')
  if labels == 'auto' and labelled_at:
    if first('unlabelled_at'):
      raise ValueError(f'{first("unlabelled_at")}: no "{label_field}" field, but '
                       f'{labelled_at} has one: label every record or none (--labels none '
                       'ignores the field, --labels folders takes class folders)')
    if first('text_file'):
      raise ValueError(f'{first("text_file")}: a .txt file has no labels, but the record '
                       f'{labelled_at} has a "{label_field}" field: label every document or '
                       'none (--labels none ignores the field)')
    names = {n for s in summaries for n in s['record_labels']}
    if all(s['integer_labels'] for s in summaries):
      return 'records', tuple(sorted(names, key=int))
    return 'records', tuple(sorted(names))
  if labels != 'none' and folder_classes:
    return 'folders', folder_classes
  return None, ()


def _labels(paths, kind, local_names, classes):
  """The int32 class id of each document of a split, shard by shard."""
  index = {c: i for i, c in enumerate(classes)}
  for path, names in zip(paths, local_names):
    pairs = np.fromfile(path, np.int32).reshape(-1, 2)
    ids = pairs[:, 0] if kind == 'folders' else pairs[:, 1]
    if np.any(ids < 0):  # _label_kind lets no unlabelled document through
      raise ValueError(f'{path}: a document without a class in a labelled set')
    if kind == 'folders':
      yield ids
    else:  # this shard's record label ids -> the set's
      yield np.array([index[n] for n in names], np.int32)[ids]


def _join_split(folder, split, parts, token_dtype, kind, classes):
  """Writes folder/{split}_*.npy from the shards' raw files; parts: [(shard path, counts, record
  label names)] in order. Returns (documents, lines, tokens, largest token id)."""
  raw = lambda kind_: [f'{path}.{split}.{kind_}' for path, _, _ in parts]
  out = lambda name: folder / f'{split}_{name}.npy'
  num_docs, num_lines, num_tokens = (sum(c[k] for _, c, _ in parts)
                                     for k in ('documents', 'lines', 'tokens'))
  _write_npy(out('tokens'), token_dtype, num_tokens, _raw_chunks(raw('tokens'), token_dtype))
  _write_npy(out('line_offsets'), np.int64, num_lines + 1,
             _offsets(_raw_chunks(raw('lines'), np.int32)))
  _write_npy(out('doc_offsets'), np.int64, num_docs + 1,
             _offsets(_raw_chunks(raw('docs'), np.int32)))
  if kind:
    _write_npy(out('labels'), np.int32, num_docs,
               _labels(raw('labels'), kind, [names for _, _, names in parts], classes))
  return num_docs, num_lines, num_tokens, max(c['max_token_id'] for _, c, _ in parts)


# ---------------------------------------------------------------- the whole preparation


def prepare(*, src, data_dir, name, labels='auto', val_fraction=0.1, test_fraction=0.1,
            tokenizer='bpe:8192', text_field='text', label_field='label', workers=0,
            strict=False, overwrite=False, shard_bytes=SHARD_BYTES, bundled=False):
  """Prepares the text files of `src` (paths of files and folders) as DATA_DIR/NAME (module
  docstring); returns its path. `bundled`: NAME may be a bundled set's (bundled_text.py)."""
  src = [src] if isinstance(src, (str, os.PathLike)) else list(src)
  if not src:
    raise ValueError('--src: give at least one file or folder')
  size, tokenizer_file = _tokenizer_source(tokenizer)
  files, folder_classes = list_inputs(src, labels, val_fraction, test_fraction)
  fractions = (val_fraction, test_fraction)
  stats = [os.stat(f.path) for f in files]
  plan = {'format': 'text', 'files': [[*dataclasses.astuple(f), s.st_size, s.st_mtime_ns]
                                      for f, s in zip(files, stats)],
          'classes': folder_classes, 'labels': labels, 'fractions': fractions,
          'tokenizer': tokenizer, 'text_field': text_field, 'label_field': label_field,
          'shard_bytes': shard_bytes}
  if size is None:  # the tokenizer's content, so that another file under the same path is redone
    plan['tokenizer_sha256'] = text_data.file_sha256(tokenizer_file)
  output = shards.Output(data_dir, name, plan, overwrite=overwrite, bundled=bundled)
  source = [str(pathlib.Path(s).resolve()) for s in src]
  if output.finished:
    print(f'text: {output.final} is already prepared from {", ".join(source)}; nothing to do')
    return output.final

  tok_dir = output.shard_path(TOKENIZER_DIR)
  tok = output.summary('tokenizer_ready')
  if tok is None:
    print(f'text: {len(files)} files; ' + (
        f'training a {size}-id byte-level BPE on the train split' if size else
        f'taking the tokenizer {tokenizer_file}'), flush=True)
    tok = _save_tokenizer(tokenizer, tok_dir, lambda: _train_lines(
        files, fractions, text_field, label_field, strict, source))
    output.commit('tokenizer_ready', tok)

  groups = _shards(files, shard_bytes)
  jobs = {f'shard-{i:05d}': (str(output.shard_path(f'shard-{i:05d}')),
                             [dataclasses.astuple(f) for f in group],
                             str(tok_dir / 'tokenizer.json'), tok['special_ids']['</s>'],
                             tok['token_dtype'], fractions, text_field, label_field)
          for i, group in enumerate(groups)}
  todo = [shard for shard in jobs if not _shard_done(output, shard)]
  print(f'text: tokenizing {len(files)} files in {len(jobs)} shards '
        f'({len(jobs) - len(todo)} already done)', flush=True)
  # parallel_map hands out shards 8 at a time: more processes than that would idle, and one
  # process tokenizes in this one, with tokenizers' own threads.
  workers = max(1, min(workers or os.cpu_count() or 1, -(-len(todo) // PARALLEL_MAP_CHUNK)))
  with _one_thread_each(workers):
    results = shards.parallel_map(_write_shard, [jobs[s] for s in todo], workers=workers,
                                  what='text shards')
  for shard, result in zip(todo, results):
    output.commit(shard, result)
  summaries = [output.summary(shard) for shard in jobs]

  skipped = [tuple(x) for s in summaries for x in s['skipped']]
  shards.report_skipped(skipped, 'text files', strict)
  kind, classes = _label_kind(labels, summaries, folder_classes, label_field)
  meta = {'format': 'text', 'name': name, 'source': source, 'classes': list(classes) or None,
          'labels_from': kind, 'skipped': shards.skipped_summary(skipped),
          'empty_documents': sum(s['empty'] for s in summaries), 'tokenizer': TOKENIZER_DIR,
          'tokenizer_source': tokenizer if size else str(tokenizer_file),
          **{k: tok[k] for k in ('vocab_size', 'special_ids', 'token_dtype', 'tokenizer_sha256')},
          'splits': {}, 'lines': {}, 'tokens': {}, 'max_token_id': {}}
  for split in SPLITS:
    parts = [(output.shard_path(shard), s['splits'][split], s['record_labels'])
             for shard, s in zip(jobs, summaries) if s['splits'][split]]
    if parts:
      counts = _join_split(output.partial, split, parts, tok['token_dtype'], kind, classes)
      for key, count in zip(('splits', 'lines', 'tokens', 'max_token_id'), counts):
        meta[key][split] = count
  if 'train' not in meta['splits']:
    raise _no_train_documents(source, len(files))
  for path in output.partial.glob('shard-*'):
    path.unlink()
  output.publish(meta)
  print(f'text: wrote {output.final}: documents {meta["splits"]}, tokens {meta["tokens"]}, '
        f'{meta["vocab_size"]} ids, {len(classes)} classes'
        f'{f" ({kind})" if kind else ""}, {len(skipped)} files skipped, '
        f'{meta["empty_documents"]} empty records left out')
  return output.final
