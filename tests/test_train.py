"""The trainer end to end on real Fashion-MNIST: learning, resume, and every config building."""
import json
import os
import time

import jax
import ml_collections
import numpy as np
import pytest

import train
from configs import audio, common, text, vision
from data2vec import checkpoint, metrics, optimizer, pretraining, tasks

CONFIGS = {'vision': vision, 'text': text, 'audio': audio}
FASHION_MNIST = os.path.join(common.DEFAULT_DATA_DIR, 'fashion_mnist', 'dataset.json')
needs_fashion_mnist = pytest.mark.skipif(
    not os.path.exists(FASHION_MNIST) and not os.environ.get('CI'),
    reason='run `python scripts/prepare_data.py vision` first')  # CI prepares it: never skipped


def micro_vision_config(**overrides):
  """The tiny vision recipe shrunk further so a step takes milliseconds."""
  config = vision.get_config('tiny')
  config.model.update(dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, patch_size=7))
  config.objective.top_k = 2
  config.masking.update(dict(num_masking_patches=8, min_num_patches=2, max_num_patches=16))
  config.batch_size = 16
  config.optimizer.warmup_steps = 2
  config.update(overrides)
  return config


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def restore(workdir, config):
  tx, _ = optimizer.from_config(config)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          jax.eval_shape(pretraining.init_state_fn(config, tx)))
  ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
  state, data_state = ckpt.restore(abstract)
  ckpt.close()
  data_state.pop('train_time')  # the run's clock: never equal between two runs
  return jax.device_get(state), data_state


@pytest.mark.parametrize('modality', sorted(CONFIGS))
@pytest.mark.parametrize('variant', common.VARIANTS)
def test_every_config_parses_and_builds(modality, variant):
  config = CONFIGS[modality].get_config(variant)
  for key in ('total_steps', 'batch_size', 'seed', 'log_every_steps', 'checkpoint_every_steps',
              'keep_checkpoints', 'data_dir', 'model', 'mesh'):
    assert key in config, key
  tx, _ = optimizer.from_config(config)
  # eval_shape: the base and large models are built without allocating their parameters.
  state = jax.eval_shape(pretraining.init_state_fn(config, tx))
  n = sum(np.prod(x.shape) for x in jax.tree.leaves(state['params']['encoder']))
  assert jax.tree.structure(state['teacher']) == jax.tree.structure(state['params']['encoder'])
  expected = {'tiny': (1e5, 5e6), 'base': (8e7, 1.3e8), 'large': (2.9e8, 3.6e8)}[variant]
  assert expected[0] < n < expected[1], n


def test_unknown_config_variant_is_rejected():
  with pytest.raises(ValueError, match='variant'):
    vision.get_config('huge')


@needs_fashion_mnist
def test_tiny_vision_pretraining_learns(tmp_path):
  """A short version of the tiny recipe: the loss falls and the targets do not collapse."""
  config = vision.get_config('tiny')
  config.total_steps = 120
  config.optimizer.warmup_steps = 12
  config.ema.tau_n = 120
  config.log_every_steps = 10
  config.checkpoint_every_steps = 120
  train.train_and_evaluate(config, str(tmp_path))
  logged = read_metrics(str(tmp_path))
  assert [m['step'] for m in logged] == list(range(10, 121, 10))
  first, last = logged[0], logged[-1]
  assert last['loss'] < 0.85 * first['loss'], (first['loss'], last['loss'])
  assert min(m['target_var'] for m in logged) > 0.5
  assert all(np.isfinite(m['grad_norm']) for m in logged)
  assert 0.55 < last['masked_fraction'] < 0.65  # 30 of 49 patches


def interrupt_and_rerun(config, workdir, *, batches):
  """train.py's run into `workdir`, interrupted when it asks for batch `batches` + 1, then the
  same command again, which resumes from the last checkpoint."""
  make_input = tasks.make_input

  def stopping_input(*args):
    data = make_input(*args)

    class Stopping:
      get_state, set_state = data.get_state, data.set_state
      fetched = 0

      def __next__(self):
        self.fetched += 1
        if self.fetched > batches:
          raise KeyboardInterrupt
        return next(data)

    return Stopping()

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(tasks, 'make_input', stopping_input)
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(config, workdir)
  train.train_and_evaluate(config, workdir)


def test_train_clock_excludes_paused_time_and_carries_over():
  clock = metrics.TrainClock(spent=(100.0, 50.0))
  before = clock.totals()
  with clock.paused():  # an evaluation: half a second of wall and CPU time, not counted
    end = time.perf_counter() + 0.5
    while time.perf_counter() < end:
      pass
  after = clock.totals()
  assert 100 <= before[0] and 50 <= before[1]
  assert after[0] - before[0] < 0.1 and after[1] - before[1] < 0.1
  assert set(clock.read()) == {'train_wall_s', 'train_cpu_s'}


@needs_fashion_mnist
def test_resume_continues_exactly(tmp_path):
  """N steps straight == N/2 steps, stop, rerun the same command for the rest."""
  straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
  config = micro_vision_config(total_steps=8, log_every_steps=1, checkpoint_every_steps=4)
  train.train_and_evaluate(config, straight)

  interrupt_and_rerun(config, split, batches=4)  # stopped after the step-4 checkpoint

  a, a_data = restore(straight, config)
  b, b_data = restore(split, config)
  assert int(a['step']) == int(b['step']) == 8
  assert a_data == b_data
  jax.tree.map(np.testing.assert_array_equal, a, b)
  losses = lambda w: [(m['step'], m['loss']) for m in read_metrics(w)]
  assert losses(straight) == losses(split)
  assert len(losses(split)) == 8
  # The training clock carries over the resume (the learning curves' time axis).
  for key in ('train_wall_s', 'train_cpu_s'):
    times = [m[key] for m in read_metrics(split)]
    assert all(0 < t0 < t1 for t0, t1 in zip(times, times[1:])), (key, times)


@needs_fashion_mnist
def test_workdir_files(tmp_path):
  config = micro_vision_config(total_steps=3, log_every_steps=1, checkpoint_every_steps=3)
  train.train_and_evaluate(config, str(tmp_path))
  saved = ml_collections.ConfigDict(json.load(open(tmp_path / 'config.json')))
  assert saved.model.hidden_size == 32 and saved.total_steps == 3
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path))
  keys = set(read_metrics(str(tmp_path))[0])
  assert {'step', 'loss', 'target_var', 'pred_var', 'lr', 'tau', 'grad_norm'} <= keys


def test_batch_size_must_divide_the_data_parallel_size(tmp_path):
  config = micro_vision_config(batch_size=12)  # 8 fake devices
  with pytest.raises(ValueError, match='batch_size=12'):
    train.train_and_evaluate(config, str(tmp_path))
