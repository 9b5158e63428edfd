r"""Learning per unit of compute: the ridge probe against pretraining time, data2vec vs 2.0.

  python scripts/probe_curves.py --modality vision,audio,text --seeds 0,1,2 \
      --root /tmp/curves --out docs/probe_curves.json --svg docs/probe_curves

For every seed, modality and algorithm, runs `train.py` on the tiny recipe (configs/{m}.py:tiny
for v1, configs/{m}2.py:tiny for v2) in its own process with the ridge probe every
--probe_every steps, and reads back from metrics.jsonl each probe's accuracy with the training
time spent to reach it (`train_cpu_s`, `train_wall_s`: evaluation excluded, compilation included;
data2vec/metrics.py TrainClock). A finished run's workdir is reused, so a stopped sweep continues.

Each curve starts with the encoder's random init (step 0: the same probe, computed here after
the runs). Writes the curves (JSON), one SVG plot per modality (accuracy against CPU minutes, the mean over
seeds with every seed's points) and prints a markdown table: v1's final accuracy (mean over seeds),
the CPU time v2 needs to reach it (its first probe whose mean over seeds does), and the ratio.
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODALITIES = ('vision', 'audio', 'text')
CONFIG_FILES = {'v1': 'configs/{m}.py:tiny', 'v2': 'configs/{m}2.py:tiny'}
METRIC = 'ridge_probe_accuracy'
COLOURS = {'v1': '#1f77b4', 'v2': '#d62728'}

_MODALITY = flags.DEFINE_list('modality', ['vision', 'audio', 'text'], 'Modalities.')
_ALGORITHM = flags.DEFINE_list('algorithm', ['v1', 'v2'], 'Algorithms (v1: data2vec, v2: 2.0).')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'config.seed of the runs.')
_PROBE_EVERY = flags.DEFINE_integer('probe_every', None, 'Steps between probes (default: a '
                                    'sixth of the recipe, so six points per curve).')
_ROOT = flags.DEFINE_string('root', None, 'The runs\' workdirs go here.', required=True)
_OUT = flags.DEFINE_string('out', None, 'Write the curves here as JSON.')
_SVG = flags.DEFINE_string('svg', None, 'Write DIR/{modality}.svg plots.')


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


def tiny_config(config_file):
  """The config of 'configs/NAME.py:tiny'."""
  name = os.path.basename(config_file.split('.py')[0])
  return importlib.import_module(f'configs.{name}').get_config('tiny')


def initial_point(modality, algorithm, seed):
  """(0, 0, 0, accuracy) of the run's encoder before its first step: the same ridge probe on
  the identical random init (config.seed), computed here."""
  config = tiny_config(CONFIG_FILES[algorithm].format(m=modality))
  config.seed, config.probe_every_steps = seed, 1
  train = trainer.build_train_step(config, sharding.make_mesh(config.mesh))
  return (0, 0.0, 0.0, float(train.task.evaluator(train.mesh)(train.init())[METRIC]))


def run(modality, algorithm, seed):
  """Trains one run unless its workdir already holds its final probe; returns its points."""
  config_file = CONFIG_FILES[algorithm].format(m=modality)
  steps = tiny_config(config_file).total_steps
  every = _PROBE_EVERY.value or steps // 6
  workdir = run_dir(modality, algorithm, seed)
  points = read_points(workdir)
  if not points or points[-1][0] < steps:
    subprocess.run([sys.executable, 'train.py', f'--config={config_file}', f'--workdir={workdir}',
                    f'--config.seed={seed}', f'--config.probe_every_steps={every}',
                    f'--config.checkpoint_every_steps={steps}'], cwd=REPO, check=True)
    points = read_points(workdir)
  return points


def summary(curves):
  """Per modality: the random-init and final accuracies (means over seeds), the mean CPU time of
  v1's final probe and of v2's first probe reaching v1's final accuracy, and their ratio (None
  where v2 never does)."""
  rows = {}
  for modality, by_alg in curves.items():
    if not (by_alg.get('v1') and by_alg.get('v2')):  # a sweep still under way
      continue
    seeds = min(len(by_alg['v1']), len(by_alg['v2']))  # the seeds both have
    by_alg = {a: by_alg[a][:seeds] for a in ('v1', 'v2')}
    mean = {a: np.mean([[p[3] for p in seed] for seed in runs], axis=0)
            for a, runs in by_alg.items()}
    cpu = {a: np.mean([[p[1] for p in seed] for seed in runs], axis=0)
           for a, runs in by_alg.items()}
    target = float(mean['v1'][-1])
    reached = np.flatnonzero(mean['v2'] >= target)
    v2_s = float(cpu['v2'][reached[0]]) if reached.size else None
    spread = {a: float(np.std([seed[-1][3] for seed in runs])) for a, runs in by_alg.items()}
    rows[modality] = {
        'v1_initial_accuracy': float(mean['v1'][0]), 'v2_initial_accuracy': float(mean['v2'][0]),
        'v1_final_accuracy': target, 'v1_cpu_s': float(cpu['v1'][-1]),
        'v2_final_accuracy': float(mean['v2'][-1]), 'v2_cpu_s_total': float(cpu['v2'][-1]),
        'v2_cpu_s_to_v1_final': v2_s,
        'time_ratio': None if v2_s is None else v2_s / float(cpu['v1'][-1]),
        'final_accuracy_std': spread}
  return rows


def svg(modality, by_alg, path):
  """Accuracy against CPU minutes: each seed's points, the mean over seeds as a line."""
  width, height, pad = 560, 360, 50
  points = [p for runs in by_alg.values() for seed in runs for p in seed]
  x_max = max(p[1] for p in points) / 60 * 1.05
  y_lo, y_hi = min(p[3] for p in points) - 0.01, max(p[3] for p in points) + 0.01
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
  curves = {m: {a: [] for a in _ALGORITHM.value} for m in _MODALITY.value}
  for seed in _SEEDS.value:  # seed-major: a stopped sweep leaves whole seeds
    for modality in _MODALITY.value:
      for algorithm in _ALGORITHM.value:
        curves[modality][algorithm].append(run(modality, algorithm, int(seed)))
  for modality, by_alg in curves.items():  # after the timed runs, in this process
    for algorithm, runs in by_alg.items():
      for seed, points in zip(_SEEDS.value, runs):
        points.insert(0, initial_point(modality, algorithm, int(seed)))
  if _OUT.value:
    atomic.write_text(_OUT.value, json.dumps(
        {'point': ['step', 'train_cpu_s', 'train_wall_s', METRIC], 'curves': curves,
         'summary': summary(curves)}, indent=1) + '\n')
  if _SVG.value:
    os.makedirs(_SVG.value, exist_ok=True)
    for modality, by_alg in curves.items():
      svg(modality, by_alg, os.path.join(_SVG.value, f'{modality}.svg'))
  print('| modality | v1 init | v1 final (CPU min) | v2 init | v2 final (CPU min) | '
        'v2 CPU min to v1 final | ratio |')
  print('|---|---|---|---|---|---|---|')
  for modality, r in summary(curves).items():
    to = '-' if r['v2_cpu_s_to_v1_final'] is None else f"{r['v2_cpu_s_to_v1_final'] / 60:.1f}"
    ratio = '-' if r['time_ratio'] is None else f"{r['time_ratio']:.2f}"
    print(f"| {modality} | {r['v1_initial_accuracy']:.3f} | {r['v1_final_accuracy']:.3f} "
          f"({r['v1_cpu_s'] / 60:.1f}) | {r['v2_initial_accuracy']:.3f} | "
          f"{r['v2_final_accuracy']:.3f} ({r['v2_cpu_s_total'] / 60:.1f}) | {to} | {ratio} |")


if __name__ == '__main__':
  cli.run(main)
