"""Image classification and semantic segmentation vs transformers, both ways: logits and loss."""
import dataclasses

import jax
import numpy as np
import pytest
import transformers
from flax import nnx

from data2vec import hf
from data2vec.hf import vision as hf_vision
from data2vec.models.heads import segmentation
from data2vec.models.heads.vision import HEADS
from tests.test_text_heads import assert_close, build, forward, randomize_torch, run_torch

TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
            image_size=16, patch_size=4, num_channels=3)
SEGMENTATION = dict(TINY, num_hidden_layers=4, out_indices=[2, 3, 4, 5], pool_scales=[1, 2, 3],
                    auxiliary_channels=8, use_relative_position_bias=True)
# name -> (transformers class, config fields, labels shape (None: [B]), label dtype)
CASES = {
    'classification_mean_pool': ('Data2VecVisionForImageClassification',
                                 dict(TINY, use_relative_position_bias=True, num_labels=3)),
    'classification_cls_multi_label': (
        'Data2VecVisionForImageClassification',
        dict(TINY, use_mean_pooling=False, use_absolute_position_embeddings=True, num_labels=4,
             problem_type='multi_label_classification')),
    'segmentation_aux_head': ('Data2VecVisionForSemanticSegmentation',
                              dict(SEGMENTATION, auxiliary_num_convs=2, auxiliary_concat_input=True,
                                   num_labels=3)),
    'segmentation_no_aux_head': ('Data2VecVisionForSemanticSegmentation',
                                 dict(SEGMENTATION, image_size=24, use_auxiliary_head=False,
                                      pool_scales=[1, 2], semantic_loss_ignore_index=0,
                                      num_labels=3)),
}


def _inputs(architecture, cfg, seed=0):
  rng = np.random.default_rng(seed)
  size = cfg.image_size
  batch = {'pixel_values': rng.normal(size=(2, cfg.num_channels, size, size)).astype(np.float32)}
  n = len(cfg.id2label)
  if architecture.endswith('SemanticSegmentation'):
    # Labels at another size than the logits (bilinear upsampling), some ignored.
    labels = rng.integers(0, n, (2, size + 8, size + 8))
    batch['labels'] = np.where(rng.random(labels.shape) < 0.2, cfg.semantic_loss_ignore_index,
                               labels)
  elif cfg.problem_type == 'multi_label_classification':
    batch['labels'] = (rng.random((2, n)) < 0.5).astype(np.float32)
  else:
    batch['labels'] = rng.integers(0, n, 2)
  return batch


@pytest.mark.parametrize('case', sorted(CASES))
def test_parity_with_transformers_both_ways(case, tmp_path):
  """transformers -> ours (same outputs), ours -> transformers (loads cleanly, same outputs, every
  tensor bit-identical)."""
  architecture, fields = CASES[case]
  theirs = randomize_torch(getattr(transformers, architecture)(
      transformers.Data2VecVisionConfig(**fields)))
  theirs.save_pretrained(tmp_path / 'theirs')
  ours = hf.load_pretrained(str(tmp_path / 'theirs'))
  assert type(ours).architecture == architecture
  batch = _inputs(architecture, ours.config)
  out = forward(ours, **batch)
  assert_close(out, run_torch(theirs, batch), ('logits', 'loss'))

  hf.save_pretrained(ours, str(tmp_path / 'ours'))
  back, info = getattr(transformers, architecture).from_pretrained(tmp_path / 'ours',
                                                                   output_loading_info=True)
  assert not any(info.values()), info
  assert back.config.id2label == theirs.config.id2label
  assert_close(out, run_torch(back.eval(), batch), ('logits', 'loss'))
  for key, value in theirs.state_dict().items():
    np.testing.assert_array_equal(back.state_dict()[key].numpy(), value.numpy(), err_msg=key)


def test_our_head_exports_with_its_labels(tmp_path):
  fields = dict(CASES['classification_cls_multi_label'][1])
  del fields['num_labels']
  cfg = dataclasses.replace(hf_vision.config_from_hf(fields), id2label=('cat', 'dog', 'eel'),
                            problem_type='multi_label_classification')
  ours = build(HEADS[0], cfg)
  hf.save_pretrained(ours, str(tmp_path))
  theirs = transformers.AutoModelForImageClassification.from_pretrained(tmp_path)
  assert isinstance(theirs, transformers.Data2VecVisionForImageClassification)
  assert theirs.config.id2label == {0: 'cat', 1: 'dog', 2: 'eel'}
  assert theirs.config.problem_type == 'multi_label_classification'
  again = hf.load_pretrained(str(tmp_path))
  assert again.config == ours.config
  jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(again)),
               nnx.to_pure_dict(nnx.state(ours)))


def test_segmentation_training_updates_every_batch_statistic():
  cfg = dataclasses.replace(hf_vision.config_from_hf(dict(
      TINY, num_hidden_layers=3, out_indices=[1, 2, 3, 4], pool_scales=[1], auxiliary_channels=8,
      auxiliary_concat_input=True)), id2label=('a', 'b', 'c'))
  model = build(segmentation.Data2VecVisionForSemanticSegmentation, cfg)
  batch = _inputs('SemanticSegmentation', cfg)
  graphdef, state = nnx.split(model)

  @jax.jit
  def train_forward(state):
    model = nnx.merge(graphdef, state)
    loss = model(**batch, rng=jax.random.key(0))['loss']
    return loss, nnx.state(model, nnx.BatchStat)

  loss, stats = train_forward(state)
  assert np.isfinite(loss)
  before = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))  # random: unlike any batch's
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before, nnx.to_pure_dict(stats))
  assert all(jax.tree.leaves(changed)), changed


def test_adaptive_pool_matches_torch():
  torch = pytest.importorskip('torch')
  x = np.random.default_rng(0).normal(size=(1, 7, 5, 2)).astype(np.float32)
  for bins in (1, 2, 3, 6):
    want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), bins)
    np.testing.assert_allclose(segmentation.adaptive_avg_pool(x, bins),
                               want.permute(0, 2, 3, 1).numpy(), atol=1e-6)


@pytest.mark.parametrize('cls, changes, field', [
    (HEADS[1], {'out_indices': (2, 3, 4)}, 'out_indices'),
    (HEADS[1], {'out_indices': (1, 2, 3, 6)}, 'out_indices'),  # only 4 hidden states + embeddings
    (HEADS[1], {'image_size': (16, 16)}, 'image_size'),
    (HEADS[0], {'id2label': ()}, 'id2label'),
])
def test_unsupported_head_config_raises(cls, changes, field):
  cfg = dataclasses.replace(hf_vision.config_from_hf(SEGMENTATION), **changes)
  with pytest.raises(ValueError, match=field):
    cls(cfg, rngs=nnx.Rngs(0))
