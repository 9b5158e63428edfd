"""Speech preparation: decoding and resampling, the pool's sources on fake package trees, the
synthesized digit sets and their voice-disjoint splits, idempotence, and the prepared data."""
import collections
import importlib.util
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import soundfile

from configs import common
from data2vec.input_pipeline import speech_data

SPEECH_DIR = pathlib.Path(common.DEFAULT_DATA_DIR) / 'speech'
needs_speech = pytest.mark.skipif(
    not speech_data.is_prepared(common.DEFAULT_DATA_DIR) and not os.environ.get('CI'),
    reason='run `python scripts/prepare_data.py audio` first')  # CI prepares it: never skipped
needs_synthesizers = pytest.mark.skipif(
    not all(map(shutil.which, speech_data.SYNTHESIZERS.values())) and not os.environ.get('CI'),
    reason='espeak-ng and flite are installed by `python scripts/prepare_data.py audio`')


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


def _record(**fields):
  return dict(dict(path='p', source='s', language='', speaker='', transcript='', label='',
                   split='train'), **fields)


def _peak_hz(x):
  spectrum = np.abs(np.fft.rfft(x))
  return np.argmax(spectrum) * speech_data.SAMPLE_RATE / len(x)


# --- decoding -------------------------------------------------------------------------------------


@pytest.mark.parametrize('rate,channels', [(22050, 2), (44100, 1), (16000, 1), (8000, 2)])
def test_resample_keeps_duration_and_pitch(rate, channels):
  y = speech_data.resample(_tone(1.5, rate, 440.0, channels), rate)
  assert y.dtype == np.float32 and y.ndim == 1
  assert len(y) == int(np.ceil(int(1.5 * rate) * speech_data.SAMPLE_RATE / rate))
  assert abs(_peak_hz(y) - 440.0) < 1.0
  amplitude = 0.375 if channels == 2 else 0.5  # the channels' mean
  assert abs(np.sqrt(np.mean(y[1000:-1000] ** 2)) - amplitude / np.sqrt(2)) < 0.01


def test_decode_reads_ogg_vorbis(tmp_path):
  path = tmp_path / 'a.ogg'
  _write_ogg(path, 0.8, rate=22050, freq=300.0, channels=2)
  y = speech_data.decode(path)
  assert abs(len(y) - 0.8 * speech_data.SAMPLE_RATE) <= 1
  assert abs(_peak_hz(y) - 300.0) < 2.0


def test_decode_names_a_broken_file(tmp_path):
  path = tmp_path / 'level' / 'nl' / 'broken.ogg'
  path.parent.mkdir(parents=True)
  path.write_bytes(b'OggS' + bytes(200))
  with pytest.raises(ValueError, match='broken.ogg'):
    speech_data.decode(path)
  with pytest.raises(ValueError, match='broken.ogg'):  # also from a worker process
    list(speech_data.decode_all([str(path)], workers=1))


# --- the pool on fake package trees ---------------------------------------------------------------


@pytest.fixture
def fake_roots(tmp_path):
  """Every package unpacked under its own root, with a few clips of each source."""
  roots = {p: tmp_path / p for p in speech_data.PACKAGES}
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


def test_pool_sources_and_manifest(fake_roots, tmp_path, capsys):
  out = tmp_path / 'speech' / 'speech_pool'
  speech_data.prepare_pool(out, fake_roots, workers=1)
  assert '1 byte-identical' in capsys.readouterr().out
  audio, records = speech_data.load(tmp_path, 'speech_pool')
  by_path = {r['path']: r for r in records}
  assert len(records) == 9 and len(by_path) == 9
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
  assert (en['language'], en['transcript'], en['label']) == ('en', 'A yellow lemon.', 'lemon')
  assert (fr['language'], fr['transcript']) == ('fr', 'Un citron jaune.')
  assert '/usr/share/tuxpaint/stamps/food/lemon_x_desc_fr.ogg' not in by_path  # the copy
  assert by_path['/usr/share/klettres/en/alpha/A.ogg']['transcript'] == 'A'
  assert by_path['/usr/share/klettres/en/syllab/ba.ogg']['transcript'] == 'ba'  # file name
  hat = by_path['/usr/share/ktuberling/sounds/de/hat.ogg']
  assert (hat['source'], hat['language'], hat['label']) == ('ktuberling', 'de', 'hat')
  assert {r['split'] for r in records} == {'train'}
  # The samples: contiguous, 16 kHz, each clip its own tone.
  ends = [r['offset'] + r['num_samples'] for r in records]
  assert [r['offset'] for r in records] == [0] + ends[:-1] and ends[-1] == len(audio)
  for r in records:
    assert abs(r['duration'] - r['num_samples'] / 16000) < 1e-3
  clip = audio[hat['offset']:hat['offset'] + hat['num_samples']]
  assert abs(hat['num_samples'] - 0.4 * 16000) <= 1 and abs(_peak_hz(clip) - 800.0) < 3
  assert not list(out.parent.glob('*.tmp'))


