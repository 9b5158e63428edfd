r"""Reproduces the results table: tiny pretraining, then linear probes, as Markdown.

  python scripts/results_table.py [--modalities=vision,audio,text] [--root workdirs/results]
      [--out docs/results.md] [--train_flag=--config.total_steps=300 ...]
      [--probe_flag=--config.seeds=(0,) ...]

Per modality (Fashion-MNIST, the TTS spoken digits, WordNet supersenses): pretrain the tiny
recipe on the real data (resuming if ROOT/<modality> holds a checkpoint; a finished run is not
repeated), then probe its encoder, the identical random-init encoder and the raw inputs with
eval.py (every label budget, 3 seeds), and write the table with the commands, their wall times
and the machine to --out. Every number comes from the JSON
files eval.py writes to ROOT/<modality>/eval/. Paths are relative to the repository root.
"""
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from data2vec import atomic, cli  # pylint: disable=g-import-not-at-top

MODALITIES = {  # modality -> (pretraining config, probe config, what the probe is)
    'vision': ('configs/vision.py:tiny', 'configs/probe_vision.py',
               'Fashion-MNIST, 10 classes; the test split'),
    'audio': ('configs/audio.py:tiny', 'configs/probe_audio.py',
              'TTS spoken digits, 10 classes; the test split\'s voices (the en-029 accent, '
              'flite awb and slt) are never heard in train'),
    'text': ('configs/text.py:tiny', 'configs/probe_text.py',
             'WordNet noun gloss -> supersense, the 10 largest classes; the test split'),
}
# The raw-input baselines of docs/data.md (logistic regression), quoted for comparison.
RAW_BASELINES = {
    'vision': 'raw pixels 0.834, a random ReLU projection 0.834 (10k training images)',
    'audio': 'mean + std of 40 log-mels 0.775',
    'text': 'TF-IDF 0.867, majority class 0.183',
}

_MODALITIES = flags.DEFINE_list('modalities', list(MODALITIES), f'Any of {sorted(MODALITIES)}.')
_ROOT = flags.DEFINE_string('root', 'workdirs/results', 'Where the workdirs go.')
_OUT = flags.DEFINE_string('out', 'docs/results.md', 'The Markdown file to write.')
_TRAIN_FLAGS = flags.DEFINE_multi_string('train_flag', [], 'Extra flags for train.py.')
_PROBE_FLAGS = flags.DEFINE_multi_string('probe_flag', [], 'Extra flags for eval.py.')


def run(args, log):
  """Runs `python *args` with this interpreter; returns its stdout and logs its wall time."""
  command = shlex.join(['python', *args])
  print('$', command, flush=True)
  start = time.time()
  proc = subprocess.run([sys.executable, *args], stdout=subprocess.PIPE, text=True)
  if proc.returncode:
    raise RuntimeError(f'{command} failed with exit status {proc.returncode}')
  log.append((command, time.time() - start))
  return proc.stdout


def probe(modality, workdir, log):
  """{'pretrained' | 'random_init' | 'raw': eval.py's result dict} of one modality."""
  _, probe_config, _ = MODALITIES[modality]
  base = ['eval.py', '--config', probe_config, *_PROBE_FLAGS.value]
  variants = {'pretrained': ['--workdir', workdir],
              'random_init': ['--workdir', workdir, '--config.random_init=True'],
              'raw': ['--out', os.path.join(workdir, 'eval'), '--config.raw_features=True']}
  results = {}
  for name, args in variants.items():
    printed = json.loads(run(base + args, log))
    with open(os.path.join(workdir, 'eval', printed['name'] + '.json')) as f:
      results[name] = json.load(f)
  return results


def _cell(entry, metric):
  return f'{entry[f"{metric}_mean"]:.3f} ± {entry[f"{metric}_std"]:.3f}'


