"""The bundled speech sets: the pool's sources on fake package trees, the synthesized digit sets
and their voice-disjoint splits (with stand-in synthesizers, and the real ones), idempotence and
resumption, and the prepared data: ordinary prepared audio sets, read as a user's set is."""
import collections
import importlib.util
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import soundfile

from configs import common, finetune_audio
from data2vec.input_pipeline import audio, datasets, finetune, labelled
from data2vec.preparation import audio as audio_prep
from data2vec.preparation import bundled_speech

DATA_DIR = pathlib.Path(common.DEFAULT_DATA_DIR)
needs_speech = pytest.mark.skipif(
    not bundled_speech.is_prepared(DATA_DIR) and not os.environ.get('CI'),
    reason='run `python scripts/prepare_data.py audio` first')  # CI prepares it: never skipped
needs_synthesizers = pytest.mark.skipif(
    not all(map(shutil.which, bundled_speech.SYNTHESIZERS.values())) and not os.environ.get('CI'),
    reason='espeak-ng and flite are installed by `python scripts/prepare_data.py audio`')
SPLITS = {'train', 'validation', 'test'}


def _load_prepare_data():
  path = pathlib.Path(__file__).resolve().parents[1] / 'scripts' / 'prepare_data.py'
  spec = importlib.util.spec_from_file_location('prepare_data', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _tone(seconds, rate, freq=440.0, channels=1):
  """A sine of amplitude 0.5; stereo: at full and half amplitude, so that the mono mix is 0.375."""
  t = np.arange(int(seconds * rate)) / rate
  x = 0.5 * np.sin(2 * np.pi * freq * t)
  return np.stack([x, x / 2], axis=1) if channels == 2 else x


def _write_ogg(path, seconds, rate=44100, freq=440.0, channels=1):
  path.parent.mkdir(parents=True, exist_ok=True)
  soundfile.write(path, _tone(seconds, rate, freq, channels), rate, format='OGG',
                  subtype='VORBIS')


def _peak_hz(x):
  spectrum = np.abs(np.fft.rfft(x))
  return np.argmax(spectrum) * audio.SAMPLE_RATE / len(x)


def _rows(path, split):
  return [json.loads(line) for line in (path / f'{split}.jsonl').read_text().splitlines()]


# --- the pool on fake package trees ---------------------------------------------------------------


@pytest.fixture
def fake_roots(tmp_path):
  """Every package unpacked under its own root, with a few clips of each source."""
  roots = {p: tmp_path / p for p in bundled_speech.PACKAGES}
  fillets = 'usr/share/games/fillets-ng'
  script = roots['fillets-ng-data'] / fillets / 'script'
  dialogs = {  # (level, language) -> dialogs_<language>.lua: multi-line, escaped, no dialogStr
      ('airplane', 'nl'): 'dialogId("airplane-m-a", "font_small", "What is it?")\n'
                          'dialogStr("Wat is dit?")\n\n'
                          'dialogId("airplane-v-b", "font_big",\n  "Two\\nlines")\n'
                          'dialogStr("Twee\n  regels")\n'
                          'dialogId("laser", "", "")\n',
      ('barrel', 'nl'): 'dialogId("barrel-v-b", "font_big", "A \\"barrel\\"")\n'
                        'dialogStr("Een \\"vat\\".")\n',
      ('airplane', 'cs'): 'dialogId("airplane-m-a", "font_small", "What is it?")\n'
                          'dialogStr("Co je to?")\n',
  }
  for (level, lang), text in dialogs.items():
    (script / level).mkdir(parents=True, exist_ok=True)
    (script / level / f'dialogs_{lang}.lua').write_text(text, encoding='utf-8')
  _write_ogg(roots['fillets-ng-data-nl'] / fillets / 'sound/airplane/nl/airplane-m-a.ogg', 1.2,
             rate=22050, channels=2)
  _write_ogg(roots['fillets-ng-data-nl'] / fillets / 'sound/barrel/nl/barrel-v-b.ogg', 0.7,
             rate=22050, channels=2)
  _write_ogg(roots['fillets-ng-data-nl'] / fillets / 'sound/share/x/nl/airplane-v-b.ogg', 0.5,
             rate=22050)
  _write_ogg(roots['fillets-ng-data-cs'] / fillets / 'sound/airplane/cs/airplane-m-a.ogg', 0.9,
             rate=22050, freq=500.0)
  stamps = roots['tuxpaint-stamps-default'] / 'usr/share/tuxpaint/stamps/food'
  stamps.mkdir(parents=True)
  (stamps / 'lemon.txt').write_text('A yellow lemon.\nfr.utf8=Un citron jaune.\n', 'utf-8')
  _write_ogg(stamps / 'lemon_desc.ogg', 1.0, freq=600.0)
  _write_ogg(stamps / 'lemon_desc_fr.ogg', 1.1, freq=650.0)
  shutil.copy(stamps / 'lemon_desc_fr.ogg', stamps / 'lemon_x_desc_fr.ogg')  # a copy: dropped
  _write_ogg(stamps / 'lemon.ogg', 0.3)  # a sound effect, not a description
  klettres = roots['klettres-data'] / 'usr/share/klettres'
  _write_ogg(klettres / 'en/alpha/A.ogg', 0.6, freq=700.0)
  _write_ogg(klettres / 'en/syllab/ba.ogg', 0.6, freq=750.0)
  (klettres / 'en/sounds.xml').write_text(
      '<klettres><language code="en"><alphabet><sound name="A" file="en/alpha/A.ogg" />'
      '</alphabet></language></klettres>', 'utf-8')
  _write_ogg(roots['ktuberling-data'] / 'usr/share/ktuberling/sounds/de/hat.ogg', 0.4,
             freq=800.0)
  return roots


def test_pool_sources_become_a_prepared_audio_set(fake_roots, tmp_path, capsys):
  data_dir = tmp_path / 'data'
  out = bundled_speech.prepare_pool(data_dir, fake_roots, workers=1)
  assert out == data_dir / 'speech_pool' and '1 byte-identical' in capsys.readouterr().out
  meta = datasets.load(data_dir, 'speech_pool', modality='audio').meta
  assert meta['format'] == 'audio' and meta['classes'] is None and meta['splits'] == {'train': 9}
  records = _rows(out, 'train')
  by_path = {r['path']: r for r in records}
  assert len(by_path) == 9
  nl = by_path['/usr/share/games/fillets-ng/sound/airplane/nl/airplane-m-a.ogg']
  assert (nl['source'], nl['language'], nl['speaker'], nl['transcript']) == (
      'fillets_nl', 'nl', 'small', 'Wat is dit?')
  # Escaped and multi-line Lua strings; a clip of a level without dialogs takes any level's.
  assert by_path['/usr/share/games/fillets-ng/sound/barrel/nl/barrel-v-b.ogg']['transcript'] == \
      'Een "vat".'
  shared = by_path['/usr/share/games/fillets-ng/sound/share/x/nl/airplane-v-b.ogg']
  assert (shared['speaker'], shared['transcript']) == ('big', 'Twee regels')
  assert by_path['/usr/share/games/fillets-ng/sound/airplane/cs/airplane-m-a.ogg'][
      'transcript'] == 'Co je to?'
  en = by_path['/usr/share/tuxpaint/stamps/food/lemon_desc.ogg']
  fr = by_path['/usr/share/tuxpaint/stamps/food/lemon_desc_fr.ogg']
  assert (en['source'], en['language'], en['transcript']) == ('tuxpaint', 'en', 'A yellow lemon.')
  assert (fr['language'], fr['transcript']) == ('fr', 'Un citron jaune.')
  assert '/usr/share/tuxpaint/stamps/food/lemon_x_desc_fr.ogg' not in by_path  # the copy
  assert by_path['/usr/share/klettres/en/alpha/A.ogg']['transcript'] == 'A'
  assert by_path['/usr/share/klettres/en/syllab/ba.ogg']['transcript'] == 'ba'  # file name
  hat = by_path['/usr/share/ktuberling/sounds/de/hat.ogg']
  assert (hat['source'], hat['language'], hat['transcript']) == ('ktuberling', 'de', '')
  assert {r['label'] for r in records} == {-1}
  # The samples: 16 kHz mono, each clip its own tone (resampled from 22.05 / 44.1 kHz, stereo
  # channels averaged), read by the prepared sets' reader.
  clips = audio.open_clips(data_dir, 'speech_pool', 'train')
  i = records.index(hat)
  assert abs(clips.lengths[i] - 0.4 * 16000) <= 1 and abs(_peak_hz(clips.samples(i)) - 800.0) < 3
  i = records.index(nl)  # stereo at full and half amplitude: a mono mix of 0.375
  x = clips.samples(i)
  assert abs(len(x) - 1.2 * 16000) <= 1 and abs(_peak_hz(x) - 440.0) < 2
  assert abs(np.sqrt(np.mean(x[1000:-1000] ** 2)) - 0.375 / np.sqrt(2)) < 0.01
  assert not list(data_dir.glob('*.partial'))


def test_pool_reports_an_unparsable_dialog_file(fake_roots, tmp_path):
  lua = (fake_roots['fillets-ng-data'] / 'usr/share/games/fillets-ng/script/airplane/'
         'dialogs_nl.lua')
  lua.write_text(lua.read_text() + 'dialogId("x", font_small, "unquoted font")\n')
  with pytest.raises(ValueError, match='dialogs_nl.lua'):
    bundled_speech.prepare_pool(tmp_path, fake_roots, workers=1)


def test_pool_skips_and_counts_an_empty_recording(fake_roots, tmp_path):
  empty = fake_roots['klettres-data'] / 'usr/share/klettres/en/alpha/B.ogg'
  soundfile.write(empty, np.zeros(0), 22050, format='OGG', subtype='VORBIS')
  meta = datasets.load(bundled_speech.prepare_pool(tmp_path, fake_roots, workers=1).parent,
                       'speech_pool').meta
  assert meta['splits'] == {'train': 9} and meta['skipped']['count'] == 1
  assert 'B.ogg: no samples' in meta['skipped']['first'][0]


# --- synthesized digits ---------------------------------------------------------------------------


@pytest.mark.parametrize('dataset,per_voice', [('spoken_digits', 10),
                                               ('spoken_digit_strings', 5)])
def test_tts_sets_are_voice_disjoint(dataset, per_voice):
  jobs = bundled_speech.tts_jobs(dataset, np.random.default_rng(bundled_speech.SYNTHESIS_SEED))
  records = [r for r, _, _ in jobs]
  assert len(records) == 208 * per_voice
  for key in ('speaker', 'language'):  # language: the espeak-ng accent or the flite voice
    groups = {s: {r[key] for r in records if r['split'] == s} for s in SPLITS}
    assert not groups['train'] & groups['validation']
    assert not groups['train'] & groups['test']
    assert not groups['validation'] & groups['test']
  assert {r['language'] for r in records if r['split'] == 'test'} == {'en-029', 'awb', 'slt'}
  for record, _, text in jobs:  # the transcript: the spoken digits, as digits
    assert text.split() == [bundled_speech.DIGIT_WORDS[int(d)] for d in record['transcript']]
    assert record['label'] == (int(record['transcript']) if dataset == 'spoken_digits' else -1)
  if dataset == 'spoken_digits':  # every split has every digit equally often
    for split in SPLITS:
      counts = collections.Counter(r['label'] for r in records if r['split'] == split)
      assert len(set(counts.values())) == 1 and len(counts) == 10
  # Fixed by the seed: the same clips on every machine.
  again = bundled_speech.tts_jobs(dataset, np.random.default_rng(bundled_speech.SYNTHESIS_SEED))
  assert [r for r, _, _ in again] == records


@pytest.fixture
def stand_in_synthesizers(tmp_path, monkeypatch):
  """espeak-ng and flite stand-ins that write a tone to their output (-w / -o) file, on 8 voices
  (2 per split and engine); `fail` names a text they fail on."""
  tone = tmp_path / 'tone.wav'
  soundfile.write(tone, _tone(0.5, 22050), 22050)
  fail = tmp_path / 'fail'
  fail.write_text('nothing')
  programs = {}
  for name in bundled_speech.SYNTHESIZERS:
    program = tmp_path / name
    program.write_text(
        '#!/bin/sh\nfor a; do [ "$a" = "$(cat %s)" ] && exit 1; done\n'
        'while [ $# -gt 0 ]; do case "$1" in -w|-o) cp %s "$2";; esac; shift; done\n'
        % (fail, tone))
    program.chmod(0o755)
    programs[name] = str(program)
  monkeypatch.setattr(bundled_speech, 'ESPEAK_VARIANTS', ('m1',))
  monkeypatch.setattr(bundled_speech, 'ESPEAK_RATES', (130,))
  monkeypatch.setattr(bundled_speech, 'FLITE_STRETCHES', (1.0,))
  monkeypatch.setattr(bundled_speech, 'FLITE_PITCHES', (120,))
  return programs, fail


def test_synthesized_digits_are_a_prepared_set_that_resumes(stand_in_synthesizers, tmp_path,
                                                            capsys):
  programs, fail = stand_in_synthesizers
  data_dir = tmp_path / 'data'
  fail.write_text('seven')  # a synthesizer fails once: the run stops, its wav files stay
  with pytest.raises(ValueError, match='synthesis failed: .*seven'):
    bundled_speech.prepare_tts(data_dir, 'spoken_digits', programs, workers=1)
  kept = len(list((data_dir / 'cache/speech_synthesis/spoken_digits').glob('0*.wav')))
  assert kept >= 7  # the clips before the first 'seven'
  fail.write_text('nothing')
  bundled_speech.prepare_tts(data_dir, 'spoken_digits', programs, workers=1)
  assert f'synthesizing {80 - kept} of the 80' in capsys.readouterr().out
  assert not (data_dir / 'cache/speech_synthesis/spoken_digits').exists()  # in the set now
  meta = datasets.load(data_dir, 'spoken_digits', modality='audio').meta
  assert meta['classes'] == list(bundled_speech.DIGIT_WORDS) and meta['skipped']['count'] == 0
  assert meta['splits'] == {'train': 30, 'validation': 20, 'test': 30}  # 3 / 2 / 3 voices
  for split in meta['splits']:
    clips, records = labelled.audio_examples(data_dir, 'spoken_digits', split)
    assert {bundled_speech.VOICE_SPLITS[r['language']] for r in records} == {split}
    assert [r['label'] for r in records] == [int(r['transcript']) for r in records]
    assert all(abs(n - 8000) <= 1 for n in clips.lengths)  # 0.5 s at 16 kHz
  # strings: unlabelled, the digits as transcripts
  bundled_speech.prepare_tts(data_dir, 'spoken_digit_strings', programs, workers=1)
  meta = datasets.load(data_dir, 'spoken_digit_strings', modality='audio').meta
  assert meta['classes'] is None and sum(meta['splits'].values()) == meta['transcripts'] == 40
  assert all(r['label'] == -1 and r['transcript'].isdigit()
             for r in _rows(data_dir / 'spoken_digit_strings', 'train'))


@needs_synthesizers
def test_synthesizers_speak_the_configured_voices(tmp_path):
  programs = {p: shutil.which(p) for p in bundled_speech.SYNTHESIZERS}
  bundled_speech.check_voices(programs)
  jobs = bundled_speech.tts_jobs('spoken_digits', np.random.default_rng(0))
  engines = set()
  for record, voice, text in (jobs[7], jobs[-1]):  # an espeak-ng and a flite voice
    wav = tmp_path / f'{voice["engine"]}.wav'
    bundled_speech.synthesize(voice, text, wav, programs[voice['engine']])
    y = audio_prep.decode(wav)
    assert y.dtype == np.int16 and 0.2 < len(y) / 16000 < 2.0, record
    assert np.abs(y).max() > 0.05 * 32767
    engines.add(voice['engine'])
  assert engines == {'espeak-ng', 'flite'}
  with pytest.raises(ValueError, match='flite -voice nobody'):
    with pytest.MonkeyPatch.context() as patch:
      patch.setattr(bundled_speech, 'FLITE_VOICES', ('slt', 'nobody'))
      bundled_speech.check_voices(programs)


# --- prepare_data.py audio ------------------------------------------------------------------------


def test_prepare_audio_is_idempotent(tmp_path, capsys):
  prepare_data = _load_prepare_data()
  wav = tmp_path / 'one.wav'
  soundfile.write(wav, _tone(1.0, 16000), 16000)
  record = dict(path='one.wav', split='train', label=-1, transcript='', source='s', language='',
                speaker='')
  for dataset in bundled_speech.DATASETS:
    bundled_speech.write(tmp_path, dataset, 'test', [record], [wav], workers=1)

  def no_fetching(*args):
    raise AssertionError(f'fetched {args}')

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(prepare_data, 'fetch_deb', no_fetching)
    patch.setattr(prepare_data, 'fetch_program', no_fetching)
    prepare_data.main(['audio', '--data_dir', str(tmp_path)])
  out = capsys.readouterr().out
  assert 'already prepared' in out and 'nothing fetched' in out
  assert 'speech_pool: 1 clips, 0.00 h (train 1 / 0.00 h)' in out


# --- the prepared data ----------------------------------------------------------------------------


@needs_speech
def test_prepared_speech_data():
  """The real outputs: every source and split present, the voices apart, durations plausible."""
  pool = _rows(DATA_DIR / 'speech_pool', 'train')
  meta = datasets.load(DATA_DIR, 'speech_pool').meta
  sources = collections.Counter(r['source'] for r in pool)
  assert set(sources) == {'fillets_nl', 'fillets_cs', 'tuxpaint', 'klettres', 'ktuberling'}
  assert 12_000 < len(pool) < 14_200 and 6.5 < meta['hours']['train'] < 8.5
  for dataset, count in (('spoken_digits', 2080), ('spoken_digit_strings', 1040)):
    meta = datasets.load(DATA_DIR, dataset).meta
    assert sum(meta['splits'].values()) == count and set(meta['splits']) == SPLITS
    for split in SPLITS:
      for r in _rows(DATA_DIR / dataset, split):
        assert split == bundled_speech.VOICE_SPLITS[r['language']]
        assert 0.3 < r['num_samples'] / 16000 < 6


@needs_speech
@pytest.mark.parametrize('dataset', bundled_speech.DATASETS)
def test_bundled_sets_are_read_as_a_users_set(dataset, tmp_path):
  """One format, one reader: the bundled set's dataset.json is a prepared audio set's, and a copy
  of its folder under a user's name is read exactly as the bundled name is."""
  meta = datasets.load(DATA_DIR, dataset, modality='audio').meta
  assert meta['format'] == 'audio' and meta['sample_rate'] == 16000
  assert {'splits', 'hours', 'shards', 'classes', 'skipped', 'transcripts'} <= set(meta)
  (tmp_path / 'mine').symlink_to(DATA_DIR / dataset)
  for split in meta['splits']:
    bundled = audio.open_clips(DATA_DIR, dataset, split)
    mine = audio.prepared_source(datasets.load(tmp_path, 'mine', modality='audio'), split)
    np.testing.assert_array_equal(bundled.index, mine.index)
    for i in (0, len(bundled) // 2, len(bundled) - 1):
      np.testing.assert_array_equal(bundled[i], mine[i])
    assert labelled.audio_examples(DATA_DIR, dataset, split)[1] == \
        labelled.audio_examples(tmp_path, 'mine', split)[1]
  config = finetune_audio.get_config('digits')
  config.input.dataset = dataset
  assert finetune.dataset_splits(config) == tuple(s for s in ('train', 'validation', 'test')
                                                  if s in meta['splits'])
