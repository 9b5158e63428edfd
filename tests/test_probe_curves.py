"""scripts/probe_curves.py's summary and plot on made-up curves (the runs are measured by hand:
docs/results.md)."""
import importlib.util
import os
import xml.etree.ElementTree as ET

import pytest

SPEC = importlib.util.spec_from_file_location(
    'probe_curves', os.path.join(os.path.dirname(__file__), '..', 'scripts', 'probe_curves.py'))
curves = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(curves)


def points(cpu_s, accuracy):
  return [(i * 100, c, c / 2, a) for i, (c, a) in enumerate(zip(cpu_s, accuracy))]


def test_summary_finds_when_v2_reaches_the_baselines_final_accuracy():
  v1e = [points([0, 100, 200, 300], [0.5, 0.55, 0.6, 0.62]),
         points([0, 110, 210, 310], [0.5, 0.56, 0.6, 0.64])]  # final mean 0.63 at 305 s
  v2 = [points([0, 60, 120, 180], [0.52, 0.6, 0.64, 0.66]),
        points([0, 70, 130, 190], [0.52, 0.58, 0.62, 0.68])]  # mean 0.63 first at 125 s
  v1 = [points([0, 100, 200, 300], [0.4, 0.5, 0.5, 0.5])] * 3  # a third seed: not counted
  row = curves.summary({'vision': {'v1': v1, 'v1e': v1e, 'v2': v2}}, {'vision': 0.8})['vision']
  assert row['baseline'] == 'v1e' and row['seeds'] == 2 and row['raw_accuracy'] == 0.8
  assert row['algorithms']['v1e']['final_accuracy'] == pytest.approx(0.63)
  assert row['algorithms']['v1e']['final_accuracy_std'] == pytest.approx(0.01)
  assert row['algorithms']['v1e']['cpu_s'] == pytest.approx(305)
  assert row['algorithms']['v1']['final_accuracy'] == pytest.approx(0.5)
  assert row['v2_cpu_s_to_baseline_final'] == pytest.approx(125)
  assert row['time_ratio'] == pytest.approx(125 / 305)
  assert row['algorithms']['v2']['initial_accuracy'] == pytest.approx(0.52)
  assert row['algorithms']['v2']['gain'] == pytest.approx(0.15)
  # A random init above the baseline's final accuracy is not v2 reaching it: its first
  # checkpoint (60 s, 0.6 and 0.58) is.
  v1e_low = [points([0, 100, 200, 300], [0.5, 0.55, 0.55, 0.55])] * 2
  row = curves.summary({'vision': {'v1e': v1e_low, 'v2': v2}})['vision']
  assert row['v2_cpu_s_to_baseline_final'] == pytest.approx(65)
  # Without v1e (speech, text: one encoder) v1 is the baseline; v2 is never as good.
  row = curves.summary({'audio': {'v1': v1e, 'v2': [points([0, 60], [0.5, 0.55])] * 2}})['audio']
  assert row['baseline'] == 'v1' and row['time_ratio'] is None and row['raw_accuracy'] is None
  assert '| audio | - | 0.500 -> 0.630 ± 0.010 (5.1) | 0.500 -> 0.550 ± 0.000 (1.0) | never (v1)' \
      in curves.table({'audio': row})
  assert curves.summary({'audio': {'v1': v1e, 'v2': []}}) == {}  # under way


def test_v1e_is_v1_on_v2s_encoder():
  v1e, v2 = curves.tiny_config('vision', 'v1e'), curves.tiny_config('vision', 'v2')
  assert v1e.task == curves.tiny_config('vision', 'v1').task != v2.task
  for key in curves.V2_ENCODER['vision']:
    field = key.split('.')[1]
    assert v1e.model[field] == v2.model[field]
  assert curves.overrides('audio', 'v1e') == {} == curves.overrides('vision', 'v1')


def test_set_overrides_every_run_with_the_fields_type():
  sets = ['input.dataset=english', 'ridge_probe.layer=0', 'ridge_probe.num_train=4000']
  for algorithm in ('v1', 'v2'):
    config = curves.tiny_config('text', algorithm, sets)
    assert config.input.dataset == 'english' and config.ridge_probe.layer == 0
    assert config.ridge_probe.num_train == 4000 and isinstance(config.ridge_probe.num_train, int)
  assert curves.overrides('vision', 'v1e', sets)['model.layer_scale_init_value'] == 0.0
  assert curves.overrides('vision', 'v1e', sets)['input.dataset'] == 'english'
  with pytest.raises(curves.app.UsageError, match="--set 'nonsense': not KEY=VALUE"):
    curves.overrides('text', 'v1', ['nonsense'])
  with pytest.raises(curves.app.UsageError, match='the config has no field input.nonsense'):
    curves.tiny_config('text', 'v1', ['input.nonsense=1'])


def test_svg_is_a_plot_of_every_point(tmp_path):
  runs = {'v1': [points([0, 100, 200], [0.5, 0.55, 0.6])] * 3,
          'v2': [points([0, 60, 120], [0.52, 0.6, 0.64])] * 3}
  path = tmp_path / 'vision.svg'
  curves.svg('vision', runs, str(path), raw=0.8)
  root = ET.parse(path).getroot()
  ns = '{http://www.w3.org/2000/svg}'
  assert len(root.findall(f'{ns}circle')) == 18 and len(root.findall(f'{ns}polyline')) == 2
  assert [e for e in root.findall(f'{ns}line') if e.get('stroke-dasharray')]  # the raw level
