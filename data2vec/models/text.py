"""The text encoder: RoBERTa embeddings in front of the shared post-LN stack (Data2VecTextModel)."""
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from data2vec import sharding
from data2vec.models.encoder import Encoder
from data2vec.models.layers import TransformerConfig, dense, dropout, layer_norm

# RoBERTa has none of the vision options: they have no place in a transformers text checkpoint.
_ROBERTA = {'norm_first': False, 'layer_scale_init_value': 0.0, 'key_bias': True,
            'relative_position_bias': 'none'}


@dataclasses.dataclass(frozen=True)
class TextConfig(TransformerConfig):
  """`TextConfig()` is `Data2VecTextConfig()`; add_pooling_layer is Data2VecTextModel's argument."""
  vocab_size: int = 30522
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  pad_token_id: int = 1
  bos_token_id: int | None = 0
  eos_token_id: int | tuple[int, ...] | None = 2
  is_decoder: bool = False          # causal self-attention, as transformers does for a decoder
  add_pooling_layer: bool = True
  layer_norm_eps: float = 1e-12
  # Task heads (data2vec.models.heads.text); unused by the encoder.
  id2label: tuple[str, ...] = ('LABEL_0', 'LABEL_1')  # label names in id order
  problem_type: str | None = None   # sequence classification; None: chosen from the labels' dtype
  classifier_dropout: float | None = None  # None: hidden_dropout
  tie_word_embeddings: bool = True  # the LM heads' decoder is the word embedding table

  def __post_init__(self):
    super().__post_init__()
    for name, value in _ROBERTA.items():
      if getattr(self, name) != value:
        raise ValueError(f'{name}={getattr(self, name)!r}: the text encoder (RoBERTa) needs '
                         f'{value!r}')
    # transformers gives both tables a padding row, and positions count from pad_token_id.
    if not (isinstance(self.pad_token_id, int) and
            0 <= self.pad_token_id < min(self.vocab_size, self.max_position_embeddings)):
      raise ValueError(f'pad_token_id={self.pad_token_id!r} must index the word and position '
                       f'embeddings (vocab_size={self.vocab_size}, '
                       f'max_position_embeddings={self.max_position_embeddings})')
    if self.type_vocab_size < 1:
      raise ValueError(f'type_vocab_size={self.type_vocab_size} must be at least 1')


def position_ids_from_input_ids(input_ids, pad_token_id):
  """RoBERTa (fairseq) positions: tokens count up from pad_token_id + 1, pads keep pad_token_id."""
  valid = (input_ids != pad_token_id).astype(jnp.int32)
  return jnp.cumsum(valid, axis=1) * valid + pad_token_id


def _embed(num, features, config, *, rngs, padding_idx=None, axes=(None, 'embed')):
  """nn.Embedding as transformers initialises it: normal(initializer_range), padding row zero."""
  normal = nnx.initializers.normal(config.initializer_range)

  def init(key, shape, dtype):
    table = normal(key, shape, dtype)
    return table if padding_idx is None else table.at[padding_idx].set(0)

  return nnx.Embed(num, features, dtype=config.compute_dtype, param_dtype=jnp.float32,
                   embedding_init=init, embedding_metadata=sharding.axes(*axes), rngs=rngs)


class TextEmbeddings(nnx.Module):
  """Word + token type + learned absolute position embeddings, LayerNorm, dropout."""

  def __init__(self, config: TextConfig, *, rngs):
    d = config.hidden_size
    self.config = config
    self.word_embeddings = _embed(config.vocab_size, d, config, rngs=rngs,
                                  padding_idx=config.pad_token_id, axes=('vocab', 'embed'))
    self.position_embeddings = _embed(config.max_position_embeddings, d, config, rngs=rngs,
                                      padding_idx=config.pad_token_id)
    self.token_type_embeddings = _embed(config.type_vocab_size, d, config, rngs=rngs)
    self.layer_norm = layer_norm(d, config.layer_norm_eps, config, rngs=rngs)

  def __call__(self, input_ids, token_type_ids=None, position_ids=None, *, rng=None):
    cfg = self.config
    if position_ids is None:
      # The largest position is pad_token_id + T; a gather past the table would not fail.
      if cfg.pad_token_id + input_ids.shape[1] >= cfg.max_position_embeddings:
        raise ValueError(f'input_ids has {input_ids.shape[1]} tokens; max_position_embeddings='
                         f'{cfg.max_position_embeddings} with pad_token_id={cfg.pad_token_id} '
                         f'allows {cfg.max_position_embeddings - cfg.pad_token_id - 1}')
      position_ids = position_ids_from_input_ids(input_ids, cfg.pad_token_id)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
    x = x + self.position_embeddings(position_ids)
    return dropout(self.layer_norm(x), cfg.hidden_dropout, rng)


