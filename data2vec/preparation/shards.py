"""Resumable, parallel writing of a prepared data set (data2vec/input_pipeline/datasets.py).

The sources are listed once into a plan (the files, their splits and labels, the options); its
hash names the work. Shards are converted in parallel worker processes and written one at a time
into DATA_DIR/NAME.partial/: a shard's data file is renamed into place whole, then its `.json`
summary (what was skipped, counts, index rows), so a shard whose summary exists is complete. A
rerun of the same plan after a kill keeps the complete shards and converts the rest; a finished
data set is found and left alone. The folder is renamed to DATA_DIR/NAME when every shard and
dataset.json are written: a failed or killed run never damages a data set already there.
"""
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import pathlib
import shutil
import time

from data2vec import atomic
from data2vec.input_pipeline import datasets

PROGRESS_SECONDS = 10.0
FIRST_SKIPPED = 10  # paths of skipped sources listed in dataset.json and the summary


def plan_hash(plan):
  return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]


class Output:
  """DATA_DIR/NAME being written from `plan` (any JSON value describing the whole job)."""

  def __init__(self, data_dir, name, plan, *, overwrite=False, bundled=False):
    datasets.check_name(name, bundled=bundled)
    self.data_dir = pathlib.Path(data_dir)
    self.final = self.data_dir / name
    self.partial = self.data_dir / f'{name}.partial'
    self.hash = plan_hash(plan)
    meta_path = self.final / datasets.META_FILE
    self.finished = False
    if self.final.exists():
      try:
        meta = json.loads(meta_path.read_text(encoding='utf-8'))
      except (OSError, ValueError):
        meta = {}
      if meta.get('plan_hash') == self.hash:
        self.finished = True  # the same command ran to the end before
        return
      if not overwrite:
        raise ValueError(f'{self.final} already holds a data set prepared from '
                         f'{meta.get("source", "other sources")!r} or with other options; pass '
                         '--overwrite to replace it (it is kept until the new one is complete)')
    plan_path = self.partial / 'plan.json'
    try:
      resumable = json.loads(plan_path.read_text(encoding='utf-8'))['hash'] == self.hash
    except (OSError, ValueError, KeyError, TypeError):
      resumable = False
    if not resumable:
      atomic.fresh_dir(self.partial)
      atomic.write_json(plan_path, {'hash': self.hash, 'plan': plan})

  def summary(self, shard):
    """The summary of a complete shard, or None."""
    path = self.partial / f'{shard}.json'
    return json.loads(path.read_text(encoding='utf-8')) if path.is_file() else None

  def shard_path(self, shard):
    return self.partial / shard

  def commit(self, shard, summary):
    """Marks `shard` complete (its data file already renamed into place)."""
    atomic.write_json(self.partial / f'{shard}.json', summary)

  def publish(self, meta):
    """Writes dataset.json (with the plan's hash) and renames the folder to DATA_DIR/NAME."""
    meta = dict(meta, version=datasets.FORMAT_VERSION, plan_hash=self.hash)
    for path in self.partial.glob('*.json'):
      if path.name != datasets.META_FILE:
        path.unlink()
    atomic.write_json(self.partial / datasets.META_FILE, meta)
    atomic.publish_dir(self.partial, self.final)


def chunks(items, size):
  return [items[i:i + size] for i in range(0, len(items), size)]


def parallel_map(fn, items, *, workers, what):
  """Yields fn(item) in order, computed in `workers` processes (1: this one), printing progress
  every 10 s. A generator, so that the caller commits each result as soon as it is there."""
  start = last = time.perf_counter()
  workers = max(1, min(workers or os.cpu_count() or 1, len(items) or 1))
  # spawn: forking a process that has started JAX's (or grain's) threads can deadlock.
  executor = (concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context('spawn')) if workers > 1 else None)
  try:
    mapped = executor.map(fn, items) if executor else map(fn, items)
    for done, result in enumerate(mapped, 1):
      yield result
      now = time.perf_counter()
      if now - last >= PROGRESS_SECONDS:
        last = now
        print(f'  {what}: {done}/{len(items)} ({done / (now - start):.1f}/s)', flush=True)
  finally:
    if executor:
      executor.shutdown(cancel_futures=True)


def skipped_summary(skipped):
  """{'count', 'first'} of [(path, reason)] for dataset.json."""
  return {'count': len(skipped), 'first': [f'{p}: {r}' for p, r in skipped[:FIRST_SKIPPED]]}


def report_skipped(skipped, what, strict):
  """Prints the count and first paths of undecodable sources; with `strict`, fails instead."""
  if not skipped:
    return
  listing = '; '.join(f'{p} ({r})' for p, r in skipped[:3])
  if strict:
    raise ValueError(f'{len(skipped)} {what} could not be decoded (--strict), e.g. {listing}')
  print(f'  skipped {len(skipped)} {what} that could not be decoded, e.g.:')
  for path, reason in skipped[:FIRST_SKIPPED]:
    print(f'    {path}: {reason}')


def remove_partial(data_dir, name):
  shutil.rmtree(pathlib.Path(data_dir) / f'{name}.partial', ignore_errors=True)
