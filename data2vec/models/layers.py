"""The one Transformer layer every modality shares, and its functional building blocks.

Randomness is explicit: every call takes `rng` (a PRNG key, or None for deterministic eval).
Modules never hold RNG state, so the teacher and the student are the same code with rng=None
for the teacher, and a layer can run inside `jax.lax.scan`.
"""
import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data2vec import sharding

ACTIVATIONS = {
    'gelu': functools.partial(jax.nn.gelu, approximate=False),  # transformers' "gelu" is exact erf
    'gelu_new': functools.partial(jax.nn.gelu, approximate=True),
    'gelu_pytorch_tanh': functools.partial(jax.nn.gelu, approximate=True),
    'relu': jax.nn.relu,
    'silu': jax.nn.silu,
    'swish': jax.nn.silu,
    'tanh': jnp.tanh,
}

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """The shared Transformer stack. Field names follow the transformers configs where they exist."""
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = 'gelu'
  layer_norm_eps: float = 1e-5
  norm_first: bool = False          # pre-LN (vision) instead of post-LN (text, audio)
  layer_scale_init_value: float = 0.0  # > 0 adds lambda_1 / lambda_2 (vision)
  key_bias: bool = True             # BEiT's key projection has no bias
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  activation_dropout: float = 0.0
  drop_path_rate: float = 0.0       # linearly increasing per layer, 0 at the first
  layerdrop: float = 0.0            # whole-layer skip probability while training (audio)
  relative_position_bias: str = 'none'  # 'none' | 'shared' (one table) | 'layer' (per layer)
  window_size: tuple[int, int] | None = None  # patch grid, for the relative position bias
  initializer_range: float = 0.02
  dtype: str = 'float32'            # compute dtype; parameters are always float32
  scan_layers: bool = False
  remat_policy: str = 'none'        # 'none' | 'full' | a jax.checkpoint_policies name
  attention_impl: str | None = None  # jax.nn.dot_product_attention implementation

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f'hidden_size={self.hidden_size} is not a multiple of '
                       f'num_attention_heads={self.num_attention_heads}')
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f'hidden_act={self.hidden_act!r} is not one of {sorted(ACTIVATIONS)}')
    if self.dtype not in DTYPES:
      raise ValueError(f'dtype={self.dtype!r} is not one of {sorted(DTYPES)}')
    if self.relative_position_bias not in ('none', 'shared', 'layer'):
      raise ValueError(f'relative_position_bias={self.relative_position_bias!r} is not one of '
                       "'none', 'shared', 'layer'")
    if self.drop_path_rate > 0 and not self.norm_first:
      raise ValueError('drop_path_rate > 0 needs norm_first=True (only the pre-LN layer has drop '
                       'path)')
    if self.relative_position_bias != 'none' and self.window_size is None:
      raise ValueError('relative_position_bias needs window_size (the patch grid)')

  @classmethod
  def from_dict(cls, d):
    """Builds the config from a mapping (e.g. `config.model` of an ml_collections config)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f'{cls.__name__} has no field(s) {unknown}')
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def head_dim(self):
    return self.hidden_size // self.num_attention_heads


def _mix32(h):
  """A 32-bit integer hash with full avalanche (Wellons' lowbias32)."""
  h = (h ^ (h >> 16)) * np.uint32(0x7FEB352D)
  h = (h ^ (h >> 15)) * np.uint32(0x846CA68B)
  return h ^ (h >> 16)


def _flat_index(shape):
  """uint32 [shape]: each element's row-major position (wraps past 2^32)."""
  index, stride = jnp.zeros(shape, jnp.uint32), 1
  for d in reversed(range(len(shape))):
    index += jax.lax.broadcasted_iota(jnp.uint32, shape, d) * np.uint32(stride % 2**32)
    stride *= shape[d]
  return index


def keep_mask(rng, shape, rate):
  """Bool [shape], True with probability 1 - rate (to 2^-32): a counter-based hash of each
  element's position under two 32-bit seeds drawn from rng.

  jax.random.bernoulli runs 20 threefry rounds per element, seconds per step for the attention
  dropout of a base model on CPU (151M draws for 4 x 512 text tokens); two rounds of an integer
  hash cost a sixth and fuse into the consumer. Rows (the last two axes) hash their positions
  with a seed of their own, hashed from the row index, so counters never wrap within a row.
  """
  seeds = jax.random.bits(rng, (2,), jnp.uint32)
  lead, row = shape[:-2], shape[-2:]
  row_seed = _mix32(_flat_index(lead) ^ seeds[0])[..., None, None] if lead else seeds[0]
  bits = _mix32(_mix32(_flat_index(row) ^ seeds[1]) ^ row_seed)
  return bits >= np.uint32(round(rate * 2**32))


def dropout(x, rate, rng):
  """Inverted dropout; identity when rng is None (eval) or rate is 0."""
  if rng is None or rate == 0.0:
    return x
  return jnp.where(keep_mask(rng, x.shape, rate), x / (1.0 - rate), 0).astype(x.dtype)


def drop_path(x, rate, rng):
  """Stochastic depth per example. `rate` may be a traced scalar (per-layer rates are scanned)."""
  if rng is None:
    return x
  keep_prob = 1.0 - rate
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  keep = jnp.floor(jax.random.uniform(rng, shape) + keep_prob)
  return (x / keep_prob * keep).astype(x.dtype)


def grouped_conv(conv: nnx.Conv, x):
  """`conv(x)` for a stride-1 nnx.Conv (any groups; 1 or 2 spatial axes, channels last), as one
  matmul batched over the groups on the k-shifted copies of x (im2col).

  XLA:CPU runs grouped convolutions many times slower than this form, forward and backward: the
  audio positional conv of the base model 3.6x, data2vec 2.0's base image decoder (3x3, 16
  groups, 32 views) 21x (36.5 s -> 1.7 s, AMD EPYC, 2 cores); the parameters and the result are
  the same.
  """
  groups, kernel = conv.feature_group_count, conv.kernel[...]
  sizes, (c, out) = kernel.shape[:-2], kernel.shape[-2:]
  dtype = conv.dtype or x.dtype
  x = jnp.pad(x.astype(dtype), ((0, 0), *conv.padding, (0, 0)))
  b, spatial = x.shape[0], [n - k + 1 for n, k in zip(x.shape[1:-1], sizes)]
  x = x.reshape(*x.shape[:-1], groups, c)
  shifted = [x[(slice(None),) + tuple(slice(o, o + n) for o, n in zip(offset, spatial))]
             for offset in itertools.product(*(range(k) for k in sizes))]  # the kernel's order
  cols = jnp.stack(shifted, -2)  # [B, *S, G, K, C], K = prod(sizes)
  cols = jnp.moveaxis(cols, -3, 0).reshape(groups, -1, len(shifted) * c)
  kernel = kernel.astype(dtype).reshape(len(shifted), c, groups, out // groups)
  kernel = kernel.transpose(2, 0, 1, 3).reshape(groups, len(shifted) * c, out // groups)
  y = jnp.einsum('gnk,gko->gno', cols, kernel).reshape(groups, b, *spatial, out // groups)
  y = jnp.moveaxis(y, 0, -2).reshape(b, *spatial, out)
  return y if conv.bias is None else y + conv.bias[...].astype(dtype)


def dense(in_features, out_features, config, *, rngs, use_bias=True, axes=None):
  """axes: the logical axis names of (in, out) (sharding.py); None leaves them unnamed."""
  init = nnx.initializers.normal(config.initializer_range)
  return nnx.Linear(in_features, out_features, use_bias=use_bias, kernel_init=init,
                    kernel_metadata=sharding.axes(*axes) if axes else {},
                    bias_metadata=sharding.axes(axes[1]) if axes else {},
                    dtype=config.compute_dtype, param_dtype=jnp.float32, rngs=rngs)


def layer_norm(features, eps, config, *, rngs, affine=True, axis='embed'):
  return nnx.LayerNorm(features, epsilon=eps, use_bias=affine, use_scale=affine,
                       scale_metadata=sharding.axes(axis), bias_metadata=sharding.axes(axis),
                       dtype=config.compute_dtype, param_dtype=jnp.float32, rngs=rngs)


@functools.lru_cache(maxsize=16)
def relative_position_index(window_size):
  """BEiT's (T+1, T+1) index into the bias table; the last 3 rows are cls->token, token->cls,
  cls->cls."""
  wh, ww = window_size
  num_relative = (2 * wh - 1) * (2 * ww - 1) + 3
  coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing='ij')).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)
  rel[:, :, 0] += wh - 1
  rel[:, :, 1] += ww - 1
  rel[:, :, 0] *= 2 * ww - 1
  index = np.zeros((wh * ww + 1,) * 2, dtype=np.int32)
  index[1:, 1:] = rel.sum(-1)
  index[0, :] = num_relative - 3
  index[:, 0] = num_relative - 2
  index[0, 0] = num_relative - 1
  return index


class RelativePositionBias(nnx.Module):
  """A learned (num_relative, heads) table, gathered into a (heads, T+1, T+1) attention bias."""

  def __init__(self, config: TransformerConfig):
    wh, ww = config.window_size
    num_relative = (2 * wh - 1) * (2 * ww - 1) + 3
    self.window_size = tuple(config.window_size)
    self.relative_position_bias_table = nnx.Param(
        jnp.zeros((num_relative, config.num_attention_heads), jnp.float32),
        **sharding.axes(None, 'heads'))

  def __call__(self):
    index = relative_position_index(self.window_size)
    bias = self.relative_position_bias_table[...][index.reshape(-1)]
    n = index.shape[0]
    return bias.reshape(n, n, -1).transpose(2, 0, 1)


class Attention(nnx.Module):
  """Multi-head self-attention with separate q/k/v projections (one-to-one with transformers)."""

  def __init__(self, config: TransformerConfig, *, rngs):
    d = config.hidden_size
    self.config = config
    # The out dimension of q, k, v is heads x head_dim, so 'heads' splits whole heads.
    self.query = dense(d, d, config, rngs=rngs, axes=('embed', 'heads'))
    self.key = dense(d, d, config, rngs=rngs, use_bias=config.key_bias, axes=('embed', 'heads'))
    self.value = dense(d, d, config, rngs=rngs, axes=('embed', 'heads'))
    self.output = dense(d, d, config, rngs=rngs, axes=('heads', 'embed'))

  def __call__(self, x, *, mask=None, bias=None, causal=False, rng=None):
    """x: [B, T, D]; mask: [B, T] bool of valid keys; bias: [B or 1, H, T, T] added to the
    logits."""
    cfg = self.config
    b, t, _ = x.shape
    split = lambda y: y.reshape(b, t, cfg.num_attention_heads, cfg.head_dim)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    key_mask = None if mask is None else mask[:, None, None, :]
    if bias is not None:
      bias = bias.astype(q.dtype)
    if rng is not None and cfg.attention_dropout > 0:
      # dot_product_attention has no dropout on the probabilities: spell the softmax out.
      logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(cfg.head_dim).astype(q.dtype)
      if bias is not None:
        logits = logits + bias
      if causal:
        logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, jnp.finfo(logits.dtype).min)
      if key_mask is not None:
        logits = jnp.where(key_mask, logits, jnp.finfo(logits.dtype).min)
      probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
      probs = dropout(probs, cfg.attention_dropout, rng)
      context = jnp.einsum('bhqk,bkhd->bqhd', probs, v)
    else:
      context = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=key_mask, is_causal=causal,
                                             implementation=cfg.attention_impl)
    return self.output(context.reshape(b, t, -1))


