"""Reading the prepared data files with errors that name the file and say how to redo it."""
import json

import numpy as np


def load_npy(path, modality, mmap_mode='r'):
  """np.load of a prepared array; a truncated or foreign file is a ValueError naming it."""
  try:
    return np.load(path, mmap_mode=mmap_mode)
  except (ValueError, OSError, EOFError) as e:  # truncated, not .npy, or pickled objects
    raise ValueError(f'{path}: not a readable .npy array ({e}); delete it and rerun '
                     f'`python scripts/prepare_data.py {modality}`') from None


def read_jsonl(path, modality):
  """The JSON objects of a prepared .jsonl file; a bad line is a ValueError naming file:line."""
  records = []
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:  # e.g. a file cut off while written by another tool
        raise ValueError(f'{path}:{number}: not a JSON object ({e}); delete the data set and '
                         f'rerun `python scripts/prepare_data.py {modality}`') from None
      if not isinstance(record, dict):
        raise ValueError(f'{path}:{number}: {type(record).__name__} where a JSON object belongs')
      records.append(record)
  return records
