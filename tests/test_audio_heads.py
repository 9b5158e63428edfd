"""The four audio heads vs transformers, both ways, on padded batches: logits and loss."""
import dataclasses

import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from data2vec import hf
from data2vec.hf import audio as hf_audio
from data2vec.models.audio import feature_lengths
from data2vec.models.heads import audio as heads
from tests.test_text_heads import assert_close, build, forward, randomize_torch, run_torch

TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=2,
            conv_pos_kernel_size=5, num_conv_pos_embedding_groups=2, vocab_size=12)
LENGTHS = (800, 641, 500)  # samples per row; 79, 63 and 49 frames
XVECTOR = dict(tdnn_dim=(8, 8, 12), tdnn_kernel=(3, 2, 1), tdnn_dilation=(1, 2, 1),
               xvector_output_dim=6, num_labels=4)
# name -> (transformers class, config overrides, padded)
CASES = {
    'ctc': ('Data2VecAudioForCTC', {'ctc_loss_reduction': 'mean'}, True),
    'ctc_adapter_sum': ('Data2VecAudioForCTC',
                        {'add_adapter': True, 'output_hidden_size': 8, 'num_adapter_layers': 1,
                         'ctc_loss_reduction': 'sum', 'ctc_zero_infinity': True}, False),
    'sequence_classification': ('Data2VecAudioForSequenceClassification',
                                {'use_weighted_layer_sum': True, 'classifier_proj_size': 6,
                                 'num_labels': 3}, True),
    'frame_classification': ('Data2VecAudioForAudioFrameClassification',
                             {'use_weighted_layer_sum': True, 'num_labels': 3}, True),
    'xvector': ('Data2VecAudioForXVector', XVECTOR, True),
    'xvector_unpadded_weighted': ('Data2VecAudioForXVector',
                                  dict(XVECTOR, use_weighted_layer_sum=True), False),
}


def _inputs(architecture, cfg, padded, seed=0):
  rng = np.random.default_rng(seed)
  lengths = np.array(LENGTHS if padded else [max(LENGTHS)] * len(LENGTHS))
  batch = {'input_values': rng.normal(size=(len(lengths), max(LENGTHS))).astype(np.float32)}
  if padded:
    batch['attention_mask'] = (np.arange(max(LENGTHS)) < lengths[:, None]).astype(np.int64)
  n = len(cfg.id2label)
  if architecture.endswith('CTC'):
    # Targets of 5, 3 and 0 characters, padded with -100 and with the blank (pad) id.
    labels = rng.integers(1, cfg.vocab_size, (3, 6))
    labels[0, 5], labels[1, 3:] = -100, cfg.pad_token_id
    labels[2] = -100
    batch['labels'] = labels
  elif architecture.endswith('FrameClassification'):
    frames = int(feature_lengths(cfg, max(LENGTHS)))
    batch['labels'] = np.eye(n, dtype=np.float32)[rng.integers(0, n, (3, frames))]
  else:
    batch['labels'] = rng.integers(0, n, 3)
  return batch


@pytest.mark.parametrize('case', sorted(CASES))
def test_parity_with_transformers_both_ways(case, tmp_path):
  """transformers -> ours (same outputs), ours -> transformers (loads cleanly, same outputs, every
  tensor bit-identical)."""
  architecture, overrides, padded = CASES[case]
  theirs = randomize_torch(getattr(transformers, architecture)(
      transformers.Data2VecAudioConfig(**TINY, **overrides)))
  theirs.save_pretrained(tmp_path / 'theirs')
  ours = hf.load_pretrained(str(tmp_path / 'theirs'))
  assert type(ours).architecture == architecture
  batch = _inputs(architecture, ours.config, padded)
  names = ('logits', 'loss') + (('embeddings',) if 'XVector' in architecture else ())
  out = forward(ours, **batch)
  assert_close(out, run_torch(theirs, batch), names)

  hf.save_pretrained(ours, str(tmp_path / 'ours'))
  back, info = getattr(transformers, architecture).from_pretrained(tmp_path / 'ours',
                                                                   output_loading_info=True)
  assert not any(info.values()), info
  assert_close(out, run_torch(back.eval(), batch), names)
  for key, value in theirs.state_dict().items():
    np.testing.assert_array_equal(back.state_dict()[key].numpy(), value.numpy(), err_msg=key)


@pytest.mark.parametrize('reduction', ['mean', 'sum', 'none'])
@pytest.mark.parametrize('zero_infinity', [False, True])
def test_ctc_loss_matches_torch(reduction, zero_infinity):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 7, 5)).astype(np.float32)
  logit_lengths = np.array([7, 6, 3, 7])
  # Row 2 cannot fit (3 labels with a repeat need 4 frames); row 3 is blank (id 1) padded.
  labels = np.array([[2, 3, 3, 4], [4, 2, -100, -100], [2, 2, 3, -100], [1, 3, 1, 4]])
  ours = heads.ctc_loss(logits, logit_lengths, labels, blank_id=1, reduction=reduction,
                        zero_infinity=zero_infinity)
  keep = (labels != -100) & (labels != 1)
  theirs = torch.nn.functional.ctc_loss(
      torch.log_softmax(torch.from_numpy(logits), -1).transpose(0, 1),
      torch.from_numpy(labels[keep]), torch.from_numpy(logit_lengths),
      torch.from_numpy(keep.sum(-1)), blank=1, reduction=reduction, zero_infinity=zero_infinity)
  np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5)


def test_xvector_export_from_our_init(tmp_path):
  fields = {**TINY, **XVECTOR, 'model_type': hf_audio.MODEL_TYPE}
  del fields['num_labels']  # config.json has id2label instead
  cfg = dataclasses.replace(hf_audio.config_from_hf(fields),
                            id2label=('alice', 'bob', 'carol', 'dave'))
  ours = build(heads.Data2VecAudioForXVector, cfg)
  hf.save_pretrained(ours, str(tmp_path))
  theirs = transformers.AutoModelForAudioXVector.from_pretrained(tmp_path)
  assert theirs.config.id2label == dict(enumerate(cfg.id2label))
  batch = _inputs(ours.architecture, cfg, padded=True)
  assert_close(forward(ours, **batch), run_torch(theirs.eval(), batch), ('logits', 'loss'))


@pytest.mark.parametrize('cls, changes, field', [
    (heads.Data2VecAudioForSequenceClassification, {'add_adapter': True}, 'add_adapter'),
    (heads.Data2VecAudioForAudioFrameClassification, {'add_adapter': True}, 'add_adapter'),
    (heads.Data2VecAudioForCTC, {'pad_token_id': None}, 'pad_token_id'),
    (heads.Data2VecAudioForCTC, {'ctc_loss_reduction': 'max'}, 'ctc_loss_reduction'),
    (heads.Data2VecAudioForXVector, {'tdnn_kernel': (3, 2)}, 'tdnn_kernel'),
])
def test_unsupported_head_config_raises(cls, changes, field):
  cfg = hf_audio.config_from_hf({**TINY, **changes, 'model_type': hf_audio.MODEL_TYPE})
  with pytest.raises(ValueError, match=field):
    cls(cfg, rngs=nnx.Rngs(0))
