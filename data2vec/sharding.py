"""The device mesh ('data', 'fsdp', 'tensor'), logical axis names, and the shardings they give.

Parameters carry logical axis names (`axes`, kept as NNX variable metadata) and activations are
constrained by name (`constrain`); `config.logical_axis_rules` maps each name to mesh axes. So the
same model runs data parallel, FSDP or tensor parallel by config alone, and the train state is
created, stepped and restored with the shardings `state_shardings` derives.
"""
import contextlib
import contextvars
import functools
import os

import jax
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')
# The residual stream [B, T, D] between Transformer layers.
ACTIVATION = ('act_batch', 'act_len', 'act_emb')

_RULES = contextvars.ContextVar('logical_axis_rules', default=None)


# ---------------------------------------------------------------- processes and mesh

def initialize_distributed(requested):
  """Joins a multi-process run when `requested` (config.distributed) or JAX_COORDINATOR_ADDRESS
  is set. Where no cluster (TPU, SLURM, ...) is auto-detected, JAX_NUM_PROCESSES and
  JAX_PROCESS_ID give the rest. Must run before anything touches a device."""
  if not (requested or os.environ.get('JAX_COORDINATOR_ADDRESS')):
    return
  if jax.distributed.is_initialized():
    return
  kwargs = {}
  for arg, var in (('num_processes', 'JAX_NUM_PROCESSES'), ('process_id', 'JAX_PROCESS_ID')):
    if os.environ.get(var):
      try:
        kwargs[arg] = int(os.environ[var])
      except ValueError:
        raise ValueError(f'{var}={os.environ[var]!r} is not an integer') from None
  # CPU processes then exchange collectives over TCP with gloo, jax 0.10's default
  # (jax_cpu_collectives_implementation).
  jax.distributed.initialize(**kwargs)
  logging.info('process %d of %d, %d local devices', jax.process_index(), jax.process_count(),
               jax.local_device_count())


def mesh_shape(mesh_config, num_devices):
  """Resolves the -1 entry (at most one) so that the product is the device count."""
  sizes = [int(mesh_config[a]) for a in AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f'config.mesh: at most one axis may be -1, got {dict(zip(AXES, sizes))}')
  known = int(np.prod([s for s in sizes if s != -1]))
  if known <= 0 or num_devices % known:
    raise ValueError(f'config.mesh {dict(zip(AXES, sizes))} does not divide {num_devices} devices')
  sizes = [num_devices // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f'config.mesh {dict(zip(AXES, sizes))} needs {int(np.prod(sizes))} devices, '
                     f'there are {num_devices}')
  return tuple(sizes)


def make_mesh(mesh_config, devices=None):
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  dp = shape[0] * shape[1]
  if dp % jax.process_count():
    raise ValueError(f'config.mesh {dict(zip(AXES, shape))} splits the batch {dp} ways (data x '
                     f'fsdp): not a multiple of the {jax.process_count()} processes, which each '
                     'feed their own slice of it')
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def data_parallel_size(mesh):
  return mesh.shape['data'] * mesh.shape['fsdp']


@contextlib.contextmanager
def use_mesh(mesh, rules):
  """`jax.set_mesh(mesh)` plus the logical axis rules `constrain` maps activations with.

  Enter it around whatever traces the model (the train step's `lower`); outside it `constrain`
  does nothing, so models run unchanged on one device, in tests and in export.
  """
  token = _RULES.set(rules_dict(rules))
  try:
    with jax.set_mesh(mesh):
      yield mesh
  finally:
    _RULES.reset(token)


# ---------------------------------------------------------------- logical axes

def axes(*names):
  """NNX variable metadata naming a parameter's dimensions, e.g.
  `nnx.Linear(..., kernel_metadata=axes('embed', 'mlp'))` or `nnx.Param(x, **axes('embed'))`.

  The one place that spells NNX's sharding metadata. eager_sharding=False: NNX would shard at
  creation, which needs a mesh; the state is sharded by `state_shardings` instead.
  """
  return {'out_sharding': names, 'eager_sharding': False}


def stacked(name='layers'):
  """`nnx.vmap(transform_metadata=...)` that names the axis a vmapped constructor adds."""
  return {nnx.PARTITION_NAME: name}


def rules_dict(rules):
  """config.logical_axis_rules ((logical name, mesh axis | (mesh axes) | None), ...) -> dict."""
  out = {}
  for rule in rules:
    if len(rule) != 2:
      raise ValueError(f'config.logical_axis_rules: {rule!r} is not a (logical name, mesh axes) '
                       'pair')
    name, mesh_axes = rule
    mesh_axes = () if mesh_axes is None else (
        (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes))
    if name in out:
      raise ValueError(f'config.logical_axis_rules names {name!r} twice')
    unknown = [a for a in mesh_axes if a not in AXES]
    if unknown:
      raise ValueError(f'config.logical_axis_rules: {rule!r} names mesh axes {unknown}; the mesh '
                       f'axes are {AXES}')
    out[name] = mesh_axes
  return out


