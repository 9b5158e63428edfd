"""One process of test_multihost.py's two-process run: trains `multihost_config()` in a workdir.

  JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=i \
      python tests/multihost_worker.py WORKDIR
"""
import os
import sys

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]

import jax  # pylint: disable=g-import-not-at-top
import train  # pylint: disable=g-import-not-at-top
from test_train import micro_vision_config  # pylint: disable=g-import-not-at-top


def multihost_config():
  """The micro vision run on a mesh that splits batch, parameters and heads across processes."""
  config = micro_vision_config(total_steps=4, log_every_steps=1, checkpoint_every_steps=4)
  config.mesh.update(dict(data=2, fsdp=2, tensor=2))
  # Each process reads every other record, so the global batch holds the single-process batch's
  # examples in another order: per-example randomness (drop path) would then differ.
  config.model.drop_path_rate = 0.0
  return config


if __name__ == '__main__':
  config = multihost_config()
  config.distributed = True
  train.train_and_evaluate(config, sys.argv[1])
  print(f'process {jax.process_index()} of {jax.process_count()} trained')