def test_pool_reports_an_unparsable_dialog_file(fake_roots, tmp_path):
  lua = (fake_roots['fillets-ng-data'] / 'usr/share/games/fillets-ng/script/airplane/'
         'dialogs_nl.lua')
  lua.write_text(lua.read_text() + 'dialogId("x", font_small, "unquoted font")\n')
  with pytest.raises(ValueError, match='dialogs_nl.lua'):
    speech_data.prepare_pool(tmp_path / 'out', fake_roots, workers=1)


def test_write_dataset_is_atomic(tmp_path):
  out = tmp_path / 'speech' / 'spoken_digits'
  records = [_record(path=f'p{i}') for i in range(3)]

  def clips():
    yield np.ones(5, np.float32)
    raise KeyboardInterrupt  # interrupted half-way

  with pytest.raises(KeyboardInterrupt):
    speech_data.write_dataset(out, records, clips())
  assert not out.exists()
  with pytest.raises(ValueError, match='different number of clips'):
    speech_data.write_dataset(out, records, [np.ones(2)] * 2)
  speech_data.write_dataset(out, records, [np.full(n, n, np.float32) for n in (1, 2, 3)])
  audio, got = speech_data.load(tmp_path, 'spoken_digits')
  np.testing.assert_array_equal(audio, [1, 2, 2, 3, 3, 3])
  assert [(r['offset'], r['num_samples']) for r in got] == [(0, 1), (1, 2), (3, 3)]
  assert not (out.parent / 'spoken_digits.tmp').exists()


def test_load_rejects_a_bad_manifest(tmp_path):
  out = tmp_path / 'speech' / 'speech_pool'
  with pytest.raises(ValueError, match=r"record 0 lacks \['label'"):
    speech_data.write_dataset(out, [dict(path='a', split='train')], [np.ones(4)])
  speech_data.write_dataset(out, [_record()], [np.ones(4)])
  manifest = out / 'manifest.jsonl'
  record = json.loads(manifest.read_text())
  manifest.write_text(json.dumps(dict(record, num_samples=5)) + '\n')
  with pytest.raises(ValueError, match='manifest.jsonl:1: samples up to 5'):
    speech_data.load(tmp_path, 'speech_pool')
  manifest.write_text(json.dumps(dict(record, split='dev')) + '\n')
  with pytest.raises(ValueError, match="manifest.jsonl:1: split 'dev'"):
    speech_data.load(tmp_path, 'speech_pool')
  with pytest.raises(ValueError, match='prepare_data.py audio'):
    speech_data.load(tmp_path, 'spoken_digits')
  manifest.write_text(json.dumps(record) + '\n' + json.dumps(record)[:20])  # cut off mid-line
  with pytest.raises(ValueError, match='manifest.jsonl:2: not a JSON object'):
    speech_data.load(tmp_path, 'speech_pool')
  manifest.write_text(json.dumps(record) + '\n')
  audio = out / 'audio.npy'
  audio.write_bytes(audio.read_bytes()[:-3])  # a truncated download or copy
  with pytest.raises(ValueError, match=r'audio.npy: not a readable \.npy array'):
    speech_data.load(tmp_path, 'speech_pool')


# --- synthesized digits ---------------------------------------------------------------------------


@pytest.mark.parametrize('dataset,per_voice', [('spoken_digits', 10),
                                               ('spoken_digit_strings', 5)])
