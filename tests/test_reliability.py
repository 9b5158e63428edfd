"""Reliability: kills, preemption, damaged checkpoints, non-finite values, bad files.

The subprocess runs go through tests/reliability_train.py (train.py plus fault hooks) and are
bounded by timeouts; they share one uninterrupted in-process reference run.
"""
import glob
import io
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

import train
from data2vec import checkpoint, hf, metrics, tasks
from data2vec.input_pipeline import images
from data2vec.preparation import images as images_prep
from data2vec.models import vision as vision_model
from tests.reliability_train import faulty_input
from tests.test_train import micro_vision_config, needs_fashion_mnist, read_metrics, restore
from tests.test_vision_pipeline import _write_idx, prepare_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join(REPO, 'tests', 'reliability_train.py')
TIMEOUT = 240  # seconds for any one subprocess or wait: CI never hangs
# The run every interruption is compared with: 12 steps, checkpoints at 4, 8, 12.
RUN = dict(total_steps=12, checkpoint_every_steps=4, log_every_steps=1)


def micro_flags(run):
  """The command-line flags of micro_vision_config(**run)."""
  return ['--config', 'configs/vision.py:tiny', '--config.model.hidden_size=32',
          '--config.model.num_hidden_layers=2', '--config.model.num_attention_heads=2',
          '--config.model.intermediate_size=64', '--config.model.patch_size=7',
          '--config.objective.top_k=2', '--config.masking.num_masking_patches=8',
          '--config.masking.min_num_patches=2', '--config.masking.max_num_patches=16',
          '--config.batch_size=16', '--config.optimizer.warmup_steps=2',
          *(f'--config.{k}={v}' for k, v in run.items())]


FLAGS = micro_flags(RUN)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """An uninterrupted run of RUN: its workdir."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  train.train_and_evaluate(micro_vision_config(**RUN), workdir)
  return workdir


def test_flags_are_the_micro_config():
  config = micro_vision_config(**RUN)
  for flag in FLAGS[2:]:
    field, value = flag[len('--config.'):].split('=')
    got = config
    for key in field.split('.'):
      got = got[key]
    assert str(got) == value, flag


def popen(*args):
  return subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def start(workdir, *flags, run=RUN):
  """The micro run in `workdir` through the fault-injecting train.py."""
  return popen(HELPER, *micro_flags(run), '--workdir', workdir, *flags)


def finish(proc):
  """(return code, output) of a process, killed if it outlives TIMEOUT."""
  try:
    out, _ = proc.communicate(timeout=TIMEOUT)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, _ = proc.communicate()
    pytest.fail(f'timed out after {TIMEOUT} s:\n{out[-3000:]}')
  return proc.returncode, out


def wait_for(condition, proc, what):
  """Polls `condition()` until it holds; fails if the process ends first or TIMEOUT passes."""
  deadline = time.monotonic() + TIMEOUT
  while not condition():
    if proc.poll() is not None:
      pytest.fail(f'the run ended before {what}:\n{proc.stdout.read()[-3000:]}')
    if time.monotonic() > deadline:
      proc.kill()
      pytest.fail(f'no {what} after {TIMEOUT} s')
    time.sleep(0.02)


def logged_steps(workdir):
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line)['step'] for line in f if line.endswith('\n')]


def latest_step(workdir):
  ckpt = checkpoint.Checkpointer(workdir, keep=2, read_only=True)
  step = ckpt.latest_step()
  ckpt.close()
  return step


def tmp_entries(workdir):
  return glob.glob(os.path.join(workdir, 'checkpoints', '*tmp*'))


def assert_same_run(workdir, reference, run=RUN):
  """Final state, data state and every logged loss equal the uninterrupted run's, bit for bit."""
  config = micro_vision_config(**run)
  (a, a_data), (b, b_data) = restore(workdir, config), restore(reference, config)
  assert int(a['step']) == int(b['step']) == run['total_steps']
  assert a_data == b_data
  jax.tree.map(np.testing.assert_array_equal, a, b)
  losses = lambda w: [(m['step'], m['loss']) for m in read_metrics(w)]
  assert losses(workdir) == losses(reference)
  assert len(losses(workdir)) == run['total_steps']


