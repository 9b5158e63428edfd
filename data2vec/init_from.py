"""config.init_from: the encoder a new run starts from, a transformers folder or a workdir.

A transformers folder holds a base model or a task head (its encoder is taken); a training workdir
gives its latest checkpoint's student encoder (pretraining) or its head's encoder (fine-tuning).
The encoder goes where the task keeps one (Task.encoder_params / with_encoder): the student and
the teacher of pretraining, the encoder of a head.
"""
import dataclasses
import importlib
import os

import jax
import numpy as np
from absl import logging
from flax import nnx, traverse_util

from data2vec import checkpoint, hf, workdirs
from data2vec.hf import io as hf_io
from data2vec.models import registry

# Model config fields that do not change the weights: they may differ from the source.
RUNTIME_FIELDS = ('dtype', 'scan_layers', 'remat_policy', 'attention_impl', 'hidden_dropout',
                  'attention_dropout', 'activation_dropout', 'feat_proj_dropout',
                  'drop_path_rate', 'layerdrop')
# Fields that only task heads read (and weights that only exist for them: poolers, the mask
# token, SpecAugment's embedding, which `merge_encoder` keeps or drops): they may differ too.
HEAD_FIELDS = {
    'text': ('add_pooling_layer', 'bos_token_id', 'eos_token_id', 'id2label', 'problem_type',
             'classifier_dropout', 'tie_word_embeddings'),
    'audio': ('vocab_size', 'final_dropout', 'ctc_loss_reduction', 'ctc_zero_infinity',
              'use_weighted_layer_sum', 'classifier_proj_size', 'tdnn_dim', 'tdnn_kernel',
              'tdnn_dilation', 'xvector_output_dim', 'pad_token_id', 'bos_token_id',
              'eos_token_id', 'id2label', 'problem_type', 'mask_time_prob', 'mask_time_length',
              'mask_time_min_masks', 'mask_feature_prob', 'mask_feature_length',
              'mask_feature_min_masks'),
    'vision': ('add_pooling_layer', 'use_mask_token', 'out_indices', 'pool_scales',
               'use_auxiliary_head', 'auxiliary_loss_weight', 'auxiliary_channels',
               'auxiliary_num_convs', 'auxiliary_concat_input', 'semantic_loss_ignore_index',
               'id2label', 'problem_type'),
}


def is_transformers_folder(path):
  return any(os.path.isfile(os.path.join(path, f))
             for f in ('model.safetensors', 'pytorch_model.bin'))


def check(source):
  """Reads the cheap parts of `config.init_from` (config files, the weights' header) so that a bad
  source fails before anything is written or compiled; its weights are read later."""
  if is_transformers_folder(source):
    hf_io.check_folder(source)
  else:
    workdirs.load_config(source)
    if not checkpoint.saved_steps(source):
      raise ValueError(f'config.init_from={source}: the workdir holds no checkpoint')


def load_encoder(source, modality, model_cfg):
  """The encoder parameters (a pure dict) of `source` (module docstring).

  Raises ValueError naming the fields where the source's config differs from `model_cfg` (the
  encoder it goes into) in what shapes the weights or the outputs.
  """
  if is_transformers_folder(source):
    model = hf.load_pretrained(source)
  else:
    source_config = workdirs.load_config(source)
    if source_config.get('modality') != modality:
      raise ValueError(f'config.init_from={source} is a {source_config.get("modality")} '
                       f'workdir, not {modality}')
    model, step = workdirs.restore_model(source)
    logging.info('%s: the encoder of step %d', source, step)
  base = registry.MODELS[modality][1]
  if model.model_type != base.model_type:
    raise ValueError(f'config.init_from={source} holds a {model.model_type} model, not '
                     f'{base.model_type}')
  if not isinstance(model, base):  # a task head: its encoder
    model = getattr(model, importlib.import_module(f'data2vec.hf.{modality}').PREFIX)
  ignored = RUNTIME_FIELDS + HEAD_FIELDS[modality]
  diff = {f.name: (getattr(model.config, f.name), getattr(model_cfg, f.name))
          for f in dataclasses.fields(model_cfg)
          if f.name not in ignored and getattr(model.config, f.name) != getattr(model_cfg, f.name)}
  if diff:
    raise ValueError(f'config.init_from={source} does not match config.model (field: (source, '
                     f'config)): {diff}')
  return nnx.to_pure_dict(nnx.state(model))


def merge_encoder(target, source, where):
  """`target` (a pure dict of parameters, abstract or concrete) with every leaf that `source`
  also has replaced by the source's; logs the leaves only one side has (a pooler, a mask token)."""
  target, source = traverse_util.flatten_dict(target), traverse_util.flatten_dict(source)
  name = lambda key: '/'.join(map(str, key))
  bad = {name(k): (np.shape(v), np.shape(source[k])) for k, v in target.items()
         if k in source and np.shape(v) != np.shape(source[k])}
  if bad:
    raise ValueError(f'{where}: parameter shapes differ (ours, source): {bad}')
  for what, keys in (('kept their initialisation', set(target) - set(source)),
                     ('not used', set(source) - set(target))):
    if keys:
      logging.info('%s: %s: %s', where, what, sorted(map(name, keys)))
  return traverse_util.unflatten_dict({k: source.get(k, v) for k, v in target.items()})


def apply(task, state, state_sharding):
  """`state` (initial, on the mesh) with the encoder of `task.config.init_from` where the task
  keeps its encoder, and the optimizer state of the new parameters."""
  c = task.config
  source = load_encoder(c.init_from, c.modality, registry.model_config(c))
  encoder = merge_encoder(task.encoder_params(state['params']), source, c.init_from)
  encoder = jax.device_put(encoder, task.encoder_params(state_sharding['params']))
  state = task.with_encoder(state, encoder)
  opt_state = jax.jit(task.tx.init, out_shardings=state_sharding['opt_state'])(state['params'])
  return dict(state, opt_state=opt_state)
