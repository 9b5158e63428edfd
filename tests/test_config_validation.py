"""config_validation: every bad config gives its own one-line error before anything is built."""
import os
import re
import subprocess
import sys

import ml_collections
import pytest

import train
from configs import audio, common, text, vision
from data2vec import config_validation, pretraining
from data2vec.config_validation import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {'vision': vision, 'text': text, 'audio': audio}


def _set(field, value):
  def mutate(c):
    *path, key = field.split('.')
    for p in path:
      c = c[p]
    c[key] = value
  return mutate


def _update(**fields):
  def mutate(c):
    for field, value in fields.items():
      _set(field, value)(c)
  return mutate


def _delete(key):
  def mutate(c):
    del c[key]
  return mutate


# (case, config (modality:variant), mutation, the error: the field, then the rule). 8 devices.
CASES = [
    ('unknown key', 'vision:tiny', _set('optimizer.peak_lrr', 1.0),
     r'config\.optimizer\.peak_lrr: unknown key \(configs/vision\.py does not define it\)'),
    ('unknown top-level key', 'text:base', _set('total_step', 5),
     r'config\.total_step: unknown key'),
    ('missing key', 'audio:tiny', _delete('skip_nonfinite'),
     r'config\.skip_nonfinite: missing \(configs/audio\.py defines it\)'),
    ('unknown model field', 'vision:tiny', _set('model.hidden_sizes', 3),
     r"config\.model: VisionConfig has no field\(s\) \['hidden_sizes'\]"),
    ('unknown modality', 'vision:tiny', _set('modality', 'video'),
     r"config\.modality='video': must be one of \('text', 'audio', 'vision'\)"),
    ('unknown variant', 'text:tiny', _set('variant', 'huge'),
     r"config\.variant='huge': must be one of \('tiny', 'base', 'large'\)"),
    ('text mask_prob 1', 'text:tiny', _set('masking.mask_prob', 1.0),
     r'config\.masking\.mask_prob=1\.0: must be in \(0, 1\)'),
    ('audio mask_prob 1', 'audio:base', _set('masking.mask_prob', 1.0),
     r'config\.masking\.mask_prob=1\.0: must be in \[0, 1\)'),
    ('audio mask_prob < 0', 'audio:tiny', _set('masking.mask_prob', -0.1),
     r'config\.masking\.mask_prob=-0\.1: must be in \[0, 1\)'),
    ('vision masks every patch', 'vision:tiny', _set('masking.num_masking_patches', 49),
     r'config\.masking\.num_masking_patches=49: must be in \[1, 49\) \(the patches'),
    ('text random + unmasked > 1', 'text:tiny',
     _update(**{'masking.random_token_prob': 0.6, 'masking.leave_unmasked_prob': 0.5}),
     r'config\.masking\.leave_unmasked_prob=0\.5: plus config\.masking\.random_token_prob=0\.6 '
     r'must be <= 1'),
    ('K > layers', 'vision:tiny', _set('objective.top_k', 7),
     r'config\.objective\.top_k=7: must be in \[1, 6\] \(config\.model\.num_hidden_layers'),
    ('K = 0', 'text:base', _set('objective.top_k', 0),
     r'config\.objective\.top_k=0: must be in \[1, 12\]'),
    ('batch not divisible', 'vision:tiny', _set('batch_size', 12),
     r'config\.batch_size=12: must be divisible by the data-parallel size 8'),
    ('batch not divisible by data x fsdp', 'text:tiny',
     _update(**{'mesh.data': 2, 'mesh.fsdp': 4, 'batch_size': 20}),
     r'config\.batch_size=20: must be divisible by the data-parallel size 8'),
    ('mesh does not fit', 'audio:tiny', _set('mesh.fsdp', 3),
     r"config\.mesh \{'data': -1, 'fsdp': 3, 'tensor': 1\} does not divide 8 devices"),
    ('patch does not divide image', 'vision:tiny', _set('model.patch_size', 5),
     r'config\.model: patch_size=5 does not divide image_size=28'),
    ('tau 0', 'vision:base', _set('ema.tau0', 0.0), r'config\.ema\.tau0=0\.0: must be in \(0, 1\]'),
    ('tau > 1', 'audio:tiny', _set('ema.tau_e', 1.5),
     r'config\.ema\.tau_e=1\.5: must be in \(0, 1\]'),
    ('zero steps', 'text:tiny', _set('total_steps', 0), r'config\.total_steps=0: must be > 0'),
    ('negative steps', 'vision:tiny', _set('total_steps', -5), r'config\.total_steps=-5: must be'),
    ('warmup > total', 'vision:tiny', _set('optimizer.warmup_steps', 601),
     r'config\.optimizer\.warmup_steps=601: must be in \[0, config\.total_steps=600\]'),
    ('unknown schedule', 'text:tiny', _set('optimizer.schedule', 'step'),
     r"config\.optimizer\.schedule='step': must be one of \('cosine', 'tri_stage', 'constant', "
     r"'linear'\)"),
    ('tri_stage with warmup_steps', 'vision:tiny', _set('optimizer.schedule', 'tri_stage'),
     r"config\.optimizer\.warmup_steps=60: .*\(0 for 'tri_stage'"),
    ('tri_stage phases not summing to 1', 'audio:base',
     _set('optimizer.phase_ratio', (0.1, 0.5, 0.5)),
     r'config\.optimizer\.phase_ratio=\(0\.1, 0\.5, 0\.5\): must be 3 fractions'),
    ('phase_ratio without tri_stage', 'audio:tiny', _set('optimizer.schedule', 'cosine'),
     r"config\.optimizer\.phase_ratio=\(0\.03, 0\.9, 0\.07\): .* else None"),
    ('min_lr > peak_lr', 'vision:tiny', _set('optimizer.min_lr', 0.1),
     r'config\.optimizer\.min_lr=0\.1: must be in \[0, config\.optimizer\.peak_lr=0\.001\]'),
    ('b2 = 1', 'text:tiny', _set('optimizer.b2', 1.0), r'config\.optimizer\.b2=1\.0: must be in'),
    ('text max_length beyond positions', 'text:tiny', _set('input.max_length', 129),
     r'config\.input\.max_length=129: must be in \[2, 130 - 1 - 1\]'),
    ('target layer', 'audio:tiny', _set('objective.target_layer', 'attn'),
     r"config\.objective\.target_layer='attn': must be one of \('ffn', 'end'\)"),
    ('one checkpoint kept', 'vision:tiny', _set('keep_checkpoints', 1),
     r'config\.keep_checkpoints=1: must be >= 2'),
    ('init_from not a folder', 'vision:tiny', _set('init_from', '/nonexistent/hf'),
     r"config\.init_from='/nonexistent/hf': must be '' or a transformers folder"),
    ('no log interval', 'text:tiny', _set('log_every_steps', 0),
     r'config\.log_every_steps=0: must be > 0'),
    ('infinite learning rate', 'vision:tiny', _set('optimizer.peak_lr', float('inf')),
     r'config\.optimizer\.peak_lr=inf: must be a finite number'),
    ('NaN in a tuple', 'vision:tiny', _set('input.mean', (float('nan'),)),
     r'config\.input\.mean=\(nan,\): must hold finite numbers'),
    ('infinite model field', 'text:tiny', _set('model.layer_norm_eps', float('-inf')),
     r'config\.model\.layer_norm_eps=-inf: must be a finite number'),
]


