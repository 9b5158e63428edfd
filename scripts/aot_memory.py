r"""AOT-compiles a config's train step for a mesh of fake CPU devices; prints per-device memory.

  python scripts/aot_memory.py --config configs/vision.py:base --num_devices 8 \
      [--config.mesh.data=1 --config.mesh.fsdp=-1 --config.batch_size=256]

Nothing is allocated: the state and the batch are abstract (shapes and shardings), the step is
lowered and compiled as train.py compiles it, and XLA's memory analysis of the compiled program is
printed per device: arguments (the state and batch shards), outputs, temporaries, and their peak.
"""
import os
import sys

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data2vec import cli, sharding, trainer  # pylint: disable=g-import-not-at-top
from data2vec.models import audio, registry  # pylint: disable=g-import-not-at-top

ANALYSIS_FIELDS = ('argument_size_in_bytes', 'output_size_in_bytes', 'alias_size_in_bytes',
                   'temp_size_in_bytes', 'generated_code_size_in_bytes')


def abstract_batch(config, mesh):
  """ShapeDtypeStructs of one global batch of `config`, sharded along the batch."""
  b, m = config.batch_size, config.model
  if config.modality == 'vision':
    shapes = {'pixel_values': ((b, m.num_channels, m.image_size, m.image_size), jnp.float32),
              'bool_masked_pos': ((b, (m.image_size // m.patch_size) ** 2), jnp.bool_)}
  elif config.modality == 'text':
    t = config.input.max_length
    shapes = {k: ((b, t), jnp.int32) for k in ('input_ids', 'attention_mask', 'masked_input_ids')}
    shapes['target_mask'] = ((b, t), jnp.bool_)
  elif config.modality == 'audio':  # clips cropped to max_sample_size: no padding mask
    n = config.input.max_sample_size
    frames = int(audio.feature_lengths(registry.model_config(config), n))
    shapes = {'input_values': ((b, n), jnp.float32), 'mask_time_indices': ((b, frames), jnp.bool_)}
  else:
    raise ValueError(f'config.modality={config.modality!r} is not vision, text or audio')
  s = sharding.batch_sharding(mesh)
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=s) for k, (shape, dtype) in shapes.items()}


def memory_per_device(config, mesh, compiler_options=None):
  """Compiles the train step of `config` on `mesh` from abstract inputs.

  Returns bytes per device: `state_bytes` (the train state's shards) and the fields of XLA's
  memory analysis (`ANALYSIS_FIELDS`). compiler_options: XLA options for `compile`.
  """
  train = trainer.build_train_step(config, mesh)
  state = train.abstract_state
  compiled = train.compile(state, abstract_batch(config, mesh), compiler_options)
  analysis = compiled.memory_analysis()
  state_bytes = sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
                    for x in jax.tree.leaves(state))
  return {'state_bytes': state_bytes, **{f: int(getattr(analysis, f)) for f in ANALYSIS_FIELDS}}


def main(argv):
  del argv
  jax.config.update('jax_platforms', 'cpu')
  jax.config.update('jax_num_cpu_devices', _NUM_DEVICES.value)
  config = _CONFIG.value
  mesh = sharding.make_mesh(config.mesh)
  stats = memory_per_device(config, mesh)
  mib = lambda n: f'{n / 2**20:,.1f} MiB'
  print(f'{config.modality} {config.variant}, global batch {config.batch_size}, mesh '
        f'{dict(mesh.shape)}: per device')
  print(f'  train state (params, teacher, Adam moments): {mib(stats["state_bytes"])}')
  for field in ANALYSIS_FIELDS:
    print(f'  {field.removesuffix("_in_bytes")}: {mib(stats[field])}')
  peak = (stats['argument_size_in_bytes'] + stats['output_size_in_bytes'] -
          stats['alias_size_in_bytes'] + stats['temp_size_in_bytes'])
  print(f'  peak (arguments + outputs - aliased + temporaries): {mib(peak)}')


if __name__ == '__main__':
  # Defined here, not on import: tests import this module next to train.py's --config.
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file.',
                                            lock_config=True)
  _NUM_DEVICES = flags.DEFINE_integer('num_devices', 8, 'Fake CPU devices to compile for.')
  flags.mark_flags_as_required(['config'])
  cli.run(main)
