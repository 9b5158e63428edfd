"""The six text heads vs transformers, both ways: logits and loss on a padded batch."""
import json

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from data2vec import hf
from data2vec.hf import io
from data2vec.models.heads import text as heads
from data2vec.models.text import TextConfig

TINY = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=24, max_position_embeddings=20, type_vocab_size=2)
LABELS = ('PER', 'LOC', 'ORG')
# name -> (transformers class, config overrides)
CASES = {
    'masked_lm': ('Data2VecTextForMaskedLM', {}),
    'causal_lm': ('Data2VecTextForCausalLM', {'is_decoder': True}),
    'regression': ('Data2VecTextForSequenceClassification', {'num_labels': 1}),
    'single_label': ('Data2VecTextForSequenceClassification', {'id2label': dict(enumerate(LABELS)),
                                                               'classifier_dropout': 0.3}),
    'multi_label': ('Data2VecTextForSequenceClassification',
                    {'num_labels': 3, 'problem_type': 'multi_label_classification'}),
    'multiple_choice': ('Data2VecTextForMultipleChoice', {}),
    'token_classification': ('Data2VecTextForTokenClassification',
                             {'id2label': dict(enumerate(LABELS))}),
    'question_answering': ('Data2VecTextForQuestionAnswering', {}),
}


def randomize_torch(model, seed=0):
  """Overwrites every parameter and float buffer (norm scales around 1); tied ones once."""
  rng = np.random.default_rng(seed)
  with torch.no_grad():
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
      if not p.is_floating_point():
        continue
      scale = 'norm' in name.lower() and name.endswith('weight')
      value = rng.normal(0, 0.1, tuple(p.shape)) + scale
      if name.endswith('running_var'):
        value = rng.uniform(0.5, 1.5, tuple(p.shape))
      p.copy_(torch.from_numpy(value.astype(np.float32)))
  return model.eval()


def build(cls, cfg, seed=0):
  """cls(cfg) with random values in every parameter and batch statistic (scales and variances
  around 1), without running its initialisers (slow to compile on CPU)."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)

  def value(path, leaf):
    around_one = str(path[-1].key) in ('scale', 'var')
    return rng.normal(0, 0.1, leaf.shape).astype(np.float32) + around_one

  nnx.replace_by_pure_dict(state, jax.tree.map_with_path(value, nnx.to_pure_dict(state)))
  return nnx.merge(graphdef, state)


def forward(model, **inputs):
  """Our model's eval forward, jitted: one compilation instead of one per eager op."""
  graphdef, state = nnx.split(model)
  return jax.jit(lambda s, x: nnx.merge(graphdef, s)(**x))(state, inputs)


def run_torch(model, inputs):
  with torch.no_grad():
    return model(**{k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()})


def assert_close(ours, theirs, names, atol=1e-4):
  for name in names:
    np.testing.assert_allclose(np.asarray(ours[name], np.float32),
                               getattr(theirs, name).numpy(), atol=atol, rtol=0, err_msg=name)


def _inputs(case, cfg, seed=0):
  """A right-padded batch and the labels of the case's head."""
  rng = np.random.default_rng(seed)
  lengths = np.array([9, 6, 3])
  t = int(lengths.max())
  ids = rng.integers(3, cfg.vocab_size, (3, t))
  mask = np.arange(t) < lengths[:, None]
  batch = {'input_ids': np.where(mask, ids, cfg.pad_token_id),
           'attention_mask': mask.astype(np.int64),
           'token_type_ids': rng.integers(0, cfg.type_vocab_size, (3, t))}
  n = len(cfg.id2label)
  if case == 'masked_lm':
    batch['labels'] = np.where(rng.random((3, t)) < 0.4, ids, -100)
  elif case == 'causal_lm':
    batch['labels'] = np.where(mask, ids, -100)
  elif case == 'regression':
    batch['labels'] = rng.normal(size=3).astype(np.float32)
  elif case == 'single_label':
    batch['labels'] = rng.integers(0, n, 3)
  elif case == 'multi_label':
    batch['labels'] = (rng.random((3, n)) < 0.5).astype(np.float32)
  elif case == 'multiple_choice':  # 2 examples x 3 choices
    batch = {k: np.stack([v, v[::-1]]) for k, v in batch.items()}
    batch['labels'] = np.array([2, 0])
  elif case == 'token_classification':
    batch['labels'] = np.where(mask, rng.integers(0, n, (3, t)), -100)
  else:  # question answering; 30 is outside the input: clamped to T and ignored
    batch['start_positions'] = np.array([1, 4, 30])
    batch['end_positions'] = np.array([3, 4, 2])
  return batch


