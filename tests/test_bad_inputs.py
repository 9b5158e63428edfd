"""Bad inputs to every command-line tool and to `data2vec.hf.load_pretrained`. One-line errors: data2vec/cli.py.

Each case of CASES runs in a fresh copy of one prepared folder (a trained micro vision workdir,
transformers folders good and damaged, a read-only folder, a plain file, ...), which is also the
working directory, and must: exit non-zero (or with the documented recovery), print no
traceback, end with a line naming the field or file, and leave every file that existed before
unchanged and nothing new (hashes of the whole tree before and after). The default run starts
only cases that fail before anything is compiled, a few at a time; SLOW_CASES compile or train.
"""
import collections
import concurrent.futures
import glob
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

import train
from data2vec import hf, workdirs
from data2vec.preparation import text as text_prep
from tests.test_reliability import FLAGS, RUN
from tests.test_train import micro_vision_config, needs_fashion_mnist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 240  # seconds for any one command
PARALLEL = 3  # commands at a time: most of their time is imports
CONFIGS = os.path.join(REPO, 'configs')
# The micro vision run of test_reliability, from any working directory.
MICRO = ['--config', os.path.join(CONFIGS, 'vision.py:tiny'), *FLAGS[2:]]
PROBE = os.path.join(CONFIGS, 'probe_vision.py')
TEXT_VOCAB = 300
# A micro text run on the world's tiny text set `docs` (text_data/).
TEXT = ['--config', os.path.join(CONFIGS, 'text.py:tiny'), '--config.model.hidden_size=32',
        '--config.model.num_hidden_layers=2', '--config.model.num_attention_heads=2',
        '--config.model.intermediate_size=64', f'--config.model.vocab_size={TEXT_VOCAB}',
        '--config.model.max_position_embeddings=34', '--config.input.max_length=32',
        '--config.objective.top_k=2', '--config.batch_size=8', '--config.data_dir={w}/text_data',
        '--config.input.dataset=docs', '--config.probe_every_steps=0']

# Root ignores permission bits: the commands run without the capabilities that let it
# (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so a read-only folder is one for them too.
_LAUNCH = '''import ctypes, os, sys
libc = ctypes.CDLL(None)
for cap in (1, 2):
  libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP; fails harmlessly without privileges
os.execv(sys.executable, [sys.executable] + sys.argv[1:])
'''

Case = collections.namedtuple('Case', 'name argv expect code changes', defaults=(1, ()))
# argv: a script (relative to the repository) or 'api' and its arguments; '{w}' is the case's
# folder. expect: a regular expression the last line of the output matches. code: the exit
# status. changes: paths (relative to {w}) the command may change or create (a recovery).