# --- kill -9, SIGTERM and Ctrl-C ------------------------------------------------------------


@needs_fashion_mnist
def test_killed_or_preempted_at_any_moment_the_rerun_is_bit_identical(tmp_path, reference):
  """SIGKILL while a save commits, SIGTERM mid-run, SIGKILL mid-run, Ctrl-C mid-run; the same
  command each time."""
  workdir, marker = str(tmp_path / 'w'), str(tmp_path / 'hanging')
  last = lambda: (logged_steps(workdir) or [0])[-1]
  # 1. SIGKILL while committing the step-8 checkpoint: its files are written, not renamed.
  proc = start(workdir, '--hang_save_step=8', f'--marker={marker}')
  wait_for(lambda: os.path.exists(marker), proc, 'step-8 save')
  proc.send_signal(signal.SIGKILL)
  assert finish(proc)[0] == -signal.SIGKILL
  assert tmp_entries(workdir) and latest_step(workdir) == 4  # the partial 8 is not a checkpoint

  # 2. Resumes from 4. SIGTERM (preemption) mid-run: it finishes the step, saves it, exits 0.
  proc = start(workdir, '--step_delay=0.2')
  wait_for(lambda: last() <= 5, proc, 'the resume')  # it drops the metrics after step 4
  wait_for(lambda: last() >= 6, proc, 'step 6')
  proc.send_signal(signal.SIGTERM)
  code, out = finish(proc)
  assert code == 0, out[-3000:]
  saved = latest_step(workdir)
  assert 6 <= saved < RUN['total_steps'] and last() == saved  # the step it finished
  assert f'preempted: saved step {saved}' in out
  assert not tmp_entries(workdir)  # the leftover of the killed save is gone

  # 3. Resumes from there. SIGKILL mid-run, between saves.
  proc = start(workdir, '--step_delay=0.2')
  wait_for(lambda: last() > saved, proc, f'a step after {saved}')
  proc.send_signal(signal.SIGKILL)
  assert finish(proc)[0] == -signal.SIGKILL

  # 4. Ctrl-C mid-run: as SIGTERM (the step is finished and saved), then status 130 and one line.
  before = latest_step(workdir)
  proc = start(workdir, '--step_delay=0.2')
  wait_for(lambda: last() <= before, proc, 'the resume')  # phase 3 logged steps after it
  wait_for(lambda: last() > before, proc, f'a step after {before}')
  proc.send_signal(signal.SIGINT)
  code, out = finish(proc)
  saved = latest_step(workdir)
  assert code == 130 and 'Traceback' not in out, out[-3000:]
  assert last_line(out) == f'interrupted: saved step {saved}; rerun the same command to continue'
  assert before < saved < RUN['total_steps'] and last() == saved

  # 5. Runs to the end.
  code, out = finish(start(workdir))
  assert code == 0, out[-3000:]
  assert_same_run(workdir, reference)


