"""Your own audio: `prepare_data.py audio --src` on real recordings nobody generated,
then pretraining, probing and fine-tuning on the prepared set; resume, idempotence, bad input.

The recordings are the Debian packages `prepare_data.py audio` installs: KTuberling's words (a
folder per language: the classes; 44.1 kHz, some .wav) and Fish Fillets NG's Dutch and Czech
dialogue (Ogg Vorbis, 22.05 or 44.1 kHz, mono or stereo), whose lines (the levels'
dialogs_<lang>.lua) become fairseq .ltr / .wrd transcripts of manifests written here.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile
import soxr

import eval as eval_lib
import train
from configs import finetune_audio, probe_audio
from data2vec import workdirs
from data2vec.evaluators import data as probe_data
from data2vec.hf import preprocessors
from data2vec.input_pipeline import audio, datasets, finetune, labelled
from data2vec.models import audio as audio_model
from data2vec.preparation import audio as audio_prep
from data2vec.preparation import bundled_speech
from tests.test_finetune import micro_config as micro_finetune_config
from tests.test_pretraining import micro_config as micro_pretrain_config
from tests.test_train import interrupt_and_rerun, read_metrics, restore

REPO = pathlib.Path(__file__).resolve().parents[1]
KTUBERLING = pathlib.Path('/usr/share/ktuberling/sounds')
FILLETS = pathlib.Path('/usr/share/games/fillets-ng')
LOCALES = ('es', 'fi', 'it', 'nl', 'pt')  # 62 words
WORDS = dict(labels='auto', val_fraction=0.1, test_fraction=0.15, shard_seconds=5.0, workers=1)
LEVELS = {'train': ('airplane', 'captain'), 'valid': ('rush',)}  # 56 lines in nl and cs
needs_recordings = pytest.mark.skipif(
    (not all((KTUBERLING / l).is_dir() for l in LOCALES) or not (FILLETS / 'sound').is_dir())
    and not os.environ.get('CI'),  # CI prepares the audio: never skipped
    reason='KTuberling and Fish Fillets are installed by `python scripts/prepare_data.py audio`')
pytestmark = needs_recordings


def _copy_words(dst):
  for locale in LOCALES:
    shutil.copytree(KTUBERLING / locale, dst / locale)
  return dst


def _dialogue_lines(level):
  """[(path relative to sound/, transcript)] of a level's nl and cs dialogue."""
  roots = {p: pathlib.Path('/') for p in bundled_speech.PACKAGES}
  out = []
  for lang in ('nl', 'cs'):
    for record, path in bundled_speech.fillets_records(roots, lang):
      rel = pathlib.Path(path).relative_to(FILLETS / 'sound').as_posix()
      if rel.split('/')[0] == level:
        out.append((rel, record['transcript']))
  return out


def _write_manifest(folder, stem, lines, transcripts_as):
  """fairseq's STEM.tsv and STEM.ltr (letters, '|' between words) or STEM.wrd."""
  root = FILLETS / 'sound'
  rows = [f'{rel}\t{soundfile.info(root / rel).frames}' for rel, _ in lines]
  (folder / f'{stem}.tsv').write_text('\n'.join([str(root), *rows]) + '\n', encoding='utf-8')
  if transcripts_as == '.ltr':
    texts = [' '.join(' '.join(w) + ' |' for w in t.split()) for _, t in lines]
  else:
    texts = [t for _, t in lines]
  (folder / f'{stem}{transcripts_as}').write_text('\n'.join(texts) + '\n', encoding='utf-8')
  return folder / f'{stem}.tsv'


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('data')


@pytest.fixture(scope='module')
def words_src(tmp_path_factory):
  return _copy_words(tmp_path_factory.mktemp('words'))


@pytest.fixture(scope='module')
def words(data_dir, words_src):
  """KTuberling's words of five languages, the languages as classes: DATA_DIR/words."""
  return audio_prep.prepare(src=words_src, data_dir=data_dir, name='words', **WORDS)


