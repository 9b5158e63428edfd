r"""Learning per unit of compute: the ridge probe against pretraining time, data2vec vs 2.0.

  python scripts/probe_curves.py --modality vision,audio,text --seeds 0,1,2 \
      --root /tmp/curves --out docs/probe_curves.json --svg docs/probe_curves

For every seed, modality and algorithm, runs `train.py` on the tiny recipe (configs/{m}.py:tiny
for v1, configs/{m}2.py:tiny for v2) in its own process with the ridge probe every
--probe_every steps, and reads back from metrics.jsonl each probe's accuracy with the training
time spent to reach it (`train_cpu_s`, `train_wall_s`: evaluation excluded, compilation included;
data2vec/metrics.py TrainClock). A finished run's workdir is reused, so a stopped sweep continues.

`v1e` is v1's recipe on v2's encoder where the two differ (vision: learned absolute positions, no
relative position bias, no layer scale; speech and text share one encoder, so there v1e is v1's
run): a v2 lead over v1e is the algorithm's, not the architecture's, and the summary compares v2
with v1e.

Each curve starts with the encoder's random init (step 0: the same probe, computed here after
the runs); the same probe on the raw inputs (ridge.raw_accuracy) is the baseline. Writes the
curves (JSON), one SVG plot per modality (accuracy against CPU minutes, the mean over seeds with
every seed's points, the raw-input level dashed) and prints a markdown table: the final
accuracies (mean over seeds), the CPU time v2 needs to reach v1e's (its first probe whose mean
over seeds does), and the ratio.
"""
import importlib
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=g-import-not-at-top
import numpy as np

from data2vec import atomic, cli, sharding, trainer
from data2vec.evaluators import ridge

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODALITIES = ('vision', 'audio', 'text')
CONFIG_FILES = {'v1': 'configs/{m}.py:tiny', 'v1e': 'configs/{m}.py:tiny',
                'v2': 'configs/{m}2.py:tiny'}
# v1e's overrides: v1 on configs/vision2.py's encoder (the mask token stays: v1 needs it).
V2_ENCODER = {'vision': {'model.use_absolute_position_embeddings': True,
                         'model.use_shared_relative_position_bias': False,
                         'model.layer_scale_init_value': 0.0}}
BASELINE = 'v1e'  # what v2 is compared with
METRIC = 'ridge_probe_accuracy'
COLOURS = {'v1': '#1f77b4', 'v1e': '#2ca02c', 'v2': '#d62728'}

_MODALITY = flags.DEFINE_list('modality', ['vision', 'audio', 'text'], 'Modalities.')
_ALGORITHM = flags.DEFINE_list('algorithm', ['v1', 'v1e', 'v2'], 'Algorithms (v1: data2vec, v1e: '
                                'v1 on v2\'s encoder, v2: 2.0).')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'config.seed of the runs.')
_PROBE_EVERY = flags.DEFINE_integer('probe_every', None, 'Steps between probes (default: a '
                                    'sixth of the recipe, so six points per curve).')
_ROOT = flags.DEFINE_string('root', None, 'The runs\' workdirs go here.', required=True)
_SET = flags.DEFINE_multi_string('set', [], 'KEY=VALUE: a config field of every run (e.g. '
                                  'input.dataset=english), as train.py\'s --config.KEY=VALUE.')
_OUT = flags.DEFINE_string('out', None, 'Write the curves here as JSON.')
_SVG = flags.DEFINE_string('svg', None, 'Write DIR/{modality}.svg plots.')


def overrides(modality, algorithm, sets=()):
  """{config key: value} of a run beyond its config file: v1e's encoder, then `sets` (--set)."""
  keys = dict(V2_ENCODER.get(modality, {}) if algorithm == 'v1e' else {})
  for item in sets:
    key, sep, value = item.partition('=')
    if not sep or not key:
      raise app.UsageError(f'--set {item!r}: not KEY=VALUE')
    keys[key] = value
  return keys


def _assign(config, key, value):
  """config.KEY = value; a string value takes the field's type, as a --config.KEY flag would."""
  *path, field = key.split('.')
  block = config
  try:
    for name in path:
      block = block[name]
    old = block[field]
  except (KeyError, TypeError):
    raise app.UsageError(f'--set {key}=...: the config has no field {key}') from None
  if isinstance(value, str) and not isinstance(old, str):
    value = value == 'True' if isinstance(old, bool) else type(old)(value)
  block[field] = value


def algorithms(modality):
  """The requested algorithms with runs of their own: v1e is v1 where the encoders agree."""
  same = {'v1e': 'v1'} if modality not in V2_ENCODER else {}
  return list(dict.fromkeys(same.get(a, a) for a in _ALGORITHM.value))


def run_dir(modality, algorithm, seed):
  return os.path.join(_ROOT.value, f'{modality}_{algorithm}_seed{seed}')


