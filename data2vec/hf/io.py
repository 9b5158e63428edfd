"""save_pretrained / load_pretrained: transformers folders (config.json + model.safetensors) for
every Data2Vec class, base models and task heads.

Writing needs numpy and safetensors only. Reading takes model.safetensors, or pytorch_model.bin
when torch is installed. Each modality module in this package provides:
  MODEL_TYPE, ARCHITECTURE, PREFIX, model_class(), config_from_hf(dict, tensor_keys),
  config_to_hf(cfg), weight_rows(cfg), head_rows(architecture, cfg), IGNORED_KEYS.
The heads are the classes in `data2vec.models.heads.<modality>.HEADS`, each naming its transformers
class in `architecture`; config.json's `architectures[0]` picks the class. A head holds its base
model under PREFIX, so its weight table is the base table under PREFIX plus its own rows. Labels
(id2label, label2id, problem_type) are read and written here, the same for every modality.
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

from data2vec import atomic
from data2vec.hf import weights

# model_type -> the module of this package that maps it (imported on first use).
MODALITIES = {'data2vec-text': 'text', 'data2vec-audio': 'audio', 'data2vec-vision': 'vision'}
# Files save_pretrained writes itself; extra_files may not replace them.
_MODEL_FILES = ('config.json', 'model.safetensors')


def _module(model_type):
  return importlib.import_module(f'data2vec.hf.{MODALITIES[model_type]}')


def model_classes(model_type):
  """transformers class name -> our class, for every class of a model_type."""
  module = _module(model_type)
  heads = importlib.import_module(f'data2vec.models.heads.{MODALITIES[model_type]}')
  return {module.ARCHITECTURE: module.model_class(), **{c.architecture: c for c in heads.HEADS}}


def _modality_of(model):
  model_type = getattr(model, 'model_type', None)
  if model_type not in MODALITIES:
    raise TypeError(f'no transformers mapping for {type(model).__name__}')
  return _module(model_type)


def weight_rows(model):
  """The weight table of `model` (a base model or a head)."""
  module = _modality_of(model)
  architecture = getattr(model, 'architecture', module.ARCHITECTURE)
  if architecture == module.ARCHITECTURE:
    return module.weight_rows(model.config)
  base = getattr(model, module.PREFIX)
  return (weights.prefixed(module.weight_rows(base.config), module.PREFIX) +
          module.head_rows(architecture, model.config))


def _labels_from_hf(hf_config, where):
  """id2label / label2id / num_labels / problem_type of config.json -> our config fields."""
  id2label = hf_config.get('id2label')
  if id2label is None:  # transformers' default: num_labels (2) generic names
    id2label = {i: f'LABEL_{i}' for i in range(hf_config.get('num_labels', 2))}
  try:
    by_id = {int(k): v for k, v in id2label.items()}
  except (AttributeError, TypeError, ValueError):
    raise ValueError(f'{where}: id2label={id2label!r} is not a mapping of integer ids') from None
  if sorted(by_id) != list(range(len(by_id))):
    raise ValueError(f'{where}: id2label ids {sorted(by_id)} are not 0..{len(by_id) - 1}')
  names = tuple(by_id[i] for i in range(len(by_id)))
  label2id = hf_config.get('label2id')
  if label2id is not None and label2id != {name: i for i, name in enumerate(names)}:
    raise ValueError(f'{where}: label2id={label2id!r} is not the inverse of id2label')
  if hf_config.get('num_labels', len(names)) != len(names):
    raise ValueError(f'{where}: num_labels={hf_config["num_labels"]} but id2label has '
                     f'{len(names)} labels')
  return {'id2label': names, 'problem_type': hf_config.get('problem_type')}


def _labels_to_hf(cfg):
  return {'id2label': {str(i): name for i, name in enumerate(cfg.id2label)},
          'label2id': {name: i for i, name in enumerate(cfg.id2label)},
          'problem_type': cfg.problem_type}


def _read_tensors(path):
  """The tensors of a folder's weights file; a file that does not parse is named."""
  st = os.path.join(path, 'model.safetensors')
  if os.path.exists(st):
    try:
      return safetensors.numpy.load_file(st)
    except (safetensors.SafetensorError, ValueError) as e:
      raise ValueError(f'{st}: not a readable safetensors file ({e})') from None
  pt = os.path.join(path, 'pytorch_model.bin')
  if os.path.exists(pt):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f'{pt} needs torch to read; convert it to model.safetensors') from e
    try:
      tensors = torch.load(pt, map_location='cpu')
      return {k: v.float().numpy() for k, v in tensors.items()}
    except Exception as e:  # pylint: disable=broad-except  (pickle and zip raise many types)
      raise ValueError(f'{pt}: not a readable PyTorch state dict ({type(e).__name__}: '
                       f'{e})') from None
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path} is not a folder')
  raise FileNotFoundError(f'{path} has neither model.safetensors nor pytorch_model.bin')


