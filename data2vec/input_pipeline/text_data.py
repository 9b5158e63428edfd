"""Reading a prepared text set: its tokenizer (`vocabulary`) and the checked token arrays of a
split (`token_arrays`), whether a user's (`scripts/prepare_data.py text --src ... --name NAME`) or
a bundled one (bundled_text.SETS: python_docs, english, wordnet_supersense, ...): all are
written by data2vec/preparation/text.py into DATA_DIR/NAME/ (its docstring lists the files), so
the pipelines have one code path.

Each set carries its tokenizer (DATA_DIR/NAME/tokenizer/) and records its special ids, size and
the sha256 of its tokenizer.json in dataset.json. An encoder reads labelled text only in the
tokenizer of its pretraining data: `encoder_tokenizer` finds that one, `check_tokenizer` refuses
another. The bundled tokenizers put `<s> <pad> </s> <unk> <mask>` at ids 0-4 (RoBERTa's).
"""
import dataclasses
import hashlib
import json
import pathlib

import numpy as np

from data2vec.input_pipeline import datasets, files

SPECIAL_TOKENS = ('<s>', '<pad>', '</s>', '<unk>', '<mask>')
BOS_ID, PAD_ID, EOS_ID, UNK_ID, MASK_ID = range(len(SPECIAL_TOKENS))
TOKEN_DTYPES = (np.uint16, np.uint32)  # uint32 above 65536 ids


def file_sha256(path):
  """The hex sha256 of a file's bytes: a tokenizer.json's identity."""
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  """The ids of <s> <pad> </s> <unk> <mask> in a text set's tokenizer."""
  bos: int = BOS_ID
  pad: int = PAD_ID
  eos: int = EOS_ID
  unk: int = UNK_ID
  mask: int = MASK_ID

  def as_dict(self):
    return dict(zip(SPECIAL_TOKENS, dataclasses.astuple(self)))


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """The tokenizer a text set is read with; `owner` names it in messages, `sha256` is its
  tokenizer.json's."""
  tokenizer_dir: pathlib.Path
  size: int
  special_ids: SpecialIds
  owner: str
  sha256: str


def vocabulary(data_dir, dataset, field='config.input.dataset'):
  """The tokenizer of the prepared text set DATA_DIR/`dataset` (reads its dataset.json only)."""
  ds = datasets.load(data_dir, dataset, modality='text', field=field)
  size, ids, sha = (ds.meta.get(k) for k in ('vocab_size', 'special_ids', 'tokenizer_sha256'))
  if (not isinstance(size, int) or not isinstance(ids, dict) or set(ids) != set(SPECIAL_TOKENS)
      or not all(isinstance(i, int) and 0 <= i < size for i in ids.values())
      or len(set(ids.values())) != len(ids) or not isinstance(sha, str)):
    raise ValueError(f'{ds.path / datasets.META_FILE}: needs "vocab_size", distinct '
                     f'"special_ids" below it for {SPECIAL_TOKENS} and "tokenizer_sha256"; '
                     'prepare the data set again')
  return Vocabulary(ds.path / ds.meta.get('tokenizer', 'tokenizer'), size,
                    SpecialIds(*(ids[t] for t in SPECIAL_TOKENS)), f"{ds.path}'s tokenizer", sha)


@dataclasses.dataclass(frozen=True)
class EncoderTokenizer:
  """The tokenizer an encoder was trained with: the sha256 of its tokenizer.json, the folder that
  holds it, and what `owner` names in messages."""
  sha256: str
  folder: pathlib.Path
  owner: str


def encoder_tokenizer(source, data_dir):
  """The tokenizer of the encoder in `source`: a transformers folder's tokenizer.json
  (scripts/export_hf.py writes its training set's), or a training workdir's data set (its
  config.json's input.dataset, found in `data_dir`)."""
  source = pathlib.Path(source)
  if (source / 'tokenizer.json').is_file():
    return EncoderTokenizer(file_sha256(source / 'tokenizer.json'), source, str(source))
  config = source / 'config.json'
  try:
    dataset = json.loads(config.read_text(encoding='utf-8'))['input']['dataset']
  except (OSError, ValueError, KeyError, TypeError):
    raise ValueError(f'{source} has neither a tokenizer.json (a transformers folder) nor a '
                     'config.json with input.dataset (a training workdir): its encoder\'s '
                     'tokenizer is unknown') from None
  vocab = vocabulary(data_dir, dataset, field=f'{config}: input.dataset')
  return EncoderTokenizer(vocab.sha256, vocab.tokenizer_dir,
                          f'{vocab.owner} (the data of {source})')


