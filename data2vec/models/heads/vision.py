"""Vision task heads, one-to-one with transformers' Data2VecVision* classes (outputs and loss).

Each head holds its encoder as `data2vec_vision` (transformers' attribute name, so parameter paths
line up with the state-dict keys), takes `pixel_values` [B, C, H, W] and `labels`, and returns the
encoder's dict plus `logits` and, with labels, `loss`. `rng` (a PRNG key) enables dropout.
"""
import dataclasses

from flax import nnx

from data2vec.models.heads import common
from data2vec.models.heads.segmentation import Data2VecVisionForSemanticSegmentation
from data2vec.models.layers import dense
from data2vec.models.vision import Data2VecVisionModel, VisionConfig


class Data2VecVisionForImageClassification(nnx.Module):
  """A Linear on the pooler output (LayerNorm of the mean patch token, or the cls token without
  use_mean_pooling); regression, single- or multi-label loss by config.problem_type."""
  model_type = 'data2vec-vision'
  architecture = 'Data2VecVisionForImageClassification'

  def __init__(self, config: VisionConfig, *, rngs):
    common.check_labels(config)
    self.config = dataclasses.replace(config, add_pooling_layer=True)
    self.data2vec_vision = Data2VecVisionModel(self.config, rngs=rngs)
    self.classifier = dense(config.hidden_size, common.num_labels(config), config, rngs=rngs)

  def __call__(self, pixel_values, labels=None, *, rng=None):
    out = self.data2vec_vision(pixel_values, rng=rng)
    out['logits'] = self.classifier(out['pooler_output'])
    if labels is not None:
      out['loss'] = common.classification_loss(out['logits'], labels, self.config.problem_type)
    return out


HEADS = (Data2VecVisionForImageClassification, Data2VecVisionForSemanticSegmentation)
