"""Your own text (README "Your own data"): `prepare_data.py text --src` on real files nobody
generated, then pretraining, probing and fine-tuning on the prepared set; resume, idempotence, bad input.

The files are the reStructuredText sources of the Python documentation (python3.11-doc, which
`prepare_data.py text` installs): .rst.txt files whose paragraphs (apart by blank lines) are the
documents. Folders of them become classes when copied below one folder (faq/, using/, ...).
"""
import dataclasses
import json
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import tokenizers

import eval as eval_lib
import train
from configs import common, probe_text, probe_vision
from data2vec.evaluators import data as probe_data
from data2vec.evaluators import features
from data2vec.input_pipeline import finetune, labelled, text_data
from data2vec.input_pipeline import text as text_input
from data2vec.models import registry
from data2vec.preparation import bundled_text, sources
from data2vec.preparation import text as text_prep
from tests.test_finetune import micro_config as micro_finetune_config
from tests.test_pretraining import micro_config as micro_pretrain_config
from tests.test_train import interrupt_and_rerun, read_metrics, restore

REPO = pathlib.Path(__file__).resolve().parents[1]
# Installed as root; else `prepare_data.py text` unpacks the package into the download cache.
_DOC_DIRS = (bundled_text.PYTHON_DOC_DIR,
             pathlib.Path(common.DEFAULT_DATA_DIR, 'cache', 'apt', 'root',
                          *bundled_text.PYTHON_DOC_DIR.parts[1:]))
DOCS = next((d / '_sources' for d in _DOC_DIRS if (d / '_sources' / 'tutorial').is_dir()), None)
pytestmark = pytest.mark.skipif(
    DOCS is None, reason='the Python docs are installed by `python scripts/prepare_data.py text`')
UNLABELLED = ('tutorial', 'howto')  # 37 files, ~5,300 paragraphs
CLASSES = ('extending', 'faq', 'using')  # 23 files, ~2,400 paragraphs
VOCAB = 1000
MAX_LENGTH = 32


def _meta(path):
  return json.loads((path / 'dataset.json').read_text())


def _files(path):
  return {p.relative_to(path).as_posix(): p.read_bytes()
          for p in sorted(path.rglob('*')) if p.is_file()}


def _paragraphs(file):
  """The documents of a .txt file as the module docstring defines them: runs of non-blank lines
  (a line of spaces is blank), trailing white space stripped."""
  docs, lines = [], []
  for line in file.read_text(encoding='utf-8').split('\n') + ['']:
    if line.strip():
      lines.append(line.rstrip())
    elif lines:
      docs.append(lines)
      lines = []
  return docs


def _same_data_set(a, b):
  """The files of two data sets are equal, but for dataset.json's name and plan hash."""
  a, b = _files(a), _files(b)
  assert set(a) == set(b)
  meta_a, meta_b = (json.loads(x.pop('dataset.json')) for x in (a, b))
  assert a == b  # arrays and tokenizer
  drop = lambda m: {k: v for k, v in m.items() if k not in ('name', 'plan_hash')}
  assert drop(meta_a) == drop(meta_b)


def _prepare(src, data_dir, name, **kw):
  """In-process (pytest has JAX's threads: no forked workers)."""
  return text_prep.prepare(src=src, data_dir=data_dir, name=name, **{
      'tokenizer': f'bpe:{VOCAB}', 'workers': 1, **kw})


