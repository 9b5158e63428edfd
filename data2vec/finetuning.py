"""Fine-tuning a task head (a transformers Data2Vec*For* class) through train.py's loop.

The state is a plain pytree {step, params: {model}, opt_state, rng}: no teacher. `Task` gives
train.py the job-specific parts: labelled batches (input_pipeline/finetune.py), the head's state,
where its encoder lies (for config.init_from: data2vec/init_from.py), the step, and the periodic
evaluation (accuracy, or the character error rate of greedy CTC decoding). `export_files` serves
scripts/export_hf.py.

Per-parameter learning-rate scales (`lr_scales_fn`) carry the recipes' parameter groups: BEiT's
layer-wise decay (vision), the frozen CNN feature encoder and fairseq's freeze_finetune_updates,
during which only the head trains (audio). A parameter whose scale is 0 gets no gradient (so no
share of the clipping norm), no weight decay and no update.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from data2vec import optimizer, sharding, update
from data2vec.hf import audio as hf_audio
from data2vec.hf import preprocessors
from data2vec.hf import text as hf_text
from data2vec.hf import vision as hf_vision
from data2vec.input_pipeline import finetune as finetune_input
from data2vec.models import audio as audio_model
from data2vec.models import registry
from data2vec.models.heads import audio as audio_heads
from data2vec.models.heads import text as text_heads
from data2vec.models.heads import vision as vision_heads

# The heads fine-tuned per modality, by their transformers class name (config.head).
HEADS = {
    'vision': {c.architecture: c for c in (vision_heads.Data2VecVisionForImageClassification,)},
    'audio': {c.architecture: c for c in (audio_heads.Data2VecAudioForSequenceClassification,
                                          audio_heads.Data2VecAudioForCTC)},
    'text': {c.architecture: c for c in (text_heads.Data2VecTextForSequenceClassification,)},
}
# Where a head holds its encoder (transformers' attribute name).
PREFIX = {'vision': hf_vision.PREFIX, 'audio': hf_audio.PREFIX, 'text': hf_text.PREFIX}
CTC_HEAD = finetune_input.CTC_HEAD


def build_model(config, rngs):
  """The head of `config` (random init)."""
  return HEADS[config.modality][config.head](registry.model_config(config), rngs=rngs)


def init_state_fn(config, tx):
  """A function () -> the initial train state, to run under `jax.jit(out_shardings=...)`."""

  def init_state():
    params = nnx.to_pure_dict(nnx.state(build_model(config, nnx.Rngs(config.seed))))
    scale = config.get('head_init_scale', 1.0)  # BEiT multiplies the new head's init by 0.001
    params = {k: v if k == PREFIX[config.modality] else jax.tree.map(lambda x: x * scale, v)
              for k, v in params.items()}
    params = {'model': params}
    return dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                rng=jax.random.PRNGKey(config.seed))

  return init_state


def _path(key_path):
  return jax.tree_util.keystr(key_path, simple=True, separator='/')


def lr_scales_fn(config, params):
  """step -> a pytree like `params` ({'model': ...}) of learning-rate scales (module docstring).

  layer_decay (vision): optimizer.layer_decay_scales over the encoder's embeddings and blocks;
  freeze_feature_encoder (audio): 0 on the CNN; freeze_finetune_updates: 0 on the whole encoder
  before that many updates.
  """
  prefix = PREFIX[config.modality]
  num_layers = config.model.num_hidden_layers
  scales = optimizer.layer_decay_scales(params, num_layers=num_layers,
                                        decay=config.get('layer_decay', 1.0))
  frozen = f'^model/{prefix}/feature_extractor/' if config.get('freeze_feature_encoder') else None
  in_encoder = jax.tree_util.tree_map_with_path(
      lambda path, _: bool(re.match(f'model/{prefix}/', _path(path))), params)
  scales = jax.tree_util.tree_map_with_path(
      lambda path, s: np.zeros_like(s) if frozen and re.match(frozen, _path(path)) else s, scales)
  freeze_updates = config.get('freeze_finetune_updates', 0)

  def lr_scales(step):
    encoder_on = (step >= freeze_updates).astype(jnp.float32)
    return jax.tree.map(lambda s, enc: s * encoder_on if enc else jnp.asarray(s), scales,
                        in_encoder)

  return lr_scales


def make_train_step(config, model_def, tx, lr_schedule, lr_scales):
  """Returns train_step(state, batch) -> (state, metrics) for `jax.jit`."""
  frozen_cnn = config.get('freeze_feature_encoder', False)
  prefix = PREFIX[config.modality]

  def loss_fn(params, teacher, batch, rng):
    del teacher  # none: the labels are the targets
    if frozen_cnn:  # no backward pass through the CNN at all
      encoder = dict(params['model'][prefix])
      encoder['feature_extractor'] = jax.lax.stop_gradient(encoder['feature_extractor'])
      params = {'model': {**params['model'], prefix: encoder}}
    model = nnx.merge(model_def, params['model'])
    out = model(**batch, rng=rng)
    metrics = {}
    if config.head != CTC_HEAD:
      metrics['accuracy'] = jnp.mean(jnp.argmax(out['logits'], -1) == batch['labels'])
    return out['loss'], metrics

  return update.make_step(loss_fn, tx=tx, lr_schedule=lr_schedule,
                          skip_nonfinite=config.skip_nonfinite, lr_scales=lr_scales)


# ---------------------------------------------------------------- evaluation


def edit_distance(a, b):
  """Levenshtein distance between two sequences (insertions, deletions, substitutions)."""
  row = np.arange(len(b) + 1)
  for i, x in enumerate(a, 1):
    prev, row[0] = row.copy(), i
    for j, y in enumerate(b, 1):
      row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (x != y))
  return int(row[-1])


def character_error_rate(hypotheses, references):
  """Total edit distance over total reference characters, as the ASR literature counts it."""
  errors = sum(edit_distance(h, r) for h, r in zip(hypotheses, references))
  return errors / max(sum(len(r) for r in references), 1)


def ctc_texts(frame_ids, num_frames, vocab):
  """Greedy CTC decoding of argmax ids [B, T] with [B] valid frames -> B strings."""
  return [preprocessors.ctc_decode(ids[:n], vocab) for ids, n in zip(frame_ids, num_frames)]


def label_texts(labels, vocab):
  """CTC label ids [B, U] padded with IGNORE -> the B transcripts."""
  tokens = {i: ' ' if t == preprocessors.WORD_DELIMITER else t for t, i in vocab.items()}
  return [''.join(tokens[int(i)] for i in row if i != finetune_input.IGNORE) for row in labels]


class Evaluator:
  """state -> {'<split>_accuracy' | '<split>_cer': float} on config.eval_splits.

  Each call replicates the parameters, runs the data-parallel forward over every example of the
  splits and scores the gathered predictions on the host.
  """

  def __init__(self, config, model_def, mesh):
    self._ctc = config.head == CTC_HEAD
    self._vocab = finetune_input.ctc_vocab(config) if self._ctc else None
    local = config.eval_batch_size // jax.process_count()
    self._splits = {split: finetune_input.make_eval_dataset(
        config, split, batch_size=local, process_index=jax.process_index(),
        process_count=jax.process_count()) for split in config.eval_splits}
    self._mesh = mesh
    self._replicated = sharding.replicated(mesh)
    model_cfg = registry.model_config(config)

    def predict(params, batch):
      model = nnx.merge(model_def, params['model'])
      inputs = {k: v for k, v in batch.items() if k not in ('labels', 'valid')}
      ids = jnp.argmax(model(**inputs)['logits'], -1)
      if not self._ctc:
        return ids, None
      return ids, audio_model.feature_lengths(model_cfg, jnp.sum(batch['attention_mask'], -1))

    self._predict = jax.jit(predict, in_shardings=(self._replicated,
                                                   sharding.batch_sharding(mesh)))

  def __call__(self, state):
    # Gathered once and waited for, so the per-batch forwards need no collectives (as the ridge
    # probe: on CPU, programs with collectives in flight together can deadlock).
    params = jax.block_until_ready(jax.device_put(state['params'], self._replicated))
    metrics = {}
    for split, batches in self._splits.items():
      rows = []
      for batch in batches:
        on_mesh = sharding.global_batch(batch, self._mesh)
        ids, frames = self._predict(params, on_mesh)
        rows.append((ids, on_mesh['labels'], on_mesh['valid']) + ((frames,) if self._ctc else ()))
      gathered = multihost_utils.process_allgather(rows, tiled=True)
      ids, labels, valid, *frames = (np.concatenate(c) for c in zip(*gathered))
      if self._ctc:
        hyps = ctc_texts(ids[valid], frames[0][valid], self._vocab)
        metrics[f'{split}_cer'] = character_error_rate(hyps, label_texts(labels[valid],
                                                                         self._vocab))
      else:
        metrics[f'{split}_accuracy'] = float(np.mean(ids[valid] == labels[valid]))
    return metrics


# ---------------------------------------------------------------- train.py's job


class Task:
  """What train.py runs to fine-tune (the members of pretraining.Task)."""

  def __init__(self, config):
    self.config = config
    self.tx, self.lr_schedule = optimizer.from_config(config)
    self.graph_defs = {'model': nnx.graphdef(nnx.eval_shape(
        lambda: build_model(config, nnx.Rngs(0))))}
    self.init_state = init_state_fn(config, self.tx)
    self._prefix = PREFIX[config.modality]

  def encoder_params(self, params):
    """The encoder's part of `params` (the head's encoder)."""
    return params['model'][self._prefix]

  def with_encoder(self, state, encoder):
    """`state` with `encoder` (parameters) as the head's encoder."""
    return dict(state, params={'model': {**state['params']['model'], self._prefix: encoder}})

  def model(self, params):
    """The nnx model a workdir of this task holds (export, evaluation): the head."""
    return nnx.merge(self.graph_defs['model'], params['model'])

  def train_step(self, abstract_state):
    lr_scales = lr_scales_fn(self.config, abstract_state['params'])
    return make_train_step(self.config, self.graph_defs['model'], self.tx, self.lr_schedule,
                           lr_scales)

  def evaluator(self, mesh):
    return Evaluator(self.config, self.graph_defs['model'], mesh)

  def evaluate_at(self, step):
    every = self.config.eval_every_steps
    return step == self.config.total_steps or (every and step % every == 0)

  def check(self, step, metrics):
    del step, metrics  # no collapse to watch for: the labels anchor the features


def export_files(config, model_config):
  """The preprocessor files of an exported head: the modality's (preprocessors.export_files), for
  CTC a Wav2Vec2Processor whose tokenizer holds the character vocabulary."""
  if config.head == CTC_HEAD:
    return preprocessors.ctc_processor_files(finetune_input.ctc_vocab(config),
                                             sampling_rate=config.input.sample_rate)
  return preprocessors.export_files(config, model_config)
