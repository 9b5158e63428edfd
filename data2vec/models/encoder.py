"""The Transformer stack: layers stored stacked along a leading axis, run by a loop or `lax.scan`.

One parameter layout for both execution modes, so a checkpoint does not depend on `scan_layers`.
Every call returns all hidden states and all FFN outputs (the data2vec targets), stacked.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data2vec import sharding
from data2vec.models.layers import RelativePositionBias, TransformerConfig, TransformerLayer


def _remat(fn, policy):
  if policy == 'none':
    return fn
  if policy == 'full':
    return jax.checkpoint(fn)
  return jax.checkpoint(fn, policy=getattr(jax.checkpoint_policies, policy))


class Encoder(nnx.Module):

  def __init__(self, config: TransformerConfig, *, rngs):
    self.config = config

    @nnx.split_rngs(splits=config.num_hidden_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata=sharding.stacked('layers'))
    def create_layers(rngs):
      return TransformerLayer(config, rngs=rngs)

    self.layers = create_layers(rngs)
    if config.relative_position_bias == 'shared':
      self.relative_position_bias = RelativePositionBias(config)

  def __call__(self, x, *, mask=None, bias=None, causal=False, rng=None):
    """x: [B, T, D] embeddings; mask: [B, T] bool, True on valid tokens; bias: [B or 1, H, T, T]
    added to every layer's attention logits (ALiBi), or None.

    Returns a dict: last_hidden_state [B, T, D], hidden_states [L+1, B, T, D] (the input first,
    as transformers counts them) and ffn_outputs [L, B, T, D].
    """
    cfg = self.config
    n = cfg.num_hidden_layers
    if cfg.relative_position_bias == 'shared':
      shared = self.relative_position_bias()[None]
      bias = shared if bias is None else bias + shared
    graphdef, stacked = nnx.split(self.layers)
    rates = jnp.asarray(np.linspace(0.0, cfg.drop_path_rate, n), jnp.float32)
    keys = None if rng is None else jax.random.split(rng, n)

    def body(h, per_layer):
      state, rate, key = per_layer
      layer = nnx.merge(graphdef, state)
      layer_key = skip_key = None
      if key is not None:
        layer_key, skip_key = jax.random.split(key)
      out, ffn = layer(h, mask=mask, bias=bias, causal=causal, drop_path_rate=rate, rng=layer_key)
      if skip_key is not None and cfg.layerdrop > 0:
        out = jnp.where(jax.random.uniform(skip_key) < cfg.layerdrop, h, out)
      return sharding.constrain(out), (h, ffn)

    body = _remat(body, cfg.remat_policy)
    x = sharding.constrain(x.astype(cfg.compute_dtype))
    if cfg.scan_layers:
      x, (inputs, ffns) = jax.lax.scan(body, x, (stacked, rates, keys))
    else:
      # One split per parameter, not a slice per layer: a slice's gradient is a zero-padded
      # copy of the whole stack, so L slices cost O(L^2) memory traffic in the backward pass.
      leaves, treedef = jax.tree.flatten(stacked)
      pieces = [jnp.split(a, n) for a in leaves]
      inputs, ffns = [], []
      for i in range(n):
        state = treedef.unflatten([jnp.squeeze(p[i], 0) for p in pieces])
        per_layer = (state, rates[i], None if keys is None else keys[i])
        x, (h, ffn) = body(x, per_layer)
        inputs.append(h)
        ffns.append(ffn)
      inputs, ffns = jnp.stack(inputs), jnp.stack(ffns)
    return {
        'last_hidden_state': x,
        'hidden_states': jnp.concatenate([inputs, x[None]], axis=0),
        'ffn_outputs': ffns,
    }
