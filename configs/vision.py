r"""data2vec v1 vision pretraining (BEiT-style ViT, data2vec_vision recipe; docs/algorithm.md §6).

  python train.py --config configs/vision.py:tiny --workdir /tmp/d2v_vision

base: ViT-B/16 at 224 px with the data2vec_vision optimisation recipe. The only colour-free
offline data is Fashion-MNIST, so base/large resize it to 224 and repeat it to 3 channels.
tiny: the same algorithm on 28x28 Fashion-MNIST, 4x4 patches, minutes on 2 CPU cores.
"""
import ml_collections

from configs import common


def get_config(arg=None):
  variant = common.parse_variant(arg)
  config = common.base_config('vision', variant)

  config.model = ml_collections.ConfigDict(dict(
      hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
      image_size=224, patch_size=16, num_channels=3,
      layer_norm_eps=1e-6,  # the original code's eps (transformers' default is 1e-12)
      layer_scale_init_value=1e-4,
      hidden_dropout=0.0, attention_dropout=0.05, drop_path_rate=0.25,
      use_mask_token=True, use_absolute_position_embeddings=False,
      use_shared_relative_position_bias=True, use_relative_position_bias=False,
      use_mean_pooling=True,
      dtype='float32', scan_layers=False, remat_policy='none',
  ))

  # Targets: end-of-block outputs of the top 6 blocks, LN each, average, LN again (§2.1).
  config.objective = ml_collections.ConfigDict(dict(
      top_k=6, target_layer='end', layer_norm_targets=True, instance_norm_targets=False,
      post_layer_norm=True, loss_beta=2.0, loss_reduce='mean', loss_scale=1.0,
      head_layers=1, head_pre_norm=True,
  ))
  # BEiT block masking: 120 of 196 patches, blocks of 16..196, aspect 0.3..1/0.3 (§4.3).
  config.masking = ml_collections.ConfigDict(dict(
      num_masking_patches=120, min_num_patches=16, max_num_patches=196, min_aspect=0.3))
  # dataset: 'fashion_mnist' or a prepared image folder (`prepare_data.py images --name NAME`;
  # set num_channels=3 and ImageNet's mean/std for colour photos). center_crop: the evaluation
  # crop (probes, fine-tuning) as a fraction of the shorter side.
  config.input = ml_collections.ConfigDict(dict(
      dataset='fashion_mnist', crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), flip=True,
      center_crop=1.0, mean=(0.286,), std=(0.353,)))  # Fashion-MNIST pixel statistics

  # data2vec_vision: AdamW (0.9, 0.999), eps 1e-8, wd 0.05 without 1-D params, lr 2e-3,
  # cosine to 1e-5 after 10 warm-up epochs, clip 3, batch 2048, tau 0.9998 constant.
  config.optimizer.update(dict(
      schedule='cosine', peak_lr=2e-3, min_lr=1e-5, warmup_steps=6250,  # 10 epochs of IN-1k
      b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=0.05, decay_1d_params=False, clip_norm=3.0,
      no_decay_patterns=('cls_token',)))  # DV; add 'position_embeddings' when the model has them
  config.ema.update(dict(tau0=0.9998, tau_e=0.9998, tau_n=0))
  config.batch_size = 2048
  config.total_steps = 500_000
  config.min_target_var = 0.0  # the v1 vision code has no collapse check
  config.min_pred_var = 0.0

  if variant == 'large':
    config.model.update(dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                             intermediate_size=4096, layer_scale_init_value=1e-5,
                             drop_path_rate=0.2, attention_dropout=0.15))
    # README command: 64 GPUs x 64 = 4096 images, lr 1e-3, 80 warm-up epochs (the paper: 8192).
    config.batch_size = 4096
    config.optimizer.update(dict(peak_lr=1e-3, warmup_steps=25_000))
  elif variant == 'tiny':
    config.model.update(dict(
        hidden_size=128, num_hidden_layers=6, num_attention_heads=4, intermediate_size=512,
        image_size=28, patch_size=4, num_channels=1, drop_path_rate=0.1, attention_dropout=0.0,
        layer_scale_init_value=0.1))
    config.objective.top_k = 3
    config.masking.update(dict(num_masking_patches=30, min_num_patches=4, max_num_patches=49))
    config.input.crop_scale = (0.35, 1.0)
    config.batch_size = 64
    config.total_steps = 600
    config.optimizer.update(dict(peak_lr=1e-3, warmup_steps=60, min_lr=1e-5))
    # A short run needs a short EMA horizon: at tau 0.9998 the teacher would barely move.
    config.ema.update(dict(tau0=0.99, tau_e=0.999, tau_n=600))
    config.log_every_steps = 20
    config.checkpoint_every_steps = 200
    config.probe_every_steps = 200  # a ridge probe costs a few seconds here
  return config