def _cli(*args):
  return subprocess.run([sys.executable, 'scripts/prepare_data.py', 'text', *map(str, args)],
                        cwd=REPO, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('data')


@pytest.fixture(scope='module')
def docs(data_dir):
  """tutorial/ and howto/ (two --src folders, unlabelled) through the command line."""
  run = _cli('--src', *(DOCS / d for d in UNLABELLED), '--name', 'docs', '--tokenizer',
             f'bpe:{VOCAB}', '--workers', 2, '--data_dir', data_dir)
  assert run.returncode == 0, run.stderr[-3000:]
  return data_dir / 'docs'


@pytest.fixture(scope='module')
def classes_src(tmp_path_factory):
  src = tmp_path_factory.mktemp('classes')
  for name in CLASSES:
    shutil.copytree(DOCS / name, src / name)
  return src


@pytest.fixture(scope='module')
def labelled_set(data_dir, classes_src):
  """faq/, using/, extending/ below one folder: their names are the classes."""
  return _prepare(classes_src, data_dir, 'sections', labels='folders')


# ---------------------------------------------------------------- preparation


def test_two_folders_of_real_docs_are_prepared(docs):
  meta = _meta(docs)
  assert meta['format'] == 'text' and meta['vocab_size'] == VOCAB
  assert meta['classes'] is None and meta['labels_from'] is None
  assert meta['special_ids'] == {'<s>': 0, '<pad>': 1, '</s>': 2, '<unk>': 3, '<mask>': 4}
  assert meta['source'] == [str(DOCS / d) for d in UNLABELLED]
  assert meta['skipped'] == {'count': 0, 'first': []} and meta['token_dtype'] == 'uint16'
  # Every paragraph once, in the split its (file, index) hash gives, decoded back to its lines.
  want = {s: [] for s in text_prep.SPLITS}
  for folder in UNLABELLED:
    for file in sorted((DOCS / folder).rglob('*.txt')):
      for i, lines in enumerate(_paragraphs(file)):
        key = f'{folder}/{file.relative_to(DOCS / folder).as_posix()}:{i}'
        want[sources.holdout_split(key, 0.1, 0.1)].append(lines)
  assert meta['splits'] == {s: len(v) for s, v in want.items()}
  assert 0.75 < meta['splits']['train'] / sum(meta['splits'].values()) < 0.85
  tokenizer = tokenizers.Tokenizer.from_file(str(docs / 'tokenizer' / 'tokenizer.json'))
  for split, documents in want.items():
    data = text_data.token_arrays(docs.parent, 'docs', split)
    assert data.tokens.dtype == np.uint16 and len(data.tokens) == meta['tokens'][split]
    assert len(data.line_offsets) - 1 == meta['lines'][split] == sum(map(len, documents))
    ends = data.tokens[data.line_offsets[1:] - 1]
    assert np.all(ends == text_data.EOS_ID) and data.tokens.max() < VOCAB
    for d in range(0, len(documents), 97):
      lines = range(data.doc_offsets[d], data.doc_offsets[d + 1])
      got = [tokenizer.decode(data.tokens[data.line_offsets[l]:data.line_offsets[l + 1] - 1])
             for l in lines]
      assert got == documents[d]


def test_the_tokenizer_loads_in_transformers_with_the_same_ids(docs):
  transformers = pytest.importorskip('transformers')
  hf = transformers.RobertaTokenizerFast.from_pretrained(str(docs / 'tokenizer'))
  ours = tokenizers.Tokenizer.from_file(str(docs / 'tokenizer' / 'tokenizer.json'))
  line = 'The for statement iterates over the items of any sequence, in order.'
  assert hf(line)['input_ids'] == [0, *ours.encode(line, add_special_tokens=False).ids, 2]
  assert hf.mask_token_id == 4 and len(hf) == VOCAB


def test_splits_do_not_depend_on_workers_or_shards(docs, data_dir):
  """Shards of 64 kB in 2 worker processes (a subprocess: pytest has JAX's threads, which a fork
  must not copy) give the files the command line wrote in one shard, byte for byte."""
  src = [str(DOCS / d) for d in UNLABELLED]
  code = ('from data2vec.preparation import text; '
          f'text.prepare(src={src!r}, data_dir={str(data_dir)!r}, name="docs_again", '
          f'tokenizer="bpe:{VOCAB}", workers=2, shard_bytes=64 << 10)')
  run = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                       timeout=240)
  assert run.returncode == 0, run.stderr[-3000:]
  # More shards than one chunk of shards.parallel_map (8): both workers tokenize.
  assert int(re.search(r'in (\d+) shards', run.stdout)[1]) > 8 and not run.stderr
  assert not (data_dir / 'docs_again.partial').exists()
  _same_data_set(docs, data_dir / 'docs_again')