def _config(name):
  modality, variant = name.split(':')
  return CONFIGS[modality].get_config(variant)


@pytest.mark.parametrize('name,mutate,message', [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config_gives_its_own_one_line_error(name, mutate, message):
  config = _config(name)
  mutate(config)
  with pytest.raises(ConfigError, match=f'^{message}') as error:
    config_validation.validate(config)
  assert '\n' not in str(error.value)


def test_every_message_is_different():
  messages = []
  for _, name, mutate, _ in CASES:
    config = _config(name)
    mutate(config)
    with pytest.raises(ConfigError) as error:
      config_validation.validate(config)
    messages.append(str(error.value))
  assert len(set(messages)) == len(messages)


def _float_fields(config, prefix=''):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _float_fields(value, f'{prefix}{key}.')
    elif isinstance(value, float):
      yield prefix + key


@pytest.mark.parametrize('modality', sorted(CONFIGS))
def test_every_number_must_be_finite(modality):
  """A generic rule: every float field of every block, with or without a rule of its own."""
  fields = list(_float_fields(CONFIGS[modality].get_config('tiny')))
  assert len(fields) > 20 and 'optimizer.peak_lr' in fields and 'model.layer_norm_eps' in fields
  for field in fields:
    for bad in (float('nan'), float('inf'), float('-inf')):
      config = CONFIGS[modality].get_config('tiny')
      _set(field, bad)(config)
      with pytest.raises(ConfigError, match=rf'^config\.{re.escape(field)}=-?(nan|inf): must be '
                         'a finite number$'):
        config_validation.validate(config)


@pytest.mark.parametrize('modality', sorted(CONFIGS))
@pytest.mark.parametrize('variant', common.VARIANTS)
def test_every_shipped_config_is_valid(modality, variant):
  config_validation.validate(CONFIGS[modality].get_config(variant))


def test_validation_builds_nothing(tmp_path, monkeypatch):
  def no_model(*args, **kwargs):
    raise AssertionError('validation built a model')
  monkeypatch.setattr(pretraining, 'build_models', no_model)
  config_validation.validate(vision.get_config('large'))
  config = vision.get_config('tiny')
  config.objective.top_k = 7
  workdir = tmp_path / 'w'
  with pytest.raises(ConfigError, match='top_k'):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()  # nothing written either


def _cli(*flags):
  return subprocess.Popen(
      [sys.executable, 'train.py', '--config', 'configs/vision.py:tiny', *flags], cwd=REPO,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_command_line_errors_are_one_line_without_traceback(tmp_path):
  workdir = str(tmp_path / 'w')
  procs = {  # started together: each pays the interpreter start-up
      'rule': _cli('--config.objective.top_k=9', '--workdir', workdir),
      'unknown key': _cli('--config.optimizer.peak_lrr=1', '--workdir', workdir),
      'unknown block': _cli('--config.optimzer.peak_lr=1', '--workdir', workdir),
  }
  results = {}
  for name, proc in procs.items():
    try:
      _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
      proc.kill()
      raise
    assert proc.returncode == 1, (name, err[-2000:])
    assert 'Traceback' not in err, (name, err[-2000:])
    results[name] = err.strip().splitlines()[-1]
  assert results['rule'].startswith('ConfigError: config.objective.top_k=9: must be in [1, 6]')
  assert results['unknown key'].startswith('FATAL Flags parsing error: a --config override '
                                           "names an unknown key: 'peak_lrr'")
  assert "'optimzer'" in results['unknown block']
  assert not os.path.exists(workdir)
