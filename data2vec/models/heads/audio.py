"""Audio task heads, one-to-one with transformers' Data2VecAudio* classes (outputs and loss).

Each head holds its encoder as `data2vec_audio` (transformers' attribute name, so parameter paths
line up with the state-dict keys), takes `input_values` [B, L], `attention_mask` [B, L] (1 on valid
samples) and `labels`, and returns the encoder's dict plus `logits` and, with labels, `loss`.
`rng` (a PRNG key) enables dropout and layerdrop.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from data2vec.models.audio import AudioConfig, Data2VecAudioModel, feature_lengths, frame_mask
from data2vec.models.heads import common
from data2vec.models.layers import dense, dropout

CTC_REDUCTIONS = ('mean', 'sum', 'none')


def ctc_loss(logits, logit_lengths, labels, *, blank_id, reduction='mean', zero_infinity=False,
             ignore_index=-100):
  """transformers' ForCTCLoss (torch's ctc_loss) through optax.ctc_loss.

  logits [B, T, V]; logit_lengths [B] valid frames; labels [B, U], where ignore_index and blank_id
  entries are padding, dropped wherever they are. reduction: 'mean' (each loss divided by its
  target length, then the batch mean), 'sum' or 'none'. A target no alignment fits into its
  frames costs inf, or 0 with zero_infinity, as in torch.
  """
  if reduction not in CTC_REDUCTIONS:
    raise ValueError(f'ctc_loss_reduction={reduction!r} is not one of {CTC_REDUCTIONS}')
  labels = jnp.asarray(labels)
  keep = (labels != ignore_index) & (labels != blank_id)
  order = jnp.argsort(~keep, axis=-1, stable=True)  # kept labels first, in order
  labels, keep = jnp.take_along_axis(labels, order, -1), jnp.take_along_axis(keep, order, -1)
  target_lengths = keep.sum(-1)
  frames = jnp.arange(logits.shape[1])[None] >= jnp.asarray(logit_lengths)[:, None]
  losses = optax.ctc_loss(logits.astype(jnp.float32), frames.astype(jnp.float32),
                          jnp.where(keep, labels, 0), (~keep).astype(jnp.float32),
                          blank_id=blank_id)
  # optax returns a large finite cost where no path exists: a blank between repeated labels makes
  # the shortest path target length + repeats.
  repeats = jnp.sum((labels[:, 1:] == labels[:, :-1]) & keep[:, 1:], -1)
  feasible = target_lengths + repeats <= logit_lengths
  losses = jnp.where(feasible, losses, 0.0 if zero_infinity else jnp.inf)
  if reduction == 'mean':
    return jnp.mean(losses / jnp.maximum(target_lengths, 1))
  return jnp.sum(losses) if reduction == 'sum' else losses


class AMSoftmaxLoss(nnx.Module):
  """transformers' AMSoftmaxLoss: cosine logits against `weight` [D, num_labels], the margin
  subtracted at the label, scaled cross entropy."""

  def __init__(self, features, num_labels, *, rngs, scale=30.0, margin=0.4):
    self.scale, self.margin = scale, margin
    self.weight = nnx.Param(jax.random.normal(rngs.params(), (features, num_labels), jnp.float32))

  def __call__(self, x, labels):
    normalize = lambda v, axis: v / jnp.maximum(jnp.linalg.norm(v, axis=axis, keepdims=True), 1e-12)
    cos = normalize(x.astype(jnp.float32), 1) @ normalize(self.weight[...], 0)
    labels = jnp.asarray(labels).reshape(-1)
    onehot = jax.nn.one_hot(labels, cos.shape[1], dtype=bool)
    return common.cross_entropy(self.scale * jnp.where(onehot, cos - self.margin, cos), labels)


def _check_no_adapter(config, architecture):
  if config.add_adapter:
    raise ValueError(f'add_adapter=True: {architecture} does not support the adapter '
                     '(transformers refuses it too)')


def _init_encoder(head, config, rngs):
  """The encoder, and the layer weights that use_weighted_layer_sum reads its states with."""
  head.config = config
  head.data2vec_audio = Data2VecAudioModel(config, rngs=rngs)
  if config.use_weighted_layer_sum:
    n = config.num_hidden_layers + 1
    head.layer_weights = nnx.Param(jnp.full((n,), 1 / n, jnp.float32))


def _hidden(head, out):
  """The hidden states the classifiers read: the last, or the softmax(layer_weights)-weighted sum
  of all L+1 with use_weighted_layer_sum."""
  if not head.config.use_weighted_layer_sum:
    return out['last_hidden_state']
  w = jax.nn.softmax(head.layer_weights[...]).astype(out['hidden_states'].dtype)
  return jnp.einsum('l,lbtd->btd', w, out['hidden_states'])


class Data2VecAudioForCTC(nnx.Module):
  """Logits [B, T, vocab_size] per frame; CTC loss with pad_token_id as the blank, reduced by
  ctc_loss_reduction, ctc_zero_infinity. final_dropout before the LM head."""
  model_type = 'data2vec-audio'
  architecture = 'Data2VecAudioForCTC'

  def __init__(self, config: AudioConfig, *, rngs):
    if config.vocab_size is None or config.pad_token_id is None:
      raise ValueError(f'vocab_size={config.vocab_size}, pad_token_id={config.pad_token_id}: '
                       'CTC needs both (the pad token is the blank)')
    if config.ctc_loss_reduction not in CTC_REDUCTIONS:
      raise ValueError(f'ctc_loss_reduction={config.ctc_loss_reduction!r} is not one of '
                       f'{CTC_REDUCTIONS}')
    self.config = config
    self.data2vec_audio = Data2VecAudioModel(config, rngs=rngs)
    width = config.adapter_size if config.add_adapter else config.hidden_size
    self.lm_head = dense(width, config.vocab_size, config, rngs=rngs)

  def __call__(self, input_values, attention_mask=None, labels=None, *, rng=None):
    cfg = self.config
    keys = common.split_rng(rng, 2)
    out = self.data2vec_audio(input_values, attention_mask, rng=keys[0])
    out['logits'] = self.lm_head(dropout(out['last_hidden_state'], cfg.final_dropout, keys[1]))
    if labels is not None:
      if isinstance(labels, np.ndarray) and labels.max() >= cfg.vocab_size:
        raise ValueError(f'labels go up to {labels.max()}; vocab_size={cfg.vocab_size}')
      samples = (jnp.full(jnp.shape(input_values)[:1], jnp.shape(input_values)[1])
                 if attention_mask is None else jnp.sum(jnp.asarray(attention_mask), -1))
      out['loss'] = ctc_loss(out['logits'], feature_lengths(cfg, samples), labels,
                             blank_id=cfg.pad_token_id, reduction=cfg.ctc_loss_reduction,
                             zero_infinity=cfg.ctc_zero_infinity)
    return out


class Data2VecAudioForSequenceClassification(nnx.Module):
  """Projector -> mean over valid frames -> classifier: logits [B, num_labels]; cross entropy."""
  model_type = 'data2vec-audio'
  architecture = 'Data2VecAudioForSequenceClassification'

  def __init__(self, config: AudioConfig, *, rngs):
    _check_no_adapter(config, self.architecture)
    common.check_labels(config)
    _init_encoder(self, config, rngs)
    self.projector = dense(config.hidden_size, config.classifier_proj_size, config, rngs=rngs)
    self.classifier = dense(config.classifier_proj_size, common.num_labels(config), config,
                            rngs=rngs)

  def __call__(self, input_values, attention_mask=None, labels=None, *, rng=None):
    out = self.data2vec_audio(input_values, attention_mask, rng=rng)
    x = self.projector(_hidden(self, out))
    if attention_mask is None:
      pooled = x.mean(axis=1)
    else:
      valid = frame_mask(self.config, attention_mask, x.shape[1])[..., None]
      pooled = jnp.where(valid, x, 0).sum(axis=1) / valid.sum(axis=1).astype(x.dtype)
    out['logits'] = self.classifier(pooled)
    if labels is not None:
      out['loss'] = common.cross_entropy(out['logits'], jnp.asarray(labels).reshape(-1))
    return out


class Data2VecAudioForAudioFrameClassification(nnx.Module):
  """Logits [B, T, num_labels] per frame. labels [B, T, num_labels] (one-hot or scores): the loss
  is the cross entropy with their argmax, over every frame, padded ones included (transformers)."""
  model_type = 'data2vec-audio'
  architecture = 'Data2VecAudioForAudioFrameClassification'

  def __init__(self, config: AudioConfig, *, rngs):
    _check_no_adapter(config, self.architecture)
    common.check_labels(config)
    _init_encoder(self, config, rngs)
    self.classifier = dense(config.hidden_size, common.num_labels(config), config, rngs=rngs)

  def __call__(self, input_values, attention_mask=None, labels=None, *, rng=None):
    out = self.data2vec_audio(input_values, attention_mask, rng=rng)
    out['logits'] = self.classifier(_hidden(self, out))
    if labels is not None:
      n = common.num_labels(self.config)
      targets = jnp.argmax(jnp.asarray(labels).reshape(-1, n), axis=1)
      out['loss'] = common.cross_entropy(out['logits'].reshape(-1, n), targets)
    return out


class TDNNLayer(nnx.Module):
  """A dilated Conv1d (no padding) stored as transformers stores it, a Linear over the k frames
  concatenated; then ReLU."""

  def __init__(self, config: AudioConfig, layer_id, *, rngs):
    dims = config.tdnn_dim
    in_features = dims[layer_id - 1] if layer_id > 0 else dims[0]
    self.kernel_size = config.tdnn_kernel[layer_id]
    self.dilation = config.tdnn_dilation[layer_id]
    self.kernel = dense(in_features * self.kernel_size, dims[layer_id], config, rngs=rngs)

  def __call__(self, x):
    t = x.shape[1] - (self.kernel_size - 1) * self.dilation
    taps = [x[:, j * self.dilation:j * self.dilation + t] for j in range(self.kernel_size)]
    return jax.nn.relu(self.kernel(jnp.concatenate(taps, axis=-1)))


class Data2VecAudioForXVector(nnx.Module):
  """Projector -> TDNN layers -> mean and std over frames -> x-vector `embeddings` -> classifier
  `logits` [B, xvector_output_dim]; AMSoftmax loss against `objective.weight`."""
  model_type = 'data2vec-audio'
  architecture = 'Data2VecAudioForXVector'

  def __init__(self, config: AudioConfig, *, rngs):
    common.check_labels(config)
    if config.add_adapter and config.adapter_size != config.hidden_size:
      raise ValueError(f'output_hidden_size={config.output_hidden_size}: {self.architecture} '
                       'reads hidden_size features; the adapter must keep that size')
    if not len(config.tdnn_dim) == len(config.tdnn_kernel) == len(config.tdnn_dilation):
      raise ValueError(f'tdnn_dim={config.tdnn_dim}, tdnn_kernel={config.tdnn_kernel} and '
                       f'tdnn_dilation={config.tdnn_dilation} must have the same length')
    _init_encoder(self, config, rngs)
    self.projector = dense(config.hidden_size, config.tdnn_dim[0], config, rngs=rngs)
    self.tdnn = nnx.List([TDNNLayer(config, i, rngs=rngs) for i in range(len(config.tdnn_dim))])
    out_dim = config.xvector_output_dim
    self.feature_extractor = dense(2 * config.tdnn_dim[-1], out_dim, config, rngs=rngs)
    self.classifier = dense(out_dim, out_dim, config, rngs=rngs)
    self.objective = AMSoftmaxLoss(out_dim, common.num_labels(config), rngs=rngs)

  def __call__(self, input_values, attention_mask=None, labels=None, *, rng=None):
    cfg = self.config
    out = self.data2vec_audio(input_values, attention_mask, rng=rng)
    x = self.projector(_hidden(self, out))
    for layer in self.tdnn:
      x = layer(x)
    t = x.shape[1]
    if attention_mask is None:
      count = jnp.full((x.shape[0], 1, 1), t)
    else:
      # transformers' TDNN lengths ignore the dilation; frames past them are not counted.
      lengths = feature_lengths(cfg, jnp.sum(jnp.asarray(attention_mask), -1))
      for k in cfg.tdnn_kernel:
        lengths = lengths - k + 1
      count = jnp.minimum(lengths, t)[:, None, None]
    valid = jnp.arange(t)[None, :, None] < count
    mean = jnp.where(valid, x, 0).sum(1, keepdims=True) / count
    var = jnp.where(valid, (x - mean) ** 2, 0).sum(1) / (count[:, 0] - 1)  # unbiased, as torch
    out['embeddings'] = self.feature_extractor(jnp.concatenate([mean[:, 0], jnp.sqrt(var)], -1))
    out['logits'] = self.classifier(out['embeddings'])
    if labels is not None:
      out['loss'] = self.objective(out['logits'], labels)
    return out


HEADS = (Data2VecAudioForCTC, Data2VecAudioForSequenceClassification,
         Data2VecAudioForAudioFrameClassification, Data2VecAudioForXVector)