def _loss_names(case):
  if case == 'question_answering':
    return ('start_logits', 'end_logits', 'loss')
  return ('logits', 'loss')


@pytest.mark.parametrize('case', sorted(CASES))
def test_transformers_to_ours(case, tmp_path):
  architecture, overrides = CASES[case]
  theirs = randomize_torch(getattr(transformers, architecture)(
      transformers.Data2VecTextConfig(**TINY, **overrides)))
  theirs.save_pretrained(tmp_path)
  ours = hf.load_pretrained(str(tmp_path))
  assert type(ours).architecture == architecture
  batch = _inputs(case, ours.config)
  assert_close(ours(**batch), run_torch(theirs, batch), _loss_names(case))


@pytest.mark.parametrize('case', sorted(CASES))
def test_ours_to_transformers_and_back(case, tmp_path):
  architecture, overrides = CASES[case]
  n = overrides.get('num_labels', 2)
  labels = overrides.get('id2label') or {i: f'LABEL_{i}' for i in range(n)}
  fields = {k: v for k, v in overrides.items() if k not in ('id2label', 'num_labels')}
  cfg = TextConfig(**TINY, **fields, id2label=tuple(labels.values()))
  cls = {c.architecture: c for c in heads.HEADS}[architecture]
  ours = build(cls, cfg, seed=1)
  hf.save_pretrained(ours, str(tmp_path))
  theirs, info = getattr(transformers, architecture).from_pretrained(tmp_path,
                                                                     output_loading_info=True)
  assert not any(info.values()), info
  assert theirs.config.id2label == labels
  batch = _inputs(case, cfg)
  assert_close(ours(**batch), run_torch(theirs.eval(), batch), _loss_names(case))

  again = hf.load_pretrained(str(tmp_path))
  assert type(again) is cls and again.config == ours.config
  jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(again)),
               nnx.to_pure_dict(nnx.state(ours)))


def _write_config(path, **changes):
  config = transformers.Data2VecTextConfig(**TINY, num_labels=2).to_dict()
  config.update({'architectures': ['Data2VecTextForSequenceClassification'], **changes})
  path.mkdir(exist_ok=True)
  (path / 'config.json').write_text(json.dumps(config))
  return str(path)


def test_read_config_picks_the_class_and_labels(tmp_path):
  cls, cfg = io.read_config(_write_config(
      tmp_path, id2label={'1': 'pos', '0': 'neg'}, label2id={'neg': 0, 'pos': 1},
      problem_type='single_label_classification'))
  assert cls is heads.Data2VecTextForSequenceClassification
  assert cfg.id2label == ('neg', 'pos') and cfg.problem_type == 'single_label_classification'
  cls, cfg = io.read_config(_write_config(tmp_path, architectures=None))
  assert cls.__name__ == 'Data2VecTextModel'


@pytest.mark.parametrize('changes, field', [
    ({'id2label': {'0': 'a', '2': 'b'}, 'label2id': None}, 'id2label'),
    ({'label2id': {'LABEL_0': 1, 'LABEL_1': 0}}, 'label2id'),
    ({'num_labels': 3}, 'num_labels'),
    ({'architectures': ['Data2VecTextForPoetry']}, 'architectures'),
])
def test_bad_head_config_json_raises(changes, field, tmp_path):
  with pytest.raises(ValueError, match=field):
    io.read_config(_write_config(tmp_path, **changes))


@pytest.mark.parametrize('cls, changes, field', [
    (heads.Data2VecTextForMaskedLM, {'tie_word_embeddings': False}, 'tie_word_embeddings'),
    (heads.Data2VecTextForQuestionAnswering, {'id2label': ('a', 'b', 'c')}, 'id2label'),
    (heads.Data2VecTextForSequenceClassification, {'problem_type': 'ranking'}, 'problem_type'),
    (heads.Data2VecTextForTokenClassification, {'id2label': ()}, 'id2label'),
])
def test_unsupported_head_config_raises(cls, changes, field):
  with pytest.raises(ValueError, match=field):
    cls(TextConfig(**TINY, **changes), rngs=nnx.Rngs(0))


@pytest.mark.parametrize('name', ['config.json', 'model.safetensors', 'a/b.json', '..'])
def test_extra_files_may_not_replace_the_model(name, tmp_path):
  model = build(heads.Data2VecTextForQuestionAnswering, TextConfig(**TINY))
  with pytest.raises(ValueError, match='extra_files'):
    hf.save_pretrained(model, str(tmp_path / 'out'), extra_files={name: '{}'})
  assert not (tmp_path / 'out').exists()
