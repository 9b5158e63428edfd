"""Data2VecAudio: CNN feature encoder, convolutional positional embedding, shared Transformer.

One-to-one with transformers' Data2VecAudioModel, including its quirks (docs/hf_format.md):
LayerNorm eps 1e-5 after every feature-encoder conv, padded frames zeroed once, before the
positional conv only; an even positional kernel drops the last frame; frame masks come from the
number of valid samples. Layout is NWC throughout: waveforms [B, L], frames [B, T, C].

The model never draws SpecAugment masks (transformers draws them itself while training): the time
mask comes in as `mask_time_indices` from the data pipeline, and channel masking (mask_feature_*) is
not applied. The mask_* fields are kept because a positive probability adds `masked_spec_embed`.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data2vec import sharding
from data2vec.models.encoder import Encoder
from data2vec.models.layers import (ACTIVATIONS, TransformerConfig, dense, dropout, grouped_conv,
                                    layer_norm)

TORCH_LN_EPS = 1e-5  # nn.LayerNorm's default, used where transformers does not pass layer_norm_eps


@dataclasses.dataclass(frozen=True)
class AudioConfig(TransformerConfig):
  """Defaults describe the same model as `transformers.Data2VecAudioConfig()`."""
  activation_dropout: float = 0.1
  layerdrop: float = 0.1
  # Feature encoder: one Conv1d -> LayerNorm -> activation per entry.
  conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
  conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
  conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
  conv_bias: bool = False
  feat_extract_activation: str = 'gelu'
  feat_proj_dropout: float = 0.0
  # Positional embedding: num_conv_pos_embeddings stacked grouped convs (layers, not a kernel size).
  num_conv_pos_embeddings: int = 5
  conv_pos_kernel_size: int = 19
  num_conv_pos_embedding_groups: int = 16
  # SpecAugment, drawn by the data pipeline.
  mask_time_prob: float = 0.05
  mask_time_length: int = 10
  mask_time_min_masks: int = 2
  mask_feature_prob: float = 0.0
  mask_feature_length: int = 10
  mask_feature_min_masks: int = 0
  # data2vec 2.0's ALiBi (fairseq's v2 speech default): -|i - j| x a head's slope x its learned
  # scale (init 1, clamped >= 0) added to every block's attention logits. No transformers
  # equivalent: such an encoder does not export.
  use_alibi: bool = False
  # Conv adapter after the Transformer (warm-starting speech encoder-decoders).
  add_adapter: bool = False
  adapter_kernel_size: int = 3
  adapter_stride: int = 2
  num_adapter_layers: int = 3
  output_hidden_size: int | None = None  # None: hidden_size
  # Task-head fields: unused by the base model, kept so that configs round-trip.
  vocab_size: int = 32
  final_dropout: float = 0.1
  ctc_loss_reduction: str = 'sum'
  ctc_zero_infinity: bool = False
  use_weighted_layer_sum: bool = False
  classifier_proj_size: int = 256
  tdnn_dim: tuple[int, ...] = (512, 512, 512, 512, 1500)
  tdnn_kernel: tuple[int, ...] = (5, 3, 3, 1, 1)
  tdnn_dilation: tuple[int, ...] = (1, 2, 3, 1, 1)
  xvector_output_dim: int = 512
  pad_token_id: int | None = 0
  bos_token_id: int | None = 1
  eos_token_id: int | tuple[int, ...] | None = 2
  id2label: tuple[str, ...] = ('LABEL_0', 'LABEL_1')  # label names in id order
  problem_type: str | None = None  # carried for transformers; the audio heads' losses are fixed

  def __post_init__(self):
    super().__post_init__()
    n = len(self.conv_dim)
    if not n or not n == len(self.conv_stride) == len(self.conv_kernel):
      raise ValueError(f'conv_dim={self.conv_dim}, conv_stride={self.conv_stride} and '
                       f'conv_kernel={self.conv_kernel} must be non-empty and of equal length')
    if self.feat_extract_activation not in ACTIVATIONS:
      raise ValueError(f'feat_extract_activation={self.feat_extract_activation!r} is not one of '
                       f'{sorted(ACTIVATIONS)}')
    if self.hidden_size % self.num_conv_pos_embedding_groups:
      raise ValueError(f'hidden_size={self.hidden_size} is not a multiple of '
                       f'num_conv_pos_embedding_groups={self.num_conv_pos_embedding_groups}')
    if self.conv_pos_kernel_size < 1:
      raise ValueError(f'conv_pos_kernel_size={self.conv_pos_kernel_size} must be >= 1')

  @property
  def has_masked_spec_embed(self):
    """transformers creates masked_spec_embed only when some SpecAugment probability is positive."""
    return self.mask_time_prob > 0 or self.mask_feature_prob > 0

  @property
  def adapter_size(self):
    return self.output_hidden_size or self.hidden_size


def feature_lengths(config: AudioConfig, lengths, *, add_adapter=None):
  """Frames out of `lengths` samples (ints, numpy or jax arrays): floor((L - k) / s) + 1 per conv.

  Adapter layers count as kernel 1 with adapter_stride, as transformers counts them
  (`add_adapter=None`: config.add_adapter).
  """
  add_adapter = config.add_adapter if add_adapter is None else add_adapter
  for kernel, stride in zip(config.conv_kernel, config.conv_stride):
    lengths = (lengths - kernel) // stride + 1
  if add_adapter:
    for _ in range(config.num_adapter_layers):
      lengths = (lengths - 1) // config.adapter_stride + 1
  return lengths


def frame_mask(config: AudioConfig, attention_mask, num_frames):
  """Sample-level attention_mask [B, L] -> frame-level [B, T] bool, True on valid frames.

  As transformers: only the number of valid samples counts, and frames up to index
  (length - 1) are valid, with torch's negative indexing (a length <= 0 wraps around).
  """
  lengths = feature_lengths(config, jnp.sum(jnp.asarray(attention_mask, jnp.int32), -1),
                            add_adapter=False)
  return jnp.arange(num_frames) <= ((lengths - 1) % num_frames)[:, None]


def alibi_slopes(num_heads):
  """ALiBi's per-head slopes [H] (Press et al. 2021, as fairseq's data2vec 2.0): for a power of
  two H, 2^(-8/H) to the powers 1..H; otherwise those of the largest power of two below H, then
  every other slope of twice that many heads."""
  def powers_of_two(n):
    start = 2.0 ** (-8.0 / n)
    return [start ** (i + 1) for i in range(n)]
  below = 2 ** int(np.floor(np.log2(num_heads)))
  slopes = powers_of_two(below) + powers_of_two(2 * below)[0::2][:num_heads - below]
  return np.asarray(slopes, np.float32)


def _uniform(bound):
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def conv1d(in_features, out_features, kernel_size, config, *, rngs, stride=1, padding=0, groups=1,
           use_bias=True, bias_init=None, out_axis='conv_out'):
  """nn.Conv1d in NWC layout, initialised as transformers does: kaiming-normal kernel and a
  U(+-sqrt(groups / (in * k))) bias unless `bias_init` says otherwise. `out_axis`: the logical
  name of the output channels."""
  bound = (groups / (in_features * kernel_size)) ** 0.5
  return nnx.Conv(in_features, out_features, (kernel_size,), strides=stride,
                  padding=[(padding, padding)], feature_group_count=groups, use_bias=use_bias,
                  kernel_init=nnx.initializers.variance_scaling(2.0, 'fan_in', 'normal'),
                  bias_init=bias_init or _uniform(bound), dtype=config.compute_dtype,
                  kernel_metadata=sharding.axes(None, 'conv_in', out_axis),
                  bias_metadata=sharding.axes(out_axis), param_dtype=jnp.float32, rngs=rngs)


class ConvLayer(nnx.Module):
  """Conv1d -> LayerNorm over channels (eps 1e-5) -> activation."""

  def __init__(self, config: AudioConfig, layer_id, *, rngs):
    in_features = config.conv_dim[layer_id - 1] if layer_id > 0 else 1
    out_features = config.conv_dim[layer_id]
    self.activation = config.feat_extract_activation
    self.conv = conv1d(in_features, out_features, config.conv_kernel[layer_id], config, rngs=rngs,
                       stride=config.conv_stride[layer_id], use_bias=config.conv_bias)
    self.layer_norm = layer_norm(out_features, TORCH_LN_EPS, config, rngs=rngs, axis='conv_out')

  def __call__(self, x):
    return ACTIVATIONS[self.activation](self.layer_norm(self.conv(x)))


class FeatureEncoder(nnx.Module):
  """Waveforms [B, L] -> frames [B, T, conv_dim[-1]]."""

  def __init__(self, config: AudioConfig, *, rngs):
    self.config = config
    self.conv_layers = nnx.List(
        [ConvLayer(config, i, rngs=rngs) for i in range(len(config.conv_dim))])

  def __call__(self, input_values):
    x = jnp.asarray(input_values, self.config.compute_dtype)[..., None]
    for layer in self.conv_layers:
      x = layer(x)
    return x


class FeatureProjection(nnx.Module):
  """LayerNorm(conv_dim[-1]) -> Linear; returns (projected, normalised). Dropout is the caller's."""

  def __init__(self, config: AudioConfig, *, rngs):
    c = config.conv_dim[-1]
    self.layer_norm = layer_norm(c, config.layer_norm_eps, config, rngs=rngs, axis='conv_out')
    # transformers initialises this Linear like torch's default, U(+-1/sqrt(in)), not normal.
    self.projection = nnx.Linear(c, config.hidden_size, kernel_init=_uniform(c ** -0.5),
                                 bias_init=_uniform(c ** -0.5), dtype=config.compute_dtype,
                                 kernel_metadata=sharding.axes('conv_out', 'embed'),
                                 bias_metadata=sharding.axes('embed'),
                                 param_dtype=jnp.float32, rngs=rngs)

  def __call__(self, x):
    normed = self.layer_norm(x)
    return self.projection(normed), normed


