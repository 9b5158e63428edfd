"""Losses every modality's heads share, each equal to the torch one transformers calls."""
import jax
import jax.numpy as jnp
import optax

PROBLEM_TYPES = (None, 'regression', 'single_label_classification', 'multi_label_classification')


def num_labels(config):
  return len(config.id2label)


def check_labels(config, minimum=1):
  """Raises unless config.id2label has at least `minimum` labels and problem_type is known."""
  if num_labels(config) < minimum:
    raise ValueError(f'id2label={config.id2label!r}: this head needs at least {minimum} labels')
  if config.problem_type not in PROBLEM_TYPES:
    raise ValueError(f'problem_type={config.problem_type!r} is not one of {PROBLEM_TYPES}')


def split_rng(rng, n):
  """n keys, or n Nones in eval mode."""
  return [None] * n if rng is None else list(jax.random.split(rng, n))


def cross_entropy(logits, labels, ignore_index=-100):
  """torch's F.cross_entropy: the mean over labels != ignore_index (classes on the last axis).

  With every label ignored it is nan, as in torch.
  """
  labels = jnp.asarray(labels)
  valid = labels != ignore_index
  nll = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), jnp.where(valid, labels, 0))
  return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.sum(valid)


def classification_loss(logits, labels, problem_type):
  """transformers' ForSequenceClassificationLoss: MSE, cross entropy or BCE with logits.

  problem_type None is chosen as transformers does: one label -> regression, integer labels ->
  single-label, anything else -> multi-label.
  """
  labels = jnp.asarray(labels)
  n = logits.shape[-1]
  if problem_type is None:
    problem_type = ('regression' if n == 1 else
                    'single_label_classification' if jnp.issubdtype(labels.dtype, jnp.integer)
                    else 'multi_label_classification')
  logits = logits.astype(jnp.float32)
  if problem_type == 'regression':
    if n == 1:  # torch squeezes both sides
      logits, labels = jnp.squeeze(logits), jnp.squeeze(labels)
    return jnp.mean((logits - labels) ** 2)
  if problem_type == 'single_label_classification':
    return cross_entropy(logits.reshape(-1, n), labels.reshape(-1))
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32)))
