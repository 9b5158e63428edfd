"""`prepare_data.py audio --src`: audio files or fairseq manifests -> a prepared audio set.

Writes DATA_DIR/NAME/ (read by data2vec/input_pipeline/audio.py):
  dataset.json          format 'audio', sample_rate 16000, splits {split: clips}, hours {split: h},
                        classes, skipped, shards {split: [file names]}, transcripts (clips with one)
  {split}-{i:05d}.npy   int16 [samples]: clips at 16 kHz mono, concatenated; a shard closes once
                        it holds `shard_seconds` of audio (by the files' headers)
  {split}_index.npy     int64 [N, 3]: per clip (shard i, offset, num_samples), all that reading
                        needs; shard i is dataset.json's shards[split][i]
  {split}.jsonl         per clip, in index order: path, shard, offset, num_samples, label (int,
                        -1 unlabelled), transcript ('' when none); the bundled speech sets add
                        source, language and speaker (data2vec/preparation/bundled_speech.py)

Sources (`src`: one folder, or one or more manifests):
- A folder tree of .wav / .flac / .ogg / .mp3 files: splits and class folders follow
  data2vec/preparation/sources.py (`train/`, `val/`, `test/` folders or a hash holdout; `--labels`
  from the first folder level). `path` is relative to the folder.
- fairseq manifests `STEM.tsv`: the first line is the root folder (a relative one is taken from
  the manifest's folder), then `relative_path<TAB>num_samples` (num_samples is not used). The
  split is the stem's first word when it names one (train, valid, dev, test, ...: train.tsv,
  dev_clean.tsv, test-other.tsv), else a hash holdout.
  `--labels folders` takes the first folder of each path; auto is none (LibriSpeech's folders are
  speakers, not classes). `path` is as written in the manifest.
Transcripts (`--transcripts`, for CTC fine-tuning): auto reads fairseq's STEM.wrd, else STEM.ltr
(letters split by spaces, `|` between words) beside each manifest, line-aligned with it; or give
a file: a .wrd / .ltr for a single manifest, or a table (below) of path -> transcript. none: none.
Labels from a table (`--label_file`): every clip needs one; the classes are the sorted names.
A table is a .tsv of `path<TAB>value` lines (an optional `path<TAB>...` header) or a .jsonl of
{"path": ..., "label" / "transcript": ...}; a relative path is a clip's `path` (above), an
absolute one its file.

Each file is decoded with libsndfile (soundfile: wav, flac, ogg, mp3, any rate and channels) in
blocks, its channels averaged, resampled to 16 kHz by soxr (HQ) as it streams, and stored as
int16: a file that cannot be decoded (or holds no or non-finite samples) is skipped and counted
(--strict: an error) instead of failing a training run. Shards are written in parallel worker
processes, resumably (data2vec/preparation/shards.py): each is committed as it finishes, so a
killed run keeps every complete shard. `write_set` is the part after the listing: the bundled
speech sets (data2vec/preparation/bundled_speech.py) enter there with their own list of files.
"""
import hashlib
import json
import os
import pathlib
import re

import numpy as np
import soundfile
import soxr

from data2vec import atomic
from data2vec.input_pipeline import audio, datasets, files
from data2vec.preparation import shards, sources

EXTENSIONS = frozenset({'.wav', '.flac', '.ogg', '.mp3'})
SAMPLE_RATE = audio.SAMPLE_RATE
SHARD_SECONDS = 1800.0  # 58 MB of int16: ~2000 shards for LibriSpeech's 960 h
TRANSCRIPT_SUFFIXES = ('.wrd', '.ltr')  # fairseq's, in order of preference
BLOCK_FRAMES = 1 << 16  # decoded at a time: a long recording never sits whole at its source rate
PCM_MAX = 32767
HEADERS_PER_TASK = 256


# --- listing ------------------------------------------------------------------------------------


