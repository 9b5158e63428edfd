r"""Benchmarks our data2vec train step against the same step on the transformers classes.

  python scripts/benchmark.py --modality vision,audio,text --size base --rounds 5 --out bench.json
  python scripts/benchmark.py --size base,tiny --pipeline vision,audio,text --out bench.json
  python scripts/benchmark.py --quick --out /tmp/bench.json  # smoke test: micro models
  python scripts/benchmark.py --algorithm v1,v2 --size tiny,base --notorch --out v2.json

Per modality and size: compile time (lower + compile), the median step time after --warmup
steps, examples/s, the model FLOPs per step (XLA cost analysis), the fraction of this
machine's peak matmul rate (measured in the same run), the compiled memory per device, and the
transformers step (sdpa attention, torch threads = the CPU threads XLA uses, the same process
and allocator settings) with the speedup theirs / ours. The two steps run in --rounds alternating
rounds of --steps timed steps each (after --warmup untimed ones, which absorb the cost of
switching frameworks), and the speedup is the median of the rounds' ratios: a shared machine's
speed drifts. --pipeline adds the batches/s the input pipeline delivers against the steps/s the
step consumes, and the step time when the pipeline feeds train.py's loop. Prints a table, and with
--out writes everything (step times, losses, memory, versions, GLIBC_TUNABLES) as JSON.

Batches are synthetic, with the config's masking: tiny at its recipe's batch, base and large at
CPU-sized SHAPES (--batch_size, --length override). --algorithm v2 measures data2vec 2.0
(configs/{modality}2.py): a step encodes `clone_batch` views per example, so the records give
student views per second and FLOPs per view beside examples; transformers has no 2.0 step to
compare with. --model KEY=VALUE measures a variant of
config.model (remat_policy, scan_layers, dtype, ...). CPU runs float32; on GPU the step computes in
bfloat16 with cuDNN attention (torch: bf16 autocast). --quick runs micro models without dropout,
so its JSON also gives the relative difference of our and the torch step's losses and gradient
norms from the same initial weights (the smoke test checks it).

On CPU, run with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (as for training): XLA:CPU allocates a
step's temporaries (GBs) afresh every step, and glibc maps them anew; in 2 MB pages instead of 4 KB
ones the ~1M page faults per base step become ~4k (docs/benchmark.md).
"""
import ast
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
import numpy as np

from configs import audio, audio2, text, text2, vision, vision2
from data2vec import atomic, benchmarking, cli, config_validation, sharding, tasks, trainer

CONFIGS = {('vision', 'v1'): vision, ('text', 'v1'): text, ('audio', 'v1'): audio,
           ('vision', 'v2'): vision2, ('text', 'v2'): text2, ('audio', 'v2'): audio2}
MODALITIES = ('vision', 'audio', 'text')
# CPU-sized (batch, length) of the big models, length = text tokens / audio samples (None: the
# config's). The recipes' batches are for clusters; tiny runs at its recipe's batch and length.
# A 2.0 example is clone_batch views (images 16, speech and text 8): fewer examples per step.
SHAPES = {('base', 'v1'): {'vision': (8, None), 'text': (4, 512), 'audio': (4, 80_000)},
          ('large', 'v1'): {'vision': (4, None), 'text': (2, 512), 'audio': (2, 80_000)},
          ('base', 'v2'): {'vision': (2, None), 'text': (1, 512), 'audio': (1, 80_000)},
          ('large', 'v2'): {'vision': (1, None), 'text': (1, 512), 'audio': (1, 80_000)}}
# --quick: micro models, short inputs, no dropout (so ours and theirs must give the same losses).
QUICK_MODEL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
QUICK = {
    'vision': dict(model=dict(image_size=28, patch_size=7),
                   masking=dict(num_masking_patches=8, min_num_patches=2, max_num_patches=16)),
    'text': dict(input=dict(max_length=32)),
    'audio': dict(model=dict(conv_dim=(16,) * 7, num_conv_pos_embedding_groups=2),
                  input=dict(min_sample_size=8000, max_sample_size=8000, crop_buckets=(8000,))),
}
# --quick data2vec 2.0: the images' masks are 2.0's (no v1 block sizes), a micro decoder.
QUICK2 = {'vision': dict(model=dict(image_size=28, patch_size=7)), 'text': QUICK['text'],
          'audio': QUICK['audio']}
QUICK2_DECODER = dict(dim=16, num_layers=2, groups=2, projection_hidden=0)
QUICK_FLAGS = dict(steps=2, rounds=2, warmup=1, batch_size=8, length=None, matmul_size=256,
                   pipeline_batches=4)
DROPOUTS = ('hidden_dropout', 'attention_dropout', 'activation_dropout', 'feat_proj_dropout',
            'drop_path_rate', 'layerdrop')
# The speed targets on the 2-core CPU in float32: speedup theirs / ours and peak fraction
# per (modality, size); pipeline batches/s over step/s for the tiny configs.
TARGETS = {('vision', 'base'): {'speedup_vs_torch': 1.5, 'peak_fraction': 0.55},
           ('audio', 'base'): {'speedup_vs_torch': 1.3},
           ('text', 'base'): {'speedup_vs_torch': 1.3}}
PIPELINE_TARGET = {'tiny': 3.0}
# data2vec 2.0's student views per second over data2vec's, same encoder, same run.
V2_TARGETS = {('vision', 'base'): 3.0}
FLOPS_METHOD = 'XLA cost analysis of the step lowered unrolled and without remat'
# Batches drawn before a pipeline is timed: more than its prefetch buffer (8), so that the timed
# batches are produced while timed.
PIPELINE_WARMUP = 16

_MODALITY = flags.DEFINE_list('modality', list(MODALITIES), 'Modalities to measure.')
_ALGORITHM = flags.DEFINE_list('algorithm', ['v1'], 'v1: data2vec (configs/{modality}.py); v2: '
                               'data2vec 2.0 (configs/{modality}2.py).')
_SIZE = flags.DEFINE_list('size', ['base'], 'Config variants: tiny, base, large.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed steps per round (the median of all is reported).')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Rounds of --steps of ours, then of torch\'s, in turn.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation and at the start '
                               'of every round.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', None, 'Global batch (default: SHAPES / config).')
_LENGTH = flags.DEFINE_integer('length', None, 'Text tokens / audio samples per example.')
_MODEL = flags.DEFINE_multi_string('model', [], 'config.model override KEY=VALUE, e.g. '
                                   'remat_policy=full or scan_layers=True (repeatable).')
_TORCH = flags.DEFINE_bool('torch', True, 'Also time the transformers reference step.')
_PIPELINE = flags.DEFINE_list('pipeline', [], 'Modalities whose input pipeline to measure.')
_PIPELINE_BATCHES = flags.DEFINE_integer('pipeline_batches', 50, 'Batches timed per pipeline.')
_MATMUL_SIZE = flags.DEFINE_integer('matmul_size', None, 'Peak matmul n (default 4096, GPU 8192).')
_OUT = flags.DEFINE_string('out', None, 'Write the results here as JSON.')
_QUICK = flags.DEFINE_bool('quick', False, f'Smoke test: micro models and {QUICK_FLAGS}.')


def parse_overrides(items):
  """['key=value', ...] -> {key: value}; values are Python literals, or else strings."""
  overrides = {}
  for item in items:
    key, sep, value = item.partition('=')
    if not sep or not key:
      raise app.UsageError(f'--model {item!r} is not KEY=VALUE')
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value
  return overrides


def make_config(modality, algorithm, size, overrides, *, quick, gpu):
  """The config of one measurement, checked as train.py checks it (batch size: `shape`)."""
  config = CONFIGS[modality, algorithm].get_config(size)
  if quick:
    config.model.update(QUICK_MODEL)
    for block, values in (QUICK if algorithm == 'v1' else QUICK2)[modality].items():
      config[block].update(values)
    if algorithm == 'v2':
      config.decoder.update(QUICK2_DECODER)
    config.model.update({k: 0.0 for k in DROPOUTS if k in config.model})
    config.objective.top_k = 2
    config.total_steps = 10  # with no warm-up, the first steps move the student at full rate
    config.optimizer.warmup_steps = 0
  if gpu:
    config.model.update(dict(dtype='bfloat16', attention_impl='cudnn'))
  try:
    config.model.update(overrides)
  except TypeError as e:
    raise app.UsageError(f'{modality} {size}: --model {overrides}: {e}') from e
  config.batch_size, length = shape(config, algorithm, size, quick)
  try:
    config_validation.validate(config)
  except ValueError as e:
    raise app.UsageError(f'{modality} {algorithm} {size}: {e}') from e
  return config, algorithm, size, length


def shape(config, algorithm, size, quick):
  """(global batch, length or None: the config's) of a measurement."""
  batch, length = ((None, None) if size == 'tiny' or quick
                   else SHAPES[size, algorithm][config.modality])
  length = None if config.modality == 'vision' else _LENGTH.value or length
  return _BATCH_SIZE.value or batch or config.batch_size, length


def environment(with_torch):
  env = {'backend': jax.default_backend(), 'device_kind': jax.devices()[0].device_kind,
         'num_devices': jax.device_count(), 'cpu_threads': benchmarking.cpu_threads(),
         'torch_threads': None, 'xla_flags': os.environ.get('XLA_FLAGS', ''),
         'argv': sys.argv[1:], 'versions': {'jax': jax.__version__},
         'glibc_tunables': os.environ.get('GLIBC_TUNABLES'), 'cpu': benchmarking.cpu_info()}
  if with_torch:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    env['torch_threads'] = torch.get_num_threads()
    env['versions'].update(torch=torch.__version__, transformers=transformers.__version__)
  return env


def torch_setup(backend):
  """The torch device and autocast dtype of the reference step on this backend."""
  import torch  # pylint: disable=g-import-not-at-top
  if backend == 'cpu':
    torch.set_num_threads(benchmarking.cpu_threads())  # as many threads as XLA uses
    return {'device': 'cpu', 'autocast_dtype': None}
  if backend == 'gpu' and torch.cuda.is_available():
    return {'device': 'cuda', 'autocast_dtype': torch.bfloat16}
  raise app.UsageError(f'the JAX backend is {backend} but torch cannot run there (CUDA build: '
                       f'{torch.cuda.is_available()}); pass --notorch')


def run_one(config, algorithm, size, length, *, peak, reference, quick):
  """Measures one (modality, algorithm, size); returns its JSON record."""
  modality, batch_size = config.modality, config.batch_size
  views = batch_size * config.masking.get('clone_batch', 1)  # student views per step
  if algorithm != 'v1':
    reference = None  # transformers has no data2vec 2.0 step
  logging.info('measuring %s %s %s, batch %d', modality, algorithm, size, batch_size)
  mesh = sharding.make_mesh(config.mesh)
  batch = benchmarking.synthetic_batch(config, batch_size, length)
  flops = benchmarking.model_flops(config, batch)
  ours_step = trainer.build_train_step(config, mesh)  # as train.py builds it
  state = ours_step.init()
  params = jax.device_get(state['params']) if reference else None
  n_params = sum(x.size for x in jax.tree.leaves(state['params']['encoder']))
  compiled, global_batch, ours = benchmarking.compile_ours(ours_step, state, batch)
  record = {'modality': modality, 'algorithm': algorithm, 'size': size, 'batch_size': batch_size,
            'views_per_step': views, 'flops_per_view': flops / views,
            'input_shapes': {k: list(v.shape) for k, v in batch.items()},
            'model': config.model.to_dict(), 'encoder_params': int(n_params),
            'flops_per_step': flops, 'ours': ours, 'torch': None, 'speedup_vs_torch': None}
  steps = {'ours': benchmarking.OursStep(compiled, state, global_batch)}
  del state  # donated: steps['ours'] holds the current one
  ours.update(benchmarking.warm_up(steps['ours'], _WARMUP.value),
              peak_rss_bytes=benchmarking.peak_rss_bytes())  # before torch is built
  if reference:
    steps['torch'] = benchmarking.torch_reference_step(config, batch, params, **reference)
    record['torch'] = benchmarking.warm_up(steps['torch'], _WARMUP.value)
  timed, record['speedup_vs_torch'] = benchmarking.interleaved(
      steps, calls=_STEPS.value, rounds=_ROUNDS.value, warmup=_WARMUP.value)
  ours.update(timed['ours'])
  ours['examples_per_s'] = batch_size / ours['step_s']
  ours['views_per_s'] = views / ours['step_s']
  ours['flops_per_s'] = flops / ours['step_s']
  ours['peak_fraction'] = ours['flops_per_s'] / (peak['flops_per_s'] * jax.device_count())
  if modality in _PIPELINE.value:  # after the timing, whose steps the torch step's must match
    data_iter = tasks.make_input(config, batch_size // jax.process_count())
    delivered = benchmarking.measure_pipeline(data_iter, batches=_PIPELINE_BATCHES.value,
                                              warmup=PIPELINE_WARMUP)
    with sharding.use_mesh(mesh, config.logical_axis_rules):
      _, fed_step_s = benchmarking.measure_fed(ours_step.step, steps['ours'].state, data_iter,
                                               mesh, steps=_STEPS.value, warmup=_WARMUP.value)
    record['pipeline'] = {'batches_per_s': delivered, 'steps_per_s': 1 / ours['step_s'],
                          'ratio': delivered * ours['step_s'], 'fed_step_s': fed_step_s}
  if reference:
    theirs = record['torch']
    theirs.update(timed['torch'], peak_rss_bytes=benchmarking.peak_rss_bytes())
    theirs['examples_per_s'] = batch_size / theirs['step_s']
    if quick:  # no dropout: the same weights and batch must give the same numbers
      record['torch_rel_diff'] = {
          k: float(np.max(np.abs(np.subtract(theirs[k], ours[k]) / np.asarray(ours[k]))))
          for k in ('loss', 'grad_norm')}
  return record


def targets(records):
  """The speed targets (TARGETS) against the rows they concern."""
  checks = []
  for r in records:
    if r['model']['dtype'] != 'float32':
      continue
    if r['algorithm'] == 'v2':
      v1 = [o for o in records if (o['modality'], o['size'], o['algorithm'], o['model']['dtype'])
            == (r['modality'], r['size'], 'v1', 'float32')]
      target = V2_TARGETS.get((r['modality'], r['size']))
      if v1 and target:
        ratio = r['ours']['views_per_s'] / v1[0]['ours']['views_per_s']
        checks.append(dict(modality=r['modality'], size=r['size'], metric='v2_views_per_s_vs_v1',
                           value=ratio, target=target, met=ratio >= target))
      continue
    for metric, target in TARGETS.get((r['modality'], r['size']), {}).items():
      value = r['ours'][metric] if metric in r['ours'] else r[metric]
      if value is not None:
        checks.append(dict(modality=r['modality'], size=r['size'], metric=metric, value=value,
                           target=target, met=value >= target))
    if 'pipeline' in r and r['size'] in PIPELINE_TARGET:
      checks.append(dict(modality=r['modality'], size=r['size'], metric='pipeline_ratio',
                         value=r['pipeline']['ratio'], target=PIPELINE_TARGET[r['size']],
                         met=r['pipeline']['ratio'] >= PIPELINE_TARGET[r['size']]))
  return checks


def table(results):
  env, peak = results['environment'], results['peak_matmul']
  cpu = env['cpu']
  lines = [f"CPU: {cpu['vendor']} {cpu['model']}, {cpu['cpus']} CPUs, {' '.join(cpu['features'])}",
           f"device: {env['device_kind']} x{env['num_devices']} ({env['backend']}), "
           f"{env['cpu_threads']} CPU threads, torch threads {env['torch_threads']}, "
           f"GLIBC_TUNABLES={env['glibc_tunables']}",
           f"peak matmul: {peak['n']}^3 {peak['dtype']}: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s "
           "per device", f'FLOPs: {FLOPS_METHOD}', '',
           f"{'modality':9}{'alg':4}{'size':6}{'batch':>6}{'compile s':>10}{'step s':>9}"
           f"{'ex/s':>8}{'views/s':>9}{'GFLOP':>9}{'% peak':>8}{'mem GiB':>9}{'rss GiB':>9}"
           f"{'torch s':>9}{'speedup':>9}"]
  for r in results['results']:
    ours, theirs = r['ours'], r['torch']
    mem = ours['memory_per_device_bytes']
    device_bytes = mem['argument'] + mem['output'] + mem['temp'] - mem['alias']
    torch_cols = (f"{theirs['step_s']:9.3f}{r['speedup_vs_torch']:8.2f}x" if theirs
                  else f"{'-':>9}{'-':>9}")
    lines.append(f"{r['modality']:9}{r['algorithm']:4}{r['size']:6}{r['batch_size']:6d}"
                 f"{ours['compile_s']:10.2f}{ours['step_s']:9.3f}"
                 f"{ours['examples_per_s']:8.2f}{ours['views_per_s']:9.2f}"
                 f"{r['flops_per_step'] / 1e9:9.2f}"
                 f"{100 * ours['peak_fraction']:7.1f}%{device_bytes / 2**30:9.2f}"
                 f"{ours['peak_rss_bytes'] / 2**30:9.2f}{torch_cols}")
  piped = [r for r in results['results'] if 'pipeline' in r]
  if piped:
    lines += ['', f"{'pipeline':9}{'size':6}{'batch':>6}{'batches/s':>11}{'steps/s':>9}"
                  f"{'ratio':>8}{'fed step s':>12}"]
    for r in piped:
      p = r['pipeline']
      lines.append(f"{r['modality']:9}{r['size']:6}{r['batch_size']:6d}{p['batches_per_s']:11.2f}"
                   f"{p['steps_per_s']:9.2f}{p['ratio']:7.1f}x{p['fed_step_s']:12.3f}")
  if results['targets']:
    lines.append('')
    for c in results['targets']:
      lines.append(f"target {c['modality']} {c['size']} {c['metric']}: {c['value']:.3g} "
                   f">= {c['target']}: {'met' if c['met'] else 'NOT MET'}")
  return '\n'.join(lines)


def write_json(path, data):
  """Atomically (data2vec/atomic.py), keys in the order measured."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  atomic.write_text(path, json.dumps(data, indent=2) + '\n')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  quick = _QUICK.value
  if quick:
    for name, value in QUICK_FLAGS.items():
      flags.FLAGS[name].value = value
  for name, values, allowed in (('modality', _MODALITY.value, MODALITIES),
                                ('algorithm', _ALGORITHM.value, ('v1', 'v2')),
                                ('size', _SIZE.value, ('tiny', 'base', 'large')),
                                ('pipeline', _PIPELINE.value, _MODALITY.value)):
    unknown = sorted(set(values) - set(allowed))
    if unknown:
      raise app.UsageError(f'--{name} {unknown}: not in {sorted(allowed)}')
  if _STEPS.value < 1 or _WARMUP.value < 0:
    raise app.UsageError(f'--steps={_STEPS.value} must be >= 1 and --warmup={_WARMUP.value} >= 0')
  backend = jax.default_backend()
  gpu = backend == 'gpu'
  overrides = parse_overrides(_MODEL.value)

  # Every config and pipeline (its files) is checked before anything is timed.
  runs = []
  for size in _SIZE.value:
    for modality in _MODALITY.value:
      for algorithm in _ALGORITHM.value:
        run = make_config(modality, algorithm, size, overrides, quick=quick, gpu=gpu)
        if modality in _PIPELINE.value:
          config = run[0]
          try:
            tasks.make_input(config, config.batch_size // jax.process_count())
          except (NotImplementedError, ValueError, OSError) as e:
            raise app.UsageError(f'--pipeline {modality} {algorithm} ({size}): {e}') from e
        runs.append(run)

  reference = torch_setup(backend) if _TORCH.value else None
  peak = benchmarking.peak_matmul(_MATMUL_SIZE.value or (8192 if gpu else 4096),
                                  jnp.bfloat16 if gpu else jnp.float32, repeats=5)
  results = {'environment': environment(reference is not None), 'peak_matmul': peak,
             'flops_method': FLOPS_METHOD, 'quick': quick, 'results': [], 'targets': []}
  for run in runs:
    results['results'].append(run_one(*run, peak=peak, reference=reference, quick=quick))
    if backend == 'cpu' and not quick:
      results['targets'] = targets(results['results'])
    if _OUT.value:  # after every measurement, so a long run that fails keeps what it measured
      write_json(_OUT.value, results)
  print(table(results))
  if _OUT.value:
    print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  cli.run(main)
