"""The English corpus and the Debian package-description probe (data2vec/preparation/english.py):
GCIDE and man-page cleaning, apt's records, the source-package split, probe text kept out of
the corpus; synthetic packages and, where prepared, the real sets."""
import collections
import gzip
import json
import os
import pathlib

import numpy as np
import pytest

from configs import common
from data2vec.input_pipeline import datasets, labelled
from data2vec.preparation import bundled_text, english
from data2vec.preparation import text as text_prep

DATA_DIR = pathlib.Path(common.DEFAULT_DATA_DIR)
needs_text_data = pytest.mark.skipif(
    not bundled_text.is_prepared(DATA_DIR) and not os.environ.get('CI'),
    reason='run `python scripts/prepare_data.py text` first')  # CI prepares it: never skipped

GCIDE_ENTRIES = [
    'Abuse \\A*buse"\\, v. t. [F. abuser.]\n   1. To put to a wrong use; to misapply.\n'
    '      [1913 Webster]\n\n            This principle shoots rapidly.   --Froude.\n'
    '      [1913 Webster]\n',
    '1-hitter \\1-hitter\\ n.\n   1. a baseball game with one hit.\n\n   Syn: one-hitter\n'
    '        [WordNet 1.5 +PJC]\n',
    'Abuser \\A*bus"er\\, n.\n   One who {abuses}.\n   [1913 Webster]\n',
]
ROFF = r""".\" a comment
.de Vb
.ft CW
..
.TH SIGNAL 7 2023-02-05 "Linux"
.SH NAME
signal \- overview of signals
.SH DESCRIPTION
Each signal has a current
.IR disposition ,
which determines how the process behaves.\" trailing comment
.PP
See
.BR kill (2)
and \fBsigaction\fP(2) for \(lqdetails\(rq.
.TS
tab(;);
l l.
SIGHUP;1
.TE
.IP \(bu 2
A bullet item.
.IP EINTR
Interrupted.
.nf
int  main(void);
.fi
.Vb 1
\&  print 1+2;
.Ve
"""
ROFF_LINES = ['NAME', 'signal - overview of signals', 'DESCRIPTION',
              'Each signal has a current disposition, which determines how the process behaves.',
              'See kill(2) and sigaction(2) for "details".', 'A bullet item.', 'EINTR',
              'Interrupted.', 'int  main(void);', '  print 1+2;']


def _dictd_digits(value):
  digits = ''
  while True:
    value, d = divmod(value, 64)
    digits = english.DICTD_DIGITS[d] + digits
    if not value:
      return digits


def write_gcide(folder, entries):
  """A dictd database of `entries` (metadata first; each entry listed under two headwords)."""
  folder.mkdir(parents=True, exist_ok=True)
  data, index = b'', []
  for i, entry in enumerate(['00-database-short\n   A test dictionary\n'] + entries):
    body = entry.encode()
    span = f'\t{_dictd_digits(len(data))}\t{_dictd_digits(len(body))}'
    headword = entry.split(' ')[0].split('\n')[0]
    index.append(headword + span)
    if i:
      index.append(headword.upper() + span)
    data += body + b'\n'
  (folder / 'gcide.index').write_text('\n'.join(sorted(index)) + '\n')
  with gzip.open(folder / 'gcide.dict.dz', 'wb') as f:
    f.write(data)
  return folder


def write_man_pages(root, pages):
  """{name.section: roff} as gzipped man pages below root/usr/share/man/man{section}/."""
  for name, roff in pages.items():
    folder = root / 'usr' / 'share' / 'man' / f'man{name.rsplit(".", 1)[1]}'
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / f'{name}.gz', 'wb') as f:
      f.write(roff.encode())
  return root


def package_lists(num_sources=60):
  """(Packages text, [Translation-en text]) of `num_sources` sources with two binaries each:
  a library (libs) and its -dev (devel) sharing a long paragraph; one description shared by a
  games and a sound package (ambiguous), one package without a translation, one in `python`."""
  packages, translations = [], []
  for i in range(num_sources):
    for binary, section in ((f'libthing{i}', 'libs'), (f'libthing{i}-dev', 'devel')):
      md5 = f'{binary}-md5'
      packages.append(f'Package: {binary}\nSource: thing{i} (1.0-1)\nSection: {section}\n'
                      f'Description: thing {i}\nDescription-md5: {md5}\n')
      translations.append(f'Package: {binary}\nDescription-md5: {md5}\nDescription-en: '
                          f'{binary} does thing {i}\n Thing number {i} is a {section} package.\n'
                          ' .\n It is shared by both binaries.\n')
  packages += ['Package: chess\nSection: games\nDescription-md5: same\n',
               'Package: piano\nSection: contrib/sound\nDescription-md5: same\n',
               'Package: ghost\nSection: net\nDescription-md5: missing\n',
               'Package: python3-x\nSection: python\nDescription-md5: py\n']
  translations += ['Package: chess\nDescription-md5: same\nDescription-en: plays\n a game.\n',
                   'Package: python3-x\nDescription-md5: py\nDescription-en: x\n in python.\n']
  return '\n'.join(packages), ['\n'.join(translations)]


