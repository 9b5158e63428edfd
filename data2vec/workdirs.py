"""What readers of a training workdir need: the config it was trained with and its model."""
import json
import os

import jax
import ml_collections

from data2vec import checkpoint, tasks


def load_config(workdir):
  """The config a workdir was trained with (its config.json)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: is {workdir} a training workdir?')
  with open(path) as f:
    try:
      config = json.load(f)
    except ValueError as e:  # e.g. a file cut short
      raise ValueError(f'{path}: not a JSON file ({e})') from None
  if not isinstance(config, dict) or 'modality' not in config:
    raise ValueError(f'{path}: not the config.json of a training workdir (no modality)')
  return ml_collections.ConfigDict(config)


def restore_model(workdir, step=None):
  """(the model of a workdir's checkpoint (default: the latest) as an nnx model on one device,
  its step): a pretraining run's student encoder, a fine-tuning run's head."""
  config = load_config(workdir)
  task = tasks.make(config)
  ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints, read_only=True)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f'{ckpt.directory} holds no checkpoint')
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          jax.eval_shape(task.init_state))
  state, _ = ckpt.restore(abstract, step)
  ckpt.close()
  return task.model(state['params']), int(state['step'])