def test_a_rerun_finds_the_data_set_and_a_failed_one_keeps_it(docs, tmp_path):
  before = {p.name: p.stat().st_mtime_ns for p in docs.rglob('*')}
  run = _cli('--src', *(DOCS / d for d in UNLABELLED), '--name', 'docs', '--tokenizer',
             f'bpe:{VOCAB}', '--data_dir', docs.parent)
  assert run.returncode == 0 and 'is already prepared' in run.stdout, run.stderr[-2000:]
  assert {p.name: p.stat().st_mtime_ns for p in docs.rglob('*')} == before
  run = _cli('--src', DOCS / 'faq', '--name', 'docs', '--data_dir', docs.parent)
  assert run.returncode == 1 and 'already holds a data set' in run.stderr
  assert '--overwrite' in run.stderr and run.stderr.count('\n') == 1
  # --overwrite with a bad record: fails, and the old set stays whole.
  src = tmp_path / 'src'
  shutil.copytree(DOCS / 'faq', src)
  (src / 'notes.jsonl').write_text('{"text": "fine"}\n["not", "a", "record"]\n')
  run = _cli('--src', src, '--name', 'docs', '--data_dir', docs.parent, '--overwrite')
  assert run.returncode == 1, run.stdout
  assert run.stderr.strip().endswith(f'{src / "notes.jsonl"}:2: a JSON list where a record '
                                     '(object) with a "text" field belongs')
  assert {p.name: p.stat().st_mtime_ns for p in docs.rglob('*')} == before


def test_a_killed_run_resumes_and_keeps_its_finished_shards(tmp_path, monkeypatch):
  src = [DOCS / d for d in UNLABELLED]
  read, calls = text_prep.read_documents, []
  num_files = sum(1 for d in src for _ in d.rglob('*.txt'))

  def killed_at_the_20th_shard_file(path, *args):
    calls.append(path)
    if len(calls) == num_files + 20:  # the BPE has read every file once
      raise KeyboardInterrupt
    return read(path, *args)

  kw = dict(shard_bytes=32 << 10)
  monkeypatch.setattr(text_prep, 'read_documents', killed_at_the_20th_shard_file)
  with pytest.raises(KeyboardInterrupt):
    _prepare(src, tmp_path, 'docs', **kw)
  partial = tmp_path / 'docs.partial'
  done = sorted(partial.glob('shard-*.json'))  # the committed shards
  assert len(done) >= 3 and not (tmp_path / 'docs').exists()
  in_order = calls[:num_files]
  calls.clear()
  monkeypatch.setattr(text_prep, 'read_documents', lambda path, *a: calls.append(path) or read(
      path, *a))
  path = _prepare(src, tmp_path, 'docs', **kw)
  # Neither the BPE nor the finished shards again: the files after them, once.
  assert 3 <= num_files - len(calls) < 20 and calls == in_order[num_files - len(calls):]
  assert not list(path.glob('shard-*')) and not partial.exists()
  _same_data_set(path, _prepare(src, tmp_path, 'docs_straight', **kw))


def test_labels_from_folders(labelled_set, classes_src):
  meta = _meta(labelled_set)
  assert meta['classes'] == list(CLASSES) and meta['labels_from'] == 'folders'
  for split in meta['splits']:
    labels = np.load(labelled_set / f'{split}_labels.npy')
    assert labels.dtype == np.int32 and len(labels) == meta['splits'][split]
    want = []
    for c, name in enumerate(CLASSES):
      for file in sorted((classes_src / name).rglob('*.txt')):
        key = f'{classes_src.name}/{file.relative_to(classes_src).as_posix()}'
        want += [c for i, _ in enumerate(_paragraphs(file))
                 if sources.holdout_split(f'{key}:{i}', 0.1, 0.1) == split]
    np.testing.assert_array_equal(labels, want)


