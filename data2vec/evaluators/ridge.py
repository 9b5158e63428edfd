"""The cheap probe run during pretraining: closed-form ridge regression on frozen features.

As big_vision's few-shot evaluator (fewshot_lsr): standardised features plus a large constant
bias feature, +-1 one-hot targets, one linear solve; the score is the test accuracy.
"""
import itertools

import jax
import numpy as np
from jax.experimental import multihost_utils

from data2vec import sharding
from data2vec.evaluators import data, features
from data2vec.models import registry

BIAS_FEATURE = 100.0  # large, so the bias is barely regularised


def ridge_accuracy(train_x, train_y, test_x, test_y, *, num_classes, l2_reg):
  """Test accuracy of the ridge classifier fit on (train_x [N, D], train_y [N]), in float64."""
  train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
  mean, std = train_x.mean(0), train_x.std(0) + 1e-5

  def design(x):
    return np.concatenate([(x - mean) / std, np.full((len(x), 1), BIAS_FEATURE)], axis=1)

  x = design(train_x)
  y = 2 * np.eye(num_classes)[train_y] - 1
  coef = np.linalg.solve(x.T @ x + l2_reg * np.eye(x.shape[1]), x.T @ y)
  return float(np.mean(np.argmax(design(test_x) @ coef, axis=1) == test_y))


def num_batches(num, batch_size):
  """The whole global batches that hold the first `num` examples: the probe reads those."""
  return -(-num // batch_size)


class RidgeProbe:
  """train.py's periodic probe of the student encoder on fixed labelled examples.

  The examples (the first `num_train` / `num_test` of the train / test split of the modality's
  labelled set, data.PROBE_DATASETS, rounded up to whole global batches) are read once and kept
  on the mesh. A call replicates the parameters, runs the data-parallel forward, gathers the
  features and solves on the host.
  """

  def __init__(self, config, encoder_def, mesh):
    p = config.ridge_probe
    model_cfg = registry.model_config(config)
    features.check_layers(model_cfg.num_hidden_layers, p.layer, p.num_layers)
    input_config = data.probe_input(config)
    data.check_input(config.modality, input_config, model_cfg, config.data_dir)
    self._l2_reg = p.l2_reg
    self._splits = {}
    for split, num in (('train', p.num_train), ('test', p.num_test)):
      if num < 1:
        raise ValueError(f'config.ridge_probe.num_{split}={num} must be positive')
      batches, self._num_classes = data.labelled_batches(
          config.modality, data_dir=config.data_dir, input_config=input_config, split=split,
          model_config=model_cfg, batch_size=config.batch_size // jax.process_count(),
          process_index=jax.process_index(), process_count=jax.process_count())
      first = itertools.islice(batches, num_batches(num, config.batch_size))
      on_mesh = [sharding.global_batch(b, mesh) for b in first]
      valid, labels = _gather([(b['valid'], b['label']) for b in on_mesh])
      self._splits[split] = (on_mesh, valid.astype(bool), labels)
    self._replicated = sharding.replicated(mesh)
    fn = features.feature_fn(encoder_def, config.modality, p.layer, p.num_layers)
    self._features = jax.jit(fn, in_shardings=(self._replicated, sharding.batch_sharding(mesh)))

  def __call__(self, encoder_params):
    """{'ridge_probe_accuracy': float}; returns once the features are computed."""
    # Gathered once and waited for, so the per-batch forwards need no collectives: on CPU,
    # independent programs with collectives in flight together can deadlock.
    encoder_params = jax.block_until_ready(jax.device_put(encoder_params, self._replicated))
    xy = []
    for split in ('train', 'test'):
      batches, valid, labels = self._splits[split]
      x, = _gather([(self._features(encoder_params, b),) for b in batches])
      xy += [x[valid], labels[valid]]
    return {'ridge_probe_accuracy': ridge_accuracy(*xy, num_classes=self._num_classes,
                                                   l2_reg=self._l2_reg)}


def raw_accuracy(config):
  """The same probe on the raw inputs (features.raw_feature_fn; docs/data.md's baselines): the
  examples RidgeProbe reads (the first num_train / num_test, rounded up to whole batches),
  the same l2_reg. One host."""
  p = config.ridge_probe
  input_config = data.probe_input(config)
  data.check_input(config.modality, input_config, None, config.data_dir)
  fn = features.raw_feature_fn(config.modality, input_config, config.data_dir)
  xy = []
  for split, num in (('train', p.num_train), ('test', p.num_test)):
    batches, num_classes = data.labelled_batches(
        config.modality, data_dir=config.data_dir, input_config=input_config, split=split,
        model_config=None, batch_size=config.batch_size)
    xy += features.extract(fn, batches,
                           limit=num_batches(num, config.batch_size) * config.batch_size)
  return ridge_accuracy(*xy, num_classes=num_classes, l2_reg=p.l2_reg)


def _gather(rows):
  """[(global arrays per batch)] -> a numpy array per column, batches concatenated."""
  gathered = multihost_utils.process_allgather(rows, tiled=True)
  return [np.concatenate(column) for column in zip(*gathered)]
