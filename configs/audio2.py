r"""data2vec 2.0 speech pretraining (docs/algorithm.md §8; fairseq config/v2/base_audio_only_task).

  python train.py --config configs/audio2.py:tiny --workdir /tmp/d2v2_audio

The student encodes only the visible frames of `clone_batch` span-masked views of each clip (the
masked frames zeroed for the positional conv); a 1-D conv decoder predicts the teacher's targets
at the masked ones (data2vec/pretraining2.py). The teacher encodes the student's CNN features.
The encoder is v1's Data2VecAudioModel (post-LN, conv positions), so it exports to transformers;
fairseq's base adds ALiBi attention biases, which transformers cannot express: an option here
(model.use_alibi), off so that the encoder exports.
"""
import ml_collections

from configs import audio, common


def get_config(arg=None):
  variant = common.parse_variant(arg)
  config = common.base_config('audio', variant)
  config.task = 'pretrain2'

  # v1's encoder (configs/audio.py), without the mask embedding: views drop their masked frames.
  config.model = audio.get_config(variant).model
  # use_alibi=True adds fairseq's ALiBi attention biases (its v2 default); transformers cannot
  # express them, so such an encoder does not export (scripts/export_hf.py names the field).
  config.model.update(dict(mask_time_prob=0.0, use_alibi=False))
  # Targets: FFN outputs of the top 8 blocks, instance norm each over time, average; L2 summed
  # over D times 1/sqrt(D) (§8.5).
  config.objective = ml_collections.ConfigDict(dict(
      top_k=8, target_layer='ffn', layer_norm_targets=False, instance_norm_targets=True,
      post_layer_norm=False, loss_beta=0.0, loss_reduce='sum',
      loss_scale=ml_collections.config_dict.placeholder(float), cls_loss=0.0))
  # Span masks 0.5 / 5, then every view masks exactly 38% of the frames: fairseq's equalization
  # to the batch's smallest count realises 0.381 at 20-s clips and 64 rows (§8.3), a count that
  # varies per batch; a fixed one compiles once. 8 views per clip.
  config.masking = ml_collections.ConfigDict(dict(
      mask_prob=0.5, mask_length=5, min_masks=1, masked_fraction=0.38, clone_batch=8))
  # Decoder1d: 4 x [conv k7 (16 groups, 384 wide) -> LN -> GELU], residual where the widths
  # match; input dropout 0.1 (§8.4).
  config.decoder = ml_collections.ConfigDict(dict(
      dim=384, num_layers=4, kernel_size=7, groups=16, residual=True, projection_hidden=0,
      noise_std=0.01, input_dropout=0.1))
  config.input = audio.get_config(variant).input

  # fairseq v2 audio: Adam (0.9, 0.98), eps 1e-6, wd 0.01, lr 7.5e-4 cosine after 8k warm-up,
  # 400k updates, no clipping; tau 0.999 -> 0.99999 over 75k.
  config.optimizer.update(dict(
      schedule='cosine', peak_lr=7.5e-4, min_lr=0.0, warmup_steps=8_000, b1=0.9, b2=0.98,
      eps=1e-6, weight_decay=0.01, decay_1d_params=True, clip_norm=0.0))
  config.ema.update(dict(tau0=0.999, tau_e=0.99999, tau_n=75_000))
  config.batch_size = 64  # clips of up to 20 s, as configs/audio.py
  config.total_steps = 400_000

  if variant == 'large':
    config.objective.top_k = 16
    config.masking.update(dict(mask_prob=0.55, clone_batch=12))
    config.decoder.dim = 768
    config.optimizer.update(dict(peak_lr=4e-4, clip_norm=1.0))
    config.ema.update(dict(tau0=0.9997, tau_e=1.0, tau_n=300_000))
    config.total_steps = 600_000
  elif variant == 'tiny':
    config.objective.top_k = 3
    config.masking.clone_batch = 4
    config.decoder.update(dict(dim=64, num_layers=3, groups=8))
    config.batch_size = 16
    config.total_steps = 600
    config.optimizer.update(dict(peak_lr=1e-4, warmup_steps=60, min_lr=1e-6))
    config.ema.update(dict(tau0=0.99, tau_e=0.999, tau_n=600))
    config.min_target_var = 0.01
    config.collapse_after_step = 300
    config.log_every_steps = 20
    config.checkpoint_every_steps = 200
    config.probe_every_steps = 200
  return config
