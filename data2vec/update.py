"""The update every train step ends with, shared by every task (pretraining and fine-tuning).

The state is a plain pytree {step, params, opt_state, rng} (+ teacher: an EMA of an encoder).
`apply_gradients` applies the optimizer, optional per-parameter learning-rate scales, the optional
EMA teacher update and the non-finite skip, and adds lr, grad_norm, param_norm (+ tau, skipped) to
the step's metrics.
"""
import jax
import jax.numpy as jnp
import optax


def keep_if_nonfinite(metrics, old, new):
  """(`old` where the step's loss, gradient or new parameter norm is not finite, else `new`;
  1.0 if so, else 0.0). Such a step keeps the previous state (the batch is still consumed) and is
  counted in `skipped` (config.skip_nonfinite)."""
  skip = ~(jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm']) &
           jnp.isfinite(metrics['param_norm']))
  return jax.tree.map(lambda o, n: jnp.where(skip, o, n), old, new), skip.astype(jnp.float32)


def apply_gradients(state, grads, metrics, *, tx, lr_schedule, skip_nonfinite, lr_scales=None,
                    teacher_update=None):
  """(the state after one update with `grads`, `metrics` with the update's added).

  lr_scales: a pytree like params of per-parameter learning-rate factors for this step (or None):
    a parameter whose scale is 0 gets no gradient (so no share of the clipping norm), no weight
    decay and no update.
  teacher_update: (num_updates, teacher, new params) -> (new teacher, tau), or None (no teacher):
    ema.teacher_update_fn.
  """
  step = state['step']
  if lr_scales is not None:
    grads = jax.tree.map(lambda g, s: jnp.where(s > 0, g, 0), grads, lr_scales)
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  if lr_scales is not None:
    updates = jax.tree.map(lambda u, s: u * s, updates, lr_scales)
  params = optax.apply_updates(state['params'], updates)
  new = dict(params=params, opt_state=opt_state)
  metrics = dict(metrics, lr=lr_schedule(step))
  if teacher_update is not None:
    new['teacher'], metrics['tau'] = teacher_update(step + 1, state['teacher'], params)
  metrics.update(grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(params))
  if skip_nonfinite:
    new, metrics['skipped'] = keep_if_nonfinite(metrics, {k: state[k] for k in new}, new)
  return dict(state, step=step + 1, **new), metrics


def make_step(loss_fn, *, tx, lr_schedule, skip_nonfinite, lr_scales=None, teacher_update=None):
  """train_step(state, batch) -> (state, metrics) for `jax.jit`: the gradient of
  loss_fn(params, teacher, batch, rng) -> (loss, metrics) at the state's params (teacher: the
  state's, None without one; rng: this step's), then `apply_gradients`. lr_scales: step -> the
  step's learning-rate scales, or None."""

  def train_step(state, batch):
    step = state['step']
    rng = jax.random.fold_in(state['rng'], step)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state['params'], state.get('teacher'), batch, rng)
    return apply_gradients(state, grads, dict(metrics, loss=loss), tx=tx,
                           lr_schedule=lr_schedule, skip_nonfinite=skip_nonfinite,
                           lr_scales=None if lr_scales is None else lr_scales(step),
                           teacher_update=teacher_update)

  return train_step
