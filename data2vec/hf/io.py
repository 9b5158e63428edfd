"""save_pretrained / load_pretrained: transformers folders (config.json + model.safetensors).

Writing needs numpy and safetensors only. Reading takes model.safetensors, or pytorch_model.bin
when torch is installed. Each modality module in this package provides:
  MODEL_TYPE, ARCHITECTURE, model_class(), config_from_hf(dict), config_to_hf(cfg),
  weight_rows(cfg), IGNORED_KEYS.
"""
import dataclasses
import importlib
import json
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import nnx

from data2vec.hf import weights

# model_type -> the module of this package that maps it (imported on first use).
MODALITIES = {'data2vec-text': 'text', 'data2vec-audio': 'audio', 'data2vec-vision': 'vision'}


def _module(model_type):
  return importlib.import_module(f'data2vec.hf.{MODALITIES[model_type]}')


def _modality_of(model):
  model_type = getattr(model, 'model_type', None)
  if model_type not in MODALITIES:
    raise TypeError(f'no transformers mapping for {type(model).__name__}')
  return _module(model_type)


def _read_tensors(path):
  st = os.path.join(path, 'model.safetensors')
  if os.path.exists(st):
    return safetensors.numpy.load_file(st)
  pt = os.path.join(path, 'pytorch_model.bin')
  if os.path.exists(pt):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f'{pt} needs torch to read; convert it to model.safetensors') from e
    return {k: v.float().numpy() for k, v in torch.load(pt, map_location='cpu').items()}
  raise FileNotFoundError(f'{path} has neither model.safetensors nor pytorch_model.bin')


def read_config(path, tensor_keys=None):
  """Reads config.json and returns (modality module, our model config).

  `tensor_keys` (the checkpoint's) decide what config.json does not record, e.g. a pooler.
  """
  config_path = os.path.join(path, 'config.json')
  if not os.path.exists(config_path):
    raise FileNotFoundError(f'{config_path} does not exist')
  with open(config_path) as f:
    hf_config = json.load(f)
  model_type = hf_config.get('model_type')
  if model_type not in MODALITIES:
    raise ValueError(f'{config_path}: model_type={model_type!r} is not one of {sorted(MODALITIES)}')
  module = _module(model_type)
  return module, module.config_from_hf(hf_config, tensor_keys)


def load_pretrained(path, **overrides):
  """A transformers Data2Vec folder -> our model with its weights.

  `overrides` replace fields of the model config that do not change the weights, e.g.
  dtype='bfloat16', scan_layers=True, attention_impl='cudnn'.
  """
  tensors = _read_tensors(path)
  module, cfg = read_config(path, set(tensors))
  cfg = dataclasses.replace(cfg, **overrides)
  params = weights.from_hf(tensors, module.weight_rows(cfg), cfg.num_hidden_layers,
                           ignore=module.IGNORED_KEYS)
  abstract = nnx.eval_shape(lambda: module.model_class()(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  shapes = jax.tree.map(lambda a: a.shape, nnx.to_pure_dict(state))
  got = jax.tree.map(np.shape, params)
  if shapes != got:
    raise ValueError(f'{path}: tensor shapes do not match config.json: expected {shapes}, got {got}')
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def save_pretrained(model, path, *, overwrite=False):
  """Writes config.json + model.safetensors that transformers' from_pretrained loads.

  The folder appears complete or not at all: files are written to a temporary sibling folder and
  renamed into place.
  """
  module = _modality_of(model)
  cfg = model.config
  if os.path.isdir(path) and os.listdir(path) and not overwrite:
    raise FileExistsError(f'{path} is not empty; pass overwrite=True to replace it')
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  tensors = weights.to_hf(params, module.weight_rows(cfg), cfg.num_hidden_layers)
  hf_config = module.config_to_hf(cfg)
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix='.tmp-export-', dir=parent)
  try:
    with open(os.path.join(tmp, 'config.json'), 'w') as f:
      json.dump(hf_config, f, indent=2, sort_keys=True)
    safetensors.numpy.save_file(tensors, os.path.join(tmp, 'model.safetensors'),
                                metadata={'format': 'pt'})
    if os.path.exists(path):
      shutil.rmtree(path)
    os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
