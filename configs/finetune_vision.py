r"""Fine-tuning a data2vec vision encoder for Fashion-MNIST classification.

The recipe: docs/algorithm.md §7.1.

  python train.py --config configs/finetune_vision.py:tiny --workdir DIR \
      [--config.init_from=PRETRAINING_WORKDIR_OR_TRANSFORMERS_FOLDER]
      [--config.input.dataset=NAME]  (a prepared image folder with class folders)

Data2VecVisionForImageClassification on the encoder of configs/vision.py (same variant): mean
pooling, LayerNorm, a Linear whose init is scaled by 0.001; layer-wise lr decay.
base: the data2vec_vision README's ViT-B recipe: AdamW (0.9, 0.999), eps 1e-8, lr 4e-3, cosine to
1e-6 after 10 warm-up epochs, 100 epochs of batch 1024 (ImageNet-1k epochs: 1251 steps), layer
decay 0.65, drop path 0.2, weight decay 0. large: lr 5e-3, 5 warm-up and 50 epochs, drop path
0.25, weight decay 0.05. Not reproduced: RandAugment, mixup / cutmix, label smoothing, random
erasing.
"""
from configs import common, vision

IMAGENET_EPOCH = 1251  # steps of batch 1024: the recipe's step counts


def get_config(arg=None):
  variant = common.parse_variant(arg)
  config = common.job_config('vision', variant, 'finetune')
  pretraining = vision.get_config(variant)
  config.head = 'Data2VecVisionForImageClassification'
  config.model = pretraining.model  # the encoder a pretraining run of this variant gives
  # id2label () takes the data set's classes (Fashion-MNIST's, or a prepared folder's).
  config.model.update(dict(id2label=(), drop_path_rate=0.2, attention_dropout=0.0))
  config.input = pretraining.input
  config.input.crop_scale = (0.08, 1.0)
  config.head_init_scale = 0.001
  config.layer_decay = 0.65
  config.eval_every_steps = 0  # 0: after the last step only
  config.eval_splits = ('test',)
  config.eval_batch_size = 256  # global

  config.optimizer.update(dict(
      schedule='cosine', peak_lr=4e-3, min_lr=1e-6, warmup_steps=10 * IMAGENET_EPOCH,
      b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, decay_1d_params=False, clip_norm=0.0,
      no_decay_patterns=('cls_token',)))
  config.batch_size = 1024
  config.total_steps = 100 * IMAGENET_EPOCH

  if variant == 'large':
    config.model.drop_path_rate = 0.25
    config.optimizer.update(dict(peak_lr=5e-3, warmup_steps=5 * IMAGENET_EPOCH,
                                 weight_decay=0.05))
    config.total_steps = 50 * IMAGENET_EPOCH
  elif variant == 'tiny':
    # 1000 steps of 64: about one epoch of Fashion-MNIST, minutes on 2 CPU cores.
    config.model.drop_path_rate = 0.1
    config.input.crop_scale = (0.35, 1.0)
    config.layer_decay = 0.75  # a 6-block model: 0.65 ** 7 would all but freeze its embeddings
    config.optimizer.update(dict(peak_lr=1e-3, warmup_steps=100, min_lr=1e-5, weight_decay=0.05))
    config.batch_size = 64
    config.total_steps = 1000
    config.log_every_steps = 50
    config.checkpoint_every_steps = 500
    config.eval_every_steps = 500
    config.eval_batch_size = 1000
  return config