@pytest.fixture(scope='module')
def dialogue(data_dir, tmp_path_factory):
  """Fish Fillets dialogue from fairseq manifests train.tsv (+ .ltr) and dev_rush.tsv (+ .wrd;
  the split is the stem's first word): (DATA_DIR/dialogue, {split: [(path, transcript)]})."""
  folder = tmp_path_factory.mktemp('manifests')
  lines = {split: [x for level in levels for x in _dialogue_lines(level)]
           for split, levels in LEVELS.items()}
  manifests = [_write_manifest(folder, 'train', lines['train'], '.ltr'),
               _write_manifest(folder, 'dev_rush', lines['valid'], '.wrd')]
  path = audio_prep.prepare(src=manifests, data_dir=data_dir, name='dialogue', workers=1,
                            shard_seconds=30)
  return path, {'train': lines['train'], 'validation': lines['valid']}


def _meta(path):
  return json.loads((path / 'dataset.json').read_text())


def _rows(path, split):
  return [json.loads(line) for line in (path / f'{split}.jsonl').read_text().splitlines()]


def _reference_pcm(file):
  """A one-shot decode of the whole file (prepare streams it block by block)."""
  x, rate = soundfile.read(file, dtype='float32', always_2d=True)
  y = soxr.resample(x.mean(axis=1), rate, 16000, 'HQ')
  return np.round(y / max(1, np.abs(y).max()) * 32767).astype(np.int16)


def _files(path):
  return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


# ---------------------------------------------------------------- preparation


def test_a_folder_of_real_words_is_prepared(words, words_src):
  meta = _meta(words)
  assert meta['format'] == 'audio' and meta['sample_rate'] == 16000
  assert meta['classes'] == list(LOCALES) and meta['skipped'] == {'count': 0, 'first': []}
  assert sum(meta['splits'].values()) == 62 and set(meta['splits']) == {'train', 'validation',
                                                                       'test'}
  for split, count in meta['splits'].items():
    rows, index = _rows(words, split), np.load(words / f'{split}_index.npy')
    assert index.dtype == np.int64 and index.shape == (count, 3) == (len(rows), 3)
    assert index.tolist() == [[r['shard'], r['offset'], r['num_samples']] for r in rows]
    shards = [np.load(words / name) for name in meta['shards'][split]]
    assert all(s.dtype == np.int16 and s.ndim == 1 for s in shards)
    assert [len(s) for s in shards] == [index[index[:, 0] == i, 2].sum()
                                        for i in range(len(shards))]
    assert abs(index[:, 2].sum() / 16000 / 3600 - meta['hours'][split]) < 1e-4
    for r in rows:
      assert r['label'] == LOCALES.index(r['path'].split('/')[0]) and r['transcript'] == ''
      info = soundfile.info(words_src / r['path'])
      assert abs(r['num_samples'] - round(info.frames * 16000 / info.samplerate)) <= 2, r
    for r in rows[:4]:  # the stored clip is the file, mono at 16 kHz, within an int16 step
      stored = shards[r['shard']][r['offset']:r['offset'] + r['num_samples']]
      want = _reference_pcm(words_src / r['path'])
      assert len(stored) == len(want) and np.abs(stored.astype(int) - want).max() <= 1
  clips = audio.open_clips(words.parent, 'words', 'train')
  np.testing.assert_allclose(clips[3], audio.normalize(clips.samples(3)), atol=1e-6)
  assert np.abs(clips.samples(3)).max() <= 1 and abs(clips[3].std() - 1) < 1e-3


