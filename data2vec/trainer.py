"""The train step of a run, built once (the task's step function, its shardings, the donation):
train.py runs it, scripts/benchmark.py times it, scripts/aot_memory.py compiles it abstractly."""
import dataclasses
from typing import Any, Callable

import jax

from data2vec import sharding, tasks


@dataclasses.dataclass(frozen=True)
class TrainStep:
  """task: the run's Task; abstract_state: ShapeDtypeStructs of the state with their shardings
  (the restore target); state_sharding: the state's shardings; step: the jitted
  (state, batch) -> (state, metrics), the state donated, the metrics replicated."""
  task: Any
  mesh: jax.sharding.Mesh
  logical_axis_rules: Any
  abstract_state: Any
  state_sharding: Any
  step: Callable

  def init(self):
    """The initial state (random init), on the mesh."""
    return jax.jit(self.task.init_state, out_shardings=self.state_sharding)()

  def compile(self, state, batch, compiler_options=None):
    """The step compiled for `batch`'s shapes (arrays or ShapeDtypeStructs). Traced under the
    mesh's logical axis rules, so that the activation sharding constraints apply."""
    with sharding.use_mesh(self.mesh, self.logical_axis_rules):
      return self.step.lower(state, batch).compile(compiler_options)


def build_train_step(config, mesh):
  """The TrainStep of `config` on `mesh` (nothing allocated)."""
  task = tasks.make(config)
  abstract = jax.eval_shape(task.init_state)
  state_sharding = sharding.state_shardings(abstract, task.graph_defs, task.tx, mesh,
                                            config.logical_axis_rules)
  step = jax.jit(task.train_step(abstract),
                 in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                 out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract, state_sharding)
  return TrainStep(task, mesh, config.logical_axis_rules, abstract, state_sharding, step)
