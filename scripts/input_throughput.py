r"""Throughput of the pretraining input pipelines per CPU core, on prepared data sets.

  python scripts/input_throughput.py --vision jpeg500 --audio ktuberling --text pydocs \
      [--size base] [--cores 1] [--batches 40] [--data_dir DIR] [--out input.json]

Each named data set is read by train.py's pretraining pipeline (tasks.make_input) of the
`--size` config of its modality, with this process pinned to `--cores` cores (os.sched_setaffinity:
grain's threads share them), after a warm-up longer than the prefetch buffer. Prints and writes
examples/s and the modality's unit: images/s (crops at the config's image size), seconds of 16-kHz
audio per second (the crops the batches hold), tokens/s (non-padding); docs/benchmark.md turns
them into the cores that would feed a GPU.
"""
import json
import os
import platform
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import audio, text, vision  # pylint: disable=g-import-not-at-top
from data2vec import atomic, cli, tasks  # pylint: disable=g-import-not-at-top
from data2vec.input_pipeline import text_data  # pylint: disable=g-import-not-at-top

CONFIGS = {'vision': vision, 'audio': audio, 'text': text}
_DATASETS = {m: flags.DEFINE_string(m, None, f'A {m} data set name (config.input.dataset).')
             for m in CONFIGS}
_SIZE = flags.DEFINE_string('size', 'base', 'Config variant whose pipeline is measured.')
_CORES = flags.DEFINE_integer('cores', 1, 'Cores the process is pinned to.')
_BATCHES = flags.DEFINE_integer('batches', 40, 'Batches timed per pipeline.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Examples per batch.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'config.data_dir (default: the config\'s).')
_OUT = flags.DEFINE_string('out', None, 'Write the results here as JSON.')
WARMUP_BATCHES = 10  # more than the prefetch buffer (8): the timed batches are made while timed


def units(modality, batch):
  """(unit name, amount in the batch) of a pretraining batch."""
  if modality == 'vision':
    return 'images', batch['pixel_values'].shape[0]
  if modality == 'audio':
    mask = batch.get('attention_mask')
    samples = mask.sum() if mask is not None else batch['input_values'].size
    return 'audio_seconds', float(samples) / 16_000
  return 'tokens', int(batch['attention_mask'].sum())


def measure(modality, dataset):
  config = CONFIGS[modality].get_config(_SIZE.value)
  config.input.dataset = dataset
  if _DATA_DIR.value:
    config.data_dir = _DATA_DIR.value
  if modality == 'vision':
    config.model.num_channels = 3
  if modality == 'text':  # the set's own tokenizer sizes the embeddings
    vocab = text_data.vocabulary(config.data_dir, dataset)
    config.model.update(dict(vocab_size=vocab.size, pad_token_id=vocab.special_ids.pad))
  data_iter = tasks.make_input(config, _BATCH_SIZE.value)
  for _ in range(WARMUP_BATCHES):
    next(data_iter)
  amount, start = 0.0, time.perf_counter()
  for _ in range(_BATCHES.value):
    unit, n = units(modality, next(data_iter))
    amount += n
  seconds = time.perf_counter() - start
  return {'modality': modality, 'dataset': dataset, 'size': _SIZE.value,
          'batch_size': _BATCH_SIZE.value, 'batches': _BATCHES.value, 'seconds': seconds,
          'examples_per_s_per_core': _BATCH_SIZE.value * _BATCHES.value / seconds / _CORES.value,
          f'{unit}_per_s_per_core': amount / seconds / _CORES.value}


def cpu_name():
  try:
    with open('/proc/cpuinfo') as f:
      return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor()


def main(argv):
  del argv
  chosen = {m: flag.value for m, flag in _DATASETS.items() if flag.value}
  if not chosen:
    raise app.UsageError('name at least one data set: --vision, --audio or --text')
  os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:_CORES.value]))
  records = [measure(m, d) for m, d in chosen.items()]
  result = {'cpu': cpu_name(), 'cores': _CORES.value, 'records': records}
  print(json.dumps(result, indent=2))
  if _OUT.value:
    atomic.write_json(_OUT.value, result)


if __name__ == '__main__':
  cli.run(main)
