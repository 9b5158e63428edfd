r"""Fine-tuning a data2vec text encoder for WordNet noun-gloss supersenses.

  python train.py --config configs/finetune_text.py:tiny --workdir DIR \
      [--config.init_from=PRETRAINING_WORKDIR_OR_TRANSFORMERS_FOLDER]

Data2VecTextForSequenceClassification (RoBERTa's head on <s>: dense, tanh, out_proj) on the encoder
of configs/text.py (same variant), 10 classes.
base: fairseq's RoBERTa GLUE recipe: Adam (0.9, 0.98), eps 1e-6, weight decay 0.1, no clipping,
linear decay after a 6% warm-up, 10 epochs (50,492 glosses, batch 32), lr 2e-5 from the paper's
sweep {1, 2, 3, 4}e-5.
"""
from configs import common, text

TRAIN_EXAMPLES = 50_492


def get_config(arg=None):
  variant = common.parse_variant(arg)
  config = common.job_config('text', variant, 'finetune')
  pretraining = text.get_config(variant)
  config.head = 'Data2VecTextForSequenceClassification'
  config.model = pretraining.model  # the encoder a pretraining run of this variant gives
  config.model.id2label = ()  # the data set's classes (wordnet_supersense: its 10 supersenses)
  # Glosses as `<s> gloss </s>` in the pretraining data's tokenizer (GPT-2's BPE of python_docs;
  # tiny: the 8k BPE of wordnet_glosses), at most max_length ids (97% fit 64).
  config.input = dict(dataset='wordnet_supersense_gpt2', max_length=128)
  config.eval_every_steps = 0  # 0: after the last step only
  config.eval_splits = ('validation', 'test')
  config.eval_batch_size = 64  # global

  config.batch_size = 32
  config.total_steps = 10 * TRAIN_EXAMPLES // config.batch_size
  config.optimizer.update(dict(
      schedule='linear', peak_lr=2e-5, warmup_steps=int(0.06 * config.total_steps),
      b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1, clip_norm=0.0))

  if variant == 'tiny':
    config.input.update(dict(dataset='wordnet_supersense', max_length=64))
    config.optimizer.update(dict(peak_lr=2e-4, warmup_steps=60))
    config.total_steps = 1000
    config.log_every_steps = 50
    config.checkpoint_every_steps = 500
    config.eval_every_steps = 500
    config.eval_batch_size = 256
  return config