def read_manifest(path):
  """(root folder, [relative path]) of a fairseq manifest; errors name file:line."""
  path = pathlib.Path(path)
  try:
    lines = path.read_text(encoding='utf-8').splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f'--src={path}: cannot read the manifest ({e})') from None
  if not lines or not lines[0].strip():
    raise ValueError(f'{path}:1: a fairseq manifest starts with its root folder')
  root = path.parent / lines[0].strip()  # an absolute root stays as it is
  if not root.is_dir():
    raise ValueError(f'{path}:1: the root folder {root} does not exist')
  relative = []
  for number, line in enumerate(lines[1:], 2):
    rel = line.split('\t')[0].strip()
    if not rel:
      raise ValueError(f'{path}:{number}: no path (expected relative_path<TAB>num_samples)')
    if not (root / rel).is_file():
      raise ValueError(f'{path}:{number}: {root / rel} does not exist')
    relative.append(rel)
  if not relative:
    raise ValueError(f'{path}: lists no audio files')
  return root, relative


def ltr_words(line):
  """fairseq letters 'H I | T H E R E |' -> 'HI THERE'."""
  return ' '.join(''.join(word.split()) for word in line.split('|') if word.strip())


def read_aligned(path, count, manifest):
  """The transcripts of a .wrd / .ltr file, one line per manifest entry."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f'{path} does not exist')
  lines = path.read_text(encoding='utf-8').splitlines()
  if len(lines) != count:
    raise ValueError(f'{path}: {len(lines)} lines for the {count} files of {manifest}')
  return [ltr_words(x) if path.suffix == '.ltr' else ' '.join(x.split()) for x in lines]


def read_table(path, column):
  """[(path, value, 'file:line')] of a `path<TAB>value` .tsv or a {"path", column} .jsonl."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f'{path} does not exist')
  rows = []
  if path.suffix == '.jsonl':
    for number, record in enumerate(files.read_jsonl(path, 'audio'), 1):
      if 'path' not in record or column not in record:
        raise ValueError(f'{path}:{number}: needs "path" and "{column}"')
      rows.append((str(record['path']), str(record[column]), f'{path}:{number}'))
    return rows
  for number, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
    if not line.strip() or (number == 1 and line.split('\t')[0] == 'path'):
      continue
    fields = line.split('\t')
    if len(fields) < 2:
      raise ValueError(f'{path}:{number}: no {column} column (expected path<TAB>{column})')
    rows.append((fields[0], fields[1], f'{path}:{number}'))
  return rows


def _lookup(listed, files_):
  """{relative key or absolute file: position} of the listed clips."""
  found = {}
  for i, (s, f) in enumerate(zip(listed, files_)):
    found.setdefault(os.path.normpath(s.path), i)
    found.setdefault(os.path.normpath(f), i)
  return found


def _table_values(table, listed, files_):
  """[value or None] per listed clip from `--label_file` / `--transcripts` rows."""
  found = _lookup(listed, files_)
  values = [None] * len(listed)
  for path, value, where in table:
    i = found.get(os.path.normpath(path))
    if i is None:
      raise ValueError(f'{where}: {path} is not one of the audio files of --src')
    values[i] = value
  return values


def _list_folder(src, labels, val_fraction, test_fraction):
  paths = sources.list_files(src, EXTENSIONS, 'audio')
  listed, classes = sources.assign(src, paths, labels=labels, val_fraction=val_fraction,
                                   test_fraction=test_fraction)
  return listed, [str(src / p) for p in paths], classes, {}


