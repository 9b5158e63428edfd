"""The device mesh ('data', 'fsdp', 'tensor') from config, and the shardings of state and batch."""
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')


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
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def data_parallel_size(mesh):
  return mesh.shape['data'] * mesh.shape['fsdp']


def batch_sharding(mesh):
  """Leading (batch) axis split over data x fsdp; the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh):
  return NamedSharding(mesh, P())


def global_batch(local_batch, mesh):
  """This process's numpy batch -> one global jax.Array per leaf, sharded along the batch."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