def test_a_rerun_finds_the_data_set_and_writes_nothing(words, words_src, capsys):
  before = {p.name: p.stat().st_mtime_ns for p in words.iterdir()}
  assert audio_prep.prepare(src=words_src, data_dir=words.parent, name='words', **WORDS) == words
  assert 'is already prepared' in capsys.readouterr().out
  assert {p.name: p.stat().st_mtime_ns for p in words.iterdir()} == before
  with pytest.raises(ValueError, match='already holds a data set .* --overwrite'):
    audio_prep.prepare(src=words_src, data_dir=words.parent, name='words',
                       **{**WORDS, 'shard_seconds': 9.0})


def test_a_killed_run_resumes_and_keeps_its_finished_shards(words, words_src, tmp_path,
                                                            monkeypatch):
  decode, calls = audio_prep.decode, []

  def killed_at_the_30th_file(path):
    calls.append(path)
    if len(calls) == 30:
      raise KeyboardInterrupt
    return decode(path)

  monkeypatch.setattr(audio_prep, 'decode', killed_at_the_30th_file)
  with pytest.raises(KeyboardInterrupt):
    audio_prep.prepare(src=words_src, data_dir=tmp_path, name='words', **WORDS)
  partial = tmp_path / 'words.partial'
  done = {p.stem for p in partial.glob('*.npy.json')}  # the committed shards
  assert len(done) >= 3 and not (tmp_path / 'words').exists()
  kept = {name: (partial / name).stat().st_ino for name in done}
  monkeypatch.setattr(audio_prep, 'decode', decode)
  calls.clear()
  audio_prep.prepare(src=words_src, data_dir=tmp_path, name='words', **WORDS)
  assert {name: (tmp_path / 'words' / name).stat().st_ino for name in done} == kept
  assert _files(tmp_path / 'words') == _files(words)  # as if never interrupted


def test_fairseq_manifests_give_splits_and_transcripts(dialogue):
  path, lines = dialogue
  meta = _meta(path)
  assert meta['splits'] == {s: len(v) for s, v in lines.items()} and meta['classes'] is None
  assert meta['transcripts'] == sum(map(len, lines.values()))
  rates = set()
  for split, want in lines.items():
    rows = _rows(path, split)
    assert [r['path'] for r in rows] == [rel for rel, _ in want]  # as written in the manifest
    # .ltr letters come back as words; .wrd as written
    assert [r['transcript'] for r in rows] == [' '.join(t.split()) for _, t in want]
    assert {r['label'] for r in rows} == {-1}
    for r in rows:
      info = soundfile.info(FILLETS / 'sound' / r['path'])
      rates.add(info.samplerate)
      assert abs(r['num_samples'] - round(info.frames * 16000 / info.samplerate)) <= 2
  assert rates == {22050, 44100}


def test_the_command_line_prepares_in_parallel_workers(words, words_src, tmp_path):
  run = subprocess.run(
      [sys.executable, 'scripts/prepare_data.py', 'audio', '--src', str(words_src), '--name',
       'words', '--data_dir', str(tmp_path), '--workers', '2', '--shard_seconds', '5',
       '--test_fraction', '0.15'], cwd=REPO, capture_output=True, text=True, timeout=240)
  assert run.returncode == 0, run.stderr[-2000:]
  assert _files(tmp_path / 'words') == _files(words)
  run = subprocess.run(
      [sys.executable, 'scripts/prepare_data.py', 'audio', '--src', str(tmp_path / 'nothing'),
       '--name', 'x', '--data_dir', str(tmp_path)], cwd=REPO, capture_output=True, text=True,
      timeout=240)
  assert run.returncode == 1 and run.stderr.count('\n') == 1
  assert run.stderr.startswith(f'prepare_data.py: ValueError: --src={tmp_path / "nothing"}')


# ---------------------------------------------------------------- bad input


