"""export_hf / import_hf: a trained workdir -> a transformers folder -> a new workdir."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import train
from data2vec import hf, pretraining, workdirs
from tests.test_train import micro_vision_config, needs_fashion_mnist, restore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('workdir'))
  config = micro_vision_config(total_steps=2, log_every_steps=1, checkpoint_every_steps=2)
  train.train_and_evaluate(config, workdir)
  return workdir, config


def export(workdir, out, *flags):
  return subprocess.run([sys.executable, 'scripts/export_hf.py', '--workdir', workdir, '--out',
                         out, *flags], cwd=REPO, capture_output=True, text=True)


@needs_fashion_mnist
def test_export_loads_in_transformers_with_identical_outputs(trained, tmp_path):
  workdir, config = trained
  out = str(tmp_path / 'hf')
  assert export(workdir, out).returncode == 0
  theirs, info = transformers.AutoModel.from_pretrained(out, output_loading_info=True)
  assert isinstance(theirs, transformers.Data2VecVisionModel)
  assert not any(info.values()), info

  state, _ = restore(workdir, config)
  encoder_def, _ = pretraining.graph_defs(config)
  ours = nnx.merge(encoder_def, state['params']['encoder'])
  pixels = np.random.default_rng(0).normal(size=(2, 1, 28, 28)).astype(np.float32)
  with torch.no_grad():
    expected = theirs.eval()(torch.from_numpy(pixels)).last_hidden_state.numpy()
  np.testing.assert_allclose(ours(pixels)['last_hidden_state'], expected, atol=1e-4)

  again = export(workdir, out)
  assert again.returncode != 0 and 'is not empty' in again.stderr
  assert export(workdir, out, '--overwrite').returncode == 0


@needs_fashion_mnist
def test_import_starts_a_workdir_from_a_transformers_folder(trained, tmp_path):
  workdir, config = trained
  out = str(tmp_path / 'hf')
  hf.save_pretrained(workdirs.restore_model(workdir)[0], out)
  imported = str(tmp_path / 'imported')
  cmd = [sys.executable, 'scripts/import_hf.py', '--hf', out, '--workdir', imported,
         '--config', 'configs/vision.py:tiny', '--config.model.hidden_size=32',
         '--config.model.num_hidden_layers=2', '--config.model.num_attention_heads=2',
         '--config.model.intermediate_size=64', '--config.model.patch_size=7',
         '--config.objective.top_k=2', '--config.masking.num_masking_patches=8',
         '--config.masking.min_num_patches=2', '--config.masking.max_num_patches=16']
  subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
  state, _ = restore(imported, config)
  assert int(state['step']) == 0
  reference = nnx.to_pure_dict(nnx.state(hf.load_pretrained(out)))
  jax.tree.map(np.testing.assert_array_equal, state['params']['encoder'], reference)
  jax.tree.map(np.testing.assert_array_equal, state['teacher'], reference)


@needs_fashion_mnist
def test_import_of_another_architecture_is_refused(trained, tmp_path):
  workdir, _ = trained
  out = str(tmp_path / 'hf')
  hf.save_pretrained(workdirs.restore_model(workdir)[0], out)
  config = micro_vision_config(init_from=out)
  config.model.hidden_size = 64
  with pytest.raises(ValueError, match='hidden_size'):
    train.train_and_evaluate(config, str(tmp_path / 'w'), import_only=True)
