r"""data2vec 2.0 vision pretraining (docs/algorithm.md §8; fairseq config/v2/base_images_only_task).

  python train.py --config configs/vision2.py:tiny --workdir /tmp/d2v2_vision

The student encodes only the visible patches of `clone_batch` inverse-block-masked views of each
image; a conv decoder predicts the teacher's targets at the masked ones (data2vec/pretraining2.py).
The encoder is v1's Data2VecVisionModel with learned absolute positions and no relative position
bias or layer scale, so it exports to transformers (docs/architecture.md, data2vec 2.0).
base: ViT-B/16 at 224 px with the v2 recipe; tiny: 28x28 Fashion-MNIST, 4x4 patches.
"""
import ml_collections

from configs import common


def get_config(arg=None):
  variant = common.parse_variant(arg)
  config = common.base_config('vision', variant)
  config.task = 'pretrain2'

  config.model = ml_collections.ConfigDict(dict(
      hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
      image_size=224, patch_size=16, num_channels=3,
      layer_norm_eps=1e-6, layer_scale_init_value=0.0,
      hidden_dropout=0.0, attention_dropout=0.0, drop_path_rate=0.0,  # v2 images: no dropout
      use_mask_token=False, use_absolute_position_embeddings=True,
      use_shared_relative_position_bias=False, use_relative_position_bias=False,
      use_mean_pooling=True,
      dtype='float32', scan_layers=False, remat_policy='none',
  ))
  # Targets: FFN outputs of the top 10 blocks, instance norm each over the patches, average,
  # LayerNorm; L2 scaled by 1/sqrt(D); the cls output regresses the targets' mean, weight 0.01.
  config.objective = ml_collections.ConfigDict(dict(
      top_k=10, target_layer='ffn', layer_norm_targets=False, instance_norm_targets=True,
      post_layer_norm=True, loss_beta=0.0, loss_reduce='sum',
      loss_scale=ml_collections.config_dict.placeholder(float), cls_loss=0.01))
  # Inverse block masks: the visible 20% drawn as 3x3 blocks, 16 views per image (§8.3).
  config.masking = ml_collections.ConfigDict(dict(
      mask_prob=0.8, mask_length=3, mask_prob_adjust=0.07, clone_batch=16))
  # Decoder2d: 6 x [conv 3x3 (16 groups, 768 wide) -> LN -> GELU], residual; masked positions
  # start as N(0, 0.01^2) noise (§8.4).
  config.decoder = ml_collections.ConfigDict(dict(
      dim=768, num_layers=6, kernel_size=3, groups=16, residual=True, projection_hidden=0,
      noise_std=0.01, input_dropout=0.0))
  config.input = ml_collections.ConfigDict(dict(
      dataset='fashion_mnist', crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), flip=True,
      center_crop=1.0, mean=(0.286,), std=(0.353,)))

  # fairseq v2 images: Adam (0.9, 0.95), wd 0.05, lr 1e-3 cosine after 50,040 warm-up updates,
  # 375,300 updates of 256 images, clip 4; tau 0.9998 -> 0.99999 over 100k.
  config.optimizer.update(dict(
      schedule='cosine', peak_lr=1e-3, min_lr=0.0, warmup_steps=50_040, b1=0.9, b2=0.95,
      eps=1e-8, weight_decay=0.05, decay_1d_params=False, clip_norm=4.0,
      no_decay_patterns=('cls_token', 'position_embeddings')))
  config.ema.update(dict(tau0=0.9998, tau_e=0.99999, tau_n=100_000))
  config.batch_size = 256
  config.total_steps = 375_300
  config.min_target_var = 0.0
  config.min_pred_var = 0.0

  if variant == 'large':
    config.model.update(dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                             intermediate_size=4096))
    config.objective.top_k = 18
    config.masking.update(dict(mask_prob=0.75, mask_prob_adjust=0.1))
    config.decoder.update(dict(dim=1024, num_layers=3, kernel_size=5))
    config.optimizer.peak_lr = 4e-4
    config.ema.tau_n = 150_000
  elif variant == 'tiny':
    config.model.update(dict(
        hidden_size=128, num_hidden_layers=6, num_attention_heads=4, intermediate_size=512,
        image_size=28, patch_size=4, num_channels=1))
    config.objective.top_k = 4
    config.masking.clone_batch = 4
    config.decoder.update(dict(dim=128, num_layers=3, groups=8))
    config.input.crop_scale = (0.35, 1.0)
    config.batch_size = 32
    config.total_steps = 600
    config.optimizer.update(dict(peak_lr=1e-3, warmup_steps=60, min_lr=1e-5))
    config.ema.update(dict(tau0=0.99, tau_e=0.999, tau_n=600))
    config.log_every_steps = 20
    config.checkpoint_every_steps = 200
    config.probe_every_steps = 200
  return config