def read_points(workdir):
  """[(step, train_cpu_s, train_wall_s, accuracy)] of the probes logged in `workdir`."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [(r['step'], r['train_cpu_s'], r['train_wall_s'], r[METRIC])
          for r in records if METRIC in r]


def tiny_config(modality, algorithm, sets=()):
  """The run's config: its config file's tiny variant with overrides(modality, algorithm, sets)."""
  name = os.path.basename(CONFIG_FILES[algorithm].format(m=modality).split('.py')[0])
  config = importlib.import_module(f'configs.{name}').get_config('tiny')
  for key, value in overrides(modality, algorithm, sets).items():
    _assign(config, key, value)
  return config


def initial_point(modality, algorithm, seed):
  """(0, 0, 0, accuracy) of the run's encoder before its first step: the same ridge probe on
  the identical random init (config.seed), computed here."""
  config = tiny_config(modality, algorithm, _SET.value)
  config.seed, config.probe_every_steps = seed, 1
  train = trainer.build_train_step(config, sharding.make_mesh(config.mesh))
  return (0, 0.0, 0.0, float(train.task.evaluator(train.mesh)(train.init())[METRIC]))


def run(modality, algorithm, seed):
  """Trains one run unless its workdir already holds its final probe; returns its points."""
  steps = tiny_config(modality, algorithm, _SET.value).total_steps
  every = _PROBE_EVERY.value or steps // 6
  workdir = run_dir(modality, algorithm, seed)
  points = read_points(workdir)
  if not points or points[-1][0] < steps:
    config_file = CONFIG_FILES[algorithm].format(m=modality)
    extra = [f'--config.{k}={v}' for k, v in overrides(modality, algorithm, _SET.value).items()]
    subprocess.run([sys.executable, 'train.py', f'--config={config_file}', f'--workdir={workdir}',
                    f'--config.seed={seed}', f'--config.probe_every_steps={every}',
                    f'--config.checkpoint_every_steps={steps}', *extra], cwd=REPO, check=True)
    points = read_points(workdir)
  return points


def summary(curves, raw=None):
  """Per modality: every algorithm's random-init and final accuracy (means over the seeds all
  algorithms have), the final's std and mean CPU seconds; v2's first mean CPU time at which
  its mean accuracy reaches the baseline's (v1e, else v1) final one, from its first checkpoint
  on, and the ratio of the two times (None where v2 never does); the gain of pretraining (final
  minus random init); raw[modality] as 'raw_accuracy'."""
  rows = {}
  for modality, by_alg in curves.items():
    baseline = BASELINE if by_alg.get(BASELINE) else 'v1'
    if not (by_alg.get(baseline) and by_alg.get('v2')):  # a sweep still under way
      continue
    seeds = min(len(runs) for runs in by_alg.values() if runs)  # the seeds all have
    mean, cpu, stats = {}, {}, {}
    for algorithm, runs in by_alg.items():
      if not runs:
        continue
      runs = runs[:seeds]
      mean[algorithm] = np.mean([[p[3] for p in seed] for seed in runs], axis=0)
      cpu[algorithm] = np.mean([[p[1] for p in seed] for seed in runs], axis=0)
      stats[algorithm] = {
          'initial_accuracy': float(mean[algorithm][0]),
          'final_accuracy': float(mean[algorithm][-1]),
          'gain': float(mean[algorithm][-1] - mean[algorithm][0]),
          'final_accuracy_std': float(np.std([seed[-1][3] for seed in runs])),
          'cpu_s': float(cpu[algorithm][-1])}
    target = stats[baseline]['final_accuracy']
    # From the first checkpoint: a random init above the target has not reached it by learning.
    reached = np.flatnonzero(mean['v2'][1:] >= target)
    v2_s = float(cpu['v2'][1 + reached[0]]) if reached.size else None
    rows[modality] = {
        'seeds': seeds, 'algorithms': stats, 'baseline': baseline,
        'v2_cpu_s_to_baseline_final': v2_s,
        'time_ratio': None if v2_s is None else v2_s / stats[baseline]['cpu_s'],
        'raw_accuracy': (raw or {}).get(modality)}
  return rows


def svg(modality, by_alg, path, raw=None):
  """Accuracy against CPU minutes: each seed's points, the mean over seeds as a line, the raw
  inputs' accuracy (if given) dashed."""
  width, height, pad = 560, 360, 50
  points = [p for runs in by_alg.values() for seed in runs for p in seed]
  x_max = max(p[1] for p in points) / 60 * 1.05
  levels = [p[3] for p in points] + ([] if raw is None else [raw])
  y_lo, y_hi = min(levels) - 0.01, max(levels) + 0.01
  sx = lambda v: pad + (width - 2 * pad) * v / x_max
  sy = lambda v: height - pad - (height - 2 * pad) * (v - y_lo) / (y_hi - y_lo)
  parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
           'stroke="black"/>',
           f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
           f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">pretraining CPU minutes '
           '(2 cores; evaluation excluded)</text>',
           f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" '
           f'text-anchor="middle">ridge probe accuracy</text>',
           f'<text x="{width / 2}" y="20" text-anchor="middle">{modality} tiny: data2vec (v1) vs '
           '2.0 (v2)</text>']
  if raw is not None:
    parts += [f'<line x1="{pad}" y1="{sy(raw):.1f}" x2="{width - pad}" y2="{sy(raw):.1f}" '
              'stroke="gray" stroke-dasharray="6 4"/>',
              f'<text x="{pad + 6}" y="{sy(raw) - 5:.1f}" fill="gray">raw inputs {raw:.3f}</text>']
  for tick in np.linspace(0, x_max, 5):
    parts.append(f'<text x="{sx(tick):.1f}" y="{height - pad + 16}" text-anchor="middle">'
                 f'{tick:.1f}</text>')
  for tick in np.linspace(y_lo, y_hi, 5):
    parts.append(f'<text x="{pad - 6}" y="{sy(tick) + 4:.1f}" text-anchor="end">{tick:.3f}</text>')
  for i, (algorithm, runs) in enumerate(sorted(by_alg.items())):
    colour = COLOURS[algorithm]
    for seed in runs:
      for p in seed:
        parts.append(f'<circle cx="{sx(p[1] / 60):.1f}" cy="{sy(p[3]):.1f}" r="2.5" '
                     f'fill="{colour}" fill-opacity="0.4"/>')
    mean = np.mean([[(p[1] / 60, p[3]) for p in seed] for seed in runs], axis=0)
    line = ' '.join(f'{sx(x):.1f},{sy(y):.1f}' for x, y in mean)
    parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
    parts.append(f'<text x="{width - pad - 90}" y="{pad + 16 * i}" fill="{colour}">{algorithm} '
                 f'({len(runs)} seeds)</text>')
  parts.append('</svg>')
  atomic.write_text(path, '\n'.join(parts) + '\n')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  for flag, allowed in ((_MODALITY, MODALITIES), (_ALGORITHM, CONFIG_FILES)):
    unknown = sorted(set(flag.value) - set(allowed))
    if unknown:
      raise app.UsageError(f'--{flag.name} {unknown}: not in {sorted(allowed)}')
  bad_seeds = [s for s in _SEEDS.value if not s.isdigit()]
  if bad_seeds:
    raise app.UsageError(f'--seeds {bad_seeds}: not non-negative integers')
  curves = {m: {a: [] for a in algorithms(m)} for m in _MODALITY.value}
  for seed in _SEEDS.value:  # seed-major: a stopped sweep leaves whole seeds
    for modality, by_alg in curves.items():
      for algorithm in by_alg:
        curves[modality][algorithm].append(run(modality, algorithm, int(seed)))
  for modality, by_alg in curves.items():  # after the timed runs, in this process
    for algorithm, runs in by_alg.items():
      for seed, points in zip(_SEEDS.value, runs):
        points.insert(0, initial_point(modality, algorithm, int(seed)))
  raw = {m: ridge.raw_accuracy(tiny_config(m, 'v1', _SET.value)) for m in curves}
  rows = summary(curves, raw)
  if _OUT.value:
    atomic.write_text(_OUT.value, json.dumps(
        {'point': ['step', 'train_cpu_s', 'train_wall_s', METRIC], 'curves': curves,
         'raw_accuracy': raw, 'summary': rows}, indent=1) + '\n')
  if _SVG.value:
    os.makedirs(_SVG.value, exist_ok=True)
    for modality, by_alg in curves.items():
      svg(modality, by_alg, os.path.join(_SVG.value, f'{modality}.svg'), raw[modality])
  print(table(rows))