def test_labels_from_jsonl_records(tmp_path):
  """Paragraphs of real pages as records labelled by their page (integers order as numbers)."""
  pages = sorted((DOCS / 'faq').glob('*.txt'))[:3]
  src = tmp_path / 'records.jsonl'
  records = [{'text': '\n'.join(lines), 'label': 10 * (p + 1) if p else 9}
             for p, page in enumerate(pages) for lines in _paragraphs(page)]
  src.write_text(''.join(json.dumps(r) + '\n' for r in records) + '\n')
  path = _prepare(src, tmp_path / 'data', 'pages', tokenizer='bpe:400', val_fraction=0,
                  test_fraction=0.2)
  meta = _meta(path)
  assert meta['classes'] == ['9', '20', '30'] and meta['labels_from'] == 'records'
  assert set(meta['splits']) == {'train', 'test'}
  got = np.concatenate([np.load(path / f'{s}_labels.npy') for s in ('train', 'test')])
  order = {9: 0, 20: 1, 30: 2}
  want = ([order[r['label']] for i, r in enumerate(records)
           if sources.holdout_split(f'records.jsonl:{i}', 0, 0.2) == 'train'] +
          [order[r['label']] for i, r in enumerate(records)
           if sources.holdout_split(f'records.jsonl:{i}', 0, 0.2) == 'test'])
  np.testing.assert_array_equal(got, want)
  # A record without the label field in a labelled set: named with its line.
  src.write_text(src.read_text() + json.dumps({'text': 'no label'}) + '\n')
  with pytest.raises(ValueError, match=f'{src}:{len(records) + 2}: no "label" field, but '
                     f'{src}:1 has one'):
    _prepare(src, tmp_path / 'data', 'pages2', tokenizer='bpe:400')
  _prepare(src, tmp_path / 'data', 'pages3', tokenizer='bpe:400', labels='none')


# ---------------------------------------------------------------- bad input


def test_bad_sources_are_one_line_errors_naming_the_file(tmp_path):
  kw = dict(data_dir=tmp_path / 'data', name='x')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match=r'empty: holds no text files \(.jsonl, .txt\)'):
    _prepare(tmp_path / 'empty', **kw)
  static = DOCS.parent / '_static'  # .js, .css, .png
  with pytest.raises(ValueError, match=f'--src={static}: holds no text files'):
    _prepare(static, **kw)
  with pytest.raises(ValueError, match='no such file or folder'):
    _prepare(tmp_path / 'missing', **kw)
  blank = tmp_path / 'blank'
  blank.mkdir()
  (blank / 'a.txt').write_text('\n  \n\t\n')
  (blank / 'b.jsonl').write_text('{"text": " "}\n\n')
  with pytest.raises(ValueError, match=f'--src {blank}: no document in the train split of the 2'):
    _prepare(blank, **kw)
  bad = tmp_path / 'bad.jsonl'
  for content, message in (('{"text": "a"}\n{"text": "b",\n', r':2: not a JSON line'),
                           ('"just text"\n', r':1: a JSON str where a record'),
                           ('{"body": "a"}\n', r':1: no "text" string field .* \[\'body\'\]'),
                           ('{"text": "a", "label": [1]}\n', r':1: "label" is \[1\]')):
    bad.write_text(content)
    with pytest.raises(ValueError, match=f'{bad}{message}'):
      _prepare(bad, **kw)
  bad.write_text('{"body": "a"}\n')
  _prepare(bad, text_field='body', tokenizer='bpe:261', val_fraction=0, test_fraction=0, **kw)
  with pytest.raises(ValueError, match='--labels=folders: .* is given on its own'):
    _prepare([DOCS / 'faq' / 'general.rst.txt'], labels='folders', **kw)
  with pytest.raises(ValueError, match='--tokenizer=bpe:100: bpe:VOCAB needs an integer VOCAB '
                     '>= 261'):
    _prepare(DOCS / 'faq', tokenizer='bpe:100', **kw)
  with pytest.raises(ValueError, match='--tokenizer=bpe:60000: the BPE reached .* too small'):
    _prepare(DOCS / 'faq', tokenizer='bpe:60000', **{**kw, 'name': 'y'})
  with pytest.raises(ValueError, match='--tokenizer=nowhere: neither bpe:VOCAB nor'):
    _prepare(DOCS / 'faq', tokenizer='nowhere', **kw)


def test_undecodable_files_are_skipped_and_counted_or_fail_with_strict(tmp_path):
  src = tmp_path / 'faq'  # as DOCS / 'faq': the same documents go to the same splits
  shutil.copytree(DOCS / 'faq', src)
  shutil.copyfile(DOCS.parent / '_static' / 'file.png', src / 'image.txt')  # a real PNG
  path = _prepare(src, tmp_path / 'data', 'faq')
  meta = _meta(path)
  assert meta['skipped']['count'] == 1
  assert meta['skipped']['first'][0].startswith(f'{src / "image.txt"}: not UTF-8')
  assert meta['splits'] == _meta(_prepare(DOCS / 'faq', tmp_path / 'data', 'faq_only'))['splits']
  with pytest.raises(ValueError, match=r'1 text files could not be decoded \(--strict\), e.g. '
                     f'{src / "image.txt"}'):
    _prepare(src, tmp_path / 'data', 'faq_strict', strict=True)
  assert not (tmp_path / 'data' / 'faq_strict').exists()