def _list_manifests(manifests, labels, val_fraction, test_fraction):
  """Sources of fairseq manifests and their fairseq transcripts {position: transcript}."""
  if labels not in sources.LABEL_MODES:
    raise ValueError(f'--labels={labels!r}: must be one of {sources.LABEL_MODES}')
  sources.check_fractions(val_fraction, test_fraction)
  entries, aligned = [], {}  # (key, file, split)
  for manifest in manifests:
    root, relative = read_manifest(manifest)
    split = sources.SPLIT_FOLDERS.get(re.split(r'[-_.]', manifest.stem.lower())[0])
    for suffix in TRANSCRIPT_SUFFIXES:
      if manifest.with_suffix(suffix).is_file():
        texts = read_aligned(manifest.with_suffix(suffix), len(relative), manifest)
        aligned.update((len(entries) + i, t) for i, t in enumerate(texts))
        break
    entries += [(rel, str(root / rel),
                 split or sources.holdout_split(rel, val_fraction, test_fraction))
                for rel in relative]
  classes, label_ids = (), [sources.UNLABELLED] * len(entries)
  if labels == 'folders':
    flat = [key for key, _, _ in entries if '/' not in key]
    if flat:
      raise ValueError(f'--labels=folders: {flat[0]} (and {len(flat) - 1} more) is not inside a '
                       'class folder')
    classes = tuple(sorted({key.split('/')[0] for key, _, _ in entries}))
    index = {c: i for i, c in enumerate(classes)}
    label_ids = [index[key.split('/')[0]] for key, _, _ in entries]
  listed = [sources.Source(key, split, label)
            for (key, _, split), label in zip(entries, label_ids)]
  return listed, [f for _, f, _ in entries], classes, aligned


def list_sources(src, *, labels, val_fraction, test_fraction, transcripts, label_file):
  """([sources.Source], [file], classes, [transcript]) of `src` (module docstring)."""
  paths = [pathlib.Path(p).resolve() for p in ([src] if isinstance(src, (str, os.PathLike))
                                               else src)]
  if not paths:
    raise ValueError('--src: give a folder or fairseq manifests (.tsv)')
  if label_file and labels == 'folders':
    raise ValueError(f'--label_file={label_file} and --labels=folders: choose one')
  table_labels = 'none' if label_file else labels
  if len(paths) == 1 and paths[0].is_dir():
    listed, files_, classes, aligned = _list_folder(paths[0], table_labels, val_fraction,
                                                    test_fraction)
  else:
    for p in paths:
      if p.suffix != '.tsv' or not p.is_file():
        raise ValueError(f'--src={p}: not a folder or a fairseq manifest (.tsv)'
                         + (' (give one folder, or manifests)' if p.is_dir() else ''))
    listed, files_, classes, aligned = _list_manifests(paths, table_labels, val_fraction,
                                                       test_fraction)
  if label_file:
    names = _table_values(read_table(label_file, 'label'), listed, files_)
    missing = [s.path for s, n in zip(listed, names) if n is None]
    if missing:
      raise ValueError(f'--label_file={label_file}: no label for {missing[0]} (and '
                       f'{len(missing) - 1} more)')
    classes = tuple(sorted(set(names)))
    index = {c: i for i, c in enumerate(classes)}
    listed = [sources.Source(s.path, s.split, index[n]) for s, n in zip(listed, names)]
  if transcripts == 'none':
    texts = [''] * len(listed)
  elif transcripts == 'auto':
    texts = [aligned.get(i, '') for i in range(len(listed))]
  else:
    path = pathlib.Path(transcripts)
    if path.suffix in TRANSCRIPT_SUFFIXES:
      if len(paths) != 1 or paths[0].suffix != '.tsv':
        raise ValueError(f'--transcripts={path}: a {path.suffix} file goes with one manifest; '
                         'for a folder give a table (path<TAB>transcript)')
      texts = read_aligned(path, len(listed), paths[0])
    else:
      found = _table_values(read_table(path, 'transcript'), listed, files_)
      texts = [' '.join((t or '').split()) for t in found]
  return listed, files_, classes, texts


# --- decoding -----------------------------------------------------------------------------------


def decode(path):
  """int16 [n] 16 kHz mono PCM of an audio file; ValueError(reason) when it has none to give."""
  pieces = []
  try:
    with soundfile.SoundFile(path) as f:
      rate = f.samplerate
      stream = (soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype='float32', quality='HQ')
                if rate != SAMPLE_RATE else None)
      for block in f.blocks(BLOCK_FRAMES, dtype='float32', always_2d=True):
        mono = block.mean(axis=1)
        pieces.append(stream.resample_chunk(mono) if stream else mono)
      if stream:
        pieces.append(stream.resample_chunk(np.zeros(0, np.float32), last=True))
  except (soundfile.SoundFileError, RuntimeError, OSError, ValueError, EOFError) as e:
    raise ValueError(f'cannot decode: {e}') from None
  x = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
  if not len(x):
    raise ValueError('no samples')
  if not np.isfinite(x).all():
    raise ValueError('non-finite samples')
  # Resampling can overshoot full scale; scaling such a clip down to fit int16 changes nothing
  # downstream: every reader normalises each clip to zero mean and unit variance.
  peak = float(np.abs(x).max())
  if peak > 1:
    x = x / peak
  return np.round(x * PCM_MAX).astype(np.int16)