class TransformerLayer(nnx.Module):
  """Post-LN (BERT / wav2vec 2.0) or pre-LN with layer scale (BEiT), by `config.norm_first`.

  Returns (output, ffn_output): ffn_output is the FFN result before dropout and the residual, the
  data2vec target for text and audio; the output itself is the end-of-block target for vision.
  """

  def __init__(self, config: TransformerConfig, *, rngs):
    d = config.hidden_size
    self.config = config
    self.attention = Attention(config, rngs=rngs)
    # Post-LN: attention_norm follows the attention residual, mlp_norm the FFN residual.
    # Pre-LN: they normalise the attention and the FFN inputs.
    self.attention_norm = layer_norm(d, config.layer_norm_eps, config, rngs=rngs)
    self.intermediate = dense(d, config.intermediate_size, config, rngs=rngs, axes=('embed', 'mlp'))
    self.output = dense(config.intermediate_size, d, config, rngs=rngs, axes=('mlp', 'embed'))
    self.mlp_norm = layer_norm(d, config.layer_norm_eps, config, rngs=rngs)
    if config.layer_scale_init_value > 0:
      self.lambda_1 = nnx.Param(jnp.full((d,), config.layer_scale_init_value, jnp.float32),
                                **sharding.axes('embed'))
      self.lambda_2 = nnx.Param(jnp.full((d,), config.layer_scale_init_value, jnp.float32),
                                **sharding.axes('embed'))
    if config.relative_position_bias == 'layer':
      self.relative_position_bias = RelativePositionBias(config)

  def _ffn(self, x, rng):
    h = ACTIVATIONS[self.config.hidden_act](self.intermediate(x))
    h = dropout(h, self.config.activation_dropout, rng)
    return self.output(h)

  def __call__(self, x, *, mask=None, bias=None, causal=False, drop_path_rate=0.0, rng=None):
    cfg = self.config
    keys = [None] * 6 if rng is None else list(jax.random.split(rng, 6))
    if cfg.relative_position_bias == 'layer':
      own = self.relative_position_bias()[None]
      bias = own if bias is None else bias + own
    if cfg.norm_first:
      a = self.attention(self.attention_norm(x), mask=mask, bias=bias, causal=causal, rng=keys[0])
      a = dropout(a, cfg.hidden_dropout, keys[1])
      if cfg.layer_scale_init_value > 0:
        a = self.lambda_1[...].astype(a.dtype) * a
      x = x + drop_path(a, drop_path_rate, keys[2])
      ffn = self._ffn(self.mlp_norm(x), keys[3])
      y = dropout(ffn, cfg.hidden_dropout, keys[4])
      if cfg.layer_scale_init_value > 0:
        y = self.lambda_2[...].astype(y.dtype) * y
      return x + drop_path(y, drop_path_rate, keys[5]), ffn
    a = self.attention(x, mask=mask, bias=bias, causal=causal, rng=keys[0])
    x = self.attention_norm(x + dropout(a, cfg.hidden_dropout, keys[1]))
    ffn = self._ffn(x, keys[3])
    return self.mlp_norm(x + dropout(ffn, cfg.hidden_dropout, keys[4])), ffn