def read_config(path, tensor_keys=None):
  """Reads config.json and returns (our class, its config).

  `tensor_keys` (the checkpoint's) decide what config.json does not record, e.g. a pooler.
  """
  config_path = os.path.join(path, 'config.json')
  if not os.path.exists(config_path):
    raise FileNotFoundError(f'{config_path} does not exist')
  with open(config_path, encoding='utf-8', errors='replace') as f:
    try:
      hf_config = json.load(f)
    except ValueError as e:
      raise ValueError(f'{config_path}: not a JSON file ({e})') from None
  if not isinstance(hf_config, dict):
    raise ValueError(f'{config_path}: not a transformers config (a JSON object)')
  model_type = hf_config.get('model_type')
  if model_type not in MODALITIES:
    raise ValueError(f'{config_path}: model_type={model_type!r} is not one of {sorted(MODALITIES)}')
  module = _module(model_type)
  classes = model_classes(model_type)
  architecture = (hf_config.get('architectures') or [module.ARCHITECTURE])[0]
  if architecture not in classes:
    raise ValueError(f'{config_path}: architectures[0]={architecture!r} is not one of '
                     f'{sorted(classes)}')
  if tensor_keys is not None and architecture != module.ARCHITECTURE:
    prefix = module.PREFIX + '.'
    tensor_keys = {k[len(prefix):] for k in tensor_keys if k.startswith(prefix)}
  labels = _labels_from_hf(hf_config, config_path)
  rest = {k: v for k, v in hf_config.items()
          if k not in ('id2label', 'label2id', 'num_labels', 'problem_type')}
  cfg = dataclasses.replace(module.config_from_hf(rest, tensor_keys), **labels)
  return classes[architecture], cfg


def check_folder(path):
  """Reads what a load reads first, cheaply: config.json (read_config) and the header of
  model.safetensors, which covers the file's length. Raises an error naming a file that does not
  parse; the weights' values are only read by load_pretrained."""
  st = os.path.join(path, 'model.safetensors')
  keys = None
  if os.path.exists(st):
    try:
      with safetensors.safe_open(st, 'numpy') as f:
        keys = set(f.keys())
    except (safetensors.SafetensorError, ValueError) as e:
      raise ValueError(f'{st}: not a readable safetensors file ({e})') from None
  elif not os.path.exists(os.path.join(path, 'pytorch_model.bin')):
    _read_tensors(path)  # its error says what is missing
  read_config(path, keys)