@pytest.mark.slow
@needs_fashion_mnist
def test_kill_9_at_random_moments_then_the_rerun_is_bit_identical(tmp_path):
  """20 trials: a run with a checkpoint every step, SIGKILLed at a random moment (start-up, a
  step, a save, the metrics write), then the same command: each ends with the uninterrupted run's
  state and losses, bit for bit. Prints what each kill interrupted."""
  run = dict(total_steps=12, checkpoint_every_steps=1, log_every_steps=1)
  reference = str(tmp_path / 'reference')
  train.train_and_evaluate(micro_vision_config(**run), reference)
  rng = random.Random(20)
  report = []
  for trial in range(20):
    workdir = str(tmp_path / f'trial{trial}')
    last = lambda: (logged_steps(workdir) or [0])[-1]
    proc = start(workdir, '--step_delay=0.05', run=run)
    steps = rng.randrange(run['total_steps'] + 1)  # logged steps to wait for; 0: the start-up
    if steps:
      wait_for(lambda: last() >= steps, proc, f'step {steps}')
      time.sleep(rng.uniform(0, 0.1))
    else:
      deadline = time.monotonic() + rng.uniform(0, 15)  # imports, data, compile
      while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    metrics_file = os.path.join(workdir, 'metrics.jsonl')
    logs = open(metrics_file).read() if os.path.exists(metrics_file) else ''
    seen = dict(trial=trial, killed=killed, logged=last(),
                checkpoint=latest_step(workdir) if os.path.isdir(workdir) else None,
                save_in_progress=bool(tmp_entries(workdir)),
                cut_metrics_line=bool(logs) and not logs.endswith('\n'))
    code, out = finish(start(workdir, run=run))
    assert code == 0 and 'Traceback' not in out, (seen, out[-3000:])
    assert_same_run(workdir, reference, run)
    report.append(seen)
    shutil.rmtree(workdir)
  print('\n'.join(map(str, report)))
  assert sum(r['killed'] for r in report) >= 15  # most trials interrupted something


# --- Ctrl-C, skipped steps, metrics -------------------------------------------------------------


def test_a_cut_last_metrics_line_is_dropped_and_a_bad_one_named(tmp_path, caplog):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n{"step": 3, "lo')
  with caplog.at_level('WARNING'):
    metrics.MetricWriter(str(tmp_path), 10, start_step=2).close()
  assert path.read_text() == '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n'
  assert any('cut short' in r.getMessage() for r in caplog.records)
  path.write_text('{"step": 1, "loss": 1.0}\n{"st\n{"step": 2, "loss": 0.5}\n')
  with pytest.raises(ValueError, match=r'metrics\.jsonl, line 2: not a metrics record'):
    metrics.MetricWriter(str(tmp_path), 10, start_step=2)


def _nan_input(make_input, nan_steps):
  """`make_input` whose batches of `nan_steps` (a container of steps) have NaN pixels."""

  def make(config, local_batch_size):
    data = make_input(config, local_batch_size)

    class Nan:
      get_state, set_state = data.get_state, data.set_state

      def __next__(self):
        batch = next(data)
        if data.get_state()['next_index'] in nan_steps:  # the step this batch feeds
          batch = dict(batch, pixel_values=np.full_like(batch['pixel_values'], np.nan))
        return batch

    return Nan()

  return make


@needs_fashion_mnist
def test_a_run_that_skips_most_steps_stops(tmp_path):
  """skip_nonfinite: more than half of the last 20 steps skipped stops the run before saving;
  the window is checkpointed, so the rerun stops at the same step."""
  config = micro_vision_config(total_steps=40, checkpoint_every_steps=5, log_every_steps=5,
                               skip_nonfinite=True)
  make_input = tasks.make_input
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(tasks, 'make_input', _nan_input(make_input, range(4, 41)))  # 1-3 train
    for _ in range(2):
      with pytest.raises(FloatingPointError, match=r'^step 20: 17 of the last 20 updates were '
                         r'skipped .*latest checkpoint: step 15\)'):
        train.train_and_evaluate(config, str(tmp_path))
      assert latest_step(str(tmp_path)) == 15
    # A run shorter than the window: more than half of all its steps.
    patch.setattr(tasks, 'make_input', _nan_input(make_input, range(2, 5)))
    short = micro_vision_config(total_steps=4, checkpoint_every_steps=4, skip_nonfinite=True)
    with pytest.raises(FloatingPointError, match=r'^step 4: 3 of the 4 updates were skipped'):
      train.train_and_evaluate(short, str(tmp_path / 'short'))
    # A few bad batches are what skip_nonfinite is for.
    patch.setattr(tasks, 'make_input', _nan_input(make_input, range(2, 41, 3)))
    train.train_and_evaluate(config, str(tmp_path / 'some'))
  assert read_metrics(str(tmp_path / 'some'))[-1]['skipped'] == 13


# --- damaged checkpoints -----------------------------------------------------------------------


def _truncate(step_dir):
  for path in glob.glob(os.path.join(step_dir, 'state', '**', 'd', '*'), recursive=True):
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)


