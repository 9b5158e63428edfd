"""Two processes x 4 CPU devices on localhost (jax.distributed, gloo collectives) train what one
process with 8 devices trains."""
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import train
from data2vec import sharding
from multihost_worker import multihost_config
from test_train import needs_fashion_mnist, read_metrics, restore

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'multihost_worker.py')
TIMEOUT_S = 420  # both processes together; a hung collective must not hang CI


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_two_processes(workdir, log_dir):
  """Runs the worker as processes 0 and 1; returns their outputs."""
  address = f'127.0.0.1:{free_port()}'
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_COORDINATOR_ADDRESS=address,
             JAX_COORDINATOR_BIND_ADDRESS=address, JAX_NUM_PROCESSES='2',
             # Compiled without LLVM's optimisations, in half the time.
             XLA_FLAGS='--xla_force_host_platform_device_count=4 '
                       '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false')
  logs = [os.path.join(log_dir, f'process_{i}.log') for i in range(2)]
  procs = []
  for i, log in enumerate(logs):
    with open(log, 'w') as f:
      procs.append(subprocess.Popen([sys.executable, WORKER, workdir], stdout=f,
                                    stderr=subprocess.STDOUT, env=dict(env, JAX_PROCESS_ID=str(i))))
  deadline = time.monotonic() + TIMEOUT_S
  try:
    # Until both exit, one fails (the other would wait for it until jax's own timeouts) or time
    # is up.
    while (any(p.poll() is None for p in procs) and not any(p.poll() for p in procs) and
           time.monotonic() < deadline):
      time.sleep(0.2)
  finally:
    for p in procs:
      p.kill()
      p.wait()
  outputs = []
  for log in logs:
    with open(log) as f:
      outputs.append(f.read())
  assert all(p.returncode == 0 for p in procs), '\n'.join(
      f'process {i} exited with {p.returncode}:\n{out[-3000:]}'
      for i, (p, out) in enumerate(zip(procs, outputs)))
  return outputs


def test_distributed_needs_asking_and_integer_settings(monkeypatch):
  monkeypatch.delenv('JAX_COORDINATOR_ADDRESS', raising=False)
  sharding.initialize_distributed(False)  # not asked: nothing happens
  assert not jax.distributed.is_initialized()
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', '127.0.0.1:1')
  monkeypatch.setenv('JAX_NUM_PROCESSES', 'two')
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two'"):
    sharding.initialize_distributed(False)


@needs_fashion_mnist
def test_two_processes_train_like_one(tmp_path):
  multi, single = str(tmp_path / 'multi'), str(tmp_path / 'single')
  outputs = run_two_processes(multi, str(tmp_path))
  for i, out in enumerate(outputs):
    assert f'process {i} of 2 trained' in out, out[-5000:]
  config = multihost_config()
  train.train_and_evaluate(config, single)

  logged = read_metrics(multi)  # process 0 alone writes the logs
  assert [m['step'] for m in logged] == [1, 2, 3, 4]
  assert sum(f.startswith('events.out.tfevents') for f in os.listdir(multi)) == 1
  for a, b in zip(logged, read_metrics(single)):
    np.testing.assert_allclose(a['loss'], b['loss'], rtol=1e-5, err_msg=f'step {a["step"]}')
  # Both processes wrote their shards of one checkpoint; it restores here on one device.
  a, a_data = restore(multi, config)
  b, b_data = restore(single, config)
  assert int(a['step']) == int(b['step']) == 4
  assert a_data == b_data
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5), a, b)
