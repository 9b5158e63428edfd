"""`prepare_data.py images`: a folder of JPEG / PNG / WebP files -> a prepared image set.

Writes DATA_DIR/NAME/ (read by data2vec/input_pipeline/images.py):
  dataset.json                      format 'images', splits, classes, skipped, shards, max_side,
                                    channels (3; 1 for grey sets written by prepare_arrays)
  {split}-{i:05d}.array_record      `shard_size` records each: int32 label + the encoded file
  {split}_labels.npy                int32 [N]: the records' labels in order (-1: unlabelled)

Splits and classes follow data2vec/preparation/sources.py (ImageNet's `train/CLASS/x.JPEG`,
category folders, or a flat unlabelled folder). Each file is decoded once here, so a broken one
is skipped and counted (ImageNet has a few) instead of failing a training run; the files are
stored as they are, or re-encoded as JPEG (quality 90) when `max_side` is set and their longer
side exceeds it (pretraining at 224 px needs no 4000-px photos: decoding them costs ~50x more).
Shards are written in parallel worker processes, resumably (data2vec/preparation/shards.py).
"""
import hashlib
import io
import pathlib

import numpy as np
import PIL.Image
from array_record.python import array_record_module

from data2vec import atomic
from data2vec.input_pipeline import datasets, images
from data2vec.preparation import shards, sources

EXTENSIONS = frozenset({'.jpg', '.jpeg', '.png', '.webp'})
SHARD_SIZE = 512  # ~55 MB of ImageNet JPEGs: a few thousand shards for 1.28M images
JPEG_QUALITY = 90
# group_size 1: every record is its own chunk, so a random read decompresses one image.
WRITER_OPTIONS = 'group_size:1'


def _convert(path, max_side):
  """(encoded bytes, None) of one file, or (None, reason) when it is not a readable image."""
  try:
    data = pathlib.Path(path).read_bytes()
    pixels = images.decode_image(data)
  except (OSError, ValueError) as e:
    return None, str(e)
  if max_side and max(pixels.shape[:2]) > max_side:
    image = PIL.Image.fromarray(pixels)
    image.thumbnail((max_side, max_side), PIL.Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, format='JPEG', quality=JPEG_QUALITY)
    data = out.getvalue()
  return data, None


def _write_records(out_path, records):
  """Writes [(label, encoded image)] as an ArrayRecord shard, atomically."""
  tmp = pathlib.Path(f'{out_path}.tmp')
  writer = array_record_module.ArrayRecordWriter(str(tmp), WRITER_OPTIONS)
  try:
    for label, data in records:
      writer.write(images.encode_record(label, data))
  finally:
    writer.close()
  tmp.replace(out_path)


def _write_shard(job):
  """Converts and writes one shard: job = (path, [(file, label)], max_side) -> summary."""
  out_path, items, max_side = job
  records, skipped = [], []
  for file, label in items:
    data, reason = _convert(file, max_side)
    if data is None:
      skipped.append((file, reason))
    else:
      records.append((label, data))
  _write_records(out_path, records)
  return {'labels': [label for label, _ in records], 'skipped': skipped}


def _png(image):
  out = io.BytesIO()
  PIL.Image.fromarray(image).save(out, format='PNG')
  return out.getvalue()


def prepare_arrays(*, data_dir, name, splits, classes, source, shard_size=SHARD_SIZE):
  """Writes in-memory grey images {split: (uint8 [N, H, W], labels [N])} as the prepared set
  DATA_DIR/NAME of 1-channel lossless PNGs (how the bundled Fashion-MNIST is stored)."""
  digest = hashlib.sha256()
  for split, (pixels, labels) in sorted(splits.items()):
    digest.update(split.encode() + pixels.tobytes() + np.asarray(labels, np.int64).tobytes())
  plan = {'format': 'images', 'source': source, 'data_sha256': digest.hexdigest(),
          'shard_size': shard_size}
  output = shards.Output(data_dir, name, plan, overwrite=True, bundled=True)
  if output.finished:
    return output.final
  meta = {'format': 'images', 'name': name, 'source': source, 'classes': list(classes),
          'channels': 1, 'skipped': shards.skipped_summary([]), 'splits': {}, 'shards': {}}
  for split, (pixels, labels) in sorted(splits.items()):
    names = []
    for i, start in enumerate(range(0, len(pixels), shard_size)):
      names.append(f'{split}-{i:05d}.array_record')
      _write_records(output.shard_path(names[-1]),
                     [(int(labels[j]), _png(pixels[j]))
                      for j in range(start, min(start + shard_size, len(pixels)))])
    atomic.save_npy(output.shard_path(f'{split}_labels.npy'), np.asarray(labels, np.int32))
    meta['splits'][split], meta['shards'][split] = len(pixels), names
  output.publish(meta)
  return output.final


