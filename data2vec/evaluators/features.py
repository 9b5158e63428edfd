"""Frozen features: a jitted forward, hidden states of the chosen layers, mean-pooled over tokens;
and the raw-input baselines.

Batches use the transformers argument names (`pixel_values`, `input_ids` + `attention_mask`,
`input_values` + optional `attention_mask`) and carry `label` [B] and `valid` [B] (False on the
padding that completes the last batch).
"""
import jax
import jax.numpy as jnp
import numpy as np
import scipy.signal
from flax import nnx

from data2vec.input_pipeline import audio, labelled


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
  mask = out['valid_frames']  # frame level
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


# Speech baseline (docs/data.md): 25 ms Hann frames every 10 ms at 16 kHz, 40 HTK-mel bands.
LOG_MEL = dict(num_bands=40, frame_length=400, hop_length=160, fft_length=512)
MEL_FLOOR = 1e-6  # log(max(mel energy, floor)): digital silence stays finite
# Text baseline: the 2048 most frequent ids score 0.77 with every label; 4096 score 0.75
# (overfit) at twice the cost of the full-batch fit, 1024 score 0.76.
RAW_TEXT_IDS = 2048


def mel_filterbank(num_bands, fft_length, sample_rate):
  """[fft_length // 2 + 1, num_bands] triangles over the FFT bins, spaced evenly on the HTK mel
  scale from 0 Hz to the Nyquist frequency, each peaking at 1."""
  to_mel = lambda hz: 2595 * np.log10(1 + hz / 700)
  edges = 700 * (10 ** (np.linspace(0, to_mel(sample_rate / 2), num_bands + 2) / 2595) - 1)
  bins = np.linspace(0, sample_rate / 2, fft_length // 2 + 1)[:, None]
  lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
  return np.maximum(0, np.minimum((bins - lower) / (centre - lower),
                                  (upper - bins) / (upper - centre)))


def log_mel(wave, *, num_bands, frame_length, hop_length, fft_length,
            sample_rate=audio.SAMPLE_RATE):
  """[frames, num_bands] log mel energies of a float waveform (frames fully inside it)."""
  frames = np.lib.stride_tricks.sliding_window_view(wave, frame_length)[::hop_length]
  power = np.abs(np.fft.rfft(frames * scipy.signal.get_window('hann', frame_length),
                             fft_length)) ** 2
  mel = power @ mel_filterbank(num_bands, fft_length, sample_rate)
  return np.log(np.maximum(mel, MEL_FLOOR))


def raw_feature_fn(modality, input_config, data_dir):
  """batch -> the raw inputs as features [B, D] (numpy), the baselines of docs/data.md: vision the
  pixels; audio the mean and std over frames of 40 log-mel bands of the valid samples; text the
  bag of tokens: per example, the count of each of the RAW_TEXT_IDS ids most frequent in the
  train split (a vocabulary of the inputs, as TF-IDF's max_features; the probe's
  standardisation weighs the ids as IDF would)."""
  if modality == 'vision':
    return lambda batch: np.asarray(batch['pixel_values']).reshape(len(batch['pixel_values']), -1)
  if modality == 'audio':
    def audio_stats(batch):
      stats = []
      for wave, mask in zip(batch['input_values'], batch['attention_mask']):
        # At least one frame: the padding rows (valid=False) have no valid samples.
        bands = log_mel(wave[:max(mask.sum(), LOG_MEL['frame_length'])], **LOG_MEL)
        stats.append(np.concatenate([bands.mean(0), bands.std(0)]))
      return np.stack(stats).astype(np.float32)
    return audio_stats
  if modality == 'text':
    train = labelled.text_examples(data_dir, input_config.dataset, 'train',
                                   input_config.max_length)
    frequency = np.bincount(np.concatenate(train.ids), minlength=train.vocab.size)
    column = np.full(len(frequency), RAW_TEXT_IDS)  # other ids: an extra column, dropped
    frequent = np.argsort(-frequency, kind='stable')[:RAW_TEXT_IDS]  # a smaller vocabulary: all
    column[frequent] = np.arange(len(frequent))

    def bag_of_tokens(batch):
      ids, mask = np.asarray(batch['input_ids']), np.asarray(batch['attention_mask'])
      counts = np.zeros((len(ids), RAW_TEXT_IDS + 1), np.float32)
      np.add.at(counts, (np.arange(len(ids))[:, None], column[ids]), mask)
      return counts[:, :len(frequent)]
    return bag_of_tokens
  raise ValueError(f'modality={modality!r} has no raw-feature baseline')


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