# ---------------------------------------------------------------- a tokenizer of your own


@pytest.fixture(scope='module')
def own_tokenizer(tmp_path_factory):
  """A BPE trained on the faq whose specials come last (ids 600-604), as many tokenizers'."""
  lines = [l for f in sorted((DOCS / 'faq').glob('*.txt')) for doc in _paragraphs(f) for l in doc]
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  tok.train_from_iterator(lines, tokenizers.trainers.BpeTrainer(
      vocab_size=600, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False))
  tok.add_special_tokens(['<mask>', '<unk>', '</s>', '<pad>', '<s>'])
  path = tmp_path_factory.mktemp('tokenizer') / 'tokenizer.json'
  tok.save(str(path))
  return path


def test_a_tokenizer_with_other_special_ids_is_used_as_it_is(own_tokenizer, data_dir):
  path = _prepare(DOCS / 'faq', data_dir, 'faq_own', tokenizer=str(own_tokenizer))
  meta = _meta(path)
  specials = {'<mask>': 600, '<unk>': 601, '</s>': 602, '<pad>': 603, '<s>': 604}
  assert meta['special_ids'] == specials and meta['vocab_size'] == 605
  assert meta['tokenizer_source'] == str(own_tokenizer)
  saved = {p.name for p in (path / 'tokenizer').iterdir()}
  assert {'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json'} <= saved
  data = text_data.token_arrays(data_dir, 'faq_own', 'train')
  assert np.all(data.tokens[data.line_offsets[1:] - 1] == 602)
  kw = dict(data_dir=data_dir, dataset='faq_own', split='train', batch_size=8, seed=0,
            vocab_size=605, max_length=MAX_LENGTH, mask_prob=0.35, mask_length=4, num_threads=0,
            prefetch_buffer_size=0)
  batch = next(iter(text_input.make_pretrain_dataset(pad_token_id=603, **kw)))
  ids, valid = batch['input_ids'], batch['attention_mask'].astype(bool)
  assert np.all(ids[:, 0] == 604) and np.all(ids[~valid] == 603) and (~valid).any()
  target = batch['target_mask']
  assert target.any() and np.all(batch['masked_input_ids'][target] == 600)
  with pytest.raises(ValueError, match=r"pad_token_id=1 \(config.model\) is not the <pad> id 603 "
                     f"of {path}'s tokenizer"):
    text_input.make_pretrain_dataset(pad_token_id=1, **kw)
  # Above 65536 ids the tokens are uint32, the same ids.
  tok = tokenizers.Tokenizer.from_file(str(own_tokenizer))
  tok.add_tokens([f'unused{i}' for i in range(65_000)])
  tok.save(str(own_tokenizer.parent / 'big.json'))
  _prepare(DOCS / 'faq', data_dir, 'faq_big', tokenizer=str(own_tokenizer.parent / 'big.json'))
  big = text_data.token_arrays(data_dir, 'faq_big', 'train')
  assert big.tokens.dtype == np.uint32 and big.vocab.size == 65_605
  np.testing.assert_array_equal(big.tokens, data.tokens)
  no_mask = own_tokenizer.parent / 'no_mask.json'
  tok = tokenizers.Tokenizer.from_file(str(own_tokenizer))
  spec = json.loads(tok.to_str())
  spec['added_tokens'] = [t for t in spec['added_tokens'] if t['content'] != '<mask>']
  no_mask.write_text(json.dumps(spec))
  with pytest.raises(ValueError, match=r"lacks the special tokens \['<mask>'\]"):
    _prepare(DOCS / 'faq', data_dir, 'faq_no_mask', tokenizer=str(no_mask))


# ---------------------------------------------------------------- reading, training, probing