def test_undecodable_files_are_skipped_and_counted_or_fail_with_strict(words_src, tmp_path):
  src = tmp_path / 'src' / 'nl'
  shutil.copytree(words_src / 'nl', src)
  good = sorted(src.iterdir())
  garbled = bytearray(good[0].read_bytes())
  garbled[:64] = bytes(64)
  (src / 'garbled.ogg').write_bytes(bytes(garbled))
  (src / 'empty.wav').write_bytes(b'')
  path = audio_prep.prepare(src=tmp_path / 'src', data_dir=tmp_path / 'data', name='nl',
                            workers=1, val_fraction=0, test_fraction=0)
  meta = _meta(path)
  assert meta['splits'] == {'train': len(good)} and meta['skipped']['count'] == 2
  assert {x.split(': ')[0] for x in meta['skipped']['first']} == {
      str(src / 'garbled.ogg'), str(src / 'empty.wav')}
  with pytest.raises(ValueError, match=r'2 audio files could not be decoded \(--strict\)'):
    audio_prep.prepare(src=tmp_path / 'src', data_dir=tmp_path / 'data', name='nl2', workers=1,
                       val_fraction=0, test_fraction=0, strict=True)


def test_bad_sources_are_one_line_errors_naming_the_file(words_src, tmp_path):
  kw = dict(data_dir=tmp_path / 'data', name='x', workers=1)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='empty: holds no audio files'):
    audio_prep.prepare(src=tmp_path / 'empty', **kw)
  (tmp_path / 'texts').mkdir()
  (tmp_path / 'texts' / 'a.txt').write_text('no audio here')
  with pytest.raises(ValueError, match='texts: holds no audio files'):
    audio_prep.prepare(src=tmp_path / 'texts', **kw)
  manifest = tmp_path / 'train.tsv'
  manifest.write_text(f'{words_src}\nnl/{sorted(os.listdir(words_src / "nl"))[0]}\t1\n'
                      'nl/missing.ogg\t1\n')
  with pytest.raises(ValueError, match=f'{manifest}:3: {words_src}/nl/missing.ogg does not exist'):
    audio_prep.prepare(src=[manifest], **kw)
  labels = tmp_path / 'labels.tsv'
  labels.write_text('nl/x.ogg\tdutch\nnl/y.ogg\n')
  with pytest.raises(ValueError, match=f'{labels}:2: no label column'):
    audio_prep.prepare(src=words_src, label_file=labels, **kw)
  with pytest.raises(ValueError, match=f'{manifest}:1: the root folder'):
    manifest.write_text('/no/such/folder\na.ogg\t1\n')
    audio_prep.prepare(src=[manifest], **kw)


def test_labels_and_transcripts_from_tables(words_src, tmp_path):
  src = tmp_path / 'src'
  for locale in ('fi', 'nl'):
    shutil.copytree(words_src / locale, src / locale)
  files = sorted(p.relative_to(src).as_posix() for p in src.rglob('*.*'))
  (tmp_path / 'labels.tsv').write_text(
      'path\tlabel\n' + ''.join(f'{f}\t{"a-l" if f[3] < "m" else "m-z"}\n' for f in files))
  (tmp_path / 'text.jsonl').write_text(''.join(
      json.dumps({'path': str(src / f), 'transcript': f'the  word {f}'}) + '\n' for f in files))
  path = audio_prep.prepare(src=src, data_dir=tmp_path / 'data', name='t', workers=1,
                            label_file=tmp_path / 'labels.tsv', transcripts=tmp_path / 'text.jsonl')
  meta = _meta(path)
  assert meta['classes'] == ['a-l', 'm-z'] and meta['transcripts'] == len(files)
  rows = [r for split in meta['splits'] for r in _rows(path, split)]
  assert sorted(r['path'] for r in rows) == files
  assert all(r['label'] == (r['path'][3] >= 'm') for r in rows)
  assert all(r['transcript'] == f'the word {r["path"]}' for r in rows)


