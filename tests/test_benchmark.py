"""scripts/benchmark.py --quick end to end, so the benchmark cannot rot."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data2vec import pretraining2
from tests.test_train import needs_fashion_mnist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODALITIES = ('vision', 'audio', 'text')


def benchmark(*flags):
  return subprocess.run([sys.executable, 'scripts/benchmark.py', *flags], cwd=REPO,
                        capture_output=True, text=True)


def tokens(record):
  """Positions the Transformer stack sees per step: patches + cls, tokens or frames."""
  shapes = record['input_shapes']
  if record['modality'] == 'vision':
    batch, patches = shapes['bool_masked_pos']
    return batch * (patches + 1)
  return int(np.prod(shapes['input_ids' if record['modality'] == 'text' else 'mask_time_indices']))


@needs_fashion_mnist
def test_quick_benchmark(tmp_path):
  out = tmp_path / 'bench.json'
  # A scanned stack: the FLOPs must still count every layer.
  run = benchmark('--quick', '--size=tiny', f'--modality={",".join(MODALITIES)}',
                  '--model=scan_layers=True', '--pipeline=vision', f'--out={out}')
  assert run.returncode == 0, run.stderr[-5000:]
  results = json.loads(out.read_text())
  assert [r['modality'] for r in results['results']] == list(MODALITIES)
  peak = results['peak_matmul']['flops_per_s'] * results['environment']['num_devices']
  for r in results['results']:
    ours, theirs = r['ours'], r['torch']
    assert r['modality'] in run.stdout
    for steps in (ours, theirs):  # 1 warm-up, then 2 rounds of 1 untimed and 2 timed steps
      assert len(steps['warmup_times_s']) == 1
      assert np.shape(steps['round_warmup_times_s']) == (2, 1)
      assert np.shape(steps['times_s']) == (2, 2)
      assert len(steps['loss']) == len(steps['grad_norm']) == 6
      assert steps['step_s'] == pytest.approx(np.median(steps['times_s']))
    assert r['speedup_vs_torch'] == pytest.approx(np.median(
        np.divide(theirs['round_step_s'], ours['round_step_s'])))
    assert ours['compile_s'] > 0 and ours['memory_per_device_bytes']['argument'] > 0
    assert ours['peak_fraction'] == pytest.approx(r['flops_per_step'] / ours['step_s'] / peak)
    # At least the Transformer matmuls: student forward + backward (6) and teacher forward (2)
    # FLOPs per weight and position. A scan counted once would fall below.
    m = r['model']
    assert m['scan_layers']
    layer_weights = m['num_hidden_layers'] * (4 * m['hidden_size'] ** 2 +
                                              2 * m['hidden_size'] * m['intermediate_size'])
    assert r['flops_per_step'] > 8 * layer_weights * tokens(r)
    # Same weights, same batch, no dropout: the transformers step computes our step, updates
    # and EMA included (6 steps agree to ~1e-6; one top-K layer too few is off by > 1e-4), and
    # both learn.
    assert max(r['torch_rel_diff'].values()) < 2e-5, (ours, theirs)
    assert ours['loss'][-1] < ours['loss'][0]
  pipeline = results['results'][0]['pipeline']
  assert pipeline['batches_per_s'] > 0 and pipeline['fed_step_s'] > 0
  assert pipeline['ratio'] == pytest.approx(pipeline['batches_per_s'] / pipeline['steps_per_s'])
  assert 'pipeline' not in results['results'][1]


def test_bad_model_override_is_named():
  run = benchmark('--quick', '--modality=vision', '--model=no_such_field=1', '--notorch')
  assert run.returncode != 0
  assert 'no_such_field' in run.stderr


@needs_fashion_mnist
def test_quick_benchmark_of_data2vec2(tmp_path):
  """--algorithm v1,v2: a 2.0 step encodes clone_batch views per example; views/s and FLOPs per
  view are reported beside v1's, and there is no transformers step to compare with."""
  out = tmp_path / 'bench.json'
  run = benchmark('--quick', '--size=tiny', f'--modality={",".join(MODALITIES)}',
                  '--algorithm=v1,v2', '--notorch', f'--out={out}')
  assert run.returncode == 0, run.stderr[-5000:]
  results = json.loads(out.read_text())
  assert results['environment']['cpu']['cpus'] >= 1
  records = {(r['modality'], r['algorithm']): r for r in results['results']}
  assert set(records) == {(m, a) for m in MODALITIES for a in ('v1', 'v2')}
  for modality in MODALITIES:
    v1, v2 = records[modality, 'v1'], records[modality, 'v2']
    assert v1['views_per_step'] == v1['batch_size']
    views = v2['views_per_step']
    assert views == np.prod(v2['input_shapes'][pretraining2.MASK_KEYS[modality]][:2]) > v2[
        'batch_size']
    assert v2['ours']['views_per_s'] == pytest.approx(views / v2['ours']['step_s'])
    assert v2['flops_per_view'] == pytest.approx(v2['flops_per_step'] / views)
    assert v2['torch'] is None and v2['speedup_vs_torch'] is None
    assert v2['ours']['loss'][-1] < v2['ours']['loss'][0]
