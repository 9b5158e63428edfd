r"""Linear probes of a frozen encoder.

  python eval.py --config configs/probe_vision.py --workdir DIR [--config.random_init=True]
  python eval.py --config configs/probe_audio.py --hf HF_DIR --out OUT
  python eval.py --config configs/probe_text.py --config.raw_features=True --out OUT

Restores only the encoder of the checkpoint in DIR (or loads a transformers folder), extracts
mean-pooled features once with a jitted forward, then trains one linear classifier per (labels
per class, seed). Writes OUT/<name>.json (OUT defaults to DIR/eval), tensorboard scalars in
OUT/<name>/, and prints the summary. <name> says what was probed, e.g. probe_vision_step600.
"""
import dataclasses
import json
import os
import time

from absl import app, flags
import jax
import numpy as np
from flax import nnx
from ml_collections import config_flags

from data2vec import atomic, cli, hf, workdirs
from data2vec.evaluators import data, features, linear
from data2vec.hf import io as hf_io
from data2vec.input_pipeline import datasets
from data2vec.models import registry

EVAL_SPLITS = ('test', 'validation')


def _check_args(config, workdir, hf_path, out):
  """Every usage error, before anything is loaded: the output folder can be written too."""
  if config.raw_features:
    if workdir or hf_path or config.random_init:
      raise ValueError('config.raw_features=True probes the inputs: give --out, and neither '
                       '--workdir, --hf nor config.random_init')
  elif bool(workdir) == bool(hf_path):
    raise ValueError('give exactly one of --workdir and --hf')
  if not (out or workdir):
    raise ValueError('--out is required without --workdir')
  if config.random_init and config.step is not None:
    raise ValueError(f'config.step={config.step} with config.random_init=True: random_init '
                     'reads no checkpoint')
  if config.eval_split not in EVAL_SPLITS:
    raise ValueError(f'config.eval_split={config.eval_split!r}: must be one of {EVAL_SPLITS}')
  if not config.labels_per_class or not config.seeds:
    raise ValueError('config.labels_per_class and config.seeds must not be empty')
  if min(config.labels_per_class) < 0:
    raise ValueError(f'config.labels_per_class={config.labels_per_class}: use 0 for all labels')
  for flag, path in (('--workdir', workdir), ('--hf', hf_path)):
    if path and not os.path.isdir(path):
      raise ValueError(f'{flag} {path} is not a folder')
  cli.check_writable(out or os.path.join(workdir, 'eval'), '--out')


def _workdir_model_config(config, workdir):
  """The encoder config of a workdir, checked against the probe config."""
  train_config = workdirs.load_config(workdir)
  if train_config.modality != config.modality:
    raise ValueError(f'{workdir} holds a {train_config.modality} encoder; the probe config is '
                     f'for {config.modality}')
  for field in data.PRETRAINING_INPUT_KEYS[config.modality]:
    # (JSON gave the workdir's sequences back as lists.)
    trained, probed = (tuple(v) if isinstance(v, (list, tuple)) else v
                       for v in (train_config.input[field], config.input[field]))
    if trained != probed:
      raise ValueError(f'config.input.{field}={probed} differs from the {trained} that '
                       f'{workdir} was pretrained with')
  return train_config, registry.model_config(train_config)


def load_encoder(config, workdir=None, hf_path=None):
  """(encoder nnx model, {'step', 'init_seed'}) of a workdir's checkpoint or a transformers folder.

  random_init builds the same architecture with fresh weights and reads no checkpoint.
  """
  if hf_path:
    model_cls, model_cfg = hf_io.read_config(hf_path)
    modality = hf_io.MODALITIES[model_cls.model_type]
    if modality != config.modality:
      raise ValueError(f'{hf_path} holds a {modality} encoder; the probe config is for '
                       f'{config.modality}')
    if model_cls is not registry.MODELS[modality][1]:
      raise ValueError(f'{hf_path} holds a {model_cls.__name__}; probe a base model folder '
                       '(scripts/export_hf.py writes one)')
    default_seed = 0
  else:
    train_config, model_cfg = _workdir_model_config(config, workdir)
    default_seed = train_config.seed
  features.check_layers(model_cfg.num_hidden_layers, config.features.layer,
                        config.features.num_layers)
  data.check_input(config.modality, config.input, model_cfg, config.data_dir,
                   encoder=workdir or hf_path)  # text: the encoder's tokenizer
  if config.random_init:
    seed = default_seed if config.init_seed is None else config.init_seed
    model_cls = registry.MODELS[config.modality][1]
    return model_cls(model_cfg, rngs=nnx.Rngs(seed)), {'step': None, 'init_seed': seed}
  if hf_path:
    return hf.load_pretrained(hf_path), {'step': None, 'init_seed': None}
  model, step = workdirs.restore_model(workdir, config.step)
  return model, {'step': step, 'init_seed': None}


def probe_name(config, source):
  if config.raw_features:
    what = 'raw'
  elif config.random_init:
    what = 'random_init'
  elif source['hf']:
    what = 'hf'
  else:
    what = f'step{source["step"]}'
  scored = '' if config.eval_split == 'test' else f'_{config.eval_split}'
  return f'probe_{config.modality}_{what}{scored}'


