r"""Fine-tuning a data2vec speech encoder on the synthesized digits.

The data: docs/data.md; the recipe: docs/algorithm.md §7.2.

  python train.py --config configs/finetune_audio.py:ctc --workdir DIR \
      [--config.init_from=PRETRAINING_WORKDIR_OR_TRANSFORMERS_FOLDER]
      [--config.input.dataset=NAME]  (a prepared audio set: digits takes its classes; ctc its
      transcripts, with characters / vocab_size to fit)

The argument is `JOB[,VARIANT]`: the encoder of configs/audio.py:VARIANT (default tiny) with
  digits: Data2VecAudioForSequenceClassification, spoken digit -> 'zero'..'nine';
  ctc:     Data2VecAudioForCTC on spoken strings of 3-7 digits, the transcripts written as digits
           ('5270427'; blank = <pad>, id 0), scored by the character error rate of greedy
           decoding on the test split, whose voices are never heard in training.
The CNN feature encoder is frozen and, for the first freeze_finetune_updates, the whole encoder.
base follows fairseq's base_10h: Adam (0.9, 0.98), eps 1e-8, no weight decay, lr 5e-5 tri-stage
(10% / 40% / 50%, down to 5%), 20k updates of which 10k train the head only, layerdrop 0.05,
activation dropout 0.1. Not reproduced: SpecAugment (our heads take no masks), fairseq's batches
of 25.6M samples (ours: 64 clips). Added: speed perturbation (0.9-1.1), for the few training voices.
tiny: CPU minutes; scripts/tiny_ctc_finetuning.sh chains pretraining -> digits -> ctc (README).
"""
from configs import audio, common
from data2vec.hf import preprocessors

# job -> (head, data set)
JOBS = {'digits': ('Data2VecAudioForSequenceClassification', 'spoken_digits'),
        'ctc': ('Data2VecAudioForCTC', 'spoken_digit_strings')}
DIGITS = '0123456789'


def parse_arg(arg):
  """'JOB[,VARIANT]' -> (job, variant); no argument is 'ctc,tiny'."""
  job, _, variant = (arg or 'ctc').partition(',')
  if job not in JOBS:
    raise ValueError(f'config argument {arg!r}: the job {job!r} is not one of {tuple(JOBS)}')
  return job, common.parse_variant(variant)


def config_arg(config):
  """The argument that rebuilds `config`'s keys (config_validation's reference)."""
  job = next((j for j, (head, _) in JOBS.items() if head == config.head), 'ctc')
  return f'{job},{config.variant}'


def get_config(arg=None):
  job, variant = parse_arg(arg)
  config = common.job_config('audio', variant, 'finetune')
  pretraining = audio.get_config(variant)
  config.head, dataset = JOBS[job]
  config.model = pretraining.model  # the encoder a pretraining run of this variant gives
  config.model.update(dict(layerdrop=0.05, activation_dropout=0.1, final_dropout=0.0))
  # Clips are normalised per utterance (as in pretraining) and padded to max_sample_size; training
  # plays each at a random speed in `speed` (tempo and pitch: other voices; (1, 1) is off).
  config.input = dict(dataset=dataset, sample_rate=16_000, max_sample_size=64_000,
                      speed=(0.9, 1.1))
  if job == 'ctc':
    # The alphabet of the transcripts (the CTC tokens after the specials and the word delimiter).
    config.input.update(dict(characters=DIGITS))
    config.model.update(dict(vocab_size=len(preprocessors.ctc_vocab(DIGITS)), pad_token_id=0,
                             ctc_loss_reduction='mean'))  # the loss per target token
  else:
    config.model.id2label = ()  # the data set's classes (spoken_digits: the digit words)
    config.input.max_sample_size = 24_000  # 1.5 s: the longest digit is 1.3 s
  config.freeze_feature_encoder = True
  config.freeze_finetune_updates = 10_000
  config.eval_every_steps = 0  # 0: after the last step only
  config.eval_splits = ('validation', 'test')
  config.eval_batch_size = 16  # global

  config.optimizer.update(dict(
      schedule='tri_stage', peak_lr=5e-5, phase_ratio=(0.1, 0.4, 0.5), warmup_steps=0,
      final_lr_scale=0.05, b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.0, clip_norm=0.0))
  config.batch_size = 64
  config.total_steps = 20_000

  if variant == 'tiny':
    config.model.update(dict(layerdrop=0.0, classifier_proj_size=128))
    config.optimizer.update(dict(peak_lr=1e-3, clip_norm=5.0))
    config.batch_size = 16
    # Minutes on 2 CPU cores. Digits are learnt in a few hundred steps and then overfit; CTC first
    # sits on the all-blank plateau for hundreds of steps.
    config.total_steps = 1500 if job == 'ctc' else 600
    # CTC: the new lm_head first, on the encoder init_from gives (fairseq's recipe, scaled).
    config.freeze_finetune_updates = 200 if job == 'ctc' else 0
    config.log_every_steps = 25
    config.checkpoint_every_steps = config.eval_every_steps = config.total_steps // 3
    config.eval_batch_size = 64
  return config
