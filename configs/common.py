"""Blocks shared by every config: the standard top-level keys, optimizer and mesh; pretraining's
EMA, collapse monitors and probe."""
import os

import ml_collections

VARIANTS = ('tiny', 'base', 'large')
DEFAULT_DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data')


def parse_variant(arg):
  """`configs/x.py:tiny` passes 'tiny'; no argument means tiny (the CPU recipe)."""
  variant = arg or 'tiny'
  if variant not in VARIANTS:
    raise ValueError(f'config variant {variant!r} is not one of {VARIANTS}')
  return variant


def base_config(modality, variant):
  """The keys of a pretraining config: `job_config`'s, the EMA, collapse monitors and probe."""
  config = job_config(modality, variant, 'pretrain')

  # EMA teacher: tau rises linearly from tau0 to tau_e over tau_n steps (docs/algorithm.md §1.2).
  config.ema = ml_collections.ConfigDict(dict(tau0=0.999, tau_e=0.9999, tau_n=30_000))

  # Collapse monitors (docs/algorithm.md §2): abort below these after `collapse_after_step`.
  config.min_target_var = 0.1
  config.min_pred_var = 0.01
  config.collapse_after_step = 5000

  # Every `probe_every_steps` (0 = off), a closed-form ridge probe of the student's frozen
  # features on the first labelled train / test examples is logged with the training metrics.
  # dataset '': the pretraining set when it is a labelled prepared set with a test split, else the
  # modality's bundled probe set (Fashion-MNIST, spoken digits, WordNet supersenses).
  config.probe_every_steps = 0
  config.ridge_probe = ml_collections.ConfigDict(dict(
      dataset='', num_train=1000, num_test=1000, l2_reg=1.0,
      layer=-1, num_layers=1))  # mean-pooled hidden_states[layer - num_layers + 1..layer]
  return config


def job_config(modality, variant, task):
  """The keys every train and fine-tune config has (docs/architecture.md, public contract).

  task: 'pretrain' (data2vec, data2vec/pretraining.py), 'pretrain2' (data2vec 2.0,
  data2vec/pretraining2.py) or 'finetune' (a task head, data2vec/finetuning.py): train.py runs
  the job it names (data2vec/tasks.py).
  """
  config = ml_collections.ConfigDict()
  config.modality = modality
  config.variant = variant
  config.task = task
  config.total_steps = 1000
  config.batch_size = 32  # global
  config.seed = 0
  config.log_every_steps = 10
  config.checkpoint_every_steps = 100
  config.keep_checkpoints = 2
  config.data_dir = DEFAULT_DATA_DIR
  # Where the encoder starts: '' (random init), a transformers folder (import; a task head's
  # folder gives its encoder) or, fine-tuning, a pretraining workdir (its student encoder).
  config.init_from = ''

  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Logical axis -> mesh axes (data2vec/sharding.py). Activations split the batch (and conv
  # channel groups, like heads, along tensor); parameters split the model dim and conv channels
  # along fsdp, heads / MLP units / vocab along tensor.
  config.logical_axis_rules = (
      ('act_batch', ('data', 'fsdp')), ('act_len', None), ('act_emb', None),
      ('act_heads', 'tensor'),
      ('embed', 'fsdp'), ('conv_out', 'fsdp'), ('conv_in', None), ('layers', None),
      ('heads', 'tensor'), ('mlp', 'tensor'), ('vocab', 'tensor'),
  )
  # Multi-host: call jax.distributed.initialize() first (also when JAX_COORDINATOR_ADDRESS is set).
  config.distributed = False
  config.model = ml_collections.ConfigDict()

  config.optimizer = ml_collections.ConfigDict(dict(
      schedule='cosine',  # 'cosine' | 'tri_stage' | 'constant' | 'linear'
      peak_lr=1e-3,
      warmup_steps=100,  # cosine / constant / linear (tri_stage takes it from phase_ratio)
      min_lr=0.0,  # cosine floor
      # tri_stage only: warm-up / hold / decay
      phase_ratio=ml_collections.config_dict.placeholder(tuple),
      init_lr_scale=0.01,
      final_lr_scale=0.01,
      b1=0.9,
      b2=0.98,
      eps=1e-6,
      weight_decay=0.01,
      decay_1d_params=True,  # False: no decay on biases and norms
      no_decay_patterns=(),  # parameter paths containing one of these are not decayed
      clip_norm=0.0,  # 0 = no clipping
  ))

  # A non-finite loss, gradient norm or parameter norm stops training with an error naming the
  # step (False), or keeps the previous state for that step and counts it in `skipped` (True).
  config.skip_nonfinite = False
  return config