def write_fake_english(root):
  """{'gcide', 'man_pages': root} of fake unpacked packages (the Debian layouts)."""
  gcide = write_gcide(root / 'gcide' / 'usr' / 'share' / 'dictd', GCIDE_ENTRIES * 20)
  man = write_man_pages(root / 'man', {f'page{i}.7': ROFF.replace('signal', f'signal{i}')
                                       for i in range(30)})
  assert gcide.parents[2] == root / 'gcide'
  return {'gcide': root / 'gcide', 'man_pages': man}


# --- GCIDE --------------------------------------------------------------------------------------


def test_gcide_entries_once_each_without_metadata(tmp_path):
  folder = write_gcide(tmp_path, GCIDE_ENTRIES)
  entries = english.gcide_entries(folder / 'gcide.dict.dz', folder / 'gcide.index')
  assert [e.rstrip('\n') for e in entries] == [e.rstrip('\n') for e in GCIDE_ENTRIES]


def test_gcide_paragraphs_drop_pronunciations_tags_braces_and_wordnet():
  assert english.gcide_paragraphs(GCIDE_ENTRIES[0]) == [
      'Abuse, v. t. [F. abuser.] 1. To put to a wrong use; to misapply.',
      'This principle shoots rapidly. --Froude.']
  assert english.gcide_paragraphs(GCIDE_ENTRIES[1]) == []  # WordNet's
  assert english.gcide_paragraphs(GCIDE_ENTRIES[2]) == ['Abuser, n. One who abuses.']


