"""The general English corpus and the out-of-domain Debian package-description probe.

Sources, all from Debian 12 packages unpacked by `scripts/prepare_data.py text` (docs/data.md):
  gcide        the Collaborative International Dictionary of English (`dict-gcide`: Webster's
               1913 definitions with their literary quotations); its WordNet 1.5 entries are left
               out, since WordNet 3.0's own glosses come in with their probe splits held out
  man_pages    the Linux and C library manual (`manpages`, `manpages-dev`) and Perl's
               (`perl-doc`), roff markup stripped: one paragraph per line, code line by line
  + python_docs and wordnet_glosses train (data2vec/preparation/bundled_text.py)

The probe: the long descriptions of Debian's packages (apt's Translation-en index) labelled with
their `Section`, over PACKAGE_SECTIONS. One example per distinct description; the split is by a
hash of the source package, so the binaries of one source (which share text) stay together.
Any corpus line sharing a SHINGLE_WORDS-word run with a probe description is dropped from the
corpus, so pretraining never reads a probe text.
"""
import gzip
import re
import zlib

DICT_DATABASE_INFO = '00-database-'  # gcide.index headwords of dictd's metadata entries
GCIDE_ENTRIES_PER_DOCUMENT = 32  # neighbouring headwords, as a page of the dictionary
# dictd's base64 digits of the index's offsets and lengths.
DICTD_DIGITS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
_DICTD_VALUES = {c: i for i, c in enumerate(DICTD_DIGITS)}
_GCIDE_TAG = re.compile(r'^\s*\[[^\]]*\]\s*$')  # a line naming a definition's source
_PRONUNCIATION = re.compile(r'\s*\\[^\\\n]*\\')  # ' \A*buse"\' after a headword

# Sections that name a topic (not a programming language, whose name gives the class away):
# the 12 largest of Debian 12 main by distinct descriptions (libs 6.5k ... web 0.5k).
PACKAGE_SECTIONS = ('admin', 'devel', 'doc', 'games', 'graphics', 'libs', 'net', 'science',
                    'sound', 'text', 'utils', 'web')
SHINGLE_WORDS = 10  # a run this long shared with a probe text drops a corpus line
VALIDATION_BUCKETS = 1  # of 20: corpus documents held out for validation (5%)


def bucket(key):
  """A fixed pseudo-random bucket in [0, 20) of a string key."""
  return zlib.crc32(key.encode()) % 20


# --- GCIDE --------------------------------------------------------------------------------------


def _dictd_number(digits):
  value = 0
  for c in digits:
    value = value * 64 + _DICTD_VALUES[c]
  return value


