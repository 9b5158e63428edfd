"""Text task heads, each one-to-one with a transformers Data2VecText* class (outputs and loss).

Every head holds its encoder as `data2vec_text` (transformers' attribute name, so parameter paths
line up with the state-dict keys) and is called with transformers' argument names plus `rng` (a
PRNG key enables dropout, None is eval). It returns the encoder's dict plus `logits` (QA:
`start_logits`, `end_logits`) and `loss` when labels are given.
"""
import dataclasses

import jax.numpy as jnp
from flax import nnx

from data2vec.models.heads import common
from data2vec.models.layers import ACTIVATIONS, dense, dropout, layer_norm
from data2vec.models.text import Data2VecTextModel, TextConfig


def _encoder(config: TextConfig, pooler, *, rngs):
  """(config, encoder) with the pooler the transformers class builds, whatever config says."""
  config = dataclasses.replace(config, add_pooling_layer=pooler)
  return config, Data2VecTextModel(config, rngs=rngs)


def _classifier_dropout(config):
  return config.hidden_dropout if config.classifier_dropout is None else config.classifier_dropout


class LMHead(nnx.Module):
  """Dense -> GELU -> LayerNorm -> the word embedding table (tied decoder) + bias."""

  def __init__(self, config: TextConfig, *, rngs):
    d = config.hidden_size
    self.dense = dense(d, d, config, rngs=rngs)
    self.layer_norm = layer_norm(d, config.layer_norm_eps, config, rngs=rngs)
    self.bias = nnx.Param(jnp.zeros((config.vocab_size,), jnp.float32))

  def __call__(self, x, word_embeddings):
    x = self.layer_norm(ACTIVATIONS['gelu'](self.dense(x)))
    return x @ word_embeddings.T.astype(x.dtype) + self.bias[...].astype(x.dtype)


class Data2VecTextForMaskedLM(nnx.Module):
  """Logits over the vocabulary at every position; loss: cross entropy, labels -100 ignored."""
  model_type = 'data2vec-text'
  architecture = 'Data2VecTextForMaskedLM'

  def __init__(self, config: TextConfig, *, rngs):
    if not config.tie_word_embeddings:
      raise ValueError(f'tie_word_embeddings=False: {self.architecture} is implemented with the '
                       'decoder tied to the word embeddings only')
    self.config, self.data2vec_text = _encoder(config, False, rngs=rngs)
    self.lm_head = LMHead(self.config, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
               labels=None, *, rng=None):
    out = self.data2vec_text(input_ids, attention_mask, token_type_ids, position_ids, rng=rng)
    table = self.data2vec_text.embeddings.word_embeddings.embedding[...]
    out['logits'] = self.lm_head(out['last_hidden_state'], table)
    if labels is not None:
      out['loss'] = self.loss(out['logits'], jnp.asarray(labels))
    return out

  @staticmethod
  def loss(logits, labels):
    return common.cross_entropy(logits, labels)


class Data2VecTextForCausalLM(Data2VecTextForMaskedLM):
  """The same head; attention is causal when config.is_decoder (transformers only warns when it
  is not) and the loss is next-token prediction: position t predicts label t+1."""
  architecture = 'Data2VecTextForCausalLM'

  @staticmethod
  def loss(logits, labels):
    shifted = jnp.concatenate([labels[:, 1:], jnp.full_like(labels[:, :1], -100)], axis=1)
    return common.cross_entropy(logits, shifted)


class ClassificationHead(nnx.Module):
  """The first token (<s>) -> dropout -> Dense -> tanh -> dropout -> out_proj."""

  def __init__(self, config: TextConfig, *, rngs):
    d = config.hidden_size
    self.rate = _classifier_dropout(config)
    self.dense = dense(d, d, config, rngs=rngs)
    self.out_proj = dense(d, common.num_labels(config), config, rngs=rngs)

  def __call__(self, x, rng=None):
    keys = common.split_rng(rng, 2)
    x = jnp.tanh(self.dense(dropout(x[:, 0], self.rate, keys[0])))
    return self.out_proj(dropout(x, self.rate, keys[1]))