@functools.lru_cache(maxsize=None)
def _log_not_divisible(name, size, axis, axis_size):
  logging.info('logical axis %r of size %d is not divisible by mesh axis %r (%d): not sharded '
               'along it', name, size, axis, axis_size)


def logical_to_spec(names, shape, mesh_axis_sizes, rules):
  """The PartitionSpec of an array whose dimensions have logical `names` (None: unnamed).

  Each dimension takes the mesh axes its rule lists, except those an earlier dimension took and
  those that do not divide it (logged): a 2-head table on a tensor axis of 8 stays whole.
  """
  if len(names) != len(shape):
    raise ValueError(f'logical axes {names} do not match the shape {shape}')
  used, spec = set(), []
  for name, size in zip(names, shape):
    if name is None:
      spec.append(None)
      continue
    if name not in rules:
      raise ValueError(f'logical axis {name!r} has no rule in config.logical_axis_rules '
                       f'(rules for {sorted(rules)})')
    kept, factor = [], 1
    for axis in rules[name]:
      if axis in used:
        continue
      if size % (factor * mesh_axis_sizes[axis]):
        _log_not_divisible(name, size, axis, mesh_axis_sizes[axis])
        continue
      kept.append(axis)
      factor *= mesh_axis_sizes[axis]
    used.update(kept)
    spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return P(*spec)


def constrain(x, names=ACTIVATION):
  """Constrains activation `x` to the mesh axes of its logical axis `names`; a no-op outside
  `use_mesh`."""
  rules, mesh = _RULES.get(), jax.sharding.get_abstract_mesh()
  if rules is None or mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, mesh.shape, rules))


def logical_axes(graphdef, params):
  """The logical axis names of every leaf of `params` (a pure dict of the module `graphdef`),
  as a pure dict of tuples; None for a parameter that carries none."""
  state = nnx.state(nnx.merge(graphdef, params))
  names = jax.tree.map(lambda v: v.get_metadata().get('out_sharding'), state,
                       is_leaf=lambda v: isinstance(v, nnx.Variable))
  return nnx.to_pure_dict(names)


# ---------------------------------------------------------------- shardings

def batch_sharding(mesh):
  """Leading (batch) axis split over data x fsdp; the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh):
  return NamedSharding(mesh, P())


def param_shardings(graphdef, params, mesh, rules):
  """NamedShardings of `params` (abstract or concrete pure dict of the module `graphdef`)."""
  rules = rules_dict(rules)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  names = treedef.flatten_up_to(logical_axes(graphdef, params))
  unnamed = [jax.tree_util.keystr(path, simple=True, separator='/')
             for (path, x), n in zip(leaves, names) if n is None and np.ndim(x)]
  if unnamed:
    logging.warning('parameters without logical axis names, replicated: %s', unnamed)
  return treedef.unflatten([
      NamedSharding(mesh, P() if n is None else logical_to_spec(n, np.shape(x), mesh.shape, rules))
      for (_, x), n in zip(leaves, names)])


def state_shardings(abstract_state, graphdefs, tx, mesh, rules):
  """NamedShardings of the train state {step, params, opt_state, rng} (+ teacher, pretraining).

  graphdefs: {name: NNX graph definition} for each entry of state['params'] (encoder, head; a
  fine-tune state has one, the model); their variable metadata hold the logical axis names. A
  teacher is sharded like the student's encoder and the optimizer's moments like their
  parameters; counters and the rng are replicated.
  """
  params = {k: param_shardings(graphdefs[k], v, mesh, rules)
            for k, v in abstract_state['params'].items()}
  repl = replicated(mesh)
  opt_state = optax.tree_map_params(tx, lambda _, s: s, abstract_state['opt_state'], params,
                                    transform_non_params=lambda _: repl)
  shardings = dict(step=repl, params=params, opt_state=opt_state, rng=repl)
  if 'teacher' in abstract_state:
    shardings['teacher'] = params['encoder']
  return shardings


def global_batch(local_batch, mesh):
  """This process's numpy batch -> one global jax.Array per leaf, sharded along the batch.

  Every process holds an equal slice; giving the global shape makes jax reject a mesh whose batch
  shards do not split across the processes that way, instead of mixing their data.
  """
  sharding = batch_sharding(mesh)
  n = jax.process_count()
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
      sharding, x, (x.shape[0] * n,) + x.shape[1:]), local_batch)