def _seconds(paths):
  """Durations by the files' headers (0 for an unreadable one: its shard skips it later)."""
  out = []
  for path in paths:
    try:
      info = soundfile.info(path)
      out.append(info.frames / info.samplerate if 0 < info.frames < 2**40 else 0.0)
    except (soundfile.SoundFileError, RuntimeError, OSError, ValueError, EOFError):
      out.append(0.0)
  return out


def _write_shard(job):
  """Decodes one shard's files into its .npy: job = (path, [file]) -> summary."""
  out_path, paths = job
  pieces, lengths, skipped = [], [], []
  for path in paths:
    try:
      pcm = decode(path)
    except ValueError as e:
      skipped.append([path, str(e)])
      lengths.append(-1)
      continue
    pieces.append(pcm)
    lengths.append(len(pcm))
  header = np.lib.format.header_data_from_array_1_0(np.zeros(0, np.int16))
  header['shape'] = (sum(len(p) for p in pieces),)
  with atomic.open_for_write(out_path) as f:  # the .npy without concatenating the clips
    np.lib.format.write_array_header_1_0(f, header)
    for p in pieces:
      f.write(p.astype('<i2').tobytes())
  return {'num_samples': lengths, 'skipped': skipped}


def _plan_shards(split_items, seconds, shard_seconds):
  """[[position]] per shard: consecutive clips until a shard holds shard_seconds."""
  groups, current, total = [], [], 0.0
  for i in split_items:
    current.append(i)
    total += seconds[i]
    if total >= shard_seconds:
      groups.append(current)
      current, total = [], 0.0
  if current:
    groups.append(current)
  return groups


# --- the whole preparation ----------------------------------------------------------------------


def prepare(*, src, data_dir, name, labels='auto', val_fraction=0.1, test_fraction=0.1,
            transcripts='auto', label_file=None, shard_seconds=SHARD_SECONDS, workers=0,
            strict=False, overwrite=False):
  """Prepares the audio of `src` as DATA_DIR/NAME (module docstring); returns its path."""
  datasets.check_name(name)
  if not shard_seconds > 0:
    raise ValueError(f'--shard_seconds={shard_seconds} must be positive')
  listed, paths, classes, texts = list_sources(
      src, labels=labels, val_fraction=val_fraction, test_fraction=test_fraction,
      transcripts=transcripts, label_file=label_file)
  source = [str(p) for p in ([src] if isinstance(src, (str, os.PathLike)) else src)]
  source = str(pathlib.Path(source[0]).resolve()) if len(source) == 1 else [
      str(pathlib.Path(s).resolve()) for s in source]
  return write_set(data_dir=data_dir, name=name, source=source, listed=listed, paths=paths,
                   classes=classes, texts=texts, shard_seconds=shard_seconds, workers=workers,
                   strict=strict, overwrite=overwrite)