def test_a_data_set_of_another_modality_is_named(data_dir, words):
  stamps = data_dir / 'stamps'
  stamps.mkdir(exist_ok=True)
  (stamps / 'dataset.json').write_text(json.dumps(
      {'format': 'images', 'version': datasets.FORMAT_VERSION, 'splits': {'train': 1}}))
  for name, modality in (('stamps', 'vision'), ('fashion_mnist', 'vision'),
                         ('wordnet_glosses', 'text')):
    with pytest.raises(ValueError, match=f"config.input.dataset='{name}' is a {modality} data set"):
      audio.open_clips(data_dir, name, 'train')
  for name in ('stamps', 'fashion_mnist'):  # the probe's check, before any model is loaded
    with pytest.raises(ValueError, match=f"config.input.dataset='{name}' is a vision data set"):
      probe_data.check_input('audio', _probe_input(name), None, data_dir)
  with pytest.raises(ValueError, match="config.input.dataset='nothing': .* does not exist"):
    audio.open_clips(data_dir, 'nothing', 'train')
  with pytest.raises(ValueError, match=r"split='dev': .* has the splits"):
    audio.open_clips(data_dir, 'words', 'dev')


def _probe_input(name):
  config = probe_audio.get_config()
  config.input.dataset = name
  return config.input


# ---------------------------------------------------------------- reading, training, probing


def test_pretraining_batches_from_a_prepared_set_resume_exactly(dialogue):
  path, _ = dialogue
  model = audio_model.AudioConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, conv_dim=(8,) * 7,
                                  num_conv_pos_embedding_groups=2, num_conv_pos_embeddings=1)
  kw = dict(data_dir=path.parent, dataset='dialogue', split='train', batch_size=4, seed=3,
            num_frames=lambda n: audio_model.feature_lengths(model, n, add_adapter=False),
            sample_rate=16000, min_sample_size=16000, max_sample_size=48_000, pad=True,
            crop_buckets=(16000,), mask_prob=0.65, mask_length=5, min_masks=1, num_threads=0,
            prefetch_buffer_size=0)
  it = iter(audio.make_pretrain_dataset(**kw))
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  expected = next(it)
  resumed = iter(audio.make_pretrain_dataset(**kw))
  resumed.set_state(json.loads(json.dumps(state)))
  got = next(resumed)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key])
  batch = first[0]
  assert batch['input_values'].shape == (4, 48_000)
  valid = batch['attention_mask'].sum(axis=1)
  assert ((valid >= 16000) & (valid <= 48_000)).all()
  clips = audio.open_clips(path.parent, 'dialogue', 'train')
  short = [n for n in clips.lengths if n <= 48_000]  # a whole clip: its normalised samples
  for values, n in zip(batch['input_values'], valid):
    if n < 48_000:
      assert n in short
      assert abs(values[:n].mean()) < 1e-4 and abs(values[:n].std() - 1) < 1e-3


def _pretrain_config(data_dir, **overrides):
  config = micro_pretrain_config('audio')
  config.data_dir = str(data_dir)
  config.input.dataset = 'dialogue'
  config.update(dict(total_steps=6, log_every_steps=1, checkpoint_every_steps=3,
                     probe_every_steps=0, **overrides))
  return config


@pytest.fixture(scope='module')
def pretrained(dialogue, tmp_path_factory):
  """A 6-step micro pretraining run on the prepared dialogue: (workdir, config)."""
  config = _pretrain_config(dialogue[0].parent)
  workdir = str(tmp_path_factory.mktemp('pretrained'))
  train.train_and_evaluate(config, workdir)
  return workdir, config


