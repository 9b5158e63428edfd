"""Keys shared by the linear-probe configs of eval.py (configs/probe_<modality>.py)."""
import ml_collections

from configs import common


def parse_label_budgets(arg, default='10,100,all'):
  """`configs/probe_x.py:10,100,all` -> (10, 100, 0): labels per class, 0 = every label."""
  budgets = []
  for item in (arg or default).split(','):
    if item == 'all':
      budgets.append(0)
    elif item.isdigit() and int(item) > 0:
      budgets.append(int(item))
    else:
      raise ValueError(f'probe config arg {arg!r}: {item!r} is not a positive number of labels '
                       "per class or 'all'")
  return tuple(budgets)


def probe_config(modality, arg, default_budgets='10,100,all'):
  config = ml_collections.ConfigDict()
  config.modality = modality
  config.labels_per_class = parse_label_budgets(arg, default_budgets)  # 0 = every training label
  config.seeds = (0, 1, 2)  # each budget is probed once per seed, which draws the label subset
  # The identical architecture untrained; no checkpoint is read. Its init seed: None = the
  # workdir's pretraining seed (the encoder pretraining started from), 0 for an --hf folder.
  config.random_init = False
  config.init_seed = ml_collections.config_dict.placeholder(int)
  config.raw_features = False  # the raw inputs instead of an encoder (docs/data.md baselines)
  config.step = ml_collections.config_dict.placeholder(int)  # checkpoint step; None = latest
  config.data_dir = common.DEFAULT_DATA_DIR
  config.num_train_examples = 0  # 0 = the whole split; N = its first N (smoke runs)
  config.num_test_examples = 0
  # The split the classifiers are scored on: 'validation' to choose a setting (e.g. the layer),
  # then 'test' once with the chosen one.
  config.eval_split = 'test'
  config.batch_size = 256  # feature extraction
  # Mean-pooled hidden states: the average of `num_layers` layers ending at `layer`
  # (hidden_states index: 0 = embeddings, -1 = the last block).
  config.features = ml_collections.ConfigDict(dict(layer=-1, num_layers=1))
  # L2-regularised softmax regression, `steps` full-batch L-BFGS iterations on standardised
  # features; layer_norm: a parameter-free LayerNorm on the features first (data2vec_vision).
  config.classifier = ml_collections.ConfigDict(dict(steps=500, l2_reg=1e-4, layer_norm=True))
  return config