def _pretrain_config(data_dir, dataset, **overrides):
  config = micro_pretrain_config('text')
  config.model.update(dict(vocab_size=VOCAB, max_position_embeddings=MAX_LENGTH + 2))
  config.input.update(dict(dataset=dataset, max_length=MAX_LENGTH))
  config.data_dir = str(data_dir)
  config.update({**dict(batch_size=8, total_steps=6, log_every_steps=1,
                        checkpoint_every_steps=3, probe_every_steps=0), **overrides})
  return config


def test_pretraining_batches_of_a_prepared_set_resume_exactly(docs):
  kw = dict(data_dir=docs.parent, dataset='docs', split='train',
            batch_size=8, seed=3, vocab_size=VOCAB, max_length=MAX_LENGTH, mask_prob=0.35,
            mask_length=4, num_threads=0, prefetch_buffer_size=0)
  it = iter(text_input.make_pretrain_dataset(**kw))
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  expected = next(it)
  resumed = iter(text_input.make_pretrain_dataset(**kw))
  resumed.set_state(json.loads(json.dumps(state)))
  got = next(resumed)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key])
  ids = first[0]['input_ids']
  assert ids.shape == (8, MAX_LENGTH) and np.all(ids[:, 0] == 0) and ids.max() < VOCAB


def test_the_vocabulary_must_fit_the_model(docs, tmp_path):
  kw = dict(data_dir=docs.parent, dataset='docs', split='train', batch_size=8, seed=0,
            max_length=MAX_LENGTH, mask_prob=0.35, mask_length=4)
  with pytest.raises(ValueError, match=f"config.model.vocab_size=800 but {docs}'s tokenizer has "
                     f'{VOCAB} ids'):
    text_input.make_pretrain_dataset(vocab_size=800, **kw)
  # A token id beyond the tokenizer (a damaged or hand-edited set) is named with its file.
  shutil.copytree(docs, tmp_path / 'docs')
  meta = _meta(tmp_path / 'docs')
  (tmp_path / 'docs' / 'dataset.json').write_text(json.dumps(dict(meta, vocab_size=600)))
  with pytest.raises(ValueError, match=f'{tmp_path / "docs" / "train_tokens.npy"}: token id '
                     r'\d+ >= the 600 ids'):
    text_input.make_pretrain_dataset(**{**kw, 'data_dir': tmp_path, 'vocab_size': 600})


def test_the_vocabulary_must_fit_the_encoder(labelled_set):
  input_config = probe_text.get_config().input
  input_config.update(dict(dataset='sections', max_length=MAX_LENGTH))
  model = registry.model_config(_pretrain_config(labelled_set.parent, 'sections'))
  probe_data.check_input('text', input_config, model, labelled_set.parent)
  with pytest.raises(ValueError, match=f"{labelled_set}'s tokenizer has {VOCAB} ids; the encoder "
                     'embeds 800'):
    probe_data.check_input('text', input_config, dataclasses.replace(model, vocab_size=800),
                           labelled_set.parent)
  with pytest.raises(ValueError, match=f"{labelled_set}'s tokenizer pads with id 1; the "
                     "encoder's pad_token_id is 0"):
    probe_data.check_input('text', input_config, dataclasses.replace(model, pad_token_id=0),
                           labelled_set.parent)


def test_a_data_set_of_another_modality_is_named(docs, labelled_set):
  kw = dict(split='train', batch_size=8, seed=0, vocab_size=VOCAB, max_length=MAX_LENGTH,
            mask_prob=0.35, mask_length=4)
  for name, modality in (('fashion_mnist', 'vision'), ('spoken_digits', 'audio')):
    with pytest.raises(ValueError, match=f"config.input.dataset='{name}' is a {modality} data set"):
      text_input.make_pretrain_dataset(data_dir=docs.parent, dataset=name, **kw)
  with pytest.raises(ValueError, match="config.input.dataset='nothing': .* does not exist"):
    text_input.make_pretrain_dataset(data_dir=docs.parent, dataset='nothing', **kw)
  vision_input = probe_vision.get_config().input
  vision_input.dataset = 'sections'
  with pytest.raises(ValueError, match="config.input.dataset='sections' is a text data set "
                     r'\(.*\); the config is for vision'):
    probe_data.check_input('vision', vision_input, None, docs.parent)
  text_config = probe_text.get_config().input
  text_config.dataset = 'docs'
  with pytest.raises(ValueError, match="config.input.dataset='docs' has 0 classes"):
    probe_data.check_input('text', text_config, None, docs.parent)
  with pytest.raises(ValueError, match=r"split='dev': .* has the splits"):
    text_data.token_arrays(docs.parent, 'docs', 'dev')