def prepare(*, src, data_dir, name, labels='auto', val_fraction=0.1, test_fraction=0.1,
            max_side=0, shard_size=SHARD_SIZE, workers=0, strict=False, overwrite=False):
  """Prepares the images under `src` as DATA_DIR/NAME (module docstring); returns dataset.json."""
  datasets.check_name(name)
  sources.check_fractions(val_fraction, test_fraction)
  if max_side < 0 or shard_size < 1:
    raise ValueError(f'--max_side={max_side} must be >= 0 and --shard_size={shard_size} >= 1')
  src = pathlib.Path(src).resolve()
  paths = sources.list_files(src, EXTENSIONS, 'image')
  listed, classes = sources.assign(src, paths, labels=labels, val_fraction=val_fraction,
                                   test_fraction=test_fraction)
  plan = {'format': 'images', 'source': str(src), 'files': paths, 'classes': classes,
          'splits': [s.split for s in listed], 'labels': [s.label for s in listed],
          'max_side': max_side, 'shard_size': shard_size}
  output = shards.Output(data_dir, name, plan, overwrite=overwrite)
  if output.finished:
    print(f'images: {output.final} is already prepared from {src}; nothing to do')
    return output.final
  by_split = {}
  for s in listed:
    by_split.setdefault(s.split, []).append((str(src / s.path), s.label))
  jobs = {}  # shard name -> job, in split and file order
  for split, items in sorted(by_split.items()):
    for i, chunk in enumerate(shards.chunks(items, shard_size)):
      shard = f'{split}-{i:05d}.array_record'
      jobs[shard] = (output.shard_path(shard), chunk, max_side)
  todo = [shard for shard in jobs if output.summary(shard) is None]
  counts = ', '.join(f'{k} {len(v)}' for k, v in sorted(by_split.items()))
  print(f'images: {len(paths)} files in {src} ({counts}; '
        f'{len(classes)} classes); {len(jobs) - len(todo)} of {len(jobs)} shards already written')
  results = shards.parallel_map(_write_shard, [jobs[s] for s in todo], workers=workers,
                                what='image shards')
  for shard, result in zip(todo, results):  # committed one by one: a kill keeps them
    output.commit(shard, result)
  summaries = {shard: output.summary(shard) for shard in jobs}
  skipped = [tuple(x) for s in summaries.values() for x in s['skipped']]
  shards.report_skipped(skipped, 'images', strict)
  meta = {'format': 'images', 'name': name, 'source': str(src), 'classes': list(classes) or None,
          'skipped': shards.skipped_summary(skipped), 'max_side': max_side,
          'splits': {}, 'shards': {}}
  for split in sorted(by_split):
    names = [shard for shard in jobs  # a shard whose every file was skipped is left out
             if shard.startswith(f'{split}-') and summaries[shard]['labels']]
    split_labels = np.array([l for shard in names for l in summaries[shard]['labels']], np.int32)
    if not len(split_labels):
      if split == 'train':
        raise ValueError(f'--src={src}: no readable image in the train split')
      print(f'  the {split} split has no readable image: left out')
      continue
    atomic.save_npy(output.shard_path(f'{split}_labels.npy'), split_labels)
    meta['splits'][split] = len(split_labels)
    meta['shards'][split] = names
  output.publish(meta)
  print(f'images: wrote {output.final}: {meta["splits"]}, {len(classes)} classes, '
        f'{len(skipped)} skipped')
  return output.final