CASES = [
    # --- train.py
    Case('train_without_config', ['train.py', '--workdir', '{w}/new'],
         r'Flag --config must have a value'),
    Case('train_missing_config_file', ['train.py', '--config', 'nope/vision.py', '--workdir',
                                       '{w}/new'], r'--config: .*nope/vision\.py'),
    Case('train_missing_config_file_with_overrides',
         ['train.py', '--config', 'nope/vision.py', '--config.total_steps=3', '--workdir',
          '{w}/new'], r'nope/vision\.py.*No such file'),
    Case('train_unknown_variant', ['train.py', '--config', f'{CONFIGS}/vision.py:huge',
                                   '--workdir', '{w}/new'], r"config variant 'huge' is not one"),
    Case('train_unknown_config_key', ['train.py', *MICRO, '--config.optimizer.peak_lrr=1',
                                      '--workdir', '{w}/new'], r'unknown key: .*peak_lrr'),
    Case('train_rule_broken', ['train.py', *MICRO, '--config.objective.top_k=9', '--workdir',
                               '{w}/new'], r'^ConfigError: config\.objective\.top_k=9'),
    Case('train_peak_lr_inf', ['train.py', *MICRO, '--config.optimizer.peak_lr=inf',
                               '--workdir', '{w}/new'],
         r'^ConfigError: config\.optimizer\.peak_lr=inf: must be a finite number'),
    Case('train_tau_nan', ['train.py', *MICRO, '--config.ema.tau0=nan', '--workdir', '{w}/new'],
         r'^ConfigError: config\.ema\.tau0=nan: must be a finite number'),
    Case('train_model_eps_inf', ['train.py', *MICRO, '--config.model.layer_norm_eps=-inf',
                                 '--workdir', '{w}/new'], r'config\.model\.layer_norm_eps=-inf'),
    Case('train_empty_workdir', ['train.py', *MICRO, '--workdir='], r'--workdir is required'),
    Case('train_positional_argument', ['train.py', *MICRO, '--workdir', '{w}/new', 'extra'],
         r"unexpected arguments \['extra'\]"),
    Case('train_workdir_is_a_file', ['train.py', *MICRO, '--workdir', '{w}/a_file'],
         r'--workdir .*/a_file is a file'),
    Case('train_reuse_with_another_modality',
         ['train.py', '--config', f'{CONFIGS}/text.py:tiny', '--workdir', '{w}/vision_wd'],
         r'vision_wd holds a vision pretrain run \(variant tiny, hidden_size=32\); this config '
         r'is a text pretrain run'),
    Case('train_reuse_with_another_shape',
         ['train.py', *MICRO, '--config.model.hidden_size=64', '--workdir', '{w}/vision_wd'],
         r'vision_wd holds a vision pretrain run .* config\.model\.hidden_size=64 \(32 there\)\. '
         r'A rerun may change only run-time fields'),
    Case('train_reuse_with_another_learning_rate',
         ['train.py', *MICRO, '--config.optimizer.peak_lr=0.01', '--config.seed=3',
          '--workdir', '{w}/vision_wd'],
         r'config\.optimizer\.peak_lr=0\.01 \(0\.001 there\); config\.seed=3 \(0 there\)'),
    Case('train_garbage_workdir_config', ['train.py', *MICRO, '--workdir', '{w}/garbage_wd'],
         r'garbage_wd/config\.json: not a JSON file'),
    Case('train_missing_data_dir', ['train.py', *MICRO, '--config.data_dir={w}/no_data',
                                    '--workdir', '{w}/new'], r'no_data'),
    # Token ids beyond the vocabulary: found when the data is opened, not as NaN losses.
    Case('train_token_file_edited_after_preparation',
         ['train.py', *TEXT, '--config.input.dataset=edited', '--workdir', '{w}/new'],
         r'edited/train_tokens\.npy: the largest token id is 65535, dataset\.json records \d+'),
    Case('train_vocabulary_larger_than_the_model',
         ['train.py', *TEXT, '--config.model.vocab_size=280', '--workdir', '{w}/new'],
         r'config\.model\.vocab_size=280 but .*docs.* has 300'),
    Case('train_init_from_missing', ['train.py', *MICRO, '--config.init_from={w}/nothing',
                                     '--workdir', '{w}/new'], r"config\.init_from='.*/nothing'"),
    Case('train_init_from_garbage_weights',
         ['train.py', *MICRO, '--config.init_from={w}/hf_garbage_weights', '--workdir', '{w}/new'],
         r'hf_garbage_weights/model\.safetensors: not a readable safetensors file'),
    Case('train_init_from_workdir_without_checkpoint',
         ['train.py', *MICRO, '--config.init_from={w}/config_only_wd', '--workdir', '{w}/new'],
         r'config_only_wd: the workdir holds no checkpoint'),
    # --- eval.py
    Case('eval_missing_workdir', ['eval.py', '--config', PROBE, '--workdir', '{w}/nothing'],
         r'--workdir .*/nothing is not a folder'),
    Case('eval_workdir_without_config', ['eval.py', '--config', PROBE, '--workdir', '{w}/empty'],
         r'empty/config\.json does not exist'),
    Case('eval_wrong_modality', ['eval.py', '--config', os.path.join(CONFIGS, 'probe_audio.py'),
                                 '--workdir', '{w}/vision_wd'],
         r'vision_wd holds a vision encoder; the probe config is for audio'),
    Case('eval_garbage_hf_config', ['eval.py', '--config', PROBE, '--hf', '{w}/hf_garbage_config',
                                    '--out', '{w}/out'],
         r'hf_garbage_config/config\.json: not a JSON file'),
    Case('eval_missing_hf', ['eval.py', '--config', PROBE, '--hf', '{w}/nothing', '--out',
                             '{w}/out'], r'--hf .*/nothing is not a folder'),
    Case('eval_workdir_and_hf', ['eval.py', '--config', PROBE, '--workdir', '{w}/vision_wd',
                                 '--hf', '{w}/hf'], r'give exactly one of --workdir and --hf'),
    Case('eval_read_only_out', ['eval.py', '--config', PROBE, '--workdir', '{w}/vision_wd',
                                '--out', '{w}/read_only/eval'],
         r'--out .*/read_only/eval: cannot write in .*/read_only'),
    Case('eval_read_only_workdir', ['eval.py', '--config', PROBE, '--workdir', '{w}/read_only_wd'],
         r'--out .*/read_only_wd/eval: cannot write in'),
    Case('eval_out_is_a_file', ['eval.py', '--config', PROBE, '--workdir', '{w}/vision_wd',
                                '--out', '{w}/a_file'], r'--out .*/a_file: .* is a file'),
    Case('eval_empty_out', ['eval.py', '--config', PROBE, '--workdir', '{w}/vision_wd', '--out='],
         r'--out is empty'),
    Case('eval_missing_probe_config', ['eval.py', '--config', 'nope/probe.py', '--workdir',
                                       '{w}/vision_wd'], r'nope/probe\.py'),
    # --- scripts/export_hf.py
    Case('export_out_is_a_file', ['scripts/export_hf.py', '--workdir', '{w}/vision_wd', '--out',
                                  '{w}/a_file'], r'--out .*/a_file is a file'),
    Case('export_out_is_a_file_overwrite', ['scripts/export_hf.py', '--workdir', '{w}/vision_wd',
                                            '--out', '{w}/a_file', '--overwrite'],
         r'--out .*/a_file is a file'),
    Case('export_out_not_empty', ['scripts/export_hf.py', '--workdir', '{w}/vision_wd', '--out',
                                  '{w}/hf'], r'--out .*/hf is not empty; pass --overwrite'),
    Case('export_overwrite_another_folder',
         ['scripts/export_hf.py', '--workdir', '{w}/vision_wd', '--out', '{w}/notes',
          '--overwrite'], r'--out .*/notes holds no model weights'),
    Case('export_out_is_the_workdir',
         ['scripts/export_hf.py', '--workdir', '{w}/vision_wd', '--out', '{w}/vision_wd',
          '--overwrite'], r'--out .*/vision_wd is the workdir or holds it'),
    Case('export_out_holds_the_workdir',
         ['scripts/export_hf.py', '--workdir', '{w}/vision_wd', '--out', '{w}', '--overwrite'],
         r'is the workdir or holds it'),
    Case('export_missing_workdir', ['scripts/export_hf.py', '--workdir', '{w}/nothing', '--out',
                                    '{w}/out'], r'--workdir .*/nothing is not a folder'),
    Case('export_workdir_without_checkpoint',
         ['scripts/export_hf.py', '--workdir', '{w}/config_only_wd', '--out', '{w}/out'],
         r'config_only_wd/checkpoints holds no checkpoint'),
    Case('export_garbage_workdir_config',
         ['scripts/export_hf.py', '--workdir', '{w}/garbage_wd', '--out', '{w}/out'],
         r'garbage_wd/config\.json: not a JSON file'),
    Case('export_read_only_parent', ['scripts/export_hf.py', '--workdir', '{w}/vision_wd',
                                     '--out', '{w}/read_only/hf'],
         r'--out .*/read_only: cannot write in'),
    Case('export_empty_out', ['scripts/export_hf.py', '--workdir', '{w}/vision_wd', '--out='],
         r'--out and --workdir must name folders'),
    # --- scripts/import_hf.py
    Case('import_into_workdir_with_checkpoints',
         ['scripts/import_hf.py', '--hf', '{w}/hf', *MICRO, '--workdir', '{w}/vision_wd'],
         r'vision_wd already holds checkpoints \(latest: step 2\)'),
    Case('import_garbage_weights',
         ['scripts/import_hf.py', '--hf', '{w}/hf_garbage_weights', *MICRO, '--workdir',
          '{w}/new'], r'hf_garbage_weights/model\.safetensors: not a readable safetensors'),
    Case('import_truncated_weights',
         ['scripts/import_hf.py', '--hf', '{w}/hf_truncated_weights', *MICRO, '--workdir',
          '{w}/new'], r'hf_truncated_weights/model\.safetensors: not a readable safetensors'),
    Case('import_garbage_config',
         ['scripts/import_hf.py', '--hf', '{w}/hf_garbage_config', *MICRO, '--workdir', '{w}/new'],
         r'hf_garbage_config/config\.json: not a JSON file'),
    Case('import_missing_folder',
         ['scripts/import_hf.py', '--hf', '{w}/nothing', *MICRO, '--workdir', '{w}/new'],
         r'--hf .*/nothing is not a folder'),
    Case('import_empty_workdir', ['scripts/import_hf.py', '--hf', '{w}/hf', *MICRO, '--workdir='],
         r'--workdir and --hf must name folders'),
    # --- scripts/prepare_data.py (its own-data cases: tests/test_own_*.py)
    Case('prepare_images_missing_src',
         ['scripts/prepare_data.py', 'images', '--src', '{w}/no_images', '--name', 'x',
          '--data_dir', '{w}/data'], r'^prepare_data\.py: \w+Error: .*no_images'),
    Case('prepare_images_without_name',
         ['scripts/prepare_data.py', 'images', '--src', '{w}/empty', '--data_dir', '{w}/data'],
         r'^prepare_data\.py: ValueError: images --src needs --name', 1),
    Case('prepare_unknown_command', ['scripts/prepare_data.py', 'video'],
         r"argument what: invalid choice: 'video'", 2),
    # --- the other scripts: the same error path
    Case('aot_memory_missing_config', ['scripts/aot_memory.py', '--config', 'nope/vision.py'],
         r'nope/vision\.py'),
    Case('benchmark_unknown_modality', ['scripts/benchmark.py', '--modality', 'video'],
         r"^UsageError: --modality \['video'\]: not in"),
    Case('results_table_unknown_modality', ['scripts/results_table.py', '--modalities', 'video',
                                            '--out', '{w}/results.md'],
         r"^UsageError: --modalities: no results recipe for \['video'\]"),
    Case('probe_curves_unknown_modality',
         ['scripts/probe_curves.py', '--modality', 'video', '--root', '{w}/curves'],
         r"^UsageError: --modality \['video'\]: not in"),
    Case('probe_curves_bad_seed',
         ['scripts/probe_curves.py', '--seeds', '0,one', '--root', '{w}/curves'],
         r"^UsageError: --seeds \['one'\]: not non-negative integers"),
    Case('input_throughput_without_data_set', ['scripts/input_throughput.py'],
         r'^UsageError: name at least one data set'),
    # --- the Python API: the error names the file
    Case('api_garbage_config', ['api', '{w}/hf_garbage_config'],
         r'hf_garbage_config/config\.json: not a JSON file'),
    Case('api_config_not_an_object', ['api', '{w}/hf_list_config'],
         r'hf_list_config/config\.json: not a transformers config'),
    Case('api_garbage_weights', ['api', '{w}/hf_garbage_weights'],
         r'hf_garbage_weights/model\.safetensors: not a readable safetensors file'),
    Case('api_truncated_weights', ['api', '{w}/hf_truncated_weights'],
         r'hf_truncated_weights/model\.safetensors: not a readable safetensors file'),
    Case('api_garbage_pytorch_bin', ['api', '{w}/hf_garbage_bin'],
         r'hf_garbage_bin/pytorch_model\.bin: not a readable PyTorch state dict'),
    Case('api_no_weights', ['api', '{w}/empty'],
         r'empty has neither model\.safetensors nor pytorch_model\.bin'),
    Case('api_missing_folder', ['api', '{w}/nothing'], r'nothing is not a folder'),
]