def test_probe_batches_of_a_labelled_set(labelled_set):
  input_config = probe_text.get_config().input
  input_config.update(dict(dataset='sections', max_length=MAX_LENGTH))
  batches, num_classes = probe_data.labelled_batches(
      'text', data_dir=labelled_set.parent, input_config=input_config, split='test',
      model_config=None, batch_size=64)
  rows = [{k: np.asarray(v)[np.asarray(b['valid'])] for k, v in b.items()} for b in batches]
  labels = np.concatenate([r['label'] for r in rows])
  assert num_classes == 3
  assert sorted(labels) == sorted(np.load(labelled_set / 'test_labels.npy'))
  ids, mask = (np.concatenate([r[k] for r in rows]) for k in ('input_ids', 'attention_mask'))
  n = mask.sum(1)
  assert ids.shape[1] == MAX_LENGTH and np.all(ids[:, 0] == 0)
  assert np.all(ids[np.arange(len(ids)), n - 1] == 2) and np.all(ids[mask == 0] == 1)
  # A document longer than max_length keeps its first ids and ends with </s>.
  data = text_data.token_arrays(labelled_set.parent, 'sections', 'test')
  examples = labelled.text_examples(labelled_set.parent, 'sections', 'test', MAX_LENGTH)
  lengths = np.diff(data.line_offsets[data.doc_offsets])
  long = int(np.argmax(lengths))
  assert lengths[long] > MAX_LENGTH
  start = data.line_offsets[data.doc_offsets[long]]
  np.testing.assert_array_equal(examples.ids[long], [0, *data.tokens[start:start + MAX_LENGTH - 2],
                                                     2])
  short = int(np.argmin(lengths))
  assert len(examples.ids[short]) == lengths[short] + 1
  # The raw bag-of-tokens baseline counts the set's own ids (a vocabulary under 2048).
  fn = features.raw_feature_fn('text', input_config, labelled_set.parent)
  counts = fn({'input_ids': ids[:4], 'attention_mask': mask[:4]})
  assert counts.shape == (4, VOCAB) and np.all(counts.sum(1) == n[:4])


@pytest.fixture(scope='module')
def pretrained(labelled_set, tmp_path_factory):
  """A 6-step micro pretraining run on the labelled set, ridge probe on it at steps 3 and 6."""
  config = _pretrain_config(labelled_set.parent, 'sections', probe_every_steps=3)
  config.ridge_probe.update(dict(num_train=64, num_test=32))
  workdir = str(tmp_path_factory.mktemp('pretrained'))
  train.train_and_evaluate(config, workdir)
  return workdir, config


@pytest.mark.slow
def test_pretraining_on_a_prepared_set_runs_and_resumes_bit_identically(pretrained, tmp_path):
  straight, config = pretrained
  logged = read_metrics(straight)
  assert [m['step'] for m in logged] == list(range(1, 7))
  assert all(np.isfinite(m['loss']) and m['target_var'] > 0 for m in logged)
  assert 0 <= logged[-1]['ridge_probe_accuracy'] <= 1  # on the set's own test documents
  split = str(tmp_path)
  interrupt_and_rerun(config, split, batches=3)  # stopped after the step-3 checkpoint
  assert [(m['step'], m['loss']) for m in read_metrics(split)] == [
      (m['step'], m['loss']) for m in logged]
  (a, a_data), (b, b_data) = restore(straight, config), restore(split, config)
  assert a_data == b_data
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_the_ridge_probe_of_an_unlabelled_set_is_refused(docs, tmp_path):
  config = _pretrain_config(docs.parent, 'docs', probe_every_steps=2)
  with pytest.raises(ValueError, match="config.probe_every_steps=2: .* config.input.dataset="
                     "'docs' has no classes"):
    train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.slow