class PositionalConvEmbedding(nnx.Module):
  """Grouped Conv1d (padding k//2, last frame dropped for even k) -> LayerNorm without affine ->
  activation, num_conv_pos_embeddings times. Returns the embedding; the caller adds it."""

  def __init__(self, config: AudioConfig, *, rngs):
    d, k = config.hidden_size, config.conv_pos_kernel_size
    self.config = config
    self.layers = nnx.List([
        conv1d(d, d, k, config, rngs=rngs, padding=k // 2,
               groups=config.num_conv_pos_embedding_groups, bias_init=nnx.initializers.zeros,
               out_axis='embed')
        for _ in range(config.num_conv_pos_embeddings)])
    self.layer_norm = layer_norm(d, TORCH_LN_EPS, config, rngs=rngs, affine=False)

  def __call__(self, x):
    cfg = self.config
    for conv in self.layers:
      # The channel groups split along tensor like attention heads. This also keeps XLA's SPMD
      # partitioner (jax 0.10) from multiplying the kernel gradient of a grouped conv by the
      # size of the mesh axes that neither the batch nor the channels are split over.
      x = grouped_conv(conv, sharding.constrain(x, ('act_batch', 'act_len', 'act_heads')))
      if cfg.conv_pos_kernel_size % 2 == 0:
        x = x[:, :-1]
      x = ACTIVATIONS[cfg.feat_extract_activation](self.layer_norm(x))
    return x


