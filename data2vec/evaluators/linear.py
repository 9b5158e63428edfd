"""The linear probe: softmax regression on frozen features, fit with optax's L-BFGS in one jit.

Optionally the features first go through a parameter-free LayerNorm, as data2vec_vision's
`--linear_classifier` (fc_norm without affine, docs/algorithm.md §7.1). Then each dimension is
standardised with the training subset's statistics (MAE's probe does the same with a BatchNorm
without affine): a reparametrisation of the linear classifier that only conditions the problem.
The L2-regularised loss is convex and minimised full batch from zero weights, so the only random
choice is the label subset drawn with the seed.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from data2vec import objective

LAYER_NORM_EPS = 1e-6  # data2vec_vision's fc_norm


def subsample_per_class(labels, num_classes, per_class, seed):
  """Sorted indices of `per_class` examples of every class drawn with `seed`; 0 = all."""
  if per_class == 0:
    return np.arange(len(labels))
  rng = np.random.default_rng(seed)
  picked = []
  for c in range(num_classes):
    pool = np.flatnonzero(labels == c)
    if len(pool) < per_class:
      raise ValueError(f'labels_per_class={per_class}: class {c} has only {len(pool)} training '
                       'examples')
    picked.append(rng.choice(pool, per_class, replace=False))
  return np.sort(np.concatenate(picked))


def _layer_norm(x, layer_norm):
  x = jnp.asarray(x, jnp.float32)
  return objective.layer_norm(x, LAYER_NORM_EPS) if layer_norm else x


def _standardiser(x):
  mean, std = x.mean(0), x.std(0)
  std = jnp.where(std > 1e-6, std, 1.0)  # a constant feature (e.g. a border pixel) stays put
  return lambda z: (z - mean) / std


def _loss(params, x, y, l2_reg):
  logits = x @ params['kernel'] + params['bias']
  return (optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
          + 0.5 * l2_reg * jnp.sum(jnp.square(params['kernel'])))


@functools.partial(jax.jit, static_argnames=('num_classes', 'steps'))
def _fit(x, y, l2_reg, *, num_classes, steps):
  """`steps` L-BFGS iterations (zoom line search) from zero weights."""
  loss = lambda params: _loss(params, x, y, l2_reg)
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry, _):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
    return (optax.apply_updates(params, updates), state), None

  params = {'kernel': jnp.zeros((x.shape[1], num_classes)), 'bias': jnp.zeros((num_classes,))}
  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
  return params


def train(x, y, num_classes, *, steps, l2_reg, layer_norm):
  """Fits the probe on features x [N, D] and labels y [N]; returns predict(x) -> labels."""
  x = _layer_norm(x, layer_norm)
  standardise = _standardiser(x)
  params = _fit(standardise(x), jnp.asarray(y, jnp.int32), l2_reg, num_classes=num_classes,
                steps=steps)
  if not all(bool(jnp.isfinite(p).all()) for p in jax.tree.leaves(params)):
    raise FloatingPointError(f'the linear probe diverged (classifier.l2_reg={l2_reg})')

  def predict(z):
    z = standardise(_layer_norm(z, layer_norm))
    return np.asarray(jnp.argmax(z @ params['kernel'] + params['bias'], -1))

  return predict


def classification_metrics(labels, predictions, num_classes):
  """accuracy, macro-F1 and per-class accuracy (recall) from the confusion matrix. A class
  without test examples (a small class of a user's folder) has per-class accuracy None and is
  left out of the macro average."""
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (labels, predictions), 1)
  support = confusion.sum(1)
  if not support.any():
    raise ValueError('no test examples')
  present = support > 0
  tp = np.diag(confusion)
  f1 = 2 * tp / np.maximum(support + confusion.sum(0), 1)  # 2TP / (2TP + FN + FP)
  recall = tp / np.maximum(support, 1)
  return {'accuracy': float(tp.sum() / support.sum()), 'macro_f1': float(f1[present].mean()),
          'per_class_accuracy': [float(r) if p else None for r, p in zip(recall, present)]}


def probe(train_x, train_y, test_x, test_y, num_classes, *, labels_per_class, seed, classifier):
  """One probe run: subsample, fit, evaluate. `classifier`: the config's classifier block."""
  idx = subsample_per_class(train_y, num_classes, labels_per_class, seed)
  predict = train(train_x[idx], train_y[idx], num_classes, **classifier)
  metrics = classification_metrics(test_y, predict(test_x), num_classes)
  return {'labels_per_class': labels_per_class, 'seed': seed, 'num_train_examples': len(idx),
          'train_accuracy': float(np.mean(predict(train_x[idx]) == train_y[idx])), **metrics}