def test_gcide_documents_group_neighbouring_entries():
  documents = english.gcide_documents(GCIDE_ENTRIES * 40)
  all_documents = documents['train'] + documents['validation']
  assert len(all_documents) == -(-80 // english.GCIDE_ENTRIES_PER_DOCUMENT)  # 2 of 3 kept
  assert sum(len(d) for d in all_documents) == 40 * 2 + 40 * 1  # paragraphs


def test_gcide_index_errors_name_the_line(tmp_path):
  folder = write_gcide(tmp_path, GCIDE_ENTRIES)
  (folder / 'gcide.index').write_text('word\tB!\tC\n')
  with pytest.raises(ValueError, match=r'gcide.index:1: not a dictd index line'):
    english.gcide_entries(folder / 'gcide.dict.dz', folder / 'gcide.index')


# --- man pages ----------------------------------------------------------------------------------


def test_man_page_lines_keep_text_and_code_drop_markup():
  assert english.man_page_lines(ROFF) == ROFF_LINES


def test_read_man_pages_skips_aliases(tmp_path):
  root = write_man_pages(tmp_path, {'signal.7': ROFF, 'sig.7': '.so man7/signal.7\n'})
  pages = english.read_man_pages(root)
  assert list(pages) == ['usr/share/man/man7/signal.7.gz']
  documents = english.man_page_documents(pages)
  assert documents['train'] + documents['validation'] == [ROFF_LINES]


# --- the package-description probe --------------------------------------------------------------


def test_deb822_records_and_description_text():
  records = english.deb822_records('A: 1\nB: two\n more\n .\n end\n\nA: 3\n', 'x')
  assert records == [{'A': '1', 'B': 'two\n more\n .\n end'}, {'A': '3'}]
  assert english.description_text(records[0]['B']) == 'two. more end'
  with pytest.raises(ValueError, match='x:2: not a "Field: value" line'):
    english.deb822_records('A: 1\nnonsense\n', 'x')


def test_package_examples_split_by_source_dedupe_and_drop_ambiguous():
  packages_text, translation_texts = package_lists()
  packages = english.deb822_records(packages_text, 'p')
  translations = {r['Description-md5']: r['Description-en']
                  for r in english.deb822_records(translation_texts[0], 't')}
  splits = english.package_examples(packages, translations)
  examples = [e for split in splits.values() for e in split]
  assert len(examples) == 120  # 60 sources x 2; the ambiguous, untranslated and python ones out
  assert {e['label'] for e in examples} == {'libs', 'devel'}
  assert len({e['text'] for e in examples}) == 120
  where = collections.defaultdict(set)
  for split, split_examples in splits.items():
    for e in split_examples:
      where[e['source']].add(split)
  assert all(len(s) == 1 for s in where.values())  # a source's binaries in one split
  assert 0.6 < len(splits['train']) / 120 < 0.95 and splits['test'] and splits['validation']
  e = next(e for e in examples if e['package'] == 'libthing3-dev')
  assert e == {'package': 'libthing3-dev', 'source': 'thing3', 'label': 'devel',
               'text': 'libthing3-dev does thing 3. Thing number 3 is a devel package. It is '
                       'shared by both binaries.'}


def test_package_examples_keep_one_copy_of_a_shared_description():
  packages = [{'Package': p, 'Source': s, 'Section': 'games', 'Description-md5': 'm'}
              for p, s in (('b2', 'src-b'), ('a1', 'src-a'), ('a0', 'src-a'))]
  splits = english.package_examples(packages, {'m': 'x\n y'})
  assert [e['package'] for s in splits.values() for e in s] == ['a0']


def test_lines_sharing_a_run_with_a_probe_text_are_dropped():
  probe = 'one two three four five six seven eight nine ten eleven twelve'
  documents = [['a line that quotes three four five six seven eight nine ten eleven twelve ok',
                'an unrelated line of this document'],
               ['one two three four five six seven eight nine'],  # 9 words: no 10-word run
               ['Three four five six seven eight nine ten eleven twelve!']]  # punctuation differs
  kept, dropped = english.without_shared_text(documents, [probe, 'short probe'])
  assert dropped == 1 and kept == [[documents[0][1]], documents[1], documents[2]]
  kept, dropped = english.without_shared_text([['Short probe'], ['short probe!']],
                                              ['short probe'])
  assert dropped == 1 and kept == [['short probe!']]


# --- the real sets ------------------------------------------------------------------------------


def _documents(name, split):
  folder = bundled_text.work_dir(DATA_DIR) / 'documents' / name / split
  return [lines for path in sorted(folder.iterdir())
          for _, lines, _ in text_prep.read_documents(path)]


@needs_text_data
def test_real_english_corpus_counts_and_holds_no_probe_text():
  meta = datasets.load(DATA_DIR, 'english', modality='text').meta
  assert meta['tokens']['train'] > 15_000_000 and meta['vocab_size'] == 8192
  folder = bundled_text.work_dir(DATA_DIR) / 'documents' / 'english' / 'train'
  assert sorted(p.name for p in folder.iterdir()) == [
      'gcide.txt', 'man_pages.txt', 'python_docs.txt', 'wordnet_glosses.txt']
  probe_texts = [json.loads(line)['text'] for split in bundled_text.PROBE_SPLITS
                 for line in (bundled_text.work_dir(DATA_DIR) / 'documents' / 'debian_packages' /
                              split / 'debian_packages.jsonl').read_text().splitlines()]
  probe_texts += [e[0] for split in bundled_text.PROBE_SPLITS[1:]
                  for e in _documents('wordnet_supersense', split)]
  for split in bundled_text.DOC_SPLITS:
    lines = [line for d in _documents('english', split) for line in d]
    assert english.without_shared_text([lines], probe_texts)[1] == 0


@needs_text_data
def test_real_package_probe_classes_sizes_and_source_split():
  splits = {s: labelled.text_examples(DATA_DIR, 'debian_packages', s, 128)
            for s in bundled_text.PROBE_SPLITS}
  assert splits['train'].classes == english.PACKAGE_SECTIONS
  sizes = {s: len(v.ids) for s, v in splits.items()}
  assert sizes['train'] > 15_000 and sizes['test'] > 2_000 and sizes['validation'] > 2_000
  counts = np.bincount(splits['train'].labels, minlength=len(english.PACKAGE_SECTIONS))
  assert counts.min() >= 250  # 100 per class fits every class
  records = {s: [json.loads(line) for line in (
      bundled_text.work_dir(DATA_DIR) / 'documents' / 'debian_packages' / s /
      'debian_packages.jsonl').read_text().splitlines()] for s in splits}
  sources = {s: {r['source'] for r in v} for s, v in records.items()}
  assert not sources['train'] & sources['test'] and not sources['train'] & sources['validation']
  assert not sources['validation'] & sources['test']
  texts = [r['text'] for v in records.values() for r in v]
  assert len(set(texts)) == len(texts)
  supersense = labelled.text_examples(DATA_DIR, 'wordnet_supersense_english', 'test', 64)
  assert supersense.vocab.sha256 == splits['test'].vocab.sha256 and len(supersense.ids) == 6498
