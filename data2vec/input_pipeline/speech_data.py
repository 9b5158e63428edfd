"""The offline speech data (DATA.md): recorded clips from Debian game packages, synthesized digits.

`scripts/prepare_data.py audio` fetches the Debian packages and the two synthesizers, then calls
`prepare`, which writes (each data set into a temporary folder renamed when complete; a data set
whose folder exists is skipped):

  DATA_DIR/speech/speech_pool/           recorded speech for pretraining, 7.2 h in 13.1k clips:
                                         Fish Fillets NG nl/cs dialogue, Tux Paint stamp
                                         descriptions, KLettres letters and syllables, KTuberling
                                         words (byte-identical copies left out)
  DATA_DIR/speech/spoken_digits/         "zero".."nine" by 208 espeak-ng / flite voices, label 0-9
  DATA_DIR/speech/spoken_digit_strings/  5 random strings of 3-7 digits per voice (CTC)

Each folder holds `audio.npy`, every clip resampled to 16 kHz mono float32 and concatenated (7.2 h
is 1.7 GB; float32 rather than int16 because resampling leaves values outside the 16-bit grid and
range; it is memory-mapped, so size costs disk, not RAM), and `manifest.jsonl`, one JSON object
per clip in `audio.npy` order: path (the source file, or the synthesizer command), source, offset
and num_samples (into audio.npy), duration (s), language, speaker, transcript, label ('' where
unknown) and split.

Splits: the pool is all `train` (unlabelled pretraining). The synthesized sets are split by
voice, fixed by `VOICE_SPLITS`: validation and test accents and flite voices are never heard in
train (test = the Caribbean English accent and two flite voices, as DATA.md suggests).
"""
import concurrent.futures
import hashlib
import itertools
import json
import math
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET

import numpy as np
import scipy.signal
import soundfile

from data2vec.input_pipeline import files

SAMPLE_RATE = 16_000
DATASETS = ('speech_pool', 'spoken_digits', 'spoken_digit_strings')
SPLITS = ('train', 'validation', 'test')
MANIFEST_FIELDS = ('path', 'source', 'offset', 'num_samples', 'duration', 'language', 'speaker',
                   'transcript', 'label', 'split')

# Debian package -> a folder that only it installs (what fetch_deb looks for), relative to /.
PACKAGES = {
    'fillets-ng-data': 'usr/share/games/fillets-ng/script',
    'fillets-ng-data-nl': 'usr/share/games/fillets-ng/sound/airplane/nl',
    'fillets-ng-data-cs': 'usr/share/games/fillets-ng/sound/airplane/cs',
    'tuxpaint-stamps-default': 'usr/share/tuxpaint/stamps',
    'klettres-data': 'usr/share/klettres',
    'ktuberling-data': 'usr/share/ktuberling/sounds',
}
SYNTHESIZERS = {'espeak-ng': 'espeak-ng', 'flite': 'flite'}  # Debian package -> program

# The synthesized voices: 4 accents x 20 variants x 2 rates (words/min) with a random pitch, and
# 4 flite voices x 3 duration stretches x 4 mean pitches (Hz) = 208 voices.
ESPEAK_ACCENTS = ('en-us', 'en-gb', 'en-gb-scotland', 'en-029')
ESPEAK_VARIANTS = ('m1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7', 'f1', 'f2', 'f3', 'f4', 'f5',
                   'croak', 'whisper', 'klatt', 'klatt2', 'klatt3', 'klatt4', 'klatt5', 'klatt6')
ESPEAK_RATES = (130, 190)
ESPEAK_PITCH_RANGE = (25, 75)  # espeak-ng -p: 0..99, default 50
FLITE_VOICES = ('kal16', 'awb', 'rms', 'slt')
FLITE_STRETCHES = (0.8, 1.0, 1.25)
FLITE_PITCHES = (90, 120, 150, 190)
VOICE_SPLITS = {  # espeak-ng accent or flite voice -> split
    'en-us': 'train', 'en-gb': 'train', 'kal16': 'train',
    'en-gb-scotland': 'validation', 'rms': 'validation',
    'en-029': 'test', 'awb': 'test', 'slt': 'test',
}
DIGIT_WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')
STRINGS_PER_VOICE = 5
STRING_LENGTHS = (3, 7)  # digits per string, inclusive
SYNTHESIS_SEED = 0  # pitches and digit strings: the data sets are the same on every machine


# --- outputs ------------------------------------------------------------------------------------