def write_set(*, data_dir, name, source, listed, paths, classes, texts, extras=None,
              shard_seconds=SHARD_SECONDS, workers=0, strict=False, overwrite=False,
              bundled=False):
  """Writes DATA_DIR/NAME from listed clips; returns its path. `prepare` and the bundled sets
  (data2vec/preparation/bundled_speech.py, `bundled=True`) both end here.

  listed: a sources.Source per clip (its jsonl `path`, split, label); paths: the file of each;
  classes: the label names; texts: the transcript of each ('' none); extras: None or a dict per
  clip of further jsonl fields (str values).
  """
  plan = {'format': 'audio', 'source': source, 'files': paths, 'classes': classes,
          'splits': [s.split for s in listed], 'labels': [s.label for s in listed],
          'transcripts': hashlib.sha256(json.dumps(texts).encode()).hexdigest(),
          'shard_seconds': shard_seconds, 'sample_rate': SAMPLE_RATE}
  if extras:  # only then: a user set's plan, and so its finished-check, stays as it was
    plan['extras'] = hashlib.sha256(json.dumps(extras, sort_keys=True).encode()).hexdigest()
  extras = extras or [{}] * len(listed)
  output = shards.Output(data_dir, name, plan, overwrite=overwrite, bundled=bundled)
  if output.finished:
    print(f'audio: {output.final} is already prepared from {source}; nothing to do')
    return output.final
  by_split = {}
  for i, s in enumerate(listed):
    by_split.setdefault(s.split, []).append(i)
  # Shards by the headers' durations: the same files give the same shards on a rerun.
  seconds = [x for chunk in shards.parallel_map(
      _seconds, shards.chunks(paths, HEADERS_PER_TASK), workers=workers, what='audio headers')
             for x in chunk]
  groups = {}  # shard name -> positions, in split and file order
  for split, items in sorted(by_split.items()):
    for i, group in enumerate(_plan_shards(items, seconds, shard_seconds)):
      groups[f'{split}-{i:05d}.npy'] = group
  todo = [shard for shard in groups if output.summary(shard) is None]
  counts = ', '.join(f'{k} {len(v)}' for k, v in sorted(by_split.items()))
  print(f'audio: {len(paths)} files, {sum(seconds) / 3600:.2f} h ({counts}; {len(classes)} '
        f'classes; {sum(map(bool, texts))} transcripts); {len(groups) - len(todo)} of '
        f'{len(groups)} shards already written')
  results = shards.parallel_map(
      _write_shard, [(output.shard_path(s), [paths[i] for i in groups[s]]) for s in todo],
      workers=workers, what='audio shards')
  for shard, result in zip(todo, results):  # committed one by one: a kill keeps them
    output.commit(shard, result)
  summaries = {shard: output.summary(shard) for shard in groups}
  skipped = [tuple(x) for s in summaries.values() for x in s['skipped']]
  shards.report_skipped(skipped, 'audio files', strict)
  meta = {'format': 'audio', 'name': name, 'source': source, 'sample_rate': SAMPLE_RATE,
          'classes': list(classes) or None, 'skipped': shards.skipped_summary(skipped),
          'splits': {}, 'hours': {}, 'shards': {}, 'transcripts': 0}
  for split in sorted(by_split):
    names = [shard for shard in groups if shard.startswith(f'{split}-')]
    index = []  # (shard, offset, num_samples) of the clips kept, in file order
    with atomic.open_for_write(output.shard_path(f'{split}.jsonl'), 'w') as f:
      for number, shard in enumerate(names):
        offset = 0
        for i, n in zip(groups[shard], summaries[shard]['num_samples']):
          if n < 0:  # skipped
            continue
          index.append((number, offset, n))
          f.write(json.dumps({'path': listed[i].path, 'shard': number, 'offset': offset,
                              'num_samples': n, 'label': listed[i].label,
                              'transcript': texts[i], **extras[i]}, ensure_ascii=False) + '\n')
          meta['transcripts'] += bool(texts[i])
          offset += n
      if not index:
        raise ValueError(f'--src={source}: no readable audio file in the {split} split')
    index = np.array(index, np.int64)
    atomic.save_npy(output.shard_path(f'{split}_index.npy'), index)
    meta['splits'][split] = len(index)
    meta['hours'][split] = round(int(index[:, 2].sum()) / SAMPLE_RATE / 3600, 4)
    meta['shards'][split] = names
  output.publish(meta)
  print(f'audio: wrote {output.final}: {meta["splits"]} clips, {meta["hours"]} h, '
        f'{len(classes)} classes, {meta["transcripts"]} transcripts, {len(skipped)} skipped')
  return output.final
