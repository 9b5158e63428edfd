"""Listing a user's folder tree: which files, which split, which class.

Layout rules (the same for images, audio and text files):
- Splits: when the top folder has subfolders named train / val / valid / validation / dev / test
  (SPLIT_FOLDERS), they are the splits and every file must lie in one. Otherwise each file goes to
  validation or test with probabilities `val_fraction` / `test_fraction`, decided by a hash of its
  path below the top folder, so the split does not depend on listing order or machine.
- Classes (`labels`): 'folders' takes the first folder below the split level (ImageNet's
  `train/n01440764/x.JPEG`, or `animals/mammals/cat.png` -> 'animals'); 'none' leaves the data
  unlabelled; 'auto' is 'folders' when every file lies in such a folder, else 'none'. Class ids
  follow the sorted class names.
"""
import dataclasses
import hashlib
import pathlib

SPLIT_FOLDERS = {'train': 'train', 'val': 'validation', 'valid': 'validation',
                 'validation': 'validation', 'dev': 'validation', 'test': 'test'}
LABEL_MODES = ('auto', 'folders', 'none')
UNLABELLED = -1


@dataclasses.dataclass(frozen=True)
class Source:
  path: str  # relative to the top folder, '/'-separated
  split: str
  label: int  # index into the classes, or UNLABELLED


def list_files(src, extensions, what):
  """The sorted relative paths of the files under `src` whose suffix (any case) is in
  `extensions`; hidden files and folders are left out. Errors name the folder."""
  src = pathlib.Path(src)
  if not src.is_dir():
    raise ValueError(f'--src={src}: not a folder')
  paths = sorted(
      p.relative_to(src).as_posix() for p in src.rglob('*')
      if p.suffix.lower() in extensions and p.is_file()
      and not any(part.startswith('.') for part in p.relative_to(src).parts))
  if not paths:
    raise ValueError(f'--src={src}: holds no {what} files ({", ".join(sorted(extensions))})')
  return paths


def holdout_split(key, val_fraction, test_fraction):
  """'train', 'validation' or 'test' for `key` (a relative path), fixed by its hash."""
  u = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], 'big') / 2**64
  if u < test_fraction:
    return 'test'
  if u < test_fraction + val_fraction:
    return 'validation'
  return 'train'


def check_fractions(val_fraction, test_fraction):
  for name, value in (('--val_fraction', val_fraction), ('--test_fraction', test_fraction)):
    if not 0 <= value < 1:
      raise ValueError(f'{name}={value}: must be in [0, 1)')
  if val_fraction + test_fraction >= 1:
    raise ValueError(f'--val_fraction={val_fraction} + --test_fraction={test_fraction} leave no '
                     'training data')


def assign(src, paths, *, labels='auto', val_fraction=0.1, test_fraction=0.1):
  """([Source], classes) of the relative `paths` under `src` (module docstring)."""
  if labels not in LABEL_MODES:
    raise ValueError(f'--labels={labels!r}: must be one of {LABEL_MODES}')
  check_fractions(val_fraction, test_fraction)
  parts = [p.split('/') for p in paths]
  split_folders = {q[0] for q in parts if len(q) > 1 and q[0].lower() in SPLIT_FOLDERS}
  if split_folders:
    outside = [p for p, q in zip(paths, parts) if len(q) < 2 or q[0] not in split_folders]
    if outside:
      raise ValueError(f'--src={src}: has split folders {sorted(split_folders)}, but '
                       f'{src}/{outside[0]} (and {len(outside) - 1} more) lies outside them')
    splits = [SPLIT_FOLDERS[q[0].lower()] for q in parts]
    below = [q[1:] for q in parts]
  else:
    splits = [holdout_split(p, val_fraction, test_fraction) for p in paths]
    below = parts
  if labels == 'auto':
    labels = 'folders' if all(len(q) > 1 for q in below) else 'none'
  if labels == 'none':
    return [Source(p, s, UNLABELLED) for p, s in zip(paths, splits)], ()
  flat = [p for p, q in zip(paths, below) if len(q) < 2]
  if flat:
    raise ValueError(f'--labels=folders: {src}/{flat[0]} (and {len(flat) - 1} more) is not inside '
                     'a class folder')
  classes = tuple(sorted({q[0] for q in below}))
  index = {c: i for i, c in enumerate(classes)}
  return [Source(p, s, index[q[0]]) for p, s, q in zip(paths, splits, below)], classes


def split_counts(sources):
  counts = {}
  for s in sources:
    counts[s.split] = counts.get(s.split, 0) + 1
  return counts