class Data2VecTextForSequenceClassification(nnx.Module):
  """Logits [B, num_labels]; regression, single- or multi-label loss by config.problem_type."""
  model_type = 'data2vec-text'
  architecture = 'Data2VecTextForSequenceClassification'

  def __init__(self, config: TextConfig, *, rngs):
    common.check_labels(config)
    self.config, self.data2vec_text = _encoder(config, False, rngs=rngs)
    self.classifier = ClassificationHead(self.config, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
               labels=None, *, rng=None):
    keys = common.split_rng(rng, 2)
    out = self.data2vec_text(input_ids, attention_mask, token_type_ids, position_ids, rng=keys[0])
    out['logits'] = self.classifier(out['last_hidden_state'], keys[1])
    if labels is not None:
      out['loss'] = common.classification_loss(out['logits'], labels, self.config.problem_type)
    return out


class Data2VecTextForMultipleChoice(nnx.Module):
  """Inputs [B, num_choices, T]; the pooler output of each choice -> dropout -> one score.
  Logits [B, num_choices]; labels [B] index the right choice."""
  model_type = 'data2vec-text'
  architecture = 'Data2VecTextForMultipleChoice'

  def __init__(self, config: TextConfig, *, rngs):
    self.config, self.data2vec_text = _encoder(config, True, rngs=rngs)
    self.classifier = dense(config.hidden_size, 1, config, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
               labels=None, *, rng=None):
    input_ids = jnp.asarray(input_ids)
    b, c, t = input_ids.shape
    flat = lambda x: None if x is None else jnp.asarray(x).reshape(b * c, t)
    keys = common.split_rng(rng, 2)
    out = self.data2vec_text(flat(input_ids), flat(attention_mask), flat(token_type_ids),
                             flat(position_ids), rng=keys[0])
    pooled = dropout(out['pooler_output'], self.config.hidden_dropout, keys[1])
    out['logits'] = self.classifier(pooled).reshape(b, c)
    if labels is not None:
      out['loss'] = common.cross_entropy(out['logits'], labels)
    return out


class Data2VecTextForTokenClassification(nnx.Module):
  """Logits [B, T, num_labels]; loss: cross entropy over tokens, labels -100 ignored."""
  model_type = 'data2vec-text'
  architecture = 'Data2VecTextForTokenClassification'

  def __init__(self, config: TextConfig, *, rngs):
    common.check_labels(config)
    self.config, self.data2vec_text = _encoder(config, False, rngs=rngs)
    self.classifier = dense(config.hidden_size, common.num_labels(config), config, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
               labels=None, *, rng=None):
    keys = common.split_rng(rng, 2)
    out = self.data2vec_text(input_ids, attention_mask, token_type_ids, position_ids, rng=keys[0])
    x = dropout(out['last_hidden_state'], _classifier_dropout(self.config), keys[1])
    out['logits'] = self.classifier(x)
    if labels is not None:
      out['loss'] = common.cross_entropy(out['logits'], labels)
    return out


class Data2VecTextForQuestionAnswering(nnx.Module):
  """start_logits and end_logits [B, T]. The loss is the mean of the start and end cross entropies;
  positions are clamped to [0, T] and T is ignored, as transformers does."""
  model_type = 'data2vec-text'
  architecture = 'Data2VecTextForQuestionAnswering'

  def __init__(self, config: TextConfig, *, rngs):
    if common.num_labels(config) != 2:
      raise ValueError(f'id2label={config.id2label!r}: {self.architecture} needs exactly 2 labels '
                       '(start and end)')
    self.config, self.data2vec_text = _encoder(config, False, rngs=rngs)
    self.qa_outputs = dense(config.hidden_size, 2, config, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
               start_positions=None, end_positions=None, *, rng=None):
    out = self.data2vec_text(input_ids, attention_mask, token_type_ids, position_ids, rng=rng)
    logits = self.qa_outputs(out['last_hidden_state'])
    out['start_logits'], out['end_logits'] = logits[..., 0], logits[..., 1]
    if start_positions is not None and end_positions is not None:
      t = logits.shape[1]
      loss = lambda x, pos: common.cross_entropy(
          x, jnp.clip(jnp.asarray(pos).reshape(-1), 0, t), ignore_index=t)
      out['loss'] = (loss(out['start_logits'], start_positions) +
                     loss(out['end_logits'], end_positions)) / 2
    return out


HEADS = (Data2VecTextForMaskedLM, Data2VecTextForCausalLM, Data2VecTextForSequenceClassification,
         Data2VecTextForMultipleChoice, Data2VecTextForTokenClassification,
         Data2VecTextForQuestionAnswering)