def _flip_bytes(step_dir):
  for path in glob.glob(os.path.join(step_dir, 'state', '**', 'd', '*'), recursive=True):
    data = bytearray(open(path, 'rb').read())
    data[len(data) // 2] ^= 0xFF
    open(path, 'wb').write(bytes(data))


def _swapped_state(step_dir):
  """The state of the step before: every file is valid, only the checksum can tell."""
  shutil.rmtree(os.path.join(step_dir, 'state'))
  shutil.copytree(os.path.join(os.path.dirname(step_dir), '1', 'state'),
                  os.path.join(step_dir, 'state'))


def _garbage_data_state(step_dir):
  with open(os.path.join(step_dir, 'data', 'metadata'), 'w') as f:
    f.write('{"next_in')


def _missing_state(step_dir):
  shutil.rmtree(os.path.join(step_dir, 'state'))


CORRUPTIONS = [_truncate, _flip_bytes, _swapped_state, _garbage_data_state, _missing_state]


def _tiny_state(step):
  return {'step': jnp.int32(step), 'w': jnp.arange(256, dtype=jnp.float32) * step,
          'rng': jax.random.PRNGKey(step)}


def _abstract():
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                      _tiny_state(0))


def _saved(workdir, steps):
  ckpt = checkpoint.Checkpointer(workdir, keep=3)
  for s in steps:
    ckpt.save(s, _tiny_state(s), {'next_index': s})
  ckpt.wait()
  return ckpt


# orbax leaves the reads of a failed restore unawaited: their errors are expected.
failed_reads = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


@failed_reads
@pytest.mark.parametrize('corrupt', CORRUPTIONS, ids=lambda f: f.__name__[1:])
def test_damaged_latest_checkpoint_falls_back_with_a_warning(tmp_path, corrupt, caplog):
  ckpt = _saved(tmp_path, (1, 2))
  corrupt(ckpt.path(2))
  with caplog.at_level('WARNING'):
    state, data = ckpt.restore(_abstract())
  assert int(state['step']) == 1 and data == {'next_index': 1}
  np.testing.assert_array_equal(state['w'], _tiny_state(1)['w'])
  warning, = [r.getMessage() for r in caplog.records if 'falling back' in r.getMessage()]
  assert ckpt.path(2) in warning
  assert corrupt is not _swapped_state or 'checksum' in warning
  # The damaged folder is set aside, so training can save step 2 again.
  assert ckpt.latest_step() == 1
  assert glob.glob(ckpt.path(2) + checkpoint.CORRUPT_SUFFIX + '*')
  ckpt.save(2, _tiny_state(2), {'next_index': 2})
  ckpt.wait()
  assert int(ckpt.restore(_abstract())[0]['step']) == 2
  ckpt.close()


@failed_reads
def test_a_reader_falls_back_without_renaming(tmp_path):
  _saved(tmp_path, (1, 2)).close()
  _truncate(os.path.join(tmp_path, 'checkpoints', '2'))
  reader = checkpoint.Checkpointer(tmp_path, keep=3, read_only=True)
  assert int(reader.restore(_abstract())[0]['step']) == 1
  assert reader.latest_step() == 2  # left for the writer to judge
  with pytest.raises(ValueError, match='checkpoints/2 does not restore'):
    reader.restore(_abstract(), step=2)


@failed_reads
def test_when_no_checkpoint_restores_nothing_is_renamed(tmp_path):
  ckpt = _saved(tmp_path, (1, 2))
  wrong = dict(_abstract(), w=jax.ShapeDtypeStruct((3,), jnp.float32))  # e.g. a changed config
  with pytest.raises(ValueError, match='no checkpoint in .* restores'):
    ckpt.restore(wrong)
  assert ckpt.latest_step() == 2 and not glob.glob(ckpt.path(2) + '.*')