def dataset_dir(data_dir, dataset):
  if dataset not in DATASETS:
    raise ValueError(f'dataset={dataset!r} is not one of {DATASETS}')
  return pathlib.Path(data_dir) / 'speech' / dataset


def _fresh_tmp_dir(out_dir):
  """An empty sibling folder to write into, renamed to out_dir when complete."""
  tmp = out_dir.with_name(out_dir.name + '.tmp')
  if tmp.exists():  # left by an interrupted run
    shutil.rmtree(tmp)
  tmp.mkdir(parents=True)
  return tmp


def write_dataset(out_dir, records, clips):
  """Writes audio.npy and manifest.jsonl of `clips` (float32 arrays, one per record, in order;
  an iterator, so that they are never all in memory) into out_dir, atomically.

  Fills in offset, num_samples and duration; every other MANIFEST_FIELDS key comes from records.
  """
  out_dir = pathlib.Path(out_dir)
  needed = set(MANIFEST_FIELDS) - {'offset', 'num_samples', 'duration'}
  for i, record in enumerate(records):
    if needed - set(record):
      raise ValueError(f'{out_dir}: record {i} lacks {sorted(needed - set(record))}')
  tmp = _fresh_tmp_dir(out_dir)
  lines, offset = [], 0
  # Stream the samples into a raw file, then wrap it as .npy once the total length is known.
  with open(tmp / 'audio.raw', 'wb') as raw:
    for record, clip in itertools.zip_longest(records, clips):
      if record is None or clip is None:
        raise ValueError(f'{out_dir}: {len(records)} records but a different number of clips')
      clip = np.asarray(clip, np.float32)
      clip.tofile(raw)
      lines.append(json.dumps(dict(record, offset=offset, num_samples=len(clip),
                                   duration=round(len(clip) / SAMPLE_RATE, 4)),
                              ensure_ascii=False))
      offset += len(clip)
  with open(tmp / 'audio.npy', 'wb') as f:
    np.save(f, np.memmap(tmp / 'audio.raw', np.float32, 'r') if offset else np.zeros(0, np.float32))
  (tmp / 'audio.raw').unlink()
  (tmp / 'manifest.jsonl').write_text(''.join(line + '\n' for line in lines), encoding='utf-8')
  os.replace(tmp, out_dir)


def load(data_dir, dataset):
  """(audio float32 [N] memory-mapped, manifest records) of a prepared data set, checked."""
  out_dir = dataset_dir(data_dir, dataset)
  if not out_dir.is_dir():
    raise ValueError(f'{out_dir} does not exist; run '
                     f'`python scripts/prepare_data.py audio --data_dir {data_dir}`')
  audio = files.load_npy(out_dir / 'audio.npy', 'audio')
  if audio.ndim != 1 or audio.dtype != np.float32:
    raise ValueError(f'{out_dir / "audio.npy"}: {audio.dtype} {audio.shape} is not float32 [N]')
  records = []
  for number, record in enumerate(files.read_jsonl(out_dir / 'manifest.jsonl', 'audio'), 1):
    where = f'{out_dir / "manifest.jsonl"}:{number}'
    if set(MANIFEST_FIELDS) - set(record):
      raise ValueError(f'{where}: missing {sorted(set(MANIFEST_FIELDS) - set(record))}')
    if record['split'] not in SPLITS:
      raise ValueError(f'{where}: split {record["split"]!r} is not one of {SPLITS}')
    if record['offset'] + record['num_samples'] > len(audio):
      raise ValueError(f'{where}: samples up to {record["offset"] + record["num_samples"]} '
                       f'are beyond audio.npy ({len(audio)})')
    records.append(record)
  return audio, records


def load_split(data_dir, dataset, split):
  """(audio float32 [N] memory-mapped, the split's manifest records, in manifest order)."""
  if split not in SPLITS:
    raise ValueError(f'split={split!r} is not one of {SPLITS}')
  audio, records = load(data_dir, dataset)
  records = [r for r in records if r['split'] == split]
  if not records:
    raise ValueError(f'{dataset} has no {split} clips')
  return audio, records


def is_prepared(data_dir):
  return all(dataset_dir(data_dir, d).is_dir() for d in DATASETS)


def summarize(data_dir):
  """Prints, per data set and source / split: clips and hours."""
  for dataset in DATASETS:
    if not dataset_dir(data_dir, dataset).is_dir():
      continue
    _, records = load(data_dir, dataset)
    key = 'source' if dataset == 'speech_pool' else 'split'
    groups = {}
    for r in records:
      groups.setdefault(r[key], []).append(r['duration'])
    parts = ', '.join(f'{g} {len(d)} / {sum(d) / 3600:.2f} h' for g, d in groups.items())
    total = sum(r['duration'] for r in records) / 3600
    print(f'  {dataset}: {len(records)} clips, {total:.2f} h ({parts})')