class Adapter(nnx.Module):
  """Optional Linear + LayerNorm down to output_hidden_size, then strided Conv1d (padding 1) + GLU
  layers. No layerdrop: transformers skips whole adapter layers, which changes the output length."""

  def __init__(self, config: AudioConfig, *, rngs):
    d, out = config.hidden_size, config.adapter_size
    self.config = config
    if out != d:
      self.proj = dense(d, out, config, rngs=rngs, axes=('embed', 'conv_in'))
      self.proj_layer_norm = layer_norm(out, TORCH_LN_EPS, config, rngs=rngs, axis='conv_in')
    self.layers = nnx.List([
        conv1d(out, 2 * out, config.adapter_kernel_size, config, rngs=rngs,
               stride=config.adapter_stride, padding=1)
        for _ in range(config.num_adapter_layers)])

  def __call__(self, x):
    if self.config.adapter_size != self.config.hidden_size:
      x = self.proj_layer_norm(self.proj(x))
    for conv in self.layers:
      x = jax.nn.glu(conv(x), axis=-1)
    return x


class Data2VecAudioModel(nnx.Module):
  """transformers' Data2VecAudioModel. Parameter paths mirror its state-dict keys, except the
  positional conv and the encoder LayerNorm, which sit beside the shared `encoder` stack."""
  model_type = 'data2vec-audio'

  def __init__(self, config: AudioConfig, *, rngs):
    self.config = config
    self.feature_extractor = FeatureEncoder(config, rngs=rngs)
    self.feature_projection = FeatureProjection(config, rngs=rngs)
    if config.has_masked_spec_embed:
      self.masked_spec_embed = nnx.Param(jax.random.uniform(rngs.params(), (config.hidden_size,)),
                                         **sharding.axes('embed'))
    self.pos_conv_embed = PositionalConvEmbedding(config, rngs=rngs)
    self.encoder_layer_norm = layer_norm(config.hidden_size, config.layer_norm_eps, config,
                                         rngs=rngs)
    self.encoder = Encoder(config, rngs=rngs)
    if config.use_alibi:
      self.alibi_scale = nnx.Param(jnp.ones((config.num_attention_heads,), jnp.float32),
                                   **sharding.axes(None))
    if config.add_adapter:
      self.adapter = Adapter(config, rngs=rngs)

  def _alibi(self, positions):
    """The ALiBi attention bias [N, H, T, T] of frames at positions [N, T] (int), or None."""
    if not self.config.use_alibi:
      return None
    slopes = alibi_slopes(self.config.num_attention_heads) * jnp.maximum(self.alibi_scale[...], 0)
    distance = jnp.abs(positions[:, :, None] - positions[:, None, :]).astype(jnp.float32)
    return -distance[:, None] * slopes[None, :, None, None]

  def _front_end(self, input_values, attention_mask):
    extract_features = self.feature_extractor(input_values)
    valid_frames = None
    if attention_mask is not None:
      valid_frames = frame_mask(self.config, attention_mask, extract_features.shape[1])
    features, extract_features = self.feature_projection(extract_features)
    return features, valid_frames, extract_features

  def embed(self, input_values, attention_mask=None, *, rng=None):
    """The front end shared by student and teacher: CNN, LayerNorm, Linear (before its dropout).

    input_values: [B, L] waveforms; attention_mask: [B, L], 1 on valid samples (as in transformers,
    only their count per row matters).
    Returns (features [B, T, D], valid_frames [B, T] bool True on valid frames, or None).
    """
    del rng  # the front end is deterministic; taken so that every stage has one signature
    features, valid_frames, _ = self._front_end(input_values, attention_mask)
    return features, valid_frames

  def encode(self, features, valid_frames=None, mask_time_indices=None, *, rng=None):
    """Projection dropout, masked_spec_embed at mask_time_indices [B, T], positional conv,
    LayerNorm, dropout, the Transformer stack, then the adapter when config.add_adapter.

    Returns the Encoder's dict (last_hidden_state, hidden_states [L+1, ...], ffn_outputs); with the
    adapter, last_hidden_state is the adapter output and hidden_states stay the Transformer's.
    """
    cfg = self.config
    if rng is not None and cfg.add_adapter and cfg.layerdrop > 0:
      raise ValueError(f'layerdrop={cfg.layerdrop} with add_adapter=True cannot be trained: '
                       'transformers drops adapter layers, changing the output length')
    keys = [None] * 3 if rng is None else list(jax.random.split(rng, 3))
    x = dropout(features, cfg.feat_proj_dropout, keys[0])
    if mask_time_indices is not None:
      if not cfg.has_masked_spec_embed:
        raise ValueError('mask_time_indices given but the model has no masked_spec_embed '
                         '(mask_time_prob and mask_feature_prob are both 0)')
      embed = self.masked_spec_embed[...].astype(x.dtype)
      x = jnp.where(jnp.asarray(mask_time_indices, bool)[..., None], embed, x)
    if valid_frames is not None:
      x = jnp.where(valid_frames[..., None], x, 0)  # only here: later pos-conv layers see padding
    x = x + self.pos_conv_embed(x)
    x = dropout(self.encoder_layer_norm(x), cfg.hidden_dropout, keys[1])
    bias = self._alibi(jnp.arange(x.shape[1])[None])
    out = self.encoder(x, mask=valid_frames, bias=bias, rng=keys[2])
    if cfg.add_adapter:
      out['last_hidden_state'] = self.adapter(out['last_hidden_state'])
    return out

  def encode_visible(self, features, masks, ids_keep, *, rng=None):
    """data2vec 2.0's student: per clip M views, each encoding only its visible frames.

    features: [B, T, D] (`embed`'s, no padding); masks: [B, M, T] bool, True = masked; ids_keep:
    [B, M, K] int, the frames each view keeps. A view's masked frames are zeroed before the
    positional conv, which needs the whole sequence; the kept frames are the features plus the
    conv's output there (fairseq `contextualized_features`), then LayerNorm, dropout and the
    Transformer stack. Returns the Encoder's dict over B * M rows (clip b's views in rows
    b * M .. b * M + M - 1) of K frames.
    """
    cfg = self.config
    b, m, t = masks.shape
    if features.shape[:2] != (b, t) or ids_keep.shape[:2] != (b, m) or ids_keep.ndim != 3:
      raise ValueError(f'features {features.shape}, masks {masks.shape} and ids_keep '
                       f'{ids_keep.shape} do not line up: expected [B, T, D], [B, M, T], [B, M, K]')
    if cfg.add_adapter:
      raise ValueError('encode_visible has no adapter: data2vec 2.0 pretrains the encoder alone')
    keys = [None] * 3 if rng is None else list(jax.random.split(rng, 3))
    x = jnp.repeat(dropout(features, cfg.feat_proj_dropout, keys[0]), m, axis=0)  # [B*M, T, D]
    zeroed = jnp.where(jnp.asarray(masks, bool).reshape(b * m, t, 1), 0, x)
    x = x + self.pos_conv_embed(zeroed)
    ids = jnp.asarray(ids_keep, jnp.int32).reshape(b * m, -1)
    x = jnp.take_along_axis(x, ids[..., None], axis=1)
    x = dropout(self.encoder_layer_norm(x), cfg.hidden_dropout, keys[1])
    return self.encoder(x, bias=self._alibi(ids), rng=keys[2])  # ALiBi at the kept positions

  def __call__(self, input_values, attention_mask=None, mask_time_indices=None, *, rng=None):
    """embed then encode. Adds extract_features (the projection's LayerNorm output, as transformers
    returns it) and valid_frames (frame level, before the adapter) to encode's dict."""
    features, valid_frames, extract_features = self._front_end(input_values, attention_mask)
    out = self.encode(features, valid_frames, mask_time_indices, rng=rng)
    return {**out, 'extract_features': extract_features, 'valid_frames': valid_frames}
