"""data2vec v1 pretraining: an EMA teacher on the full input, the student on the masked input.

The state is a plain pytree {step, params: {encoder, head}, teacher, opt_state, rng}; the step is
one function for `jax.jit` that merges the NNX graph definitions inside (docs/architecture.md).
`Task` is what train.py's loop runs (data2vec/tasks.py names the tasks).
"""
import jax
import jax.numpy as jnp
from flax import nnx

from data2vec import ema, objective, optimizer, update
from data2vec.evaluators import ridge
from data2vec.models import registry


def build_models(config, rngs):
  """The student encoder and the regression head of `config` (random init)."""
  cfg = registry.model_config(config)
  encoder = registry.MODELS[config.modality][1](cfg, rngs=rngs)
  obj = config.objective
  head = objective.RegressionHead(cfg.hidden_size, layers=obj.head_layers,
                                  pre_norm=obj.head_pre_norm, rngs=rngs)
  return encoder, head


def graph_defs(config, build=build_models):
  """The NNX graph definitions of the encoder and the second module that `build(config, rngs)`
  returns (v1: the regression head), no parameters allocated."""
  encoder, other = nnx.eval_shape(lambda: build(config, nnx.Rngs(0)))
  return nnx.graphdef(encoder), nnx.graphdef(other)


def init_state_fn(config, tx, build=build_models, other='head'):
  """A function () -> the initial train state, to run under `jax.jit(out_shardings=...)`: the
  params {encoder, `other`} of `build(config, rngs)`, the teacher an exact copy of the encoder."""

  def init_state():
    encoder, module = build(config, nnx.Rngs(config.seed))
    params = {'encoder': nnx.to_pure_dict(nnx.state(encoder)),
              other: nnx.to_pure_dict(nnx.state(module))}
    return dict(step=jnp.zeros((), jnp.int32), params=params, teacher=params['encoder'],
                opt_state=tx.init(params), rng=jax.random.PRNGKey(config.seed))

  return init_state


# Per modality: run teacher and student, return the student's final output at every position,
# the mask of positions with a loss, the teacher's per-layer outputs and the valid positions (None:
# no padding).

def _vision(student, teacher, batch, rng, target_layer):
  t = teacher(batch['pixel_values'])
  s = student(batch['pixel_values'], bool_masked_pos=batch['bool_masked_pos'], rng=rng)
  # Drop the cls token from both: the loss is on masked patches.
  return (s['last_hidden_state'][:, 1:], batch['bool_masked_pos'],
          objective.layer_outputs(t, target_layer)[:, :, 1:], None)


def _text(student, teacher, batch, rng, target_layer):
  # The teacher sees the uncorrupted sequence, not fairseq's padded copy (docs/algorithm.md
  # decision 1).
  t = teacher(batch['input_ids'], attention_mask=batch['attention_mask'])
  s = student(batch['masked_input_ids'], attention_mask=batch['attention_mask'], rng=rng)
  targets = objective.layer_outputs(t, target_layer)
  return s['last_hidden_state'], batch['target_mask'], targets, None


def _audio(student, teacher, batch, rng, target_layer):
  # The CNN and projection are shared: the teacher encodes the student's unmasked features.
  embed_rng = encode_rng = None
  if rng is not None:
    embed_rng, encode_rng = jax.random.split(rng)
  features, valid = student.embed(batch['input_values'], batch.get('attention_mask'),
                                    rng=embed_rng)
  s = student.encode(features, valid, batch['mask_time_indices'], rng=encode_rng)
  t = teacher.encode(jax.lax.stop_gradient(features), valid)
  mask = batch['mask_time_indices'] if valid is None else batch['mask_time_indices'] & valid
  return s['last_hidden_state'], mask, objective.layer_outputs(t, target_layer), valid


FORWARD = {'vision': _vision, 'text': _text, 'audio': _audio}


def make_train_step(config, encoder_def, head_def, tx, lr_schedule, copy_mask):
  """Returns train_step(state, batch) -> (state, metrics) for `jax.jit`."""
  obj, forward = config.objective, FORWARD[config.modality]

  def loss_fn(params, teacher_params, batch, rng):
    student = nnx.merge(encoder_def, params['encoder'])
    teacher = nnx.merge(encoder_def, teacher_params)
    head = nnx.merge(head_def, params['head'])
    x, mask, layers, valid = forward(student, teacher, batch, rng, obj.target_layer)
    targets = objective.make_targets(
        jax.lax.stop_gradient(layers), top_k=obj.top_k,
        layer_norm_targets=obj.layer_norm_targets,
        instance_norm_targets=obj.instance_norm_targets, post_layer_norm=obj.post_layer_norm,
        valid_mask=valid)
    pred = head(x).astype(jnp.float32)
    scale = obj.loss_scale if obj.loss_scale is not None else 1 / jnp.sqrt(pred.shape[-1])
    loss_sum, count = objective.regression_loss(pred, targets, mask, beta=obj.loss_beta,
                                                reduce_dims=obj.loss_reduce, scale=scale)
    # The mean over the masked positions of the *global* batch (docs/algorithm.md decision 6).
    loss = loss_sum / jnp.maximum(count, 1)
    metrics = {'target_var': objective.variance_stat(targets, mask),
               'pred_var': objective.variance_stat(pred, mask),
               'masked_fraction': count / mask.size}
    return loss, metrics

  return update.make_step(loss_fn, tx=tx, lr_schedule=lr_schedule,
                          skip_nonfinite=config.skip_nonfinite,
                          teacher_update=ema.teacher_update_fn(config.ema, copy_mask))



class Task:
  """What train.py runs to pretrain (the batches: tasks.make_input): the state and the graph
  definitions of its shardings, the step, where the encoder lies in the state (config.init_from,
  exports), the ridge probe and the collapse check. (finetuning.Task has the same members.)"""

  def __init__(self, config):
    self.config = config
    self.tx, self.lr_schedule = optimizer.from_config(config)
    self.graph_defs = dict(zip(('encoder', 'head'), graph_defs(config)))
    self.init_state = init_state_fn(config, self.tx)

  def train_step(self, abstract_state):
    """train_step(state, batch) -> (state, metrics), for `jax.jit`."""
    copy_mask = ema.copy_mask_for(abstract_state['teacher'], self.config.modality)
    return make_train_step(self.config, self.graph_defs['encoder'], self.graph_defs['head'],
                           self.tx, self.lr_schedule, copy_mask)

  @staticmethod
  def encoder_params(params):
    """The encoder's part of `params` (the student's)."""
    return params['encoder']

  @staticmethod
  def with_encoder(state, encoder):
    """`state` with `encoder` (parameters) as the student's and the teacher's encoder."""
    return dict(state, params=dict(state['params'], encoder=encoder), teacher=encoder)

  def model(self, params):
    """The nnx model a workdir of this task holds (export, evaluation): the student encoder."""
    return nnx.merge(self.graph_defs['encoder'], params['encoder'])

  def evaluator(self, mesh):
    """The ridge probe of the student encoder (state -> metrics), or None when off."""
    if not self.config.probe_every_steps:
      return None
    probe = ridge.RidgeProbe(self.config, self.graph_defs['encoder'], mesh)
    return lambda state: probe(state['params']['encoder'])

  def evaluate_at(self, step):
    return step % self.config.probe_every_steps == 0

  def check(self, step, metrics):
    """Raises on a collapse of targets or predictions (a logged step's host metrics)."""
    c = self.config
    objective.check_collapse(step, metrics['target_var'], metrics['pred_var'],
                             min_target_var=c.min_target_var, min_pred_var=c.min_pred_var,
                             after_step=c.collapse_after_step)