def test_a_probe_of_a_prepared_labelled_set(pretrained, labelled_set):
  workdir, _ = pretrained
  config = probe_text.get_config('2,all')
  config.update(dict(data_dir=str(labelled_set.parent), seeds=(0, 1), batch_size=64))
  config.input.update(dict(dataset='sections', max_length=MAX_LENGTH))
  config.classifier.steps = 50
  result = eval_lib.evaluate(config, workdir=workdir, out=str(labelled_set.parent / 'eval'))
  meta = _meta(labelled_set)
  assert result['data'] == dict(result['data'], dataset='sections', num_classes=3,
                                num_train=meta['splits']['train'],
                                num_test=meta['splits']['test'])
  assert 0 <= result['summary']['all']['accuracy_mean'] <= 1


@pytest.mark.slow
def test_a_classifier_finetunes_on_the_data_sets_classes(labelled_set, tmp_path):
  config = micro_finetune_config('text', total_steps=4, checkpoint_every_steps=4,
                                 eval_splits=('test',))
  config.model.vocab_size = VOCAB
  config.data_dir = str(labelled_set.parent)
  config.input.dataset = 'sections'
  train.train_and_evaluate(config, str(tmp_path))
  assert tuple(config.model.id2label) == CLASSES  # () became the data set's classes
  logged = read_metrics(str(tmp_path))
  assert [m['step'] for m in logged] == [1, 2, 3, 4] and 0 <= logged[-1]['test_accuracy'] <= 1


def test_finetune_labels_of_a_prepared_set(labelled_set):
  config = micro_finetune_config('text')
  config.model.vocab_size = VOCAB
  config.data_dir = str(labelled_set.parent)
  config.input.dataset = 'sections'
  finetune.fill_classes(config)
  ids, labels = finetune.load_split(config, 'validation')
  np.testing.assert_array_equal(labels, np.load(labelled_set / 'validation_labels.npy'))
  assert len(ids) == len(labels) and all(x[0] == 0 and x[-1] == 2 for x in ids)
  config.model.id2label = ('faq', 'using')
  with pytest.raises(ValueError, match=r"the classes are \('extending', 'faq', 'using'\); "
                     r"config.model.id2label is \('faq', 'using'\)"):
    finetune.load_split(config, 'train')
  config.model.update(dict(id2label=CLASSES, vocab_size=512))
  with pytest.raises(ValueError, match=f'{labelled_set / "train_tokens.npy"}: token id \\d+ >= '
                     r'vocab_size 512 \(config.model\)'):
    finetune.load_split(config, 'train')


def _workdir(tmp_path, dataset):
  """A training workdir's config.json (all the tokenizer check reads) of a run on `dataset`."""
  workdir = tmp_path / f'trained_on_{dataset}'
  workdir.mkdir()
  (workdir / 'config.json').write_text(json.dumps({'modality': 'text',
                                                   'input': {'dataset': dataset}}))
  return str(workdir)


def test_labelled_text_in_another_tokenizer_is_refused(docs, labelled_set, tmp_path):
  """'docs' and 'sections' each trained their own BPE: an encoder pretrained on 'docs' cannot
  read 'sections', in a probe (eval.py) or fine-tuning."""
  data_dir = labelled_set.parent
  input_config = probe_text.get_config().input
  input_config.update(dict(dataset='sections', max_length=MAX_LENGTH))
  model = registry.model_config(_pretrain_config(data_dir, 'sections'))
  probe_data.check_input('text', input_config, model, data_dir,
                         encoder=_workdir(tmp_path, 'sections'))
  other = _workdir(tmp_path, 'docs')
  refusal = (f"{labelled_set}'s tokenizer \\(sha256 \\w+\\) is not the encoder's, {docs}'s "
             f'tokenizer \\(the data of {other}\\) .* --tokenizer {docs / "tokenizer"}`$')
  with pytest.raises(ValueError, match=refusal):
    probe_data.check_input('text', input_config, model, data_dir, encoder=other)
  config = micro_finetune_config('text')
  config.model.update(dict(vocab_size=VOCAB, id2label=CLASSES))
  config.data_dir = str(data_dir)
  config.input.dataset = 'sections'
  config.init_from = other
  with pytest.raises(ValueError, match=refusal):
    finetune.load_split(config, 'train')
