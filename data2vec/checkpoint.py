"""Orbax checkpoints of the train state plus the data-iterator state.

Orbax writes each step into a temporary folder and renames it when complete, so a kill during a
save leaves the previous checkpoint as the latest. Restores always go against an abstract state
that carries the current shardings, so a checkpoint restores onto any mesh.
"""
import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:

  def __init__(self, workdir, *, keep):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=('state', 'data'),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self):
    return self._manager.latest_step()

  def save(self, step, state, data_state):
    """Starts an asynchronous save; device buffers are copied before this returns."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

  def restore(self, abstract_state, step=None):
    """Returns (state, data_state) of `step` (default: the latest)."""
    step = self.latest_step() if step is None else step
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored['state'], restored['data']

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()


def abstract_like(state):
  """ShapeDtypeStructs with the shardings of `state` (the restore target)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
