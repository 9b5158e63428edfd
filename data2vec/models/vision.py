"""The vision encoder (Data2VecVisionModel): BEiT patch embedding + the shared pre-LN stack."""
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from data2vec import sharding
from data2vec.models.encoder import Encoder
from data2vec.models.layers import TransformerConfig, dropout, layer_norm


def _pair(name, value):
  pair = (value, value) if isinstance(value, int) else tuple(value)
  if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
    raise ValueError(f'{name}={value!r} must be a positive int or a pair of them')
  return pair


@dataclasses.dataclass(frozen=True)
class VisionConfig(TransformerConfig):
  """Defaults describe the same model as `transformers.Data2VecVisionConfig()`."""
  layer_norm_eps: float = 1e-12
  norm_first: bool = True
  layer_scale_init_value: float = 0.1
  key_bias: bool = False
  hidden_dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path_rate: float = 0.1
  # Derived in __post_init__ from the fields below, so they cannot disagree with them.
  relative_position_bias: str = dataclasses.field(default='none', init=False)
  window_size: tuple[int, int] | None = dataclasses.field(default=None, init=False)
  image_size: int | tuple[int, int] = 224
  patch_size: int | tuple[int, int] = 16
  num_channels: int = 3
  use_mask_token: bool = False
  use_absolute_position_embeddings: bool = False
  use_relative_position_bias: bool = False           # one table per layer
  use_shared_relative_position_bias: bool = False    # one table for all layers
  use_mean_pooling: bool = True
  add_pooling_layer: bool = False  # a Data2VecVisionModel constructor argument, not in config.json
  # Semantic segmentation / auxiliary head fields, unused by the encoder (kept for the heads).
  out_indices: tuple[int, ...] = (3, 5, 7, 11)
  pool_scales: tuple[int, ...] = (1, 2, 3, 6)
  use_auxiliary_head: bool = True
  auxiliary_loss_weight: float = 0.4
  auxiliary_channels: int = 256
  auxiliary_num_convs: int = 1
  auxiliary_concat_input: bool = False
  semantic_loss_ignore_index: int = 255
  # Classification heads (data2vec.models.heads).
  id2label: tuple[str, ...] = ('LABEL_0', 'LABEL_1')  # label names in id order
  problem_type: str | None = None   # image classification; None: chosen from the labels' dtype

  def __post_init__(self):
    if self.use_relative_position_bias and self.use_shared_relative_position_bias:
      raise ValueError('use_relative_position_bias and use_shared_relative_position_bias are both '
                       'True; choose per-layer or shared tables')
    image, patch = _pair('image_size', self.image_size), _pair('patch_size', self.patch_size)
    if image[0] % patch[0] or image[1] % patch[1]:
      raise ValueError(f'patch_size={self.patch_size} does not divide image_size={self.image_size}')
    if self.num_channels < 1:
      raise ValueError(f'num_channels={self.num_channels} must be positive')
    grid = (image[0] // patch[0], image[1] // patch[1])
    bias = ('layer' if self.use_relative_position_bias else
            'shared' if self.use_shared_relative_position_bias else 'none')
    # transformers rebuilds position tables from the resolution assuming a square grid and an int
    # patch size; other shapes would load there but compute something else.
    positions = self.use_absolute_position_embeddings or bias != 'none'
    if positions and (grid[0] != grid[1] or not isinstance(self.patch_size, int)):
      raise ValueError(f'image_size={self.image_size}, patch_size={self.patch_size}: position '
                       'embeddings need a square patch grid and an int patch_size')
    object.__setattr__(self, 'window_size', grid)
    object.__setattr__(self, 'relative_position_bias', bias)
    super().__post_init__()

  @property
  def num_patches(self):
    return self.window_size[0] * self.window_size[1]


class VisionEmbeddings(nnx.Module):
  """Conv patches, mask token on masked patches, cls token first, optional absolute positions."""

  def __init__(self, config: VisionConfig, *, rngs):
    d = config.hidden_size
    self.config = config
    patch = _pair('patch_size', config.patch_size)
    init = nnx.initializers.normal(config.initializer_range)
    self.patch_embeddings = nnx.Conv(config.num_channels, d, kernel_size=patch, strides=patch,
                                     padding='VALID', kernel_init=init, dtype=config.compute_dtype,
                                     kernel_metadata=sharding.axes(None, None, 'conv_in', 'embed'),
                                     bias_metadata=sharding.axes('embed'),
                                     param_dtype=jnp.float32, rngs=rngs)
    # transformers zero-initialises these; BEiT / data2vec pretraining draws them like the weights.
    names = sharding.axes(None, None, 'embed')
    self.cls_token = nnx.Param(init(rngs.params(), (1, 1, d), jnp.float32), **names)
    if config.use_mask_token:
      self.mask_token = nnx.Param(init(rngs.params(), (1, 1, d), jnp.float32), **names)
    if config.use_absolute_position_embeddings:
      self.position_embeddings = nnx.Param(
          init(rngs.params(), (1, config.num_patches + 1, d), jnp.float32), **names)

  def __call__(self, pixel_values, bool_masked_pos=None, *, rng=None):
    cfg = self.config
    x = self.patch_embeddings(jnp.transpose(pixel_values, (0, 2, 3, 1)))  # NCHW -> NHWC
    b, _, _, d = x.shape
    x = x.reshape(b, -1, d)
    dtype = x.dtype
    if bool_masked_pos is not None:
      x = jnp.where(bool_masked_pos[..., None], self.mask_token[...].astype(dtype), x)
    x = jnp.concatenate([jnp.broadcast_to(self.cls_token[...].astype(dtype), (b, 1, d)), x], axis=1)
    if cfg.use_absolute_position_embeddings:
      x = x + self.position_embeddings[...].astype(dtype)
    return dropout(x, cfg.hidden_dropout, rng)


class Data2VecVisionModel(nnx.Module):
  """transformers' Data2VecVisionModel; returns every hidden state and FFN output as well."""
  model_type = 'data2vec-vision'

  def __init__(self, config: VisionConfig, *, rngs):
    self.config = config
    self.embeddings = VisionEmbeddings(config, rngs=rngs)
    self.encoder = Encoder(config, rngs=rngs)
    # BEiT / data2vec_vision `fix_init_weight`: block i's residual-branch projections start
    # divided by sqrt(2 i), so the pre-LN residual stream does not grow with depth.
    depth_scale = 1 / jnp.sqrt(2.0 * jnp.arange(1, config.num_hidden_layers + 1))[:, None, None]
    for proj in (self.encoder.layers.attention.output, self.encoder.layers.output):
      proj.kernel[...] = proj.kernel[...] * depth_scale
    eps = config.layer_norm_eps
    if not config.use_mean_pooling:  # with mean pooling the final norm is the pooler's instead
      self.layernorm = layer_norm(config.hidden_size, eps, config, rngs=rngs)
    if config.add_pooling_layer and config.use_mean_pooling:
      self.pooler_norm = layer_norm(config.hidden_size, eps, config, rngs=rngs)

  def _check_inputs(self, pixel_values, bool_masked_pos):
    cfg = self.config
    expected = (cfg.num_channels,) + _pair('image_size', cfg.image_size)
    if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
      raise ValueError(f'pixel_values has shape {pixel_values.shape}; expected [B, C, H, W] with '
                       f'(C, H, W) = {expected} (num_channels, image_size): other resolutions '
                       'are not supported')
    if bool_masked_pos is None:
      return
    if not cfg.use_mask_token:
      raise ValueError('bool_masked_pos needs a model with use_mask_token=True')
    if tuple(bool_masked_pos.shape) != (pixel_values.shape[0], cfg.num_patches):
      raise ValueError(f'bool_masked_pos has shape {bool_masked_pos.shape}; expected '
                       f'{(pixel_values.shape[0], cfg.num_patches)} [B, num_patches]')

  def __call__(self, pixel_values, bool_masked_pos=None, *, rng=None):
    """pixel_values: [B, C, H, W]; bool_masked_pos: [B, num_patches] bool, True = masked.

    Returns a dict: last_hidden_state [B, T, D] (after the final norm), hidden_states [L+1, B, T, D]
    (as transformers: the embeddings first, the last block's output unnormalised), ffn_outputs
    [L, B, T, D], and pooler_output [B, D] with add_pooling_layer. T = num_patches + 1 (cls).
    """
    cfg = self.config
    self._check_inputs(pixel_values, bool_masked_pos)
    embed_rng = encoder_rng = None
    if rng is not None:
      embed_rng, encoder_rng = jax.random.split(rng)
    x = self.embeddings(pixel_values, bool_masked_pos, rng=embed_rng)
    return self._encode(x, encoder_rng)

  def encode_visible(self, pixel_values, ids_keep, *, rng=None):
    """data2vec 2.0's student: per sample M views, each encoding only its visible patches.

    pixel_values: [B, C, H, W]; ids_keep: [B, M, K] int, the patches each view keeps (any order).
    Each patch is embedded once with its absolute position, then gathered, so it keeps its
    position in every view; the cls token comes first. Returns the dict of `__call__` over
    B * M rows (sample b's views in rows b * M .. b * M + M - 1) and T = 1 + K tokens.
    """
    cfg = self.config
    if not cfg.use_absolute_position_embeddings or cfg.relative_position_bias != 'none':
      raise ValueError('encoding visible patches only needs use_absolute_position_embeddings=True '
                       'and no relative position bias (use_relative_position_bias and '
                       'use_shared_relative_position_bias False): positions must travel with the '
                       'patches')
    self._check_inputs(pixel_values, None)
    b, m, k = ids_keep.shape
    if b != pixel_values.shape[0] or not 1 <= k <= cfg.num_patches:
      raise ValueError(f'ids_keep has shape {ids_keep.shape}; expected [B={pixel_values.shape[0]}, '
                       f'M, K] with 1 <= K <= {cfg.num_patches}')
    embed_rng = encoder_rng = None
    if rng is not None:
      embed_rng, encoder_rng = jax.random.split(rng)
    x = self.embeddings(pixel_values, rng=embed_rng)  # [B, 1 + N, D]
    ids_keep = jnp.asarray(ids_keep, jnp.int32)
    tokens = jnp.concatenate([jnp.zeros((b, m, 1), jnp.int32), ids_keep + 1], axis=-1)
    x = jnp.take_along_axis(x[:, None], tokens[..., None], axis=2)  # [B, M, 1 + K, D]
    return self._encode(x.reshape(b * m, k + 1, -1), encoder_rng)

  def _encode(self, x, rng):
    """The Transformer stack on embeddings x [B, T, D], the final norm and the pooler."""
    cfg = self.config
    out = self.encoder(x, rng=rng)
    x = out['last_hidden_state']
    if not cfg.use_mean_pooling:
      x = self.layernorm(x)
    out['last_hidden_state'] = x
    if cfg.add_pooling_layer:
      out['pooler_output'] = (self.pooler_norm(x[:, 1:].mean(axis=1)) if cfg.use_mean_pooling
                              else x[:, 0])
    return out