# Cases that compile or train first: `-m slow`.
SLOW_CASES = [
    # A truncated latest checkpoint: a warning naming it, the one before is resumed (no traceback
    # of orbax's abandoned reads).
    Case('train_resume_past_a_damaged_checkpoint',
         ['train.py', *MICRO, '--config.total_steps=3', '--workdir', '{w}/damaged_wd'],
         r'step 3/3: ', 0, ('damaged_wd',)),
    # A kill during a write cut metrics.jsonl's last line: the resume drops it with a warning.
    Case('train_resume_after_a_cut_metrics_line',
         ['train.py', *MICRO, '--config.total_steps=3', '--workdir', '{w}/cut_metrics_wd'],
         r'step 3/3: ', 0, ('cut_metrics_wd',)),
    Case('train_rerun_changing_run_time_fields',
         ['train.py', *MICRO, '--config.total_steps=3', '--config.checkpoint_every_steps=3',
          '--config.keep_checkpoints=3', '--config.model.remat_policy=full',
          '--config.mesh.fsdp=2', '--workdir', '{w}/vision_wd'], r'step 3/3: ', 0, ('vision_wd',)),
    Case('import_another_architecture',
         ['scripts/import_hf.py', '--hf', '{w}/hf', *MICRO, '--config.model.num_hidden_layers=1',
          '--config.objective.top_k=1', '--workdir', '{w}/new'],
         r'does not match config\.model .*num_hidden_layers'),
    Case('export_missing_step', ['scripts/export_hf.py', '--workdir', '{w}/vision_wd', '--out',
                                 '{w}/out', '--step', '7'], r'vision_wd/checkpoints/7'),
]


