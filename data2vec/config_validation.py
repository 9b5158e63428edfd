"""Checks a train config before anything is compiled or allocated; bad input on command lines.

`validate(config)` raises ConfigError with one line naming the field and the rule, for the first
problem found, in this order: the task, modality and variant; keys the job's config file
(configs/<modality>.py, or configs/finetune_<modality>.py) does not define (configs built in Python
are not locked) or lacks; a NaN or inf anywhere (every number of every block and tuple, the
model's too: `--config.optimizer.peak_lr=inf` is refused whatever the field); the mesh; the model
block (its dataclass checks it; no model is built); then every rule of RULES whose field the
config has. Devices are only counted.

The scripts report such errors on one line instead of a traceback: data2vec/cli.py.
"""
import importlib
import math
import os
import types

import jax
import ml_collections

from configs import common
from data2vec import cli, finetuning, sharding
from data2vec.hf import preprocessors
from data2vec.input_pipeline import finetune as finetune_input
from data2vec.models import registry


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field and the rule."""


TASKS = ('pretrain', 'pretrain2', 'finetune')
# The config file of each task (with the modality), whose keys a config must have.
CONFIG_FILES = {'pretrain': '{m}', 'pretrain2': '{m}2', 'finetune': 'finetune_{m}'}
SCHEDULES = ('cosine', 'tri_stage', 'constant', 'linear')
TARGET_LAYERS = ('ffn', 'end')
LOSS_REDUCE = ('sum', 'mean')
_ALL = tuple(registry.MODELS)


def _between(lo, hi, rule_lo='[', rule_hi=']'):
  """ok(v, c, f) of lo <= v <= hi, where '(' / ')' open an end; lo, hi: numbers or f(c, f)."""
  def ok(v, c, f):
    low, high = (b(c, f) if callable(b) else b for b in (lo, hi))
    return (low < v or rule_lo == '[' and v == low) and (v < high or rule_hi == ']' and v == high)
  return ok


def _tri_stage(c):
  return c.optimizer.schedule == 'tri_stage'


# (field, modalities it applies to, ok(value, config, facts), the rule as the error states it,
# formatted with c=config and f=facts: devices, dp (data-parallel size), layers, patches).
RULES = (
    ('total_steps', _ALL, lambda v, c, f: v > 0, 'must be > 0'),
    ('batch_size', _ALL, lambda v, c, f: v > 0, 'must be > 0'),
    ('batch_size', _ALL, lambda v, c, f: v % f.dp == 0,
     'must be divisible by the data-parallel size {f.dp} (config.mesh data x fsdp over '
     '{f.devices} devices)'),
    ('seed', _ALL, lambda v, c, f: v >= 0, 'must be >= 0'),
    ('log_every_steps', _ALL, lambda v, c, f: v > 0, 'must be > 0'),
    ('checkpoint_every_steps', _ALL, lambda v, c, f: v > 0, 'must be > 0'),
    ('keep_checkpoints', _ALL, lambda v, c, f: v >= 2,
     'must be >= 2 (a damaged latest checkpoint falls back to the previous one)'),
    ('init_from', _ALL, lambda v, c, f: not v or os.path.isfile(os.path.join(v, 'config.json')),
     "must be '' or a transformers folder or a training workdir (a folder holding config.json)"),
    ('optimizer.schedule', _ALL, lambda v, c, f: v in SCHEDULES, f'must be one of {SCHEDULES}'),
    ('optimizer.peak_lr', _ALL, lambda v, c, f: v > 0, 'must be > 0'),
    ('optimizer.min_lr', _ALL, _between(0, lambda c, f: c.optimizer.peak_lr),
     'must be in [0, config.optimizer.peak_lr={c.optimizer.peak_lr}]'),
    ('optimizer.warmup_steps', _ALL,
     lambda v, c, f: v == 0 if _tri_stage(c) else 0 <= v <= c.total_steps,
     "must be in [0, config.total_steps={c.total_steps}] (0 for 'tri_stage', which takes it "
     'from phase_ratio)'),
    ('optimizer.phase_ratio', _ALL,
     lambda v, c, f: (v is not None and len(v) == 3 and min(v) >= 0 and math.isclose(sum(v), 1)
                      if _tri_stage(c) else v is None),
     "must be 3 fractions (warm-up, hold, decay) summing to 1 for 'tri_stage', else None"),
    ('optimizer.b1', _ALL, _between(0, 1, '[', ')'), 'must be in [0, 1)'),
    ('optimizer.b2', _ALL, _between(0, 1, '[', ')'), 'must be in [0, 1)'),
    ('optimizer.eps', _ALL, lambda v, c, f: v > 0, 'must be > 0'),
    ('optimizer.weight_decay', _ALL, lambda v, c, f: v >= 0, 'must be >= 0'),
    ('optimizer.clip_norm', _ALL, lambda v, c, f: v >= 0, 'must be >= 0 (0 turns clipping off)'),
    ('ema.tau0', _ALL, _between(0, 1, '(', ']'), 'must be in (0, 1]'),
    ('ema.tau_e', _ALL, _between(0, 1, '(', ']'), 'must be in (0, 1]'),
    ('ema.tau_n', _ALL, lambda v, c, f: v >= 0, 'must be >= 0 (0: constant tau_e)'),
    ('objective.top_k', _ALL, _between(1, lambda c, f: f.layers),
     'must be in [1, {f.layers}] (config.model.num_hidden_layers: K averages the top K layers)'),
    ('objective.target_layer', _ALL, lambda v, c, f: v in TARGET_LAYERS,
     f'must be one of {TARGET_LAYERS}'),
    ('objective.loss_beta', _ALL, lambda v, c, f: v >= 0, 'must be >= 0 (0 is L2)'),
    ('objective.loss_reduce', _ALL, lambda v, c, f: v in LOSS_REDUCE,
     f'must be one of {LOSS_REDUCE}'),
    ('objective.loss_scale', _ALL, lambda v, c, f: v is None or v > 0,
     'must be > 0, or None for 1/sqrt(hidden_size)'),
    ('objective.head_layers', _ALL, lambda v, c, f: v in (1, 2), 'must be 1 or 2'),
    ('min_target_var', _ALL, lambda v, c, f: v >= 0, 'must be >= 0 (0 turns the check off)'),
    ('min_pred_var', _ALL, lambda v, c, f: v >= 0, 'must be >= 0 (0 turns the check off)'),
    ('collapse_after_step', _ALL, lambda v, c, f: v >= 0, 'must be >= 0'),
    # Masking: a probability (or a share of the patches) in [0, 1) leaves something unmasked.
    ('masking.mask_prob', ('text',), _between(0, 1, '(', ')'), 'must be in (0, 1)'),
    ('masking.mask_prob', ('audio',), _between(0, 1, '[', ')'), 'must be in [0, 1)'),
    ('masking.mask_length', ('text', 'audio'), lambda v, c, f: v >= 1, 'must be >= 1'),
    ('masking.min_masks', ('audio',), lambda v, c, f: v >= 0, 'must be >= 0'),
    ('masking.random_token_prob', ('text',), _between(0, 1), 'must be in [0, 1]'),
    ('masking.leave_unmasked_prob', ('text',), _between(0, 1), 'must be in [0, 1]'),
    ('masking.leave_unmasked_prob', ('text',),
     lambda v, c, f: v + c.masking.random_token_prob <= 1,
     'plus config.masking.random_token_prob={c.masking.random_token_prob} must be <= 1'),
    ('masking.num_masking_patches', ('vision',), _between(1, lambda c, f: f.patches, '[', ')'),
     'must be in [1, {f.patches}) (the patches of an image)'),
    ('masking.min_num_patches', ('vision',), lambda v, c, f: v >= 1, 'must be >= 1'),
    ('masking.max_num_patches', ('vision',), lambda v, c, f: v is None or v >= 1,
     'must be >= 1, or None for num_masking_patches'),
    ('masking.min_aspect', ('vision',), _between(0, 1, '(', ']'), 'must be in (0, 1]'),
    # data2vec 2.0 (configs/vision2.py): inverse block masks, views, the decoder.
    ('masking.mask_prob', ('vision',), lambda v, c, f: int(f.patches * (1 - v)) >= 1 and v > 0,
     'must be in (0, 1) and leave at least one of the {f.patches} patches visible'),
    ('masking.mask_length', ('vision',), lambda v, c, f: v >= 2, 'must be >= 2'),
    ('masking.mask_prob_adjust', ('vision',), lambda v, c, f: v >= 0, 'must be >= 0'),
    ('masking.clone_batch', _ALL, lambda v, c, f: v >= 1, 'must be >= 1'),
    ('model.use_absolute_position_embeddings', ('vision',),
     lambda v, c, f: c.task != 'pretrain2' or (v and not c.model.use_relative_position_bias and
                                               not c.model.use_shared_relative_position_bias),
     'must be True, without relative position bias, for data2vec 2.0 (positions travel with the '
     'visible patches)'),
    ('decoder.groups', _ALL,
     lambda v, c, f: v >= 1 and c.decoder.dim % v == 0 and c.model.hidden_size % v == 0,
     'must divide config.decoder.dim={c.decoder.dim} and config.model.hidden_size'),
    ('decoder.num_layers', _ALL, lambda v, c, f: v >= 1, 'must be >= 1'),
    ('decoder.kernel_size', _ALL, lambda v, c, f: v >= 1, 'must be >= 1'),
    ('decoder.noise_std', _ALL, lambda v, c, f: v >= 0, 'must be >= 0'),
    ('decoder.input_dropout', _ALL, _between(0, 1, '[', ')'), 'must be in [0, 1)'),
    ('objective.cls_loss', _ALL, lambda v, c, f: v >= 0, 'must be >= 0'),
    # Fine-tuning (configs/finetune_*.py).
    ('head', _ALL, lambda v, c, f: v in finetuning.HEADS[c.modality],
     'must be one of {f.heads} (the transformers classes fine-tuned for config.modality)'),
    ('layer_decay', _ALL, _between(0, 1, '(', ']'), 'must be in (0, 1] (1: no layer-wise decay)'),
    ('freeze_finetune_updates', _ALL, _between(0, lambda c, f: c.total_steps, '[', ')'),
     'must be in [0, config.total_steps={c.total_steps}) (updates that train the head only)'),
    ('eval_every_steps', _ALL, lambda v, c, f: v >= 0,
     'must be >= 0 (0: evaluate after the last step only)'),
    ('eval_batch_size', _ALL, lambda v, c, f: v > 0 and v % f.dp == 0,
     'must be > 0 and divisible by the data-parallel size {f.dp}'),
    ('eval_splits', _ALL, lambda v, c, f: len(v) > 0 and set(v) <= set(f.splits),
     'must name some of the splits {f.splits} of config.input.dataset'),
    ('input.speed', ('audio',), lambda v, c, f: len(v) == 2 and 0 < v[0] <= v[1],
     'must be (min, max) speed factors with 0 < min <= max ((1, 1): no change)'),
    ('input.characters', ('audio',),
     lambda v, c, f: len(preprocessors.ctc_vocab(v)) == c.model.vocab_size,
     'gives a CTC vocabulary of a different size than config.model.vocab_size='
     '{c.model.vocab_size} (specials, the delimiter, then these characters)'),
    ('model.pad_token_id', ('audio',),
     lambda v, c, f: c.get('head') != finetuning.CTC_HEAD or v == 0,
     'must be 0 for CTC: the blank is the <pad> token, id 0 of the vocabulary'),
    ('input.max_length', ('text',),
     _between(2, lambda c, f: c.model.max_position_embeddings - c.model.pad_token_id - 1),
     'must be in [2, {c.model.max_position_embeddings} - {c.model.pad_token_id} - 1] (<s> and a '
     'token; config.model.max_position_embeddings - pad_token_id - 1: RoBERTa positions start '
     'after the padding id)'),
)


def _get(config, field):
  for key in field.split('.'):
    config = config[key]
  return config


def _fail(field, value, rule):
  raise ConfigError(f'config.{field}={value!r}: {rule}')


def _check_keys(config, reference, source, prefix=''):
  """Fails on a key of `config` that `reference` lacks or the reverse (config.model excepted)."""
  for key in sorted(set(config) | set(reference)):
    field = prefix + key
    if field == 'model':  # the model's dataclass checks its fields
      continue
    if key not in reference:
      raise ConfigError(f'config.{field}: unknown key ({source} does not define it)')
    if key not in config:
      raise ConfigError(f'config.{field}: missing ({source} defines it)')
    blocks = [isinstance(d[key], ml_collections.ConfigDict) for d in (config, reference)]
    if blocks[0] != blocks[1]:
      raise ConfigError(f'config.{field}: must be {"a block of keys" if blocks[1] else "a value"} '
                        f'as in {source}')
    if blocks[0]:
      _check_keys(config[key], reference[key], source, field + '.')


def _check_finite(value, field):
  """Fails on the first NaN or inf among the numbers of `value` (a config, tuples, numbers)."""
  if isinstance(value, (ml_collections.ConfigDict, dict)):
    for key in value:
      _check_finite(value[key], f'{field}.{key}' if field else key)
  elif isinstance(value, (list, tuple)):
    for item in value:
      if isinstance(item, float) and not math.isfinite(item):
        _fail(field, value, 'must hold finite numbers')
      _check_finite(item, field)
  elif isinstance(value, float) and not math.isfinite(value):
    _fail(field, value, 'must be a finite number')


def _has(config, field):
  try:
    _get(config, field)
  except (KeyError, AttributeError):
    return False
  return True


def validate(config):
  """Raises ConfigError for the first field of `config` that breaks a rule (module docstring)."""
  if config.get('task') not in TASKS:
    _fail('task', config.get('task'), f'must be one of {TASKS}')
  if config.get('modality') not in registry.MODELS:
    _fail('modality', config.get('modality'), f'must be one of {_ALL}')
  if config.get('variant') not in common.VARIANTS:
    _fail('variant', config.get('variant'), f'must be one of {common.VARIANTS}')
  name = CONFIG_FILES[config.task].format(m=config.modality)
  if not os.path.exists(os.path.join(os.path.dirname(common.__file__), f'{name}.py')):
    _fail('task', config.task, f'has no {config.modality} recipe (no configs/{name}.py)')
  module = importlib.import_module(f'configs.{name}')
  # A file with several jobs (finetune_audio.py) says which argument rebuilds this config.
  reference = module.get_config(getattr(module, 'config_arg', lambda c: c.variant)(config))
  _check_keys(config, reference, f'configs/{name}.py')
  _check_finite(config, '')

  devices = jax.device_count()
  try:
    mesh = dict(zip(sharding.AXES, sharding.mesh_shape(config.mesh, devices)))
  except ValueError as e:  # its message names config.mesh
    raise ConfigError(str(e)) from None
  try:
    model = registry.model_config(config)
  except (ValueError, TypeError) as e:
    raise ConfigError(f'config.model: {e}') from None
  facts = types.SimpleNamespace(
      devices=devices, dp=mesh['data'] * mesh['fsdp'], layers=model.num_hidden_layers,
      patches=getattr(model, 'num_patches', None), heads=tuple(finetuning.HEADS[config.modality]),
      splits=finetune_input.dataset_splits(config) if config.task == 'finetune' else ())

  for field, modalities, ok, rule in RULES:
    if config.modality in modalities and _has(config, field):
      value = _get(config, field)
      try:
        good = ok(value, config, facts)
      except TypeError:  # e.g. a string where a number belongs
        good = False
      if not good:
        _fail(field, value, rule.format(c=config, f=facts))


# The scripts' one error path lives in data2vec/cli.py; these names stay for existing callers.
USER_ERRORS = cli.USER_ERRORS
one_line_errors = cli.one_line_errors
parse_flags = cli.parse_flags