def table(rows):
  """The summary as markdown: per algorithm init -> final (std, CPU minutes)."""
  names = [a for a in CONFIG_FILES if any(a in r['algorithms'] for r in rows.values())]
  lines = ['| modality | raw inputs | ' + ' | '.join(
      f'{a} init -> final (CPU min)' for a in names) + ' | v2 CPU min to the baseline\'s '
      'final | ratio |', '|---' * (len(names) + 4) + '|']
  for modality, r in rows.items():
    cells = []
    for a in names:
      c = r['algorithms'].get(a)
      cells.append('-' if c is None else f"{c['initial_accuracy']:.3f} -> "
                   f"{c['final_accuracy']:.3f} ± {c['final_accuracy_std']:.3f} "
                   f"({c['cpu_s'] / 60:.1f})")
    to = r['v2_cpu_s_to_baseline_final']
    to = 'never' if to is None else f'{to / 60:.1f}'
    ratio = '-' if r['time_ratio'] is None else f"{r['time_ratio']:.2f}"
    raw = '-' if r['raw_accuracy'] is None else f"{r['raw_accuracy']:.3f}"
    lines.append(f"| {modality} | {raw} | {' | '.join(cells)} | {to} ({r['baseline']}) | "
                 f'{ratio} |')
  return '\n'.join(lines)


if __name__ == '__main__':
  cli.run(main)
