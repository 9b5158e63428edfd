"""Weight tables: one row per tensor, mapping our parameter path to the transformers state-dict key.

A row is `Row(ours, theirs, kind)`. `ours` is a '/'-joined path into our pure parameter dict;
`theirs` is the transformers key. A row whose `theirs` contains '{i}' is a stacked per-layer
parameter: our leaf has a leading layer axis and transformers has one key per layer. `kind` says
how the layout changes (PyTorch -> ours):
  'linear'  [out, in] -> [in, out]
  'conv1d'  [out, in/groups, k] -> [k, in/groups, out]
  'conv2d'  [out, in, kh, kw] -> [kh, kw, in, out]
  'conv_transpose2d'  [in, out, kh, kw] -> [kh, kw, in, out]
  'copy'    unchanged
A row with `ours=None` is a torch buffer with no counterpart here (BatchNorm's
`num_batches_tracked`): written as an int64 zero, dropped on reading.
"""
import dataclasses

import numpy as np

_TO_OURS = {
    'linear': lambda w: w.T,
    'conv1d': lambda w: w.transpose(2, 1, 0),
    'conv2d': lambda w: w.transpose(2, 3, 1, 0),
    'conv_transpose2d': lambda w: w.transpose(2, 3, 0, 1),
    'copy': lambda w: w,
}
_TO_THEIRS = {
    'linear': lambda w: w.T,
    'conv1d': lambda w: w.transpose(2, 1, 0),
    'conv2d': lambda w: w.transpose(3, 2, 0, 1),
    'conv_transpose2d': lambda w: w.transpose(2, 3, 0, 1),
    'copy': lambda w: w,
}


@dataclasses.dataclass(frozen=True)
class Row:
  ours: str | None
  theirs: str
  kind: str = 'copy'


def linear(ours, theirs, bias=True):
  """Rows for a Linear layer: kernel (+ bias)."""
  rows = [Row(f'{ours}/kernel', f'{theirs}.weight', 'linear')]
  if bias:
    rows.append(Row(f'{ours}/bias', f'{theirs}.bias'))
  return rows


def norm(ours, theirs, affine=True):
  """Rows for a LayerNorm: scale + bias (none when it has no affine parameters)."""
  if not affine:
    return []
  return [Row(f'{ours}/scale', f'{theirs}.weight'), Row(f'{ours}/bias', f'{theirs}.bias')]


def batch_norm(ours, theirs):
  """Rows for a BatchNorm: scale, bias, running statistics and torch's batch counter (which only
  matters with momentum=None, never used here)."""
  return [*norm(ours, theirs), Row(f'{ours}/mean', f'{theirs}.running_mean'),
          Row(f'{ours}/var', f'{theirs}.running_var'), Row(None, f'{theirs}.num_batches_tracked')]


def prefixed(rows, name):
  """`rows` moved under the submodule `name`, ours and theirs: a head's base model, e.g. ours
  'data2vec_text/embeddings/...' <-> theirs 'data2vec_text.embeddings....'."""
  return [Row(None if r.ours is None else f'{name}/{r.ours}', f'{name}.{r.theirs}', r.kind)
          for r in rows]


def transformer_layer_rows(cfg, ours, names):
  """The rows of our shared TransformerLayer under `ours`, with transformers names from `names`.

  `names` maps our submodule names (query, key, value, attention_output, attention_norm,
  intermediate, output, mlp_norm, lambda_1, lambda_2, relative_position_bias) to transformers
  key templates containing '{i}'.
  """
  rows = []
  rows += linear(f'{ours}/attention/query', names['query'])
  rows += linear(f'{ours}/attention/key', names['key'], bias=cfg.key_bias)
  rows += linear(f'{ours}/attention/value', names['value'])
  rows += linear(f'{ours}/attention/output', names['attention_output'])
  rows += norm(f'{ours}/attention_norm', names['attention_norm'])
  rows += linear(f'{ours}/intermediate', names['intermediate'])
  rows += linear(f'{ours}/output', names['output'])
  rows += norm(f'{ours}/mlp_norm', names['mlp_norm'])
  if cfg.layer_scale_init_value > 0:
    rows += [Row(f'{ours}/lambda_1', names['lambda_1']), Row(f'{ours}/lambda_2', names['lambda_2'])]
  if cfg.relative_position_bias == 'layer':
    rows.append(Row(f'{ours}/relative_position_bias/relative_position_bias_table',
                    names['relative_position_bias']))
  return rows


def _get(tree, path):
  for part in path.split('/'):
    tree = tree[int(part) if isinstance(tree, (list, tuple)) or part.isdigit() else part]
  return tree


def _set(tree, path, value):
  parts = path.split('/')
  for part in parts[:-1]:
    tree = tree.setdefault(int(part) if part.isdigit() else part, {})
  tree[int(parts[-1]) if parts[-1].isdigit() else parts[-1]] = value


def flatten(tree, prefix=''):
  """A nested dict -> {'/'-joined path: leaf}."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for k, v in tree.items():
    out.update(flatten(v, f'{prefix}/{k}' if prefix else str(k)))
  return out


def to_hf(params, rows, num_layers, prefix=''):
  """Our pure parameter dict -> {transformers key: numpy array}. Every leaf must be in a row."""
  used = set()
  out = {}
  for row in rows:
    if row.ours is None:
      out[prefix + row.theirs] = np.zeros((), np.int64)
      continue
    value = np.asarray(_get(params, row.ours))
    used.add(row.ours)
    convert = _TO_THEIRS[row.kind]
    if '{i}' in row.theirs:
      for i in range(num_layers):
        out[prefix + row.theirs.format(i=i)] = np.ascontiguousarray(convert(value[i]))
    else:
      out[prefix + row.theirs] = np.ascontiguousarray(convert(value))
  unmapped = sorted(set(flatten(params)) - used)
  if unmapped:
    raise ValueError(f'parameters with no transformers name: {unmapped}')
  return out


def from_hf(tensors, rows, num_layers, prefix='', ignore=()):
  """{transformers key: array} -> our pure parameter dict.

  Raises naming the keys when a row has no tensor (missing) or a tensor matches no row
  (unexpected), except keys matching `ignore` (buffers transformers may save).
  """
  params, used, missing = {}, set(), []
  for row in rows:
    convert = _TO_OURS[row.kind]
    keys = ([prefix + row.theirs.format(i=i) for i in range(num_layers)]
            if '{i}' in row.theirs else [prefix + row.theirs])
    absent = [k for k in keys if k not in tensors]
    if row.ours is None:
      used.update(k for k in keys if k in tensors)
      continue
    if absent:
      missing += absent
      continue
    used.update(keys)
    values = [convert(np.asarray(tensors[k], np.float32)) for k in keys]
    _set(params, row.ours, np.stack(values) if '{i}' in row.theirs else values[0])
  unexpected = sorted(k for k in set(tensors) - used if not any(s in k for s in ignore))
  if missing or unexpected:
    raise ValueError(f'checkpoint does not match the model: missing {missing}, '
                     f'unexpected {unexpected}')
  return params
