"""The base recipes pin the constants of docs/algorithm.md: §2 targets, §3 losses, §4 masks, §6."""
import numpy as np
import pytest

from configs import audio, text, vision
from data2vec import ema


def check(config, expected):
  for path, value in expected.items():
    got = config
    for part in path.split('.'):
      got = got[part]
    assert got == (pytest.approx(value) if isinstance(value, float) else value), path


def test_vision_base_is_the_data2vec_vision_recipe():
  check(vision.get_config('base'), {
      'objective.top_k': 6, 'objective.target_layer': 'end', 'objective.layer_norm_targets': True,
      'objective.instance_norm_targets': False, 'objective.post_layer_norm': True,
      'objective.loss_beta': 2.0, 'objective.loss_reduce': 'mean', 'objective.loss_scale': 1.0,
      'objective.head_layers': 1, 'objective.head_pre_norm': True,
      'ema.tau0': 0.9998, 'ema.tau_e': 0.9998,
      'masking.num_masking_patches': 120, 'masking.min_num_patches': 16,
      'masking.max_num_patches': 196, 'masking.min_aspect': 0.3,
      'optimizer.schedule': 'cosine', 'optimizer.peak_lr': 2e-3, 'optimizer.min_lr': 1e-5,
      'optimizer.b1': 0.9, 'optimizer.b2': 0.999, 'optimizer.eps': 1e-8,
      'optimizer.weight_decay': 0.05, 'optimizer.decay_1d_params': False,
      'optimizer.clip_norm': 3.0, 'batch_size': 2048,
      'model.hidden_size': 768, 'model.num_hidden_layers': 12, 'model.image_size': 224,
      'model.patch_size': 16, 'model.layer_scale_init_value': 1e-4, 'model.drop_path_rate': 0.25,
      'model.attention_dropout': 0.05, 'model.layer_norm_eps': 1e-6,
      'model.use_shared_relative_position_bias': True,
      'model.use_absolute_position_embeddings': False,
  })
  check(vision.get_config('large'), {
      'model.hidden_size': 1024, 'model.num_hidden_layers': 24, 'optimizer.peak_lr': 1e-3,
      'model.layer_scale_init_value': 1e-5, 'model.drop_path_rate': 0.2,
      'model.attention_dropout': 0.15, 'objective.top_k': 6,
  })


def test_text_base_is_the_released_fairseq_recipe():
  check(text.get_config('base'), {
      'objective.top_k': 10, 'objective.target_layer': 'ffn', 'objective.layer_norm_targets': True,
      'objective.instance_norm_targets': False, 'objective.post_layer_norm': False,
      'objective.loss_beta': 4.0, 'objective.loss_reduce': 'sum', 'objective.loss_scale': 1.0,
      'objective.head_layers': 2,
      'ema.tau0': 0.999, 'ema.tau_e': 0.9999, 'ema.tau_n': 300_000,
      'masking.mask_prob': 0.35, 'masking.mask_length': 4, 'masking.random_token_prob': 0.0,
      'masking.leave_unmasked_prob': 0.0,
      'optimizer.schedule': 'cosine', 'optimizer.peak_lr': 2e-4, 'optimizer.warmup_steps': 10_000,
      'optimizer.b1': 0.9, 'optimizer.b2': 0.98, 'optimizer.eps': 1e-6,
      'optimizer.weight_decay': 0.01, 'optimizer.clip_norm': 5.0,
      'total_steps': 1_000_000, 'batch_size': 256,
      'model.hidden_dropout': 0.1, 'model.attention_dropout': 0.1,
  })


def test_audio_base_is_the_base_librispeech_recipe():
  check(audio.get_config('base'), {
      'objective.top_k': 8, 'objective.target_layer': 'ffn',
      'objective.instance_norm_targets': True, 'objective.layer_norm_targets': False,
      'objective.post_layer_norm': False, 'objective.loss_beta': 0.0,
      'objective.loss_reduce': 'sum', 'objective.loss_scale': None, 'objective.head_layers': 1,
      'ema.tau0': 0.999, 'ema.tau_e': 0.9999, 'ema.tau_n': 30_000,
      'masking.mask_prob': 0.65, 'masking.mask_length': 10, 'masking.min_masks': 1,
      'optimizer.schedule': 'tri_stage', 'optimizer.phase_ratio': (0.03, 0.9, 0.07),
      'optimizer.peak_lr': 5e-4, 'optimizer.b1': 0.9, 'optimizer.b2': 0.98,
      'optimizer.eps': 1e-6, 'optimizer.weight_decay': 0.01, 'optimizer.clip_norm': 0.0,
      'optimizer.init_lr_scale': 0.01, 'optimizer.final_lr_scale': 0.01,
      'total_steps': 400_000, 'min_target_var': 0.1, 'min_pred_var': 0.01,
      'collapse_after_step': 5000,
      'model.conv_dim': (512,) * 7, 'model.conv_kernel': (10, 3, 3, 3, 3, 2, 2),
      'model.conv_stride': (5, 2, 2, 2, 2, 2, 2), 'model.conv_bias': False,
      'model.num_conv_pos_embeddings': 5, 'model.conv_pos_kernel_size': 19,
      'model.num_conv_pos_embedding_groups': 16, 'model.layerdrop': 0.05,
      'model.hidden_dropout': 0.1, 'model.attention_dropout': 0.1,
  })


@pytest.mark.parametrize('module', [vision, text, audio])
def test_tiny_keeps_the_algorithm_and_shortens_the_ema_horizon(module):
  base, tiny = module.get_config('base'), module.get_config('tiny')
  for key in ('target_layer', 'layer_norm_targets', 'instance_norm_targets', 'post_layer_norm',
              'loss_beta', 'loss_reduce', 'head_layers', 'head_pre_norm'):
    assert tiny.objective[key] == base.objective[key], key
  assert tiny.objective.top_k <= tiny.model.num_hidden_layers
  # A thousand steps at tau 0.9998 would leave the teacher ~80% its initial weights: the
  # tiny EMA horizon must let the teacher forget most of its initialisation within the run.
  steps = np.arange(1, tiny.total_steps + 1)
  taus = ema.tau_schedule(steps, tiny.ema.tau0, tiny.ema.tau_e, tiny.ema.tau_n)
  assert np.prod(np.asarray(taus, np.float64)) < 0.5
  assert np.prod(np.full(tiny.total_steps, 0.9998)) > 0.75
