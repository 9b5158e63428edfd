"""Data2VecVisionForSemanticSegmentation: BEiT's FPN ops, UperNet decode head, FCN auxiliary head.

Four encoder feature maps (hidden_states picked by `out_indices`) go through the FPN ops (x4, x2,
x1, x0.5 resolution), the UperNet head (pyramid pooling over `pool_scales` on the coarsest, a
top-down path, fusion) and, with `use_auxiliary_head`, an FCN head on the third map. NHWC inside;
logits come out NCHW [B, num_labels, H/4 * patch, ...] as transformers returns them. BatchNorm
uses its running statistics in eval (rng None); with an rng it normalises with batch statistics
and updates the running ones in place, like torch's train() (flax averages the biased batch
variance; torch the unbiased one).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data2vec.models.heads import common
from data2vec.models.layers import ACTIVATIONS
from data2vec.models.vision import Data2VecVisionModel, VisionConfig

TORCH_BN_EPS = 1e-5


def resize(x, size):
  """NHWC bilinear resize as torch's interpolate(mode='bilinear', align_corners=False)."""
  return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), 'bilinear', antialias=False)


def _pool_matrix(n, bins):
  """[bins, n] averaging weights of torch's adaptive average pooling along one axis."""
  m = np.zeros((bins, n), np.float32)
  for i in range(bins):
    start, end = (i * n) // bins, -((-(i + 1) * n) // bins)
    m[i, start:end] = 1 / (end - start)
  return m


def adaptive_avg_pool(x, bins):
  """nn.AdaptiveAvgPool2d(bins) on NHWC."""
  rows, cols = _pool_matrix(x.shape[1], bins), _pool_matrix(x.shape[2], bins)
  return jnp.einsum('ih,bhwc,jw->bijc', rows, x, cols)


def _conv(in_features, out_features, kernel_size, config, *, rngs, padding=0, use_bias=True):
  return nnx.Conv(in_features, out_features, (kernel_size, kernel_size),
                  padding=[(padding, padding)] * 2, use_bias=use_bias,
                  kernel_init=nnx.initializers.normal(config.initializer_range),
                  dtype=config.compute_dtype, param_dtype=jnp.float32, rngs=rngs)


def _batch_norm(features, config, *, rngs):
  return nnx.BatchNorm(features, momentum=0.9, epsilon=TORCH_BN_EPS, dtype=config.compute_dtype,
                       param_dtype=jnp.float32, rngs=rngs)


class ConvTranspose2x2(nnx.Module):
  """nn.ConvTranspose2d(kernel_size=2, stride=2): every pixel becomes a 2x2 block."""

  def __init__(self, features, config, *, rngs):
    init = nnx.initializers.normal(config.initializer_range)
    self.kernel = nnx.Param(init(rngs.params(), (2, 2, features, features), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))

  def __call__(self, x):
    b, h, w, _ = x.shape
    y = jnp.einsum('bhwi,acio->bhawco', x, self.kernel[...].astype(x.dtype))
    return y.reshape(b, 2 * h, 2 * w, -1) + self.bias[...].astype(x.dtype)


class ConvLayer(nnx.Module):
  """Data2VecVisionConvLayer: Conv2d without bias -> BatchNorm -> ReLU."""

  def __init__(self, in_features, out_features, kernel_size, config, *, rngs, padding=0):
    self.convolution = _conv(in_features, out_features, kernel_size, config, rngs=rngs,
                             padding=padding, use_bias=False)
    self.normalization = _batch_norm(out_features, config, rngs=rngs)

  def __call__(self, x, train=False):
    return jax.nn.relu(self.normalization(self.convolution(x), use_running_average=not train))


class PyramidPoolingBlock(nnx.Module):

  def __init__(self, pool_scale, in_features, features, config, *, rngs):
    self.pool_scale = pool_scale
    self.conv = ConvLayer(in_features, features, 1, config, rngs=rngs)

  def __call__(self, x, train=False):
    return resize(self.conv(adaptive_avg_pool(x, self.pool_scale), train), x.shape[1:3])


class UperHead(nnx.Module):
  """Pyramid pooling on the coarsest map, lateral 1x1 convs, top-down sums, 3x3 convs, fusion."""

  def __init__(self, config: VisionConfig, *, rngs):
    d = config.hidden_size
    self.psp_modules = nnx.List([PyramidPoolingBlock(s, d, d, config, rngs=rngs)
                                 for s in config.pool_scales])
    self.psp_bottleneck = ConvLayer(d * (1 + len(config.pool_scales)), d, 3, config, rngs=rngs,
                                    padding=1)
    self.lateral_convs = nnx.List([ConvLayer(d, d, 1, config, rngs=rngs) for _ in range(3)])
    self.fpn_convs = nnx.List([ConvLayer(d, d, 3, config, rngs=rngs, padding=1)
                               for _ in range(3)])
    self.fpn_bottleneck = ConvLayer(4 * d, d, 3, config, rngs=rngs, padding=1)
    self.classifier = _conv(d, common.num_labels(config), 1, config, rngs=rngs)

  def __call__(self, features, train=False):
    top = features[-1]
    psp = jnp.concatenate([top] + [block(top, train) for block in self.psp_modules], axis=-1)
    laterals = [conv(x, train) for conv, x in zip(self.lateral_convs, features)]
    laterals.append(self.psp_bottleneck(psp, train))
    for i in range(len(laterals) - 1, 0, -1):
      laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[1:3])
    outs = [conv(x, train) for conv, x in zip(self.fpn_convs, laterals)] + [laterals[-1]]
    outs = [outs[0]] + [resize(x, outs[0].shape[1:3]) for x in outs[1:]]
    return self.classifier(self.fpn_bottleneck(jnp.concatenate(outs, axis=-1), train))