def test_a_non_finite_state_is_never_saved(tmp_path):
  ckpt = _saved(tmp_path, (1,))
  bad = dict(_tiny_state(2), w=_tiny_state(2)['w'].at[3].set(jnp.inf))
  with pytest.raises(FloatingPointError, match='step 2: .*non-finite.*latest checkpoint: 1'):
    ckpt.save(2, bad, {'next_index': 2})
  ckpt.wait()
  assert ckpt.latest_step() == 1 and not tmp_entries(str(tmp_path))
  ckpt.close()


@needs_fashion_mnist
@pytest.mark.filterwarnings('error::pytest.PytestUnraisableExceptionWarning')  # orbax's reads
def test_training_resumes_from_the_checkpoint_before_a_truncated_one(tmp_path, reference, caplog):
  workdir = str(tmp_path / 'w')
  shutil.copytree(reference, workdir)  # checkpoints 8 and 12
  _truncate(os.path.join(workdir, 'checkpoints', '12'))
  with caplog.at_level('WARNING'):
    train.train_and_evaluate(micro_vision_config(**RUN), workdir)  # steps 9 to 12 again
  assert any(os.path.join(workdir, 'checkpoints', '12') in r.getMessage() and
             'falling back' in r.getMessage() for r in caplog.records)
  assert_same_run(workdir, reference)


# --- non-finite loss ---------------------------------------------------------------------------


@needs_fashion_mnist
def test_nan_loss_stops_before_saving_it(tmp_path):
  config = micro_vision_config(total_steps=8, checkpoint_every_steps=4, log_every_steps=4)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(tasks, 'make_input', faulty_input(tasks.make_input, 0, nan_step=6))
    # Every step is checked, not only the logged ones.
    with pytest.raises(FloatingPointError, match=r'^step 6: loss is nan'):
      train.train_and_evaluate(config, str(tmp_path))
  assert latest_step(str(tmp_path)) == 4
  state, _ = restore(str(tmp_path), config)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state) if x.dtype.kind == 'f')


@needs_fashion_mnist
def test_nan_loss_is_skipped_and_counted_when_configured(tmp_path):
  config = micro_vision_config(total_steps=4, checkpoint_every_steps=1, log_every_steps=1,
                               keep_checkpoints=4, skip_nonfinite=True)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(tasks, 'make_input', faulty_input(tasks.make_input, 0, nan_step=3))
    train.train_and_evaluate(config, str(tmp_path))
  logged = read_metrics(str(tmp_path))
  assert [m['skipped'] for m in logged] == [0, 0, 1, 1]
  assert np.isnan(logged[2]['loss']) and np.isfinite(logged[3]['loss'])
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=4, read_only=True)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          jax.device_put(restore(str(tmp_path), config)[0]))
  (s2, d2), (s3, d3) = ckpt.restore(abstract, 2), ckpt.restore(abstract, 3)
  assert (d2['skipped'], d3['skipped']) == (0, 1)
  assert int(s3['step']) == 3
  ckpt.close()
  for key in ('params', 'teacher', 'opt_state'):  # step 3 changed nothing
    jax.tree.map(np.testing.assert_array_equal, s2[key], s3[key])
  s4, _ = restore(str(tmp_path), config)  # step 4 updates again
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(s3['params']),
                                                      jax.tree.leaves(s4['params'])))


# --- bad files ---------------------------------------------------------------------------------


def last_line(out):
  return out.strip().splitlines()[-1]


def _npy_bytes():
  buf = io.BytesIO()
  np.save(buf, np.zeros((20, 28, 28), np.uint8))
  return buf.getvalue()