def table(results, metric):
  """Markdown rows: one per label budget, pretrained / random init / raw, and the verdict."""
  step = results['pretrained']['source']['step']
  lines = [f'| labels per class | pretrained (step {step}) | random init | raw inputs '
           '| pretrained − random | beyond the spread |', '|---|---|---|---|---|---|']
  for budget, pre in results['pretrained']['summary'].items():
    rnd, raw = results['random_init']['summary'][budget], results['raw']['summary'][budget]
    gain = pre[f'{metric}_mean'] - rnd[f'{metric}_mean']
    spread = pre[f'{metric}_std'] + rnd[f'{metric}_std']
    lines.append(f'| {budget.replace("_per_class", "")} | {_cell(pre, metric)} | '
                 f'{_cell(rnd, metric)} | {_cell(raw, metric)} | {gain:+.3f} | '
                 f'{"yes" if gain > spread else "**no**"} |')
  return lines


def machine():
  import jax  # pylint: disable=g-import-not-at-top
  cpu = platform.processor()
  if os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo') as f:
      cpu = next((l.split(':', 1)[1].strip() for l in f if l.startswith('model name')), cpu)
  devices = ', '.join(sorted({d.device_kind for d in jax.devices()}))
  return (f'{cpu}, {os.cpu_count()} cores; {platform.platform()}; Python '
          f'{platform.python_version()}; jax {jax.__version__} on {jax.default_backend()} '
          f'({devices})')


def markdown(sections, log):
  seeds = len(next(iter(sections.values()))['pretrained']['config']['seeds'])  # --probe_flag: all
  commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], text=True,
                          capture_output=True).stdout.strip() or 'unknown'
  lines = [
      '# Results: linear probes of frozen encoders',
      '',
      f'Made by `python scripts/results_table.py` on {datetime.date.today()} at commit '
      f'{commit}.  ',
      f'Machine: {machine()}.',
      '',
      'Test accuracy of a linear classifier on mean-pooled frozen features (eval.py), mean ± '
      f'std over {seeds} seeds. A seed draws the label subset; the classifier fit itself is '
      'deterministic, so with all labels the std is 0. *Random init* is the identical '
      'architecture before pretraining; *raw inputs* is the same probe on the inputs (the '
      'pixels; the mean and std over frames of 40 log-mel bands; the bag of BPE tokens). '
      '*Beyond the spread*: the pretrained mean exceeds the random-init mean by more than '
      'the sum of their stds.',
      '',
      'Learning per unit of pretraining time, data2vec against data2vec 2.0 (a ridge probe at '
      'checkpoints, 3 seeds, with plots): `docs/probe_curves.md` (`scripts/probe_curves.py`).',
  ]
  for modality, results in sections.items():
    data = results['pretrained']['data']
    lines += ['', f'## {modality}: {MODALITIES[modality][2]}', '',
              f'{data["num_train"]} labelled training examples (before the per-class draw), '
              f'{data["num_test"]} test examples, {data["feature_dim"]}-d features.', '',
              '### Accuracy', '',
              *table(results, 'accuracy'), '', '### Macro-F1', '', *table(results, 'macro_f1'),
              '', f'Raw-input baselines (docs/data.md): {RAW_BASELINES[modality]}.']
  lines += ['', '## Commands', '', '| command | wall time |', '|---|---|']
  lines += [f'| `{command}` | {seconds / 60:.1f} min |' for command, seconds in log]
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  unknown = sorted(set(_MODALITIES.value) - set(MODALITIES))
  if unknown:
    raise app.UsageError(f'--modalities: no results recipe for {unknown} yet')
  os.chdir(REPO)  # the paths in the flags and in the logged commands are relative to it
  log, sections = [], {}
  for modality in _MODALITIES.value:
    workdir = os.path.join(_ROOT.value, modality)
    pretrain_config = MODALITIES[modality][0]
    run(['train.py', '--config', pretrain_config, '--workdir', workdir,
         *_TRAIN_FLAGS.value], log)
    sections[modality] = probe(modality, workdir, log)
  out = _OUT.value
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  atomic.write_text(out, markdown(sections, log))
  print(f'wrote {out}')


if __name__ == '__main__':
  cli.run(main)
