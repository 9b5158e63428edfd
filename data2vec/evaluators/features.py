"""Frozen features: a jitted forward, hidden states of the chosen layers, mean-pooled over tokens.

Batches use the transformers argument names (`pixel_values`, `input_ids` + `attention_mask`,
`input_values` + optional `attention_mask`) and carry `label` [B] and `valid` [B] (False on the
padding that completes the last batch).
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


# Per modality: (model, batch) -> (hidden_states [L+1, B, T, D], tokens to pool [B, T] bool).

def _vision(model, batch):
  out = model(batch['pixel_values'])
  _, b, t, _ = out['hidden_states'].shape
  # Patch tokens only: data2vec_vision's mean pooling leaves the cls token out.
  return out['hidden_states'], jnp.broadcast_to(jnp.arange(t) > 0, (b, t))


def _text(model, batch):
  mask = jnp.asarray(batch['attention_mask']).astype(bool)
  return model(batch['input_ids'], attention_mask=mask)['hidden_states'], mask


def _audio(model, batch):
  out = model(batch['input_values'], attention_mask=batch.get('attention_mask'))
  hidden = out['hidden_states']
  mask = out['padding_mask']  # frame level, True on valid frames
  if mask is None:
    mask = jnp.ones(hidden.shape[1:3], bool)
  return hidden, mask


FORWARD = {'vision': _vision, 'text': _text, 'audio': _audio}


def check_layers(num_hidden_layers, layer, num_layers):
  """Validates the (layer, num_layers) choice of a `pool` for an encoder of that depth.

  hidden_states has num_hidden_layers + 1 entries: 0 is the embeddings, -1 the last block.
  """
  count = num_hidden_layers + 1
  if not -count <= layer < count:
    raise ValueError(f'features.layer={layer} is not an index of the {count} hidden states '
                     f'(embeddings + {num_hidden_layers} blocks)')
  layer %= count
  if not 1 <= num_layers <= layer + 1:
    raise ValueError(f'features.num_layers={num_layers} must be in [1, {layer + 1}] for '
                     f'features.layer={layer}')


def pool(hidden_states, mask, layer, num_layers):
  """Mean over the masked-in tokens of the average of hidden_states[layer - num_layers + 1..layer].

  hidden_states: [L+1, B, T, D]; mask: [B, T] bool; layer may be negative. Returns float32 [B, D].
  """
  layer %= hidden_states.shape[0]
  h = hidden_states[layer - num_layers + 1:layer + 1].astype(jnp.float32).mean(0)
  m = mask.astype(jnp.float32)[..., None]
  return (h * m).sum(1) / jnp.maximum(m.sum(1), 1)


def feature_fn(graphdef, modality, layer, num_layers):
  """(encoder params as a pure dict, batch) -> pooled features [B, D] float32, for `jax.jit`."""
  forward = FORWARD[modality]

  def features(params, batch):
    hidden, mask = forward(nnx.merge(graphdef, params), batch)
    return pool(hidden, mask, layer, num_layers)

  return features


def raw_features(modality, batch):
  """The raw inputs as features (DATA.md's baselines): flattened pixels for vision."""
  if modality != 'vision':
    raise NotImplementedError(f'no raw-feature baseline for {modality} yet')
  pixels = np.asarray(batch['pixel_values'])
  return pixels.reshape(len(pixels), -1)


def extract(fn, batches, limit=0):
  """Runs fn(batch) -> [B, D] over `batches`; returns numpy (features [N, D], labels [N]).

  Keeps the valid examples only, and the first `limit` of them when limit > 0 (reading stops
  there). The forwards are dispatched asynchronously and fetched at the end.
  """
  outs, valids, labels, count = [], [], [], 0
  for batch in batches:
    valid = np.asarray(batch['valid'], bool)
    outs.append(fn(batch))
    valids.append(valid)
    labels.append(np.asarray(batch['label'])[valid])
    count += int(valid.sum())
    if 0 < limit <= count:
      break
  if not count:
    raise ValueError('no examples to extract features from')
  x = np.concatenate([np.asarray(o, np.float32)[v] for o, v in zip(outs, valids)])
  y = np.concatenate(labels)
  return (x[:limit], y[:limit]) if limit > 0 else (x, y)
