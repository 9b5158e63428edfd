"""Atomic writes: a file or folder appears whole under its name, or not at all.

Everything the project writes for a user to keep (configs, metrics, prepared data sets, exports)
goes through here: content goes to a temporary name in the same folder (same file system, so the
rename is atomic) and is renamed into place once complete. A kill at any point leaves either the
old version or the new one, plus at most a `*.tmp` left-over that the next write replaces.
"""
import contextlib
import json
import os
import pathlib
import shutil

import numpy as np


def _tmp(path):
  return path.with_name(path.name + '.tmp')


@contextlib.contextmanager
def open_for_write(path, mode='wb'):
  """`with open_for_write(path, 'w') as f:` writes into path.tmp and renames it on success."""
  path = pathlib.Path(path)
  tmp = _tmp(path)
  try:
    with open(tmp, mode, **({} if 'b' in mode else {'encoding': 'utf-8'})) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  os.replace(tmp, path)


def write_bytes(path, data):
  with open_for_write(path, 'wb') as f:
    f.write(data)


def write_text(path, text):
  with open_for_write(path, 'w') as f:
    f.write(text)


def write_json(path, obj):
  write_text(path, json.dumps(obj, indent=2, sort_keys=True) + '\n')


def save_npy(path, array):
  with open_for_write(path, 'wb') as f:
    np.save(f, array)


def fresh_dir(path):
  """An empty folder `path` (a left-over of an interrupted write is removed first)."""
  path = pathlib.Path(path)
  if path.exists():
    shutil.rmtree(path)
  path.mkdir(parents=True)
  return path


def publish_dir(tmp, out):
  """Renames the complete folder `tmp` to `out`; an existing `out` is replaced only once `tmp` is
  in place (it is moved aside, then removed), so a kill leaves one of the two whole."""
  tmp, out = pathlib.Path(tmp), pathlib.Path(out)
  if not out.exists():
    os.replace(tmp, out)
    return
  old = out.with_name(out.name + '.old')
  if old.exists():
    shutil.rmtree(old)
  os.replace(out, old)
  os.replace(tmp, out)
  shutil.rmtree(old)