def check_tokenizer(vocab, encoder):
  """Raises unless the labelled text of `vocab` was tokenized by the `encoder`'s tokenizer."""
  if vocab.sha256 != encoder.sha256:
    raise ValueError(f'{vocab.owner} (sha256 {vocab.sha256[:12]}) is not the encoder\'s, '
                     f'{encoder.owner} (sha256 {encoder.sha256[:12]}); prepare the labelled text '
                     'with it: `python scripts/prepare_data.py text --src SRC --name NAME '
                     f'--tokenizer {encoder.folder}`')


@dataclasses.dataclass(frozen=True)
class TokenArrays:
  """One split of a text set: `tokens` (memory-mapped) [N], `line_offsets` int64 [L+1] token
  offsets of the lines, `doc_offsets` int64 [D+1] line offsets of the documents."""
  tokens: np.ndarray
  line_offsets: np.ndarray
  doc_offsets: np.ndarray
  vocab: Vocabulary
  folder: pathlib.Path


def _read_token_arrays(folder, split, command):
  """(tokens memory-mapped, line_offsets, doc_offsets) of folder/{split}_*.npy, checked."""
  arrays = []
  for kind in ('tokens', 'line_offsets', 'doc_offsets'):
    path = folder / f'{split}_{kind}.npy'
    if not path.is_file():
      raise ValueError(f'{path} does not exist; run `{command}`')
    arrays.append(files.load_npy(path, 'text', mmap_mode='r' if kind == 'tokens' else None))
  tokens, line_offsets, doc_offsets = arrays
  if (tokens.ndim != 1 or tokens.dtype not in TOKEN_DTYPES or line_offsets[0] != 0 or
      line_offsets[-1] != len(tokens) or doc_offsets[0] != 0 or
      doc_offsets[-1] != len(line_offsets) - 1 or np.any(np.diff(line_offsets) < 1) or
      np.any(np.diff(doc_offsets) < 1)):
    raise ValueError(f'{folder}: the {split} token arrays are inconsistent '
                     f'({"/".join(np.dtype(d).name for d in TOKEN_DTYPES)} tokens, increasing '
                     'line offsets ending at len(tokens), document offsets over lines)')
  return tokens, line_offsets, doc_offsets


def token_arrays(data_dir, dataset, split, field='config.input.dataset', vocab_size=None):
  """The checked token arrays of a split of a prepared text set, with its Vocabulary.

  Every id must be below the tokenizer's size and below `vocab_size` (the model's, when given):
  dataset.json's largest id of the split is checked first, then the memory-mapped tokens in one
  pass must agree with it (a file changed after preparation is an error naming it).
  """
  vocab = vocabulary(data_dir, dataset, field)
  ds = datasets.load(data_dir, dataset, modality='text', field=field)
  ds.check_split(split)
  arrays = _read_token_arrays(ds.path, split, f'python scripts/prepare_data.py text --src ... '
                              f'--name {dataset} --overwrite')
  if len(arrays[2]) - 1 != ds.num_examples(split):
    raise ValueError(f'{ds.path}: the {split} split holds {len(arrays[2]) - 1} documents, '
                     f'{datasets.META_FILE} says {ds.num_examples(split)}; prepare it again')
  path = ds.path / f'{split}_tokens.npy'
  recorded = (ds.meta.get('max_token_id') or {}).get(split)
  if not isinstance(recorded, int):
    raise ValueError(f'{ds.path / datasets.META_FILE}: no "max_token_id" of the {split} split; '
                     'prepare the data set again')
  limits = [(vocab.size, f'the {vocab.size} ids of {vocab.owner}')]
  if vocab_size is not None:
    limits.append((vocab_size, f'vocab_size {vocab_size} (config.model)'))
  for limit, what in limits:
    if recorded >= limit:
      raise ValueError(f'{path}: token id {recorded} >= {what}')
  top = int(arrays[0].max(initial=0))
  if top != recorded:
    raise ValueError(f'{path}: the largest token id is {top}, {datasets.META_FILE} records '
                     f'{recorded}: the file changed after preparation; prepare the data set again')
  return TokenArrays(*arrays, vocab=vocab, folder=ds.path)