def gcide_entries(dict_path, index_path):
  """[entry text] of a dictd database, in the order of the .dict file, metadata left out; an
  entry listed under several headwords once."""
  spans = set()
  with open(index_path, encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      fields = line.rstrip('\n').split('\t')
      if len(fields) != 3 or not all(c in _DICTD_VALUES for c in fields[1] + fields[2]):
        raise ValueError(f'{index_path}:{number}: not a dictd index line "word<TAB>offset<TAB>'
                         f'length": {line[:80]!r}')
      if not fields[0].startswith(DICT_DATABASE_INFO):
        spans.add((_dictd_number(fields[1]), _dictd_number(fields[2])))
  with gzip.open(dict_path) as f:  # dictzip is gzip
    data = f.read()
  return [data[o:o + n].decode('utf-8', errors='replace') for o, n in sorted(spans)]


def gcide_paragraphs(entry):
  """The paragraphs of one entry, a line each: pronunciations, braces and source tags dropped;
  [] for an entry taken from WordNet."""
  if '[WordNet' in entry:
    return []
  paragraphs, words = [], []
  for line in entry.split('\n') + ['']:
    if not line.strip() or _GCIDE_TAG.match(line):
      if words:
        paragraphs.append(' '.join(words))
      words = []
      continue
    words.extend(_PRONUNCIATION.sub('', line).replace('{', '').replace('}', '').split())
  return paragraphs


def gcide_documents(entries):
  """{'train'|'validation': [document: [line]]}: GCIDE_ENTRIES_PER_DOCUMENT entries each."""
  documents = {'train': [], 'validation': []}
  paragraphs = [p for p in map(gcide_paragraphs, entries) if p]
  for i in range(0, len(paragraphs), GCIDE_ENTRIES_PER_DOCUMENT):
    lines = [line for p in paragraphs[i:i + GCIDE_ENTRIES_PER_DOCUMENT] for line in p]
    documents['validation' if bucket(lines[0]) < VALIDATION_BUCKETS else 'train'].append(lines)
  return documents


# --- man pages ----------------------------------------------------------------------------------

# roff's named glyphs that carry text; any other \(xx or \[xx] is dropped.
_GLYPHS = {'aq': "'", 'cq': "'", 'oq': "'", 'lq': '"', 'rq': '"', 'dq': '"', 'em': '--',
           'en': '-', 'hy': '-', 'mi': '-', 'bu': '*', 'co': '(C)', 'rg': '(R)', 'ga': '`',
           'ha': '^', 'ti': '~', 'rs': '\\', 'sl': '/', 'at': '@', 'sh': '#', 'pl': '+',
           'eq': '=', 'mu': 'x', 'de': ' degrees', 'ba': '|', 'or': '|', 'ul': '_', 'ps': '',
           'Fo': '"', 'Fc': '"', '>=': '>=', '<=': '<=', '!=': '!=', 'ra': '->', 'la': '<-'}
_ESCAPE = re.compile(
    r"""\\(?:\((?P<glyph2>..)|\[(?P<glyph>[^\]]*)\]|\*(?:\(..|\[[^\]]*\]|.)|f(?:\(..|\[[^\]]*\]|.)
    |s[-+]?\d+|[hvwlLNobDkxz]'[^']*'|n(?:\(..|\[[^\]]*\]|.)|"(?P<comment>.*)|(?P<char>.))""",
    re.VERBOSE)
_CHARS = {'-': '-', 'e': '\\', '\\': '\\', ' ': ' ', '~': ' ', '0': ' ', '.': '.', "'": "'",
          '`': '`'}  # \& \| \^ \c \: ... are zero-width
_FONT_MACROS = {'B', 'I', 'SM', 'SB'}  # their arguments are text, a space apart
_ALTERNATING_MACROS = {'BR', 'BI', 'IB', 'IR', 'RB', 'RI'}  # text, no space between arguments
_BREAK_MACROS = {'PP', 'LP', 'P', 'sp', 'br', 'TP', 'IP', 'HP', 'RS', 'RE', 'SH', 'SS', 'bp'}
# no-fill (code) starts and ends; .Vb / .Ve are pod2man's verbatim blocks
_NOFILL = {'nf': True, 'EX': True, 'Vb': True, 'fi': False, 'EE': False, 'Ve': False}
_SKIP_UNTIL = {'de': '..', 'de1': '..', 'am': '..', 'ig': '..', 'TS': '.TE', 'EQ': '.EN',
               'PS': '.PE'}


def _unescape(text):
  def one(m):
    if m['glyph2'] is not None or m['glyph'] is not None:
      return _GLYPHS.get(m['glyph2'] or m['glyph'], '')
    if m['char'] is not None:
      return _CHARS.get(m['char'], '')
    return ''
  return _ESCAPE.sub(one, text)


def _macro_arguments(rest):
  """roff's arguments of a request line: space-separated, "quoted" ones may hold spaces."""
  args, i = [], 0
  while i < len(rest):
    if rest[i] in ' \t':
      i += 1
    elif rest[i] == '"':
      j, arg = i + 1, []
      while j < len(rest) and not (rest[j] == '"' and rest[j + 1:j + 2] != '"'):
        arg.append(rest[j])
        j += 2 if rest[j] == '"' else 1
      args.append(''.join(arg))
      i = j + 1
    else:
      j = i
      while j < len(rest) and rest[j] not in ' \t':
        j += 1
      args.append(rest[i:j])
      i = j
  return args


def man_page_lines(roff):
  """The text of a man page's roff source: a line per filled paragraph or heading, no-fill
  (code) lines one by one; requests, definitions, tables and comments dropped."""
  lines, words, nofill, skip_until = [], [], False, None

  def flush():
    if words:
      lines.append(' '.join(' '.join(words).split()))
      words.clear()

  for raw in roff.split('\n'):
    if skip_until is not None:
      skip_until = None if raw.strip().startswith(skip_until) else skip_until
      continue
    if raw[:1] in ('.', "'"):
      name, _, rest = raw[1:].strip().partition(' ')
      if name in _SKIP_UNTIL:
        skip_until = _SKIP_UNTIL[name]
      elif name in _NOFILL:
        flush()
        nofill = _NOFILL[name]
      elif name in _FONT_MACROS or name in _ALTERNATING_MACROS:
        sep = ' ' if name in _FONT_MACROS else ''
        text = _unescape(sep.join(_macro_arguments(rest)))
        (lines.append if nofill else words.append)(text) if text.strip() else None
      elif name in _BREAK_MACROS:
        flush()
        tag = _unescape(' '.join(_macro_arguments(rest))) if name in ('SH', 'SS') else ''
        if name == 'IP' and rest:  # .IP tag [indent]: a word tag (not a bullet) is text
          tag = _unescape(_macro_arguments(rest)[0])
          tag = tag if any(c.isalnum() for c in tag) else ''
        if tag.strip():
          lines.append(' '.join(tag.split()))
      continue
    text = _unescape(raw)
    if nofill:
      if text.strip():
        lines.append(text.rstrip())
    elif text.strip():
      words.append(text)
    else:
      flush()
  flush()
  return lines


def man_page_documents(pages):
  """{'train'|'validation': [document: [line]]} of {relative path: roff text}, one document per
  page with text; validation by a hash of the path."""
  documents = {'train': [], 'validation': []}
  for path in sorted(pages):
    lines = man_page_lines(pages[path])
    if lines:
      documents['validation' if bucket(path) < VALIDATION_BUCKETS else 'train'].append(lines)
  return documents


def read_man_pages(root):
  """{path below root: roff text} of the gzipped man pages below root/usr/share/man/man*/;
  `.so` redirections (one-line aliases) left out."""
  pages = {}
  for path in sorted((root / 'usr' / 'share' / 'man').glob('man*/*.gz')):
    with gzip.open(path) as f:
      text = f.read().decode('utf-8', errors='replace')
    if not text.lstrip().startswith('.so '):
      pages[str(path.relative_to(root))] = text
  return pages


# --- Debian package descriptions ----------------------------------------------------------------


def deb822_records(text, where):
  """The {field: value} records of a Debian control-style file (Packages, Translation-en);
  a continuation line is kept with its leading space, after a newline."""
  records, record, field = [], {}, None
  for number, line in enumerate(text.split('\n'), 1):
    if not line.strip():
      if record:
        records.append(record)
      record, field = {}, None
    elif line[0] in ' \t':
      if field is None:
        raise ValueError(f'{where}:{number}: a continuation line before any field')
      record[field] += '\n' + line
    else:
      field, sep, value = line.partition(':')
      if not sep:
        raise ValueError(f'{where}:{number}: not a "Field: value" line: {line[:80]!r}')
      record[field] = value.strip()
  if record:
    records.append(record)
  return records


def description_text(description):
  """One line of a Description-en value: the synopsis as a sentence, then the long text
  (' .' lines are paragraph breaks)."""
  synopsis, _, long = description.partition('\n')
  words = [synopsis.strip().rstrip('.') + '.']
  for line in long.split('\n'):
    if line.strip() != '.':
      words.extend(line.split())
  return ' '.join(words)


def package_examples(packages, translations):
  """{split: [example]} of the probe; an example is {package, source, text, label}.

  packages: Packages records (Package, Section, Description-md5, optional Source);
  translations: {Description-md5: Description-en}. A description shared by several packages is
  one example, of the first source package in sorted order; one shared across PACKAGE_SECTIONS'
  classes is left out. Splits by a hash of the source package: 80 / 10 / 10.
  """
  seen = {}  # text -> [the first (source, package), {section}]
  for p in packages:
    section = p.get('Section', '').rpartition('/')[2]
    description = translations.get(p.get('Description-md5'))
    if section not in PACKAGE_SECTIONS or description is None:
      continue
    item = (p.get('Source', p['Package']).split(' ')[0], p['Package'])
    entry = seen.setdefault(description_text(description), [item, set()])
    entry[0] = min(entry[0], item)
    entry[1].add(section)
  splits = {'train': [], 'validation': [], 'test': []}
  for text, ((source, package), sections) in sorted(seen.items(), key=lambda kv: kv[1][0]):
    if len(sections) > 1:
      continue
    section, = sections
    b = bucket('source:' + source)
    split = 'test' if b < 2 else 'validation' if b < 4 else 'train'
    splits[split].append({'package': package, 'source': source, 'text': text, 'label': section})
  return splits


# --- keeping probe text out of the corpus -------------------------------------------------------


def shingles(text, n=SHINGLE_WORDS):
  """The hashes of every run of n words of `text` (a shorter text: of all its words)."""
  words = text.lower().split()
  if not words:
    return set()
  return {hash(tuple(words[i:i + n])) for i in range(max(1, len(words) - n + 1))}


def without_shared_text(documents, texts):
  """(documents with every line that shares a shingle with one of `texts` dropped, the number
  of lines dropped); documents left empty are dropped."""
  banned = set()
  for t in texts:
    banned |= shingles(t)
  kept, dropped = [], 0
  for lines in documents:
    keep = [line for line in lines if banned.isdisjoint(shingles(line))]
    dropped += len(lines) - len(keep)
    if keep:
      kept.append(keep)
  return kept, dropped