# --- decoding -----------------------------------------------------------------------------------


def resample(samples, rate):
  """[L] or [L, C] samples at `rate` -> float32 [L'] mono at SAMPLE_RATE (channel mean, then
  scipy's polyphase filter)."""
  x = np.asarray(samples, np.float64)
  if x.ndim == 2:
    x = x.mean(axis=1)
  if rate != SAMPLE_RATE:
    g = math.gcd(SAMPLE_RATE, int(rate))
    x = scipy.signal.resample_poly(x, SAMPLE_RATE // g, int(rate) // g)
  return x.astype(np.float32)


def decode(path):
  """An audio file (Ogg Vorbis, wav, ...) -> float32 16 kHz mono; errors name the file."""
  try:
    samples, rate = soundfile.read(path, dtype='float32', always_2d=True)
  except (soundfile.LibsndfileError, RuntimeError, OSError) as e:
    raise ValueError(f'{path}: cannot decode audio: {e}') from e
  return resample(samples, rate)


def decode_all(paths, workers=None):
  """decode() of each path, in order, over `workers` processes (None: one per CPU)."""
  with concurrent.futures.ProcessPoolExecutor(workers) as pool:
    yield from pool.map(decode, paths, chunksize=16)


# --- the recorded pool --------------------------------------------------------------------------

_LUA_STRING = r'"((?:[^"\\]|\\.)*)"'
# dialogId("id", "font_small", "English line") dialogStr("translated line"); entries that only
# name a sound effect have no dialogStr.
_DIALOG = re.compile(r'dialogId\(\s*"([^"]*)"\s*,\s*(?:"([^"]*)"|nil)\s*,\s*' + _LUA_STRING +
                     r'\s*\)(?:\s*dialogStr\(\s*' + _LUA_STRING + r'\s*\))?', re.S)


def _unescape_lua(text):
  return re.sub(r'\\(.)', lambda m: ' ' if m.group(1) in 'nrt' else m.group(1), text)


def _record(path, root, source, language, speaker='', transcript='', label=''):
  """(pool manifest record, file): the recorded path is as installed (root = '/' or where the
  package was unpacked)."""
  record = dict(path='/' + pathlib.Path(path).relative_to(root).as_posix(), source=source,
                language=language, speaker=speaker, transcript=' '.join(transcript.split()),
                label=label, split='train')
  return record, path


def read_dialogs(script_dir, lang):
  """Fish Fillets dialogue {level: {id: (font, line)}} of every *dialogs_<lang>.lua file."""
  levels = {}
  for path in sorted(script_dir.glob(f'**/*dialogs_{lang}.lua')):
    text = path.read_text(encoding='utf-8')
    found = _DIALOG.findall(text)
    if len(found) != text.count('dialogId('):
      raise ValueError(f'{path}: parsed {len(found)} of its {text.count("dialogId(")} '
                       'dialogId(...) entries')
    level = levels.setdefault(path.parent.relative_to(script_dir).as_posix(), {})
    for dialog_id, font, _, line in found:
      level[dialog_id] = (font or '', _unescape_lua(line))
  return levels


def fillets_records(roots, lang):
  """Fish Fillets NG dialogue of one language: sound/<level>/<lang>/<id>.ogg, its line from the
  level's dialogs_<lang>.lua (else another level's), speaker = the font (small / big fish, ...)."""
  data_root, lang_root = roots['fillets-ng-data'], roots[f'fillets-ng-data-{lang}']
  base = pathlib.PurePosixPath(PACKAGES['fillets-ng-data']).parent
  levels = read_dialogs(data_root / base / 'script', lang)
  anywhere = {}
  for level in sorted(levels, reverse=True):  # an id in several levels: the first level's line
    anywhere.update(levels[level])
  sound_dir = lang_root / base / 'sound'
  records = []
  for path in sorted(sound_dir.glob(f'**/{lang}/*.ogg')):
    level = path.parent.parent.relative_to(sound_dir).as_posix()
    font, line = levels.get(level, {}).get(path.stem) or anywhere.get(path.stem, ('', ''))
    records.append(_record(path, lang_root, f'fillets_{lang}', lang,
                           speaker=font.removeprefix('font_'), transcript=line))
  return records


def _stamp_descriptions(txt_path):
  """{language: text} of a Tux Paint stamp's .txt: English first, then `<lang>.utf8=...`."""
  if not txt_path.is_file():
    return {}
  lines = txt_path.read_text(encoding='utf-8', errors='replace').splitlines()
  texts = {'en': lines[0]} if lines else {}
  for line in lines[1:]:
    key, sep, text = line.partition('.utf8=')
    if sep:
      texts[key] = text
  return texts


def tuxpaint_records(roots):
  """Tux Paint stamp descriptions <stamp>_desc[_<lang>].ogg (no suffix: English), with the text
  of the stamp's .txt file in that language; label = the stamp."""
  root = roots['tuxpaint-stamps-default']
  records = []
  for path in sorted((root / PACKAGES['tuxpaint-stamps-default']).glob('**/*_desc*.ogg')):
    match = re.fullmatch(r'(.+)_desc(?:_([a-z]{2,3}(?:_[A-Z]{2})?))?(?:\.ogg)+', path.name)
    if match:
      stamp, lang = match.group(1), match.group(2) or 'en'
      text = _stamp_descriptions(path.with_name(stamp + '.txt')).get(lang, '')
      records.append(_record(path, root, 'tuxpaint', lang, transcript=text, label=stamp))
  return records


def klettres_records(roots):
  """KLettres letters and syllables <lang>/{alpha,syllab}/<x>.ogg; the transcript is the sound's
  name in <lang>/sounds.xml (else the file name)."""
  root = roots['klettres-data']
  base = root / PACKAGES['klettres-data']
  names = {}
  for xml_path in sorted(base.glob('*/sounds.xml')):
    try:
      sounds = ET.parse(xml_path).iter('sound')
    except ET.ParseError as e:
      raise ValueError(f'{xml_path}: {e}') from e
    names.update((s.get('file'), s.get('name', '')) for s in sounds)
  return [_record(path, root, 'klettres', path.parent.parent.name,
                  transcript=names.get(path.relative_to(base).as_posix(), path.stem))
          for path in sorted(base.glob('*/*/*.ogg'))]


def ktuberling_records(roots):
  """KTuberling words <lang>/<object>.ogg; label = the object (the same in every language)."""
  root = roots['ktuberling-data']
  return [_record(path, root, 'ktuberling', path.parent.name, label=path.stem)
          for path in sorted((root / PACKAGES['ktuberling-data']).glob('*/*.ogg'))]


def pool_records(roots):
  """[(record, file)] of every recorded clip; roots: Debian package -> the folder it is installed
  under ('/' or an unpacked copy)."""
  return [*fillets_records(roots, 'nl'), *fillets_records(roots, 'cs'), *tuxpaint_records(roots),
          *klettres_records(roots), *ktuberling_records(roots)]


def drop_duplicates(pairs):
  """The (record, file) pairs minus files byte-identical to an earlier one (Tux Paint reuses a
  recording for look-alike stamps, KTuberling one per Serbian script), and how many went."""
  seen, unique = set(), []
  for record, path in pairs:
    digest = hashlib.sha256(pathlib.Path(path).read_bytes()).digest()
    if digest not in seen:
      seen.add(digest)
      unique.append((record, path))
  return unique, len(pairs) - len(unique)


def prepare_pool(out_dir, roots, workers=None):
  pairs, dropped = drop_duplicates(pool_records(roots))
  print(f'audio: decoding {len(pairs)} recorded clips to 16 kHz mono float32 '
        f'({dropped} byte-identical copies left out)')
  records, paths = zip(*pairs)
  write_dataset(out_dir, list(records), decode_all(paths, workers))


# --- synthesized digits -------------------------------------------------------------------------


def voices(rng):
  """The 208 synthesizer settings: dicts of engine, voice (accent / flite voice), variant, rate
  or stretch, pitch, speaker (a name that identifies all of them) and split."""
  out = []
  for accent, variant, rate in itertools.product(ESPEAK_ACCENTS, ESPEAK_VARIANTS, ESPEAK_RATES):
    pitch = int(rng.integers(ESPEAK_PITCH_RANGE[0], ESPEAK_PITCH_RANGE[1] + 1))
    out.append(dict(engine='espeak-ng', voice=accent, variant=variant, rate=rate, pitch=pitch,
                    speaker=f'espeak-ng:{accent}+{variant}:s{rate}:p{pitch}',
                    split=VOICE_SPLITS[accent]))
  for voice, stretch, pitch in itertools.product(FLITE_VOICES, FLITE_STRETCHES, FLITE_PITCHES):
    out.append(dict(engine='flite', voice=voice, variant='', rate=stretch, pitch=pitch,
                    speaker=f'flite:{voice}:x{stretch}:f{pitch}', split=VOICE_SPLITS[voice]))
  return out


def synthesis_command(voice, text, wav_path, program):
  """The command line that speaks `text` with `voice` into wav_path."""
  if voice['engine'] == 'espeak-ng':
    return [program, '-v', f'{voice["voice"]}+{voice["variant"]}', '-s', str(voice['rate']),
            '-p', str(voice['pitch']), '-w', str(wav_path), text]
  return [program, '-voice', voice['voice'], '--setf', f'duration_stretch={voice["rate"]}',
          '--setf', f'int_f0_target_mean={voice["pitch"]}', '-o', str(wav_path), '-t', text]


def _output(command):
  return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def check_voices(programs):
  """Both synthesizers fall back to a default voice, silently, on an unknown name: check first."""
  variants = set(re.findall(r'!v/(\S+)', _output([programs['espeak-ng'], '--voices=variant'])))
  accents = set(_output([programs['espeak-ng'], '--voices=en']).split())
  flite = set(_output([programs['flite'], '-lv']).split())
  missing = ([f'espeak-ng +{v}' for v in ESPEAK_VARIANTS if v not in variants] +
             [f'espeak-ng -v {a}' for a in ESPEAK_ACCENTS if a not in accents] +
             [f'flite -voice {v}' for v in FLITE_VOICES if v not in flite])
  if missing:
    raise ValueError(f'voices missing from the installed synthesizers: {missing}')


def synthesize(command, wav_path):
  """Runs a synthesis command; returns its output decoded to 16 kHz."""
  try:
    subprocess.run(command, check=True, capture_output=True, timeout=60)
  except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
    raise ValueError(f'synthesis failed: {shlex.join(command)}: {e}') from e
  return decode(wav_path)


def tts_jobs(dataset, rng):
  """[(record, voice, text)] of a synthesized data set, in manifest order; record['path'] is the
  synthesizer command (output file OUT.wav)."""
  jobs = []
  for voice in voices(rng):
    if dataset == 'spoken_digits':
      items = [(DIGIT_WORDS[d], str(d)) for d in range(10)]
    else:
      lengths = rng.integers(STRING_LENGTHS[0], STRING_LENGTHS[1] + 1, STRINGS_PER_VOICE)
      strings = [rng.integers(0, 10, n) for n in lengths]
      items = [(' '.join(DIGIT_WORDS[d] for d in s), ''.join(map(str, s))) for s in strings]
    for text, label in items:
      command = synthesis_command(voice, text, 'OUT.wav', voice['engine'])
      jobs.append((dict(path=shlex.join(command), source=voice['engine'], language=voice['voice'],
                        speaker=voice['speaker'], transcript=text, label=label,
                        split=voice['split']), voice, text))
  return jobs


def prepare_tts(out_dir, dataset, programs, workers=None):
  jobs = tts_jobs(dataset, np.random.default_rng(SYNTHESIS_SEED))
  print(f'audio: synthesizing {len(jobs)} {dataset} clips with {", ".join(programs)}')
  with tempfile.TemporaryDirectory() as tmp:
    wav_paths = [pathlib.Path(tmp, f'{i}.wav') for i in range(len(jobs))]
    commands = [synthesis_command(voice, text, wav, programs[voice['engine']])
                for (_, voice, text), wav in zip(jobs, wav_paths)]
    # The work is in subprocesses: threads keep every CPU busy.
    with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count()) as pool:
      write_dataset(out_dir, [record for record, _, _ in jobs],
                    pool.map(synthesize, commands, wav_paths))


# --- the whole preparation ----------------------------------------------------------------------


def prepare(data_dir, roots, programs, workers=None):
  """Writes every missing data set under DATA_DIR/speech/ (idempotent), then summarizes.

  roots: Debian package (PACKAGES) -> the folder it is installed under; programs: synthesizer
  package (SYNTHESIZERS) -> the program's path.
  """
  pool_dir = dataset_dir(data_dir, 'speech_pool')
  if not pool_dir.is_dir():
    prepare_pool(pool_dir, roots, workers)
  tts = [d for d in DATASETS[1:] if not dataset_dir(data_dir, d).is_dir()]
  if tts:
    check_voices(programs)
  for dataset in tts:
    prepare_tts(dataset_dir(data_dir, dataset), dataset, programs, workers)
  summarize(data_dir)
