"""data2vec 2.0's decoder (docs/algorithm.md §8.4; fairseq `Decoder1d` / `Decoder2d`).

It fills in the masked positions of the student's visible-only output and predicts the targets:
`num_layers` blocks of [grouped conv (kernel k, padding k // 2), LayerNorm over channels without
affine, GELU], a block's output added to its input when their widths match and `residual` is set,
then a projection back to the encoder width: one Linear, or Linear -> GELU -> Linear (text).
Images convolve over the (h, w) patch grid, audio and text over time. No positions are added.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from data2vec import sharding
from data2vec.models.layers import ACTIVATIONS, dense, grouped_conv, layer_norm

NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which fairseq's decoder norms use
GELU = ACTIVATIONS['gelu']


class ConvDecoder(nnx.Module):
  """x [B, T, D] -> [B, T, D]; `grid` (h, w) with h * w = T for images, None for sequences."""

  def __init__(self, config, *, dim, num_layers, kernel_size, groups, residual, grid=None,
               projection_hidden=None, rngs):
    """config: the encoder's config (width D, init, dtype). projection_hidden: the hidden width of
    a 2-layer projection (text: 2 * dim), None for one Linear."""
    d = config.hidden_size
    if dim % groups or d % groups:
      raise ValueError(f'decoder dim={dim} and the encoder width {d} must divide by '
                       f'groups={groups}')
    self.grid, self.residual = grid, residual
    spatial = 1 if grid is None else 2
    self.convs = nnx.List([
        nnx.Conv(d if i == 0 else dim, dim, kernel_size=(kernel_size,) * spatial,
                 padding=[(kernel_size // 2, kernel_size // 2)] * spatial,
                 feature_group_count=groups, dtype=config.compute_dtype,
                 kernel_metadata=sharding.axes(*(None,) * spatial, 'conv_in', 'conv_out'),
                 bias_metadata=sharding.axes('conv_out'), param_dtype=jnp.float32, rngs=rngs)
        for i in range(num_layers)])
    self.norms = nnx.List([layer_norm(dim, NORM_EPS, config, rngs=rngs, affine=False)
                           for _ in range(num_layers)])
    # Named so that FSDP splits one axis of each kernel (sharding.py): the convs' output channels,
    # then the projection's input (the convs' channels) or its output (the encoder width).
    if projection_hidden:
      self.projection = nnx.List([
          dense(dim, projection_hidden, config, rngs=rngs, axes=('conv_out', 'mlp')),
          dense(projection_hidden, d, config, rngs=rngs, axes=('mlp', 'embed'))])
    else:
      self.projection = nnx.List([dense(dim, d, config, rngs=rngs, axes=('conv_in', 'embed'))])

  def __call__(self, x):
    b, t, _ = x.shape
    if self.grid is not None:
      x = x.reshape(b, *self.grid, -1)
    for conv, norm in zip(self.convs, self.norms):
      y = GELU(norm(grouped_conv(conv, x)))
      # An even kernel gives one extra position per axis (fairseq's SamePad drops the last).
      y = y[(slice(None),) + tuple(slice(0, n) for n in x.shape[1:-1])]
      x = x + y if self.residual and y.shape == x.shape else y
    x = x.reshape(b, t, -1)
    for i, layer in enumerate(self.projection):
      x = layer(GELU(x) if i else x)
    return x


def decoder_input(visible, ids_keep, length, noise_std, rng):
  """The decoder's full-length input: the student's outputs at their positions, N(0, noise_std^2)
  noise at the masked ones (fairseq `decoder_input`, mask_noise_std).

  visible: [N, K, D] (the extra tokens, e.g. cls, already removed); ids_keep: [N, K] int, where
  each lies in [0, length). Returns [N, length, D].
  """
  n, _, d = visible.shape
  x = noise_std * jax.random.normal(rng, (n, length, d), visible.dtype)
  return x.at[jnp.arange(n)[:, None], ids_keep].set(visible)