class FCNHead(nnx.Module):
  """auxiliary_num_convs 3x3 ConvLayers on the third feature map (optionally concatenated with
  it again), then a 1x1 classifier."""

  def __init__(self, config: VisionConfig, *, rngs):
    d, c = config.hidden_size, config.auxiliary_channels
    self.concat_input = config.auxiliary_concat_input
    self.convs = nnx.List([ConvLayer(d if i == 0 else c, c, 3, config, rngs=rngs, padding=1)
                           for i in range(config.auxiliary_num_convs)])
    if self.concat_input:
      self.conv_cat = ConvLayer(d + c, c, 3, config, rngs=rngs, padding=1)
    self.classifier = _conv(c, common.num_labels(config), 1, config, rngs=rngs)

  def __call__(self, features, train=False):
    x = residual = features[2]
    for conv in self.convs:
      x = conv(x, train)
    if self.concat_input:
      x = self.conv_cat(jnp.concatenate([residual, x], axis=-1), train)
    return self.classifier(x)


class FPN1(nnx.Module):
  """x4: ConvTranspose -> BatchNorm -> GELU -> ConvTranspose."""

  def __init__(self, config: VisionConfig, *, rngs):
    d = config.hidden_size
    self.up1 = ConvTranspose2x2(d, config, rngs=rngs)
    self.norm = _batch_norm(d, config, rngs=rngs)
    self.up2 = ConvTranspose2x2(d, config, rngs=rngs)

  def __call__(self, x, train=False):
    x = self.norm(self.up1(x), use_running_average=not train)
    return self.up2(ACTIVATIONS['gelu'](x))


class Data2VecVisionForSemanticSegmentation(nnx.Module):
  """Logits [B, num_labels, 4 * grid, 4 * grid]. The loss upsamples them (and the auxiliary ones)
  bilinearly to the labels' [B, H, W] size: cross entropy ignoring semantic_loss_ignore_index,
  plus auxiliary_loss_weight times the auxiliary head's."""
  model_type = 'data2vec-vision'
  architecture = 'Data2VecVisionForSemanticSegmentation'

  def __init__(self, config: VisionConfig, *, rngs):
    common.check_labels(config)
    n = config.num_hidden_layers + 1
    if len(config.out_indices) != 4 or not set(config.out_indices) <= set(range(1, n + 1)) or \
        len(set(config.out_indices)) != 4:
      raise ValueError(f'out_indices={config.out_indices} must be 4 distinct hidden-state '
                       f'numbers in 1..{n} (num_hidden_layers + 1)')
    if not (isinstance(config.image_size, int) and isinstance(config.patch_size, int)):
      raise ValueError(f'image_size={config.image_size}, patch_size={config.patch_size}: the '
                       'segmentation head needs int sizes (a square patch grid)')
    self.config = dataclasses.replace(config, add_pooling_layer=False)
    self.data2vec_vision = Data2VecVisionModel(self.config, rngs=rngs)
    self.fpn1 = FPN1(config, rngs=rngs)
    self.fpn2 = ConvTranspose2x2(config.hidden_size, config, rngs=rngs)
    self.decode_head = UperHead(config, rngs=rngs)
    if config.use_auxiliary_head:
      self.auxiliary_head = FCNHead(config, rngs=rngs)

  def features(self, hidden_states):
    """The four FPN maps (NHWC) from the encoder's hidden states [L+1, B, T, D]."""
    cfg = self.config
    b, _, d = hidden_states.shape[1:]
    # transformers keeps hidden state i when i + 1 is in out_indices, in hidden-state order.
    return [hidden_states[i][:, 1:].reshape(b, *cfg.window_size, d)
            for i in range(hidden_states.shape[0]) if i + 1 in cfg.out_indices]

  def __call__(self, pixel_values, labels=None, *, rng=None):
    cfg = self.config
    train = rng is not None
    out = self.data2vec_vision(pixel_values, rng=rng)
    f1, f2, f3, f4 = self.features(out['hidden_states'])
    f4 = nnx.max_pool(f4, (2, 2), strides=(2, 2))
    features = [self.fpn1(f1, train), self.fpn2(f2), f3, f4]
    logits = self.decode_head(features, train)
    out['logits'] = jnp.transpose(logits, (0, 3, 1, 2))
    if labels is not None:
      if common.num_labels(cfg) == 1:
        raise ValueError('the segmentation loss needs more than one label (id2label)')
      labels = jnp.asarray(labels)
      loss = lambda x: common.cross_entropy(resize(x.astype(jnp.float32), labels.shape[-2:]),
                                            labels, ignore_index=cfg.semantic_loss_ignore_index)
      out['loss'] = loss(logits)
      if cfg.use_auxiliary_head:
        out['loss'] += cfg.auxiliary_loss_weight * loss(self.auxiliary_head(features, train))
    return out
