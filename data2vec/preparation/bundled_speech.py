"""`prepare_data.py audio`: the bundled speech sets, recorded clips from Debian game packages and
synthesized digits, written as prepared audio sets (data2vec/preparation/audio.py).

scripts/prepare_data.py fetches the Debian packages and the two synthesizers, then calls
`prepare`, which lists each missing set's files here (the scraping: Lua dialogue scripts, Tux
Paint's stamp texts, KLettres' XML; the synthesis: espeak-ng / flite into wav files under
DATA_DIR/cache/speech_synthesis/, removed once the set is written) and hands them to
`audio.write_set`, the generic preparer's decoding, 16 kHz resampling (soxr) and int16 shards:

  DATA_DIR/speech_pool/           recorded speech for pretraining, 7.2 h in 13.1k clips, all
                                  `train`, unlabelled: Fish Fillets NG nl/cs dialogue, Tux Paint
                                  stamp descriptions, KLettres letters and syllables, KTuberling
                                  words (byte-identical copies left out); transcript: the line
  DATA_DIR/spoken_digits/         "zero".."nine" by 208 espeak-ng / flite voices; label 0-9
                                  (classes DIGIT_WORDS), transcript the digit ('7')
  DATA_DIR/spoken_digit_strings/  5 random strings of 3-7 digits per voice, unlabelled; transcript
                                  the digits ('5270427', for CTC)

Each {split}.jsonl row also names the clip's `source` (fillets_nl, tuxpaint, ..., espeak-ng,
flite), `language` (the pool's language, the synthesizer's accent or voice) and `speaker` (the
Fish Fillets font, '' elsewhere in the pool, the full voice setting of a synthesized clip); `path`
is the file as installed, or the synthesizer command (OUT.wav its output). The clips are stored as
16-bit PCM like every prepared set: a clip whose resampling overshoots full scale is scaled down
(audio.decode), and the quantization, noise ~96 dB below full scale, is accepted.

Splits: the pool is all `train`. The synthesized sets are split by voice, fixed by `VOICE_SPLITS`:
validation and test accents and flite voices are never heard in train (test = the Caribbean
English accent and two flite voices). Pitches and digit strings come from SYNTHESIS_SEED: the sets
are the same on every machine.
"""
import concurrent.futures
import hashlib
import itertools
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np

from data2vec.input_pipeline import datasets
from data2vec.preparation import audio, sources

DATASETS = ('speech_pool', 'spoken_digits', 'spoken_digit_strings')
EXTRA_FIELDS = ('source', 'language', 'speaker')  # jsonl fields beyond the generic ones
WORK_DIR = ('cache', 'speech_synthesis')  # under DATA_DIR: the synthesized wav files

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


def missing(data_dir):
  """The DATASETS without a dataset.json in DATA_DIR."""
  return [d for d in DATASETS if not (pathlib.Path(data_dir) / d / datasets.META_FILE).is_file()]


def is_prepared(data_dir):
  return not missing(data_dir)


def summarize(data_dir):
  """Prints, per prepared set and split: clips and hours (from dataset.json)."""
  absent = missing(data_dir)
  for name in DATASETS:
    if name in absent:
      continue
    meta = datasets.load(data_dir, name, modality='audio').meta
    parts = ', '.join(f'{s} {n} / {meta["hours"][s]:.2f} h' for s, n in meta['splits'].items())
    print(f'  {name}: {sum(meta["splits"].values())} clips, {sum(meta["hours"].values()):.2f} h '
          f'({parts})')


def write(data_dir, name, source, records, paths, classes=(), workers=0):
  """Prepares the clips of `records` (dicts of path, split, label, transcript and EXTRA_FIELDS;
  the audio in `paths`) as DATA_DIR/NAME. A file without audio is skipped and counted in
  dataset.json, as for any prepared set (two of Fish Fillets' Dutch clips are empty)."""
  listed = [sources.Source(r['path'], r['split'], r['label']) for r in records]
  return audio.write_set(
      data_dir=data_dir, name=name, source=source, listed=listed, paths=[str(p) for p in paths],
      classes=tuple(classes), texts=[' '.join(r['transcript'].split()) for r in records],
      extras=[{k: r[k] for k in EXTRA_FIELDS} for r in records], workers=workers, bundled=True)


# --- the recorded pool --------------------------------------------------------------------------

_LUA_STRING = r'"((?:[^"\\]|\\.)*)"'
# dialogId("id", "font_small", "English line") dialogStr("translated line"); entries that only
# name a sound effect have no dialogStr.
_DIALOG = re.compile(r'dialogId\(\s*"([^"]*)"\s*,\s*(?:"([^"]*)"|nil)\s*,\s*' + _LUA_STRING +
                     r'\s*\)(?:\s*dialogStr\(\s*' + _LUA_STRING + r'\s*\))?', re.S)


def _unescape_lua(text):
  return re.sub(r'\\(.)', lambda m: ' ' if m.group(1) in 'nrt' else m.group(1), text)