class Data2VecTextModel(nnx.Module):
  """transformers' Data2VecTextModel: embeddings, the post-LN Encoder, optional tanh pooler."""
  model_type = 'data2vec-text'

  def __init__(self, config: TextConfig, *, rngs):
    self.config = config
    self.embeddings = TextEmbeddings(config, rngs=rngs)
    self.encoder = Encoder(config, rngs=rngs)
    if config.add_pooling_layer:
      self.pooler = dense(config.hidden_size, config.hidden_size, config, rngs=rngs,
                          axes=('embed', 'mlp'))

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
               rng=None):
    """input_ids, attention_mask (1 = valid), token_type_ids, position_ids: [B, T] integers.

    Returns a dict: last_hidden_state [B, T, D], hidden_states [L+1, B, T, D] (the embeddings
    first), ffn_outputs [L, B, T, D] and pooler_output [B, D] with the pooler.
    """
    embed_rng = encoder_rng = None
    if rng is not None:
      embed_rng, encoder_rng = jax.random.split(rng)
    x = self.embeddings(jnp.asarray(input_ids), token_type_ids, position_ids, rng=embed_rng)
    mask = None if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
    out = self.encoder(x, mask=mask, causal=self.config.is_decoder, rng=encoder_rng)
    if self.config.add_pooling_layer:
      out['pooler_output'] = jnp.tanh(self.pooler(out['last_hidden_state'][:, 0]))
    return out

  def encode_visible(self, embedded, attention_mask, ids_keep, *, rng=None):
    """data2vec 2.0's student: per sequence M views, each encoding only its visible tokens.

    embedded: [B, T, D], `self.embeddings` of the whole sequences (computed once: positions
    travel with the tokens, and the 2.0 teacher encodes the same output); attention_mask: [B, T]
    (1 / True = valid) or None; ids_keep: [B, M, K] int in [0, T), the tokens each view keeps (any
    order; causal attention with is_decoder follows it). Returns the encoder's dict
    (last_hidden_state [B * M, K, D], hidden_states [L+1, B * M, K, D], ffn_outputs) over B * M
    rows, sample b's views in rows b * M .. b * M + M - 1; no pooler.
    """
    if embedded.ndim != 3 or embedded.shape[-1] != self.config.hidden_size:
      raise ValueError(f'embedded has shape {embedded.shape}; expected [B, T, D] with '
                       f'D = hidden_size = {self.config.hidden_size}')
    b, t, d = embedded.shape
    if ids_keep.ndim != 3 or ids_keep.shape[0] != b or not 1 <= ids_keep.shape[2] <= t:
      raise ValueError(f'ids_keep has shape {ids_keep.shape}; expected [B={b}, M, K] with '
                       f'1 <= K <= T={t}')
    if attention_mask is not None and tuple(attention_mask.shape) != (b, t):
      raise ValueError(f'attention_mask has shape {attention_mask.shape}; expected [B, T] = '
                       f'{(b, t)}')
    m, k = ids_keep.shape[1:]
    ids_keep = jnp.asarray(ids_keep, jnp.int32)
    x = jnp.take_along_axis(embedded[:, None], ids_keep[..., None], axis=2)  # [B, M, K, D]
    mask = None
    if attention_mask is not None:
      valid = jnp.asarray(attention_mask).astype(bool)
      mask = jnp.take_along_axis(valid[:, None], ids_keep, axis=2).reshape(b * m, k)
    return self.encoder(x.reshape(b * m, k, d), mask=mask, causal=self.config.is_decoder, rng=rng)