def budget_name(labels_per_class):
  return 'all' if labels_per_class == 0 else f'{labels_per_class}_per_class'


def summarize(runs):
  """Per label budget: mean and std (over seeds, ddof=1) of accuracy and macro-F1."""
  summary = {}
  for budget in dict.fromkeys(r['labels_per_class'] for r in runs):
    group = [r for r in runs if r['labels_per_class'] == budget]
    entry = {'num_seeds': len(group)}
    for metric in ('accuracy', 'macro_f1'):
      values = np.array([r[metric] for r in group])
      entry[f'{metric}_mean'] = float(values.mean())
      entry[f'{metric}_std'] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    summary[budget_name(budget)] = entry
  return summary


def _write_json(path, obj):
  atomic.write_text(path, json.dumps(obj, indent=2) + '\n')  # keys in order: the budgets'


def _write_tensorboard(logdir, summary, step):
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  with SummaryWriter(logdir) as writer:
    for budget, entry in summary.items():
      for key in ('accuracy_mean', 'accuracy_std', 'macro_f1_mean', 'macro_f1_std'):
        writer.add_scalar(f'probe_{budget}/{key}', entry[key], step)


def evaluate(config, *, workdir=None, hf_path=None, out=None):
  """Runs every probe of `config`; returns the result dict, also written to OUT/<name>.json."""
  _check_args(config, workdir, hf_path, out)
  splits = datasets.load(config.data_dir, config.input.dataset, modality=config.modality).meta
  if config.eval_split not in splits['splits']:
    raise ValueError(f'config.eval_split={config.eval_split!r}: {config.input.dataset} has the '
                     f'splits {sorted(splits["splits"])}')
  out = os.path.abspath(out or os.path.join(workdir, 'eval'))
  start = time.time()
  source = dict(workdir=workdir and os.path.abspath(workdir),
                hf=hf_path and os.path.abspath(hf_path), random_init=config.random_init,
                raw_features=config.raw_features, step=None, init_seed=None)
  if config.raw_features:
    model_cfg = None
    data.check_input(config.modality, config.input, None, config.data_dir)
    extract_fn = features.raw_feature_fn(config.modality, config.input, config.data_dir)
  else:
    model, loaded = load_encoder(config, workdir, hf_path)
    source.update(loaded)
    model_cfg = model.config
    fn = jax.jit(features.feature_fn(nnx.graphdef(model), config.modality,
                                     config.features.layer, config.features.num_layers))
    params = nnx.to_pure_dict(nnx.state(model))
    extract_fn = lambda batch: fn(params, batch)
  name = probe_name(config, source)
  arrays = {}
  for split, read, limit in (('train', 'train', config.num_train_examples),
                             ('test', config.eval_split, config.num_test_examples)):
    batches, num_classes = data.labelled_batches(
        config.modality, data_dir=config.data_dir, input_config=config.input, split=read,
        model_config=model_cfg, batch_size=config.batch_size)
    arrays[split] = features.extract(extract_fn, batches, limit)
  features_s = time.time() - start

  classifier = config.classifier.to_dict()
  fits = {}  # with every label (budget 0) the seed draws nothing: one fit serves every seed

  def run(budget, seed):
    key = (budget, seed if budget else None)
    if key not in fits:
      fits[key] = linear.probe(*arrays['train'], *arrays['test'], num_classes,
                               labels_per_class=budget, seed=seed, classifier=classifier)
    return {**fits[key], 'seed': seed}

  runs = [run(budget, seed) for budget in config.labels_per_class for seed in config.seeds]
  summary = summarize(runs)
  result = {
      'name': name,
      'modality': config.modality,
      'source': source,
      'data': {'dataset': config.input.dataset, 'eval_split': config.eval_split,
               'num_train': len(arrays['train'][1]),
               'num_test': len(arrays['test'][1]), 'num_classes': num_classes,
               'feature_dim': int(arrays['train'][0].shape[1])},
      'summary': summary,
      'runs': runs,
      'config': config.to_dict(),
      'encoder_config': None if model_cfg is None else dataclasses.asdict(model_cfg),
      'seconds': {'features': features_s, 'total': time.time() - start},
  }
  os.makedirs(out, exist_ok=True)
  _write_json(os.path.join(out, f'{name}.json'), result)
  _write_tensorboard(os.path.join(out, name), summary, source['step'] or 0)
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  f = flags.FLAGS
  for name in ('workdir', 'hf', 'out'):
    if f[name].value == '':  # not a folder: the current one, or none, by accident
      raise app.UsageError(f'--{name} is empty')
  result = evaluate(f.config, workdir=f.workdir, hf_path=f.hf, out=f.out)
  print(json.dumps({k: result[k] for k in ('name', 'source', 'data', 'summary')}, indent=2))


if __name__ == '__main__':
  # Defined here, not at import, so tests can import this module beside train.py.
  config_flags.DEFINE_config_file('config', None, 'Probe config file.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'A pretraining workdir to probe.')
  flags.DEFINE_string('hf', None, 'A transformers Data2Vec folder to probe instead.')
  flags.DEFINE_string('out', None, 'Where the JSON and tensorboard go (default DIR/eval).')
  flags.mark_flags_as_required(['config'])
  cli.run(main)