def _record(path, root, source, language, speaker='', transcript=''):
  """(pool record, file): the recorded path is as installed (root = '/' or where the package was
  unpacked)."""
  record = dict(path='/' + pathlib.Path(path).relative_to(root).as_posix(), source=source,
                language=language, speaker=speaker, transcript=transcript, split='train',
                label=sources.UNLABELLED)
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
  of the stamp's .txt file in that language."""
  root = roots['tuxpaint-stamps-default']
  records = []
  for path in sorted((root / PACKAGES['tuxpaint-stamps-default']).glob('**/*_desc*.ogg')):
    match = re.fullmatch(r'(.+)_desc(?:_([a-z]{2,3}(?:_[A-Z]{2})?))?(?:\.ogg)+', path.name)
    if match:
      stamp, lang = match.group(1), match.group(2) or 'en'
      text = _stamp_descriptions(path.with_name(stamp + '.txt')).get(lang, '')
      records.append(_record(path, root, 'tuxpaint', lang, transcript=text))
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
  """KTuberling words <lang>/<object>.ogg (no transcript: the object's name is not the word)."""
  root = roots['ktuberling-data']
  return [_record(path, root, 'ktuberling', path.parent.name)
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


def prepare_pool(data_dir, roots, workers=0):
  """Writes DATA_DIR/speech_pool from the installed packages (`roots`, as pool_records)."""
  pairs, dropped = drop_duplicates(pool_records(roots))
  print(f'audio: speech_pool from {len(pairs)} recorded clips ({dropped} byte-identical copies '
        'left out)')
  records, paths = zip(*pairs)
  return write(data_dir, 'speech_pool', f'Debian packages {", ".join(PACKAGES)}', records, paths,
               workers=workers)


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


def synthesize(voice, text, wav_path, program):
  """Speaks `text` with `voice` into wav_path (written under a temporary name, then renamed: a
  wav that exists is complete, and a rerun after a kill keeps it)."""
  tmp = wav_path.with_name('tmp-' + wav_path.name)
  command = synthesis_command(voice, text, tmp, program)
  try:
    subprocess.run(command, check=True, capture_output=True, timeout=60)
  except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
    raise ValueError(f'synthesis failed: {shlex.join(command)}: {e}') from e
  os.replace(tmp, wav_path)


def tts_jobs(dataset, rng):
  """[(record, voice, spoken text)] of a synthesized set, in file order; record['path'] is the
  synthesizer command (output file OUT.wav)."""
  jobs = []
  for voice in voices(rng):
    if dataset == 'spoken_digits':
      items = [(DIGIT_WORDS[d], str(d), d) for d in range(10)]
    else:
      lengths = rng.integers(STRING_LENGTHS[0], STRING_LENGTHS[1] + 1, STRINGS_PER_VOICE)
      strings = [rng.integers(0, 10, n) for n in lengths]
      items = [(' '.join(DIGIT_WORDS[d] for d in s), ''.join(map(str, s)), sources.UNLABELLED)
               for s in strings]
    for text, digits, label in items:
      command = synthesis_command(voice, text, 'OUT.wav', voice['engine'])
      jobs.append((dict(path=shlex.join(command), source=voice['engine'], language=voice['voice'],
                        speaker=voice['speaker'], transcript=digits, label=label,
                        split=voice['split']), voice, text))
  return jobs


def prepare_tts(data_dir, dataset, programs, workers=0):
  """Synthesizes the clips of `dataset` (spoken_digits or spoken_digit_strings) and writes it as
  DATA_DIR/<dataset>; programs: synthesizer package (SYNTHESIZERS) -> the program's path."""
  jobs = tts_jobs(dataset, np.random.default_rng(SYNTHESIS_SEED))
  work = pathlib.Path(data_dir, *WORK_DIR, dataset)
  work.mkdir(parents=True, exist_ok=True)
  wavs = [work / f'{i:05d}.wav' for i in range(len(jobs))]
  todo = [(voice, text, wav) for (_, voice, text), wav in zip(jobs, wavs) if not wav.is_file()]
  print(f'audio: synthesizing {len(todo)} of the {len(jobs)} {dataset} clips with '
        f'{", ".join(programs)} into {work}')
  # The work is in subprocesses: threads keep every CPU busy.
  with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count()) as pool:
    list(pool.map(lambda job: synthesize(*job, programs[job[0]['engine']]), todo))
  classes = DIGIT_WORDS if dataset == 'spoken_digits' else ()
  out = write(data_dir, dataset, f'espeak-ng and flite, seed {SYNTHESIS_SEED}',
              [record for record, _, _ in jobs], wavs, classes, workers)
  shutil.rmtree(work)  # the set holds the audio now
  return out


# --- the whole preparation ----------------------------------------------------------------------


def prepare(data_dir, roots, programs, workers=0):
  """Writes every missing set of DATASETS (idempotent: a set with a dataset.json is left alone),
  then summarizes.

  roots: Debian package (PACKAGES) -> the folder it is installed under; programs: synthesizer
  package (SYNTHESIZERS) -> the program's path.
  """
  todo = missing(data_dir)
  if 'speech_pool' in todo:
    prepare_pool(data_dir, roots, workers)
  tts = [d for d in todo if d != 'speech_pool']
  if tts:
    check_voices(programs)
  for dataset in tts:
    prepare_tts(data_dir, dataset, programs, workers)
  summarize(data_dir)
