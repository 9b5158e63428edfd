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


def test_summary_finds_when_v2_reaches_v1s_final_accuracy():
  runs = {'vision': {
      'v1': [points([0, 100, 200, 300], [0.5, 0.55, 0.6, 0.62]),
             points([0, 110, 210, 310], [0.5, 0.56, 0.6, 0.64])],  # final mean 0.63 at 305 s
      'v2': [points([0, 60, 120, 180], [0.52, 0.6, 0.64, 0.66]),
             points([0, 70, 130, 190], [0.52, 0.58, 0.62, 0.68])]}}  # mean 0.63 first at 125 s
  row = curves.summary(runs)['vision']
  assert row['v1_final_accuracy'] == pytest.approx(0.63)
  assert row['v1_cpu_s'] == pytest.approx(305)
  assert row['v2_cpu_s_to_v1_final'] == pytest.approx(125)
  assert row['time_ratio'] == pytest.approx(125 / 305)
  assert row['v1_initial_accuracy'] == pytest.approx(0.5)
  runs['vision']['v2'] = [points([0, 60], [0.5, 0.55])] * 2  # never reaches it
  assert curves.summary(runs)['vision']['time_ratio'] is None
  assert curves.summary({'audio': {'v1': runs['vision']['v1'], 'v2': []}}) == {}  # under way


def test_svg_is_a_plot_of_every_point(tmp_path):
  runs = {'v1': [points([0, 100, 200], [0.5, 0.55, 0.6])] * 3,
          'v2': [points([0, 60, 120], [0.52, 0.6, 0.64])] * 3}
  path = tmp_path / 'vision.svg'
  curves.svg('vision', runs, str(path))
  root = ET.parse(path).getroot()
  ns = '{http://www.w3.org/2000/svg}'
  assert len(root.findall(f'{ns}circle')) == 18 and len(root.findall(f'{ns}polyline')) == 2