def load_pretrained(path, **overrides):
  """A transformers Data2Vec folder (any class: base model or head) -> our model with its weights.

  `overrides` replace fields of the model config that do not change the weights, e.g.
  dtype='bfloat16', scan_layers=True, attention_impl='cudnn'.
  """
  tensors = _read_tensors(path)
  cls, cfg = read_config(path, set(tensors))
  cfg = dataclasses.replace(cfg, **overrides)
  abstract = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
  params = weights.from_hf(tensors, weight_rows(abstract), cfg.num_hidden_layers,
                           ignore=_modality_of(abstract).IGNORED_KEYS)
  graphdef, state = nnx.split(abstract)
  expected = weights.flatten(jax.tree.map(lambda a: a.shape, nnx.to_pure_dict(state)))
  got = weights.flatten(jax.tree.map(np.shape, params))
  if expected != got:
    diff = {k: (expected.get(k), got.get(k)) for k in sorted(set(expected) | set(got))
            if expected.get(k) != got.get(k)}
    raise ValueError(f'{path}: tensor shapes do not match config.json (ours: (expected, found)): '
                     f'{diff}')
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def rgb_from_grey(model):
  """A one-channel vision model (any class) as the three-channel model that transformers' image
  pipelines can feed (they convert every image to RGB): the patch kernel is repeated over the
  channels and divided by 3, so an RGB copy of a grey image gives the same outputs."""
  cfg = model.config
  if model.model_type != 'data2vec-vision' or cfg.num_channels != 1:
    raise ValueError(f'{type(model).__name__} is not a one-channel (num_channels=1) vision model')
  graphdef, state = nnx.split(nnx.eval_shape(
      lambda: type(model)(dataclasses.replace(cfg, num_channels=3), rngs=nnx.Rngs(0))))
  values = nnx.to_pure_dict(nnx.state(model))
  patches = values.get(_module(model.model_type).PREFIX, values)['embeddings']['patch_embeddings']
  patches['kernel'] = jnp.repeat(patches['kernel'], 3, axis=2) / 3
  nnx.replace_by_pure_dict(state, values)
  return nnx.merge(graphdef, state)


def save_pretrained(model, path, *, overwrite=False, extra_files=None):
  """Writes config.json + model.safetensors that transformers' from_pretrained loads.

  extra_files: {file name: text} written beside them, e.g. the preprocessor files of
  `data2vec.hf.preprocessors`. The folder appears complete or not at all: files are written to a
  temporary sibling folder and renamed into place. A file at `path` is refused. Modes follow the
  process umask, as every file the project writes.
  """
  module = _modality_of(model)
  extra_files = dict(extra_files or {})
  bad = [n for n in extra_files
         if n in _MODEL_FILES or os.path.basename(n) != n or n in ('', '.', '..')]
  if bad:
    raise ValueError(f'extra_files names {bad} must be plain file names other than {_MODEL_FILES}')
  if os.path.exists(path) and not os.path.isdir(path):
    raise FileExistsError(f'{path} is a file, not a folder')
  if os.path.isdir(path) and os.listdir(path) and not overwrite:
    raise FileExistsError(f'{path} is not empty; pass overwrite=True to replace it')
  # BatchNorm running statistics (segmentation) are state dict tensors too.
  # The config first: a field transformers cannot express (ALiBi) is named before its weights.
  hf_config = module.config_to_hf(model.config)
  state = nnx.to_pure_dict(nnx.state(model, (nnx.Param, nnx.BatchStat)))
  tensors = weights.to_hf(jax.tree.map(np.asarray, state), weight_rows(model),
                          model.config.num_hidden_layers)
  hf_config.update(_labels_to_hf(model.config),
                   architectures=[getattr(model, 'architecture', module.ARCHITECTURE)])
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix='.tmp-export-', dir=parent)
  try:
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's folder is private; an export is not
    atomic.write_text(os.path.join(tmp, 'config.json'),
                      json.dumps(hf_config, indent=2, sort_keys=True) + '\n')
    weights_file = os.path.join(tmp, 'model.safetensors')
    safetensors.numpy.save_file(tensors, weights_file, metadata={'format': 'pt'})
    os.chmod(weights_file, 0o666 & ~_umask())  # safetensors makes it private (0600)
    for name, text in extra_files.items():
      atomic.write_text(os.path.join(tmp, name), text)
    # An old folder is set aside under a name of this export's own (not deleted) until the new
    # one is in place: a kill leaves one of them whole, and no other folder is touched.
    if os.path.exists(path):
      os.rename(path, tmp + '-replaced')
    os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    if os.path.exists(tmp + '-replaced') and not os.path.exists(path):
      os.rename(tmp + '-replaced', path)
    raise
  shutil.rmtree(tmp + '-replaced', ignore_errors=True)


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask
