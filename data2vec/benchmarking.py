"""The measurements behind scripts/benchmark.py.

Our step is built as train.py builds it and timed on a synthetic batch; the reference is the same
data2vec step on the transformers PyTorch classes; the peak is a large jitted matmul timed in the
same process. torch and transformers are imported only by the reference (test dependencies).
"""
import copy
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from data2vec import ema, masking, optimizer, sharding, tasks
from data2vec.hf import audio as hf_audio
from data2vec.hf import text as hf_text
from data2vec.hf import vision as hf_vision
from data2vec.hf import weights
from data2vec.models import audio as audio_model
from data2vec.models import registry

HF_MODULES = {'vision': hf_vision, 'text': hf_text, 'audio': hf_audio}
# The transformers submodules the targets come from: (the layer list, a layer's FFN output Linear).
TARGET_MODULES = {
    'vision': ('encoder.layer', 'output.dense'),
    'text': ('encoder.layer', 'output.dense'),
    'audio': ('encoder.layers', 'feed_forward.output_dense'),
}


def cpu_threads():
  """The CPUs this process may run on: XLA's CPU thread pool uses as many."""
  return len(os.sched_getaffinity(0))


# The ISA extensions that decide XLA:CPU's and torch's matmul kernels.
CPU_FEATURES = ('avx2', 'avx512f', 'avx512_bf16', 'amx_tile', 'amx_bf16')


def cpu_info(path='/proc/cpuinfo'):
  """{'model', 'vendor', 'cpus' (this process may use), 'features' (of CPU_FEATURES)} from
  /proc/cpuinfo (Linux); figures differ by CPU kind, so every benchmark names it."""
  fields = {}
  try:
    with open(path) as f:
      for line in f:
        key, sep, value = line.partition(':')
        if sep and key.strip() not in fields:  # the first processor's
          fields[key.strip()] = value.strip()
  except OSError:
    pass
  flags = set(fields.get('flags', '').split())
  return {'model': fields.get('model name'), 'vendor': fields.get('vendor_id'),
          'cpus': cpu_threads(), 'features': [f for f in CPU_FEATURES if f in flags]}


def peak_rss_bytes():
  """The peak resident memory of this process so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _times(run, calls):
  """Wall times of `calls` calls of run() (each must block until its work is done)."""
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return times


def peak_matmul(n, dtype, repeats):
  """This machine's matmul rate: the median time of a jitted [n, n] @ [n, n] on one device."""
  a, b = jax.random.normal(jax.random.PRNGKey(0), (2, n, n), dtype)
  matmul = jax.jit(jnp.matmul)
  times = _times(lambda: matmul(a, b).block_until_ready(), 2 + repeats)[2:]  # 2 warm-ups
  seconds = float(np.median(times))
  return {'n': n, 'dtype': jnp.dtype(dtype).name, 'time_s': seconds,
          'flops_per_s': 2 * n ** 3 / seconds}


def synthetic_batch(config, batch_size, length=None, seed=0):
  """A batch with the keys, shapes and masks (config.masking) that the modality's step takes:
  data2vec's one mask per example, or data2vec 2.0's `clone_batch` view masks [B, M, N].

  length: text tokens or audio samples (default: config.input.max_length / max_sample_size).
  """
  rng = np.random.default_rng(seed)
  m, views = config.model, config.masking.get('clone_batch')
  if config.modality == 'vision':
    grid = (m.image_size // m.patch_size,) * 2
    pixels = rng.normal(size=(batch_size, m.num_channels, m.image_size, m.image_size))
    if views:
      kw = {k: config.masking[k] for k in ('mask_prob', 'mask_length', 'mask_prob_adjust')}
      masks = [[masking.inverse_block_mask(rng, grid, **kw) for _ in range(views)]
               for _ in range(batch_size)]
    else:
      masks = [masking.block_mask(rng, grid, **config.masking) for _ in range(batch_size)]
    return {'pixel_values': pixels.astype(np.float32), 'bool_masked_pos': np.array(masks)}
  if config.modality == 'text':
    length = length or config.input.max_length
    mask_id = m.vocab_size - 1  # fairseq appends <mask> to the dictionary
    ids = rng.integers(4, mask_id, size=(batch_size, length)).astype(np.int32)
    ids[:, 0], ids[:, -1] = m.bos_token_id, m.eos_token_id
    valid = np.ones_like(ids)
    if views:
      masks = [[masking.token_view_mask(rng, row, config.masking.mask_prob) for _ in range(views)]
               for row in valid.astype(bool)]
      return {'input_ids': ids, 'attention_mask': valid, 'target_mask': np.array(masks)}
    rows = [masking.text_mask(rng, row, vocab_size=m.vocab_size, mask_id=mask_id,
                              pad_id=m.pad_token_id, special_ids=(m.bos_token_id, m.eos_token_id),
                              **config.masking) for row in ids]
    return {'input_ids': ids, 'attention_mask': valid,
            'masked_input_ids': np.stack([r[0] for r in rows]).astype(np.int32),
            'target_mask': np.stack([r[1] for r in rows])}
  if config.modality == 'audio':
    length = length or config.input.max_sample_size
    frames = int(audio_model.feature_lengths(registry.model_config(config), length))
    values = rng.normal(size=(batch_size, length)).astype(np.float32)
    if views:
      kw = {k: config.masking[k] for k in ('mask_prob', 'mask_length', 'masked_fraction')}
      masks = [[masking.speech_view_mask(rng, frames, **kw) for _ in range(views)]
               for _ in range(batch_size)]
      return {'input_values': values, 'mask_time_indices': np.array(masks)}
    return {'input_values': values,
            'mask_time_indices': masking.compute_mask_indices(rng, (batch_size, frames),
                                                              **config.masking)}
  raise ValueError(f'config.modality={config.modality!r} is not one of {sorted(HF_MODULES)}')


def model_flops(config, batch):
  """FLOPs of one step: XLA's cost analysis of the step lowered unrolled and without remat.

  A scanned stack would count its body once and remat would add recomputation, so the count is
  of the model, whatever `scan_layers` and `remat_policy` the measured step uses.
  """
  config = config.copy_and_resolve_references()
  config.model.update(dict(scan_layers=False, remat_policy='none'))
  task = tasks.make(config)
  abstract_state = jax.eval_shape(task.init_state)
  step_fn = task.train_step(abstract_state)
  abstract_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
  return float(jax.jit(step_fn).lower(abstract_state, abstract_batch).cost_analysis()['flops'])


def compile_ours(train, state, batch):
  """Compiles our step (a trainer.TrainStep) for `batch` (numpy): (compiled, global batch,
  timings and the compiled memory analysis per device)."""
  batch = sharding.global_batch(batch, train.mesh)
  start = time.perf_counter()
  compiled = train.compile(state, batch)
  compiled_at = time.perf_counter()
  memory = compiled.memory_analysis()
  memory = {k: getattr(memory, f'{k}_size_in_bytes')
            for k in ('argument', 'output', 'alias', 'temp', 'generated_code')}
  return compiled, batch, {'compile_s': compiled_at - start, 'memory_per_device_bytes': memory}


class OursStep:
  """step() -> (loss, grad_norm) of the compiled step, blocking; `state` carries over."""

  def __init__(self, compiled, state, batch):
    self.compiled, self.state, self.batch = compiled, state, batch

  def __call__(self):
    self.state, metrics = self.compiled(self.state, self.batch)
    return float(metrics['loss']), float(metrics['grad_norm'])  # waits for the step


def warm_up(step, calls):
  """Untimed calls of step(); returns their wall times and metrics."""
  logged = []
  times = _times(lambda: logged.append(step()), calls)
  return {'warmup_times_s': times, 'warmup_metrics': logged}


def interleaved(steps, *, calls, rounds, warmup):
  """Times step() callables {name: step} in alternation: per round, `warmup` untimed calls, then
  `calls` timed calls, of each in turn, so that the drift of a shared machine weighs on every step
  alike.

  The untimed calls absorb the cost of switching frameworks: after a torch step the next XLA
  step's allocations come from the gigabytes torch freed into glibc's heap and it takes 1-3 s
  longer (vision base: 3.7 s -> 4.6-7.3 s, gone after malloc_trim); the torch step too runs
  slower first. A training run of either pays neither.

  Returns {name: {'step_s': median of every timed call, 'round_step_s': median per round,
  'times_s' and 'round_warmup_times_s': [[per round]], 'loss', 'grad_norm'}} (the metrics of
  every call) and, with 'ours' and 'torch' among the names, the speedup: the median over rounds
  of the rounds' torch / ours ratios.
  """
  records = {name: {'round_warmup_times_s': [], 'times_s': [], 'loss': [], 'grad_norm': []}
             for name in steps}
  for _ in range(rounds):
    for name, step in steps.items():
      record = records[name]
      metrics = []
      run = lambda: metrics.append(step())  # pylint: disable=cell-var-from-loop
      record['round_warmup_times_s'].append(_times(run, warmup))
      record['times_s'].append(_times(run, calls))
      record['loss'] += [m[0] for m in metrics]
      record['grad_norm'] += [m[1] for m in metrics]
  for record in records.values():
    record['step_s'] = float(np.median(np.concatenate(record['times_s'])))
    record['round_step_s'] = [float(np.median(t)) for t in record['times_s']]
  speedup = None
  if {'ours', 'torch'} <= set(records):
    speedup = float(np.median(np.divide(records['torch']['round_step_s'],
                                        records['ours']['round_step_s'])))
  return records, speedup


def measure_pipeline(data_iter, *, batches, warmup):
  """Batches per second that the free-running iterator delivers, after `warmup` batches."""
  for _ in range(warmup):
    next(data_iter)
  start = time.perf_counter()
  for _ in range(batches):
    next(data_iter)
  return batches / (time.perf_counter() - start)


def measure_fed(train_step, state, data_iter, mesh, *, steps, warmup):
  """Seconds per step of train.py's loop fed by the pipeline: dispatch without blocking, so the
  host prepares the next batch while the step runs. The jitted step recompiles on new shapes."""
  for _ in range(warmup):
    state, _ = train_step(state, sharding.global_batch(next(data_iter), mesh))
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, _ = train_step(state, sharding.global_batch(next(data_iter), mesh))
  jax.block_until_ready(state)
  return state, (time.perf_counter() - start) / steps


def _hf_keys(flags, rows, num_layers):
  """The transformers keys of the leaves where `flags` (a bool tree like our params) is True."""
  leaves = jax.tree_util.tree_flatten_with_path(flags)[0]
  flat = {jax.tree_util.keystr(p, simple=True, separator='/'): f for p, f in leaves}
  keys = set()
  for row in rows:
    if row.ours is not None and flat[row.ours]:
      keys.update([row.theirs.format(i=i) for i in range(num_layers)] if '{i}' in row.theirs
                  else [row.theirs])
  return keys


def _head_rows(objective):
  """Our RegressionHead's parameters <-> the torch head's (a ModuleDict of the same names)."""
  rows = weights.norm('norm', 'norm') if objective.head_pre_norm else []
  if objective.head_layers == 2:
    rows += weights.linear('hidden', 'hidden')
  return rows + weights.linear('proj', 'proj')


def _load(module, tensors):
  """Loads numpy `tensors` into every parameter of a torch module (buffers keep their values)."""
  import torch  # pylint: disable=g-import-not-at-top
  result = module.load_state_dict({k: torch.tensor(v) for k, v in tensors.items()}, strict=False)
  missing = {n for n, _ in module.named_parameters()} & set(result.missing_keys)
  if missing or result.unexpected_keys:
    raise ValueError(f'{type(module).__name__}: parameters not loaded {sorted(missing)}, '
                     f'unexpected {result.unexpected_keys}')


def torch_reference_step(config, batch, params, *, device='cpu', autocast_dtype=None):
  """Our data2vec step on transformers' Data2Vec*Model: returns step() -> (loss, gradient norm),
  floats.

  Student in train mode with grad and sdpa attention; its deepcopy teacher in eval mode under
  no_grad; the teacher's top-K layer outputs (forward hooks) normalised and averaged as
  `objective.make_targets`; the same head and loss; torch.optim.AdamW (fused) with our decay mask,
  clipping and learning-rate schedule; then the EMA with our tau schedule and copy rule.
  params: our initial {'encoder', 'head'} (numpy), so both steps start from the same weights.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  functional = torch.nn.functional
  modality, obj, opt = config.modality, config.objective, config.optimizer
  cfg = registry.model_config(config)
  module = HF_MODULES[modality]
  num_layers, d = cfg.num_hidden_layers, cfg.hidden_size
  hf_config = transformers.AutoConfig.for_model(**module.config_to_hf(cfg),
                                                attn_implementation='sdpa')
  kwargs = {} if modality == 'audio' else {'add_pooling_layer': cfg.add_pooling_layer}
  student = getattr(transformers, module.ARCHITECTURE)(hf_config, **kwargs)
  head = torch.nn.ModuleDict()
  if obj.head_pre_norm:
    head['norm'] = torch.nn.LayerNorm(d, eps=1e-6)  # RegressionHead's norm_eps
  if obj.head_layers == 2:
    head['hidden'] = torch.nn.Linear(d, 2 * d)
  head['proj'] = torch.nn.Linear(2 * d if obj.head_layers == 2 else d, d)
  encoder_rows, head_rows = module.weight_rows(cfg), _head_rows(obj)
  _load(student, weights.to_hf(params['encoder'], encoder_rows, num_layers))
  _load(head, weights.to_hf(params['head'], head_rows, num_layers))
  student.to(device).train()
  head.to(device).train()
  teacher = copy.deepcopy(student).eval().requires_grad_(False)

  decay = optimizer.weight_decay_mask(params, exclude_1d=not opt.decay_1d_params,
                                      exclude_patterns=tuple(opt.no_decay_patterns))
  decayed = (_hf_keys(decay['encoder'], encoder_rows, num_layers) |
             {'head.' + k for k in _hf_keys(decay['head'], head_rows, num_layers)})
  named = [*student.named_parameters(), *(('head.' + n, p) for n, p in head.named_parameters())]
  groups = [{'params': [p for n, p in named if n in decayed], 'weight_decay': opt.weight_decay},
            {'params': [p for n, p in named if n not in decayed], 'weight_decay': 0.0}]
  adamw = torch.optim.AdamW(groups, lr=0.0, betas=(opt.b1, opt.b2), eps=opt.eps, fused=True)
  _, lr_schedule = optimizer.from_config(config)
  copied = _hf_keys(ema.copy_mask_for(params['encoder'], modality), encoder_rows, num_layers)
  student_params = dict(student.named_parameters())
  averaged, shared = ([], []), []  # (teacher, student) tensors
  for name, t in teacher.named_parameters():
    if name in copied:
      shared.append((t, student_params[name]))
    else:
      averaged[0].append(t)
      averaged[1].append(student_params[name])

  if obj.target_layer not in ('end', 'ffn'):
    raise ValueError(f"objective.target_layer={obj.target_layer!r} is not one of 'end', 'ffn'")
  layers_path, ffn_path = TARGET_MODULES[modality]
  collected = []
  for layer in teacher.get_submodule(layers_path)[-obj.top_k:]:
    source = layer if obj.target_layer == 'end' else layer.get_submodule(ffn_path)
    source.register_forward_hook(
        lambda _, __, out: collected.append(out[0] if isinstance(out, tuple) else out))
  b = {k: torch.from_numpy(np.asarray(v)).to(device) for k, v in batch.items()}

  def forward():
    """(student output [B, T, D], loss mask [B, T], drop_first); the hooks fill `collected`."""
    if modality == 'vision':
      with torch.no_grad():
        teacher(b['pixel_values'])
      out = student(b['pixel_values'], bool_masked_pos=b['bool_masked_pos'])
      return out.last_hidden_state[:, 1:], b['bool_masked_pos'], 1  # no loss on the cls token
    if modality == 'text':
      with torch.no_grad():  # the teacher sees the uncorrupted sequence
        teacher(b['input_ids'], attention_mask=b['attention_mask'])
      out = student(b['masked_input_ids'], attention_mask=b['attention_mask'])
      return out.last_hidden_state, b['target_mask'], 0
    # Audio: the teacher encodes the student's unmasked CNN features, as pretraining._audio.
    features = student.feature_extractor(b['input_values']).transpose(1, 2)
    hidden, _ = student.feature_projection(features)
    with torch.no_grad():
      teacher.encoder(hidden.detach())
    mask = b['mask_time_indices']
    hidden = torch.where(mask[..., None], student.masked_spec_embed.to(hidden.dtype), hidden)
    return student.encoder(hidden).last_hidden_state, mask, 0

  def loss_fn():
    with torch.autocast(device_type=device, dtype=autocast_dtype,
                        enabled=autocast_dtype is not None):
      x, mask, drop_first = forward()
      if 'norm' in head:
        x = head['norm'](x)
      if 'hidden' in head:
        x = functional.gelu(head['hidden'](x))  # exact erf, as RegressionHead
      pred = head['proj'](x)
    y = torch.stack(collected)[:, :, drop_first:].float()
    collected.clear()
    if obj.instance_norm_targets:  # over time, per sample and channel
      y = functional.instance_norm(y.flatten(0, 1).transpose(1, 2)).transpose(1, 2).reshape(y.shape)
    if obj.layer_norm_targets:
      y = functional.layer_norm(y, (d,))
    y = y.mean(0)
    if obj.post_layer_norm:
      y = functional.layer_norm(y, (d,))
    elementwise = (functional.mse_loss(pred.float(), y, reduction='none') if obj.loss_beta == 0
                   else functional.smooth_l1_loss(pred.float(), y, reduction='none',
                                                  beta=obj.loss_beta))
    per_position = elementwise.sum(-1) if obj.loss_reduce == 'sum' else elementwise.mean(-1)
    scale = obj.loss_scale if obj.loss_scale is not None else d ** -0.5
    return (per_position * scale)[mask].sum() / mask.sum().clamp(min=1)

  step = 0

  def train_step():
    nonlocal step
    loss = loss_fn()
    adamw.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for _, p in named if p.grad is not None]  # layerdrop skips whole layers
    grad_norm = torch.nn.utils.get_total_norm(grads)  # our step logs it too
    if opt.clip_norm:
      torch.nn.utils.clip_grads_with_norm_([p for _, p in named], opt.clip_norm, grad_norm)
    for group in adamw.param_groups:
      group['lr'] = float(lr_schedule(step))
    adamw.step()
    tau = float(ema.tau_schedule(step + 1, config.ema.tau0, config.ema.tau_e, config.ema.tau_n))
    with torch.no_grad():
      if averaged[0]:  # t <- t + (1 - tau) (s - t)
        torch._foreach_lerp_(*averaged, 1.0 - tau)  # pylint: disable=protected-access
      for t, s in shared:
        t.copy_(s)
    step += 1
    if device == 'cuda':
      torch.cuda.synchronize()
    return float(loss.detach()), float(grad_norm)

  return train_step