def _write(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb' if isinstance(data, bytes) else 'w') as f:
    f.write(data)


@pytest.fixture(scope='module')
def world(tmp_path_factory):
  """The folder every case starts from (a copy of it)."""
  w = str(tmp_path_factory.mktemp('world') / 'w')
  os.makedirs(w)
  wd = os.path.join(w, 'vision_wd')  # MICRO's config but for run-time fields: steps 1 and 2
  train.train_and_evaluate(micro_vision_config(**dict(RUN, total_steps=2,
                                                      checkpoint_every_steps=1)), wd)
  good = os.path.join(w, 'hf')  # its encoder
  hf.save_pretrained(workdirs.restore_model(wd)[0], good)
  weights = open(os.path.join(good, 'model.safetensors'), 'rb').read()
  for name, files in {
      'hf_garbage_weights': {'model.safetensors': b'\x00garbage' * 100},
      'hf_truncated_weights': {'model.safetensors': weights[:len(weights) // 2]},
      'hf_garbage_config': {'config.json': '{"model_type": "data2vec-vis'},
      'hf_list_config': {'config.json': '[]'},
  }.items():
    shutil.copytree(good, os.path.join(w, name))
    for file, data in files.items():
      _write(os.path.join(w, name, file), data)
  _write(os.path.join(w, 'hf_garbage_bin', 'config.json'),
         open(os.path.join(good, 'config.json')).read())
  _write(os.path.join(w, 'hf_garbage_bin', 'pytorch_model.bin'), b'PK\x03\x04 not a zip')
  config_json = open(os.path.join(wd, 'config.json')).read()
  _write(os.path.join(w, 'config_only_wd', 'config.json'), config_json)
  _write(os.path.join(w, 'garbage_wd', 'config.json'), config_json[:100])
  _write(os.path.join(w, 'a_file'), 'a file the tools must not replace\n')
  _write(os.path.join(w, 'notes', 'notes.txt'), 'not an export\n')
  os.makedirs(os.path.join(w, 'empty'))
  shutil.copytree(wd, os.path.join(w, 'cut_metrics_wd'))
  with open(os.path.join(w, 'cut_metrics_wd', 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 3, "loss": 0.5')  # what a kill during a write leaves
  shutil.copytree(wd, os.path.join(w, 'damaged_wd'))
  for path in glob.glob(os.path.join(w, 'damaged_wd', 'checkpoints', '2', 'state', '**', 'd', '*'),
                        recursive=True):
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)
  docs = os.path.join(w, 'docs_src')  # a tiny text set, and a copy whose tokens were edited
  for i in range(12):
    _write(os.path.join(docs, f'{i}.txt'), '\n\n'.join(
        f'Document {i}.{j}: the quick brown fox jumps over the lazy dog {i * j} times.'
        for j in range(8)) + '\n')
  text_prep.prepare(src=docs, data_dir=os.path.join(w, 'text_data'), name='docs',
                    tokenizer=f'bpe:{TEXT_VOCAB}', val_fraction=0, test_fraction=0)
  shutil.copytree(os.path.join(w, 'text_data', 'docs'), os.path.join(w, 'text_data', 'edited'))
  tokens = np.load(os.path.join(w, 'text_data', 'edited', 'train_tokens.npy'))
  tokens[3] = np.iinfo(tokens.dtype).max  # an id no tokenizer of the set gave
  np.save(os.path.join(w, 'text_data', 'edited', 'train_tokens.npy'), tokens)
  shutil.copytree(wd, os.path.join(w, 'read_only_wd'))
  os.makedirs(os.path.join(w, 'read_only'))
  for folder in ('read_only', 'read_only_wd'):
    os.chmod(os.path.join(w, folder), 0o555)
  return w


def tree(root):
  """{relative path: (kind, mode, sha256)} of everything under `root`."""
  found = {}
  for folder, dirs, files in os.walk(root):
    for name in dirs + files:
      path = os.path.join(folder, name)
      info = os.lstat(path)
      digest = None
      if stat.S_ISREG(info.st_mode):
        with open(path, 'rb') as f:
          digest = hashlib.sha256(f.read()).hexdigest()
      found[os.path.relpath(path, root)] = (stat.S_IFMT(info.st_mode), info.st_mode & 0o7777,
                                            digest)
  return found


def _api(path):
  """load_pretrained(path) in this process: (exit status 1 with `Type: message`, or 0)."""
  try:
    hf.load_pretrained(path)
  except (ValueError, OSError) as e:
    return 1, f'{type(e).__name__}: {e}'
  return 0, 'loaded'


def _start(case, folder):
  argv = [a.replace('{w}', folder) for a in case.argv]
  if argv[0] == 'api':
    return _api(argv[1])
  proc = subprocess.run([sys.executable, '-c', _LAUNCH, os.path.join(REPO, argv[0]), *argv[1:]],
                        cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        timeout=TIMEOUT, check=False)
  return proc.returncode, proc.stdout


def run_case(case, world, root):
  """(exit status, output, tree before, tree after) of `case` in a copy of `world`."""
  folder = os.path.join(root, case.name)
  shutil.copytree(world, folder, symlinks=True)
  before = tree(folder)
  code, out = _start(case, folder)
  return code, out, before, tree(folder)


def check(case, code, out, before, after):
  lines = out.strip().splitlines()
  assert code == case.code, out[-3000:]
  assert 'Traceback' not in out, out[-3000:]
  last = lines[-1] if case.code else next(l for l in reversed(lines) if re.search(case.expect, l))
  assert re.search(case.expect, last), last
  allowed = lambda p: any(p == c or p.startswith(c + os.sep) for c in case.changes)
  changed = sorted(p for p in set(before) | set(after)
                   if before.get(p) != after.get(p) and not allowed(p))
  assert not changed, changed  # nothing that existed changed, nothing new


@pytest.fixture(scope='module')
def results(world, tmp_path_factory, request):
  """The outcome of every selected case of CASES, run PARALLEL at a time."""
  selected = [item.callspec.params['case'] for item in request.session.items
              if item.module.__name__ == __name__ and hasattr(item, 'callspec')
              and 'case' in item.callspec.params and item.originalname == 'test_bad_input']
  root = str(tmp_path_factory.mktemp('cases'))
  with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
    futures = {c.name: pool.submit(run_case, c, world, root) for c in selected}
  return {name: f.result() for name, f in futures.items()}


@needs_fashion_mnist
@pytest.mark.parametrize('case', CASES, ids=[c.name for c in CASES])
def test_bad_input(case, results):
  check(case, *results[case.name])


@pytest.mark.slow
@needs_fashion_mnist
@pytest.mark.parametrize('case', SLOW_CASES, ids=[c.name for c in SLOW_CASES])
def test_bad_input_that_compiles(case, world, tmp_path):
  check(case, *run_case(case, world, str(tmp_path)))


def test_the_table_covers_every_tool():
  names = [c.name for c in CASES + SLOW_CASES]
  assert len(set(names)) == len(names) and len(CASES) >= 40
  used = {c.argv[0] for c in CASES}
  assert {'train.py', 'eval.py', 'scripts/export_hf.py', 'scripts/import_hf.py',
          'scripts/prepare_data.py', 'api'} <= used
  assert {f'scripts/{f}' for f in os.listdir(os.path.join(REPO, 'scripts'))
          if f.endswith('.py')} <= used


def _main_block(path):
  with open(path) as f:
    source = f.read()
  head, _, block = source.partition("if __name__ == '__main__':")
  return head, block


@pytest.mark.parametrize('script', sorted(
    ['train.py', 'eval.py'] +
    [f'scripts/{f}' for f in os.listdir(os.path.join(REPO, 'scripts')) if f.endswith('.py')]))
def test_every_command_line_tool_goes_through_the_shared_error_path(script):
  head, block = _main_block(os.path.join(REPO, script))
  assert block, f'{script} has no __main__ block'
  assert re.search(r'^\s+cli\.run\(main\b', block, re.M), block
  assert 'app.run(' not in head + block and 'sys.exit(' not in block