@pytest.mark.slow
def test_pretraining_on_a_prepared_set_runs_and_resumes_bit_identically(pretrained, tmp_path):
  straight, config = pretrained
  logged = read_metrics(straight)
  assert [m['step'] for m in logged] == list(range(1, 7))
  assert all(np.isfinite(m['loss']) and m['target_var'] > 0 for m in logged)
  split = str(tmp_path)
  interrupt_and_rerun(config, split, batches=3)  # stopped after the step-3 checkpoint
  assert [(m['step'], m['loss']) for m in read_metrics(split)] == [
      (m['step'], m['loss']) for m in logged]
  (a, a_data), (b, b_data) = restore(straight, config), restore(split, config)
  assert a_data == b_data
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.slow
def test_a_probe_of_a_prepared_labelled_set(pretrained, words):
  workdir, _ = pretrained
  config = probe_audio.get_config('2,all')
  config.update(dict(data_dir=str(words.parent), seeds=(0, 1), batch_size=16))
  config.input.dataset = 'words'
  config.classifier.steps = 50
  result = eval_lib.evaluate(config, workdir=workdir, out=str(words.parent / 'eval'))
  meta = _meta(words)
  assert result['data'] == dict(result['data'], dataset='words', num_classes=5,
                                num_train=meta['splits']['train'],
                                num_test=meta['splits']['test'])
  assert 0 <= result['summary']['all']['accuracy_mean'] <= 1


def test_probe_batches_pad_to_the_longest_clip_of_the_set(words):
  input_config = _probe_input('words')
  batches, num_classes = probe_data.labelled_batches(
      'audio', data_dir=words.parent, input_config=input_config, split='test', model_config=None,
      batch_size=8)
  batches = list(batches)
  longest = max(int(np.load(words / f'{s}_index.npy')[:, 2].max()) for s in _meta(words)['splits'])
  assert num_classes == 5 and len(batches) == 2
  assert batches[0]['input_values'].shape == (8, -(-longest // 1600) * 1600)
  labels = np.concatenate([b['label'][b['valid']] for b in batches])
  assert sorted(labels.tolist()) == sorted(r['label'] for r in _rows(words, 'test'))


@pytest.mark.slow
def test_a_classifier_finetunes_on_the_data_sets_classes(words, tmp_path):
  config = micro_finetune_config('audio', 'digits', total_steps=4, checkpoint_every_steps=4,
                                 eval_splits=('test',))
  config.data_dir = str(words.parent)
  config.input.dataset = 'words'
  train.train_and_evaluate(config, str(tmp_path))
  assert tuple(config.model.id2label) == LOCALES  # () became the data set's classes
  logged = read_metrics(str(tmp_path))
  assert [m['step'] for m in logged] == [1, 2, 3, 4] and 0 <= logged[-1]['test_accuracy'] <= 1
  model, _ = workdirs.restore_model(str(tmp_path))
  assert model.config.id2label == LOCALES


def test_finetune_labels_and_transcripts_of_prepared_sets(words, dialogue):
  config = micro_finetune_config('audio', 'digits')
  config.data_dir = str(words.parent)
  config.input.dataset = 'words'
  finetune.fill_classes(config)
  clips, labels = finetune.load_split(config, 'train')
  assert list(labels) == [r['label'] for r in _rows(words, 'train')]
  assert len(clips) == len(labels) and clips[0].dtype == np.float32
  config.model.id2label = ('dutch', 'finnish')
  with pytest.raises(ValueError, match=r"config.model.id2label=\('dutch', 'finnish'\) is not the "
                     r"classes of 'words' \('es', 'fi', 'it', 'nl', 'pt'\)"):
    finetune.load_split(config, 'train')

  path, lines = dialogue
  characters = ''.join(sorted({c for _, t in lines['train'] for c in t} - {' '}))
  config = finetune_audio.get_config('ctc')
  config.data_dir = str(path.parent)
  config.input.update(dict(dataset='dialogue', characters=characters, max_sample_size=200_000))
  clips, labels = finetune.load_split(config, 'train')
  vocab = finetune.ctc_vocab(config)
  texts = [''.join(' ' if t == preprocessors.WORD_DELIMITER else t
                   for t in (list(vocab)[i] for i in x)) for x in labels]
  assert texts == [' '.join(t.split()) for _, t in lines['train']]
  clips, records = labelled.audio_examples(path.parent, 'dialogue', 'validation')
  assert len(clips) == len(records) == len(lines['validation'])