def test_tts_sets_are_voice_disjoint(dataset, per_voice):
  jobs = speech_data.tts_jobs(dataset, np.random.default_rng(speech_data.SYNTHESIS_SEED))
  records = [r for r, _, _ in jobs]
  assert len(records) == 208 * per_voice
  for key in ('speaker', 'language'):  # language: the espeak-ng accent or the flite voice
    groups = {s: {r[key] for r in records if r['split'] == s} for s in speech_data.SPLITS}
    assert not groups['train'] & groups['validation']
    assert not groups['train'] & groups['test']
    assert not groups['validation'] & groups['test']
  assert {r['language'] for r in records if r['split'] == 'test'} == {'en-029', 'awb', 'slt'}
  for r in records:
    assert r['transcript'].split() == [speech_data.DIGIT_WORDS[int(d)] for d in r['label']]
  if dataset == 'spoken_digits':  # every split has every digit equally often
    for split in speech_data.SPLITS:
      counts = collections.Counter(r['label'] for r in records if r['split'] == split)
      assert len(set(counts.values())) == 1 and len(counts) == 10
  # Fixed by the seed: the same manifest on every machine.
  again = speech_data.tts_jobs(dataset, np.random.default_rng(speech_data.SYNTHESIS_SEED))
  assert [r for r, _, _ in again] == records


@needs_synthesizers
def test_synthesizers_speak_the_configured_voices(tmp_path):
  programs = {p: shutil.which(p) for p in speech_data.SYNTHESIZERS}
  speech_data.check_voices(programs)
  jobs = speech_data.tts_jobs('spoken_digits', np.random.default_rng(0))
  durations = {}
  for record, voice, text in (jobs[7], jobs[-1]):  # an espeak-ng and a flite voice
    wav = tmp_path / f'{voice["engine"]}.wav'
    y = speech_data.synthesize(
        speech_data.synthesis_command(voice, text, wav, programs[voice['engine']]), wav)
    assert y.dtype == np.float32 and 0.2 < len(y) / 16000 < 2.0, record
    assert np.abs(y).max() > 0.05
    durations[voice['engine']] = len(y)
  assert set(durations) == {'espeak-ng', 'flite'}
  with pytest.raises(ValueError, match='flite -voice nobody'):
    with pytest.MonkeyPatch.context() as patch:
      patch.setattr(speech_data, 'FLITE_VOICES', ('slt', 'nobody'))
      speech_data.check_voices(programs)


# --- prepare_data.py audio ------------------------------------------------------------------------


def test_prepare_audio_is_idempotent(tmp_path, capsys):
  prepare_data = _load_prepare_data()
  for dataset in speech_data.DATASETS:
    speech_data.write_dataset(speech_data.dataset_dir(tmp_path, dataset),
                              [_record()], [np.ones(16000)])

  def no_fetching(*args):
    raise AssertionError(f'fetched {args}')

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(prepare_data, 'fetch_deb', no_fetching)
    patch.setattr(prepare_data, 'fetch_program', no_fetching)
    prepare_data.main(['audio', '--data_dir', str(tmp_path)])
  out = capsys.readouterr().out
  assert 'already prepared' in out and 'nothing fetched' in out
  assert 'speech_pool: 1 clips, 0.00 h' in out


@needs_speech
def test_prepared_speech_data():
  """The real outputs: every source and split present, offsets and durations consistent."""
  audio, pool = speech_data.load(common.DEFAULT_DATA_DIR, 'speech_pool')
  sources = collections.Counter(r['source'] for r in pool)
  assert set(sources) == {'fillets_nl', 'fillets_cs', 'tuxpaint', 'klettres', 'ktuberling'}
  assert 12_000 < len(pool) < 14_200 and 6.5 < len(audio) / 16000 / 3600 < 8.5
  for dataset, count in (('spoken_digits', 2080), ('spoken_digit_strings', 1040)):
    _, records = speech_data.load(common.DEFAULT_DATA_DIR, dataset)
    assert len(records) == count
    splits = {r['split'] for r in records}
    assert splits == set(speech_data.SPLITS)
    for r in records:
      assert r['split'] == speech_data.VOICE_SPLITS[r['language']]
      assert 0.3 < r['duration'] < 6