BAD_NPY = {
    'truncated': lambda: _npy_bytes()[:len(_npy_bytes()) // 2],
    'not_npy': lambda: b'GIF89a not an array at all' * 10,
    'empty_file': lambda: b'',
    'header_only': lambda: _npy_bytes()[:60],
}


def _tiny_fashion_mnist(data_dir):
  """A prepared image set named fashion_mnist (20 train, 3 test grey images): its folder."""
  splits = {'train': (np.zeros((20, 28, 28), np.uint8), np.zeros(20)),
            'test': (np.zeros((3, 28, 28), np.uint8), np.zeros(3))}
  return images_prep.prepare_arrays(data_dir=data_dir, name='fashion_mnist', splits=splits,
                                    classes=('a', 'b'), source='zeros')


@pytest.mark.parametrize('kind', sorted(BAD_NPY))
def test_bad_npy_file_is_named(tmp_path, kind):
  folder = _tiny_fashion_mnist(tmp_path)
  (folder / 'train_labels.npy').write_bytes(BAD_NPY[kind]())
  with pytest.raises(ValueError, match='train_labels.npy'):
    images.open_split(tmp_path, 'fashion_mnist', 'train')


def test_bad_data_set_files_are_named(tmp_path):
  folder = _tiny_fashion_mnist(tmp_path)
  shard = folder / 'train-00000.array_record'
  data = shard.read_bytes()
  shard.write_bytes(data[:len(data) // 2])  # a copy cut off
  with pytest.raises(ValueError, match='train-00000.array_record'):
    images.open_split(tmp_path, 'fashion_mnist', 'train')
  shard.unlink()
  with pytest.raises(ValueError, match='train-00000.array_record does not exist'):
    images.open_split(tmp_path, 'fashion_mnist', 'train')
  np.save(folder / 'test_labels.npy', np.zeros(2, np.int32))
  with pytest.raises(ValueError, match='3 records and 2 labels'):
    images.open_split(tmp_path, 'fashion_mnist', 'test')
  (folder / 'dataset.json').write_text('{"format": "images", "spl')
  with pytest.raises(ValueError, match='dataset.json: not a JSON file'):
    images.open_split(tmp_path, 'fashion_mnist', 'test')


def test_train_cli_names_a_corrupt_data_file_in_one_line(tmp_path):
  folder = _tiny_fashion_mnist(tmp_path / 'data')
  (folder / 'train_labels.npy').write_bytes(BAD_NPY['truncated']())
  workdir = tmp_path / 'w'
  code, out = finish(popen('train.py', *FLAGS, f'--config.data_dir={tmp_path / "data"}',
                           '--workdir', str(workdir)))
  assert code == 1 and 'Traceback' not in out, out[-3000:]
  assert last_line(out).startswith('ValueError: ') and 'train_labels.npy' in last_line(out)
  assert not os.path.exists(workdir)  # it stopped before writing anything


def test_idx_conversion_with_a_bad_file_writes_nothing(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {'train_images': rng.integers(0, 256, (5, 28, 28)), 'train_labels': np.arange(5),
            'test_images': rng.integers(0, 256, (2, 28, 28)), 'test_labels': np.arange(2)}
  for name, fname in prepare_data.FASHION_MNIST_FILES.items():
    _write_idx(tmp_path / fname, arrays[name])
  bad = tmp_path / prepare_data.FASHION_MNIST_FILES['test_labels']
  bad.write_bytes(b'not gzip at all')
  with pytest.raises(ValueError, match=bad.name):
    prepare_data.convert_fashion_mnist(tmp_path, tmp_path / 'out')
  assert not (tmp_path / 'out').exists() or not os.listdir(tmp_path / 'out')


# --- transformers folders ----------------------------------------------------------------------


@pytest.fixture(scope='module')
def hf_folder(tmp_path_factory):
  """A micro Data2VecVisionModel exported with save_pretrained."""
  cfg = vision_model.VisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, image_size=28, patch_size=7,
                                  num_channels=1)
  path = str(tmp_path_factory.mktemp('hf') / 'model')
  hf.save_pretrained(vision_model.Data2VecVisionModel(cfg, rngs=nnx.Rngs(0)), path)
  return path


def _edited_copy(src, dst, **changes):
  shutil.copytree(src, dst)
  with open(os.path.join(dst, 'config.json')) as f:
    config = json.load(f)
  config.update(changes)
  with open(os.path.join(dst, 'config.json'), 'w') as f:
    json.dump(config, f)
  return str(dst)


BAD_HF_CONFIGS = {
    'another_model_type': (dict(model_type='bert'), r"model_type='bert' is not one of"),
    'unknown_field': (dict(use_fancy_attention=True), r"\['use_fancy_attention'\] are not"),
    'both_position_biases': (dict(use_relative_position_bias=True,
                                  use_shared_relative_position_bias=True), 'choose per-layer'),
    'unknown_architecture': (dict(architectures=['Data2VecVisionForDepth']),
                             "architectures.*'Data2VecVisionForDepth'"),
    'bad_activation': (dict(hidden_act='swishy'), "hidden_act='swishy'"),
}


@pytest.mark.parametrize('case', sorted(BAD_HF_CONFIGS))
def test_unsupported_transformers_folder_is_refused(hf_folder, tmp_path, case):
  changes, message = BAD_HF_CONFIGS[case]
  with pytest.raises(ValueError, match=message):
    hf.load_pretrained(_edited_copy(hf_folder, tmp_path / 'x', **changes))


@needs_fashion_mnist
def test_import_cli_refuses_another_model_type_in_one_line(hf_folder, tmp_path):
  folder = _edited_copy(hf_folder, tmp_path / 'bert', model_type='bert')
  workdir = tmp_path / 'w'
  code, out = finish(popen('scripts/import_hf.py', '--hf', folder, '--workdir', str(workdir),
                           *FLAGS))
  assert code == 1 and 'Traceback' not in out, out[-3000:]
  assert "model_type='bert'" in last_line(out) and 'config.json' in last_line(out)
  assert latest_step(str(workdir)) is None


def test_export_failure_leaves_nothing_and_keeps_the_old_folder(hf_folder, tmp_path):
  model = hf.load_pretrained(hf_folder)
  out = tmp_path / 'out'

  def failing_save(tensors, path, **kwargs):
    with open(path, 'wb') as f:
      f.write(b'half')
    raise OSError(28, 'No space left on device')

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(safetensors.numpy, 'save_file', failing_save)
    with pytest.raises(OSError, match='No space'):
      hf.save_pretrained(model, str(out))
  assert os.listdir(tmp_path) == []  # no folder, no temporary sibling

  shutil.copytree(hf_folder, out)
  before = {f: (out / f).read_bytes() for f in os.listdir(out)}
  with pytest.raises(FileExistsError, match='not empty'):
    hf.save_pretrained(model, str(out))
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(safetensors.numpy, 'save_file', failing_save)
    with pytest.raises(OSError):
      hf.save_pretrained(model, str(out), overwrite=True)
  assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before
  assert os.listdir(tmp_path) == ['out']


def test_an_export_follows_the_umask(hf_folder, tmp_path):
  """Like every file the project writes: not mkdtemp's private 0700 folder."""
  model = hf.load_pretrained(hf_folder)
  out = tmp_path / 'out'
  previous = os.umask(0o027)
  try:
    hf.save_pretrained(model, str(out), extra_files={'notes.txt': 'x'})
  finally:
    os.umask(previous)
  assert stat.S_IMODE(out.stat().st_mode) == 0o750
  assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()} == {
      'config.json': 0o640, 'model.safetensors': 0o640, 'notes.txt': 0o640}
  with pytest.raises(FileExistsError, match='a_file is a file'):
    (tmp_path / 'a_file').write_text('kept')
    hf.save_pretrained(model, str(tmp_path / 'a_file'), overwrite=True)
  assert (tmp_path / 'a_file').read_text() == 'kept'


def test_export_cli_without_a_checkpoint_is_one_line(tmp_path):
  workdir = tmp_path / 'w'
  workdir.mkdir()
  (workdir / 'config.json').write_text(micro_vision_config().to_json())  # no checkpoint
  code, out = finish(popen('scripts/export_hf.py', '--workdir', str(workdir), '--out',
                           str(tmp_path / 'out')))
  assert code == 1 and 'Traceback' not in out, out[-3000:]
  assert 'holds no checkpoint' in last_line(out)
  assert not (tmp_path / 'out').exists()
