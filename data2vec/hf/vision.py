"""transformers Data2VecVisionModel <-> our Data2VecVisionModel: config fields and weight table."""
from data2vec.hf.weights import Row, batch_norm, linear, norm, transformer_layer_rows

MODEL_TYPE = 'data2vec-vision'
ARCHITECTURE = 'Data2VecVisionModel'
PREFIX = 'data2vec_vision'  # where a head holds its base model
# Older transformers versions saved the relative position index buffers.
IGNORED_KEYS = ('relative_position_index',)

# transformers name -> our VisionConfig field, where they differ.
_RENAMED = {'hidden_dropout_prob': 'hidden_dropout',
            'attention_probs_dropout_prob': 'attention_dropout'}
# Data2VecVisionConfig fields with the same name in VisionConfig.
_SAME = (
    'hidden_size', 'num_hidden_layers', 'num_attention_heads', 'intermediate_size', 'hidden_act',
    'initializer_range', 'layer_norm_eps', 'image_size', 'patch_size', 'num_channels',
    'use_mask_token', 'use_absolute_position_embeddings', 'use_relative_position_bias',
    'use_shared_relative_position_bias', 'layer_scale_init_value', 'drop_path_rate',
    'use_mean_pooling', 'out_indices', 'pool_scales', 'use_auxiliary_head', 'auxiliary_loss_weight',
    'auxiliary_channels', 'auxiliary_num_convs', 'auxiliary_concat_input',
    'semantic_loss_ignore_index')
# PreTrainedConfig fields that do not change the encoder (bookkeeping, output switches, the
# classification head's labels, and feed-forward chunking, which does not change the result).
IGNORED_FIELDS = (
    'model_type', 'architectures', 'transformers_version', '_name_or_path', 'dtype', 'torch_dtype',
    'output_hidden_states', 'output_attentions', 'return_dict', 'chunk_size_feed_forward',
    'is_encoder_decoder', 'id2label', 'label2id', 'num_labels', 'problem_type')
# VisionConfig fields transformers cannot express, with the only value it implements.
_FIXED = {'norm_first': True, 'key_bias': False, 'activation_dropout': 0.0, 'layerdrop': 0.0}
# Layer-scoped transformers names for the shared TransformerLayer.
_LAYER = 'encoder.layer.{i}.'
_LAYER_NAMES = {
    'query': _LAYER + 'attention.attention.query',
    'key': _LAYER + 'attention.attention.key',
    'value': _LAYER + 'attention.attention.value',
    'attention_output': _LAYER + 'attention.output.dense',
    'attention_norm': _LAYER + 'layernorm_before',
    'intermediate': _LAYER + 'intermediate.dense',
    'output': _LAYER + 'output.dense',
    'mlp_norm': _LAYER + 'layernorm_after',
    'lambda_1': _LAYER + 'lambda_1',
    'lambda_2': _LAYER + 'lambda_2',
    'relative_position_bias': _LAYER + 'attention.attention.relative_position_bias.'
                              'relative_position_bias_table',
}


def model_class():
  from data2vec.models.vision import Data2VecVisionModel  # pylint: disable=g-import-not-at-top
  return Data2VecVisionModel


def _tuples(value):
  return tuple(value) if isinstance(value, list) else value


def config_from_hf(hf_config, tensor_keys=None):
  """config.json dict -> VisionConfig. Unknown fields and unsupported values raise ValueError.

  config.json does not record the constructor's `add_pooling_layer`: with `tensor_keys` (the
  checkpoint's keys) a mean-pooling LayerNorm there turns it on; a cls pooler has no weights, so
  ask for one with `add_pooling_layer=True` (a `load_pretrained` override).
  """
  from data2vec.models.vision import VisionConfig  # pylint: disable=g-import-not-at-top
  unknown = sorted(set(hf_config) - set(_RENAMED) - set(_SAME) - set(IGNORED_FIELDS))
  if unknown:
    raise ValueError(f'config.json field(s) {unknown} are not supported by data2vec-vision')
  if hf_config.get('model_type', MODEL_TYPE) != MODEL_TYPE:
    raise ValueError(f'model_type={hf_config["model_type"]!r} is not {MODEL_TYPE!r}')
  kwargs = {_RENAMED.get(k, k): _tuples(v) for k, v in hf_config.items() if k not in IGNORED_FIELDS}
  if tensor_keys is not None:
    kwargs['add_pooling_layer'] = any(k.startswith('pooler.') for k in tensor_keys)
  return VisionConfig(**kwargs)


def config_to_hf(cfg):
  """VisionConfig -> a complete config.json dict for transformers' Data2VecVisionConfig."""
  for field, value in _FIXED.items():
    if getattr(cfg, field) != value:
      raise ValueError(f'{field}={getattr(cfg, field)!r} has no transformers equivalent '
                       f'(Data2VecVisionModel implements {field}={value!r})')
  d = {k: getattr(cfg, k) for k in _SAME}
  d.update({theirs: getattr(cfg, ours) for theirs, ours in _RENAMED.items()})
  d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
  return {'model_type': MODEL_TYPE, 'architectures': [ARCHITECTURE], **d}


def weight_rows(cfg):
  """The one table for Data2VecVisionModel; optional parts follow the config."""
  rows = [
      Row('embeddings/cls_token', 'embeddings.cls_token'),
      Row('embeddings/patch_embeddings/kernel', 'embeddings.patch_embeddings.projection.weight',
          'conv2d'),
      Row('embeddings/patch_embeddings/bias', 'embeddings.patch_embeddings.projection.bias'),
  ]
  if cfg.use_mask_token:
    rows.append(Row('embeddings/mask_token', 'embeddings.mask_token'))
  if cfg.use_absolute_position_embeddings:
    rows.append(Row('embeddings/position_embeddings', 'embeddings.position_embeddings'))
  if cfg.relative_position_bias == 'shared':
    rows.append(Row('encoder/relative_position_bias/relative_position_bias_table',
                    'encoder.relative_position_bias.relative_position_bias_table'))
  rows += transformer_layer_rows(cfg, 'encoder/layers', _LAYER_NAMES)
  if not cfg.use_mean_pooling:
    rows += norm('layernorm', 'layernorm')
  if cfg.add_pooling_layer and cfg.use_mean_pooling:
    rows += norm('pooler_norm', 'pooler.layernorm')
  return rows


def _conv(ours, theirs, bias=True):
  rows = [Row(f'{ours}/kernel', f'{theirs}.weight', 'conv2d')]
  return rows + [Row(f'{ours}/bias', f'{theirs}.bias')] if bias else rows


def _conv_bn(ours, theirs):
  """Data2VecVisionConvLayer: a Conv2d without bias, BatchNorm2d (then an activation)."""
  return (_conv(f'{ours}/convolution', f'{theirs}.convolution', bias=False) +
          batch_norm(f'{ours}/normalization', f'{theirs}.normalization'))


def _segmentation_rows(cfg):
  rows = []
  for ours, theirs in (('fpn1/up1', 'fpn1.0'), ('fpn1/up2', 'fpn1.3'), ('fpn2', 'fpn2.0')):
    rows += [Row(f'{ours}/kernel', f'{theirs}.weight', 'conv_transpose2d'),
             Row(f'{ours}/bias', f'{theirs}.bias')]
  rows += batch_norm('fpn1/norm', 'fpn1.1')
  rows += _conv('decode_head/classifier', 'decode_head.classifier')
  for j in range(len(cfg.pool_scales)):
    rows += _conv_bn(f'decode_head/psp_modules/{j}/conv',
                     f'decode_head.psp_modules.blocks.{j}.conv')
  rows += _conv_bn('decode_head/psp_bottleneck', 'decode_head.psp_bottleneck')
  for j in range(3):
    rows += _conv_bn(f'decode_head/lateral_convs/{j}', f'decode_head.lateral_convs.{j}')
    rows += _conv_bn(f'decode_head/fpn_convs/{j}', f'decode_head.fpn_convs.{j}')
  rows += _conv_bn('decode_head/fpn_bottleneck', 'decode_head.fpn_bottleneck')
  if cfg.use_auxiliary_head:
    for j in range(cfg.auxiliary_num_convs):
      rows += _conv_bn(f'auxiliary_head/convs/{j}', f'auxiliary_head.convs.{j}')
    if cfg.auxiliary_concat_input:
      rows += _conv_bn('auxiliary_head/conv_cat', 'auxiliary_head.conv_cat')
    rows += _conv('auxiliary_head/classifier', 'auxiliary_head.classifier')
  return rows


def head_rows(architecture, cfg):
  """The rows of the tensors a head adds to its base model (which sits under PREFIX)."""
  if architecture == 'Data2VecVisionForImageClassification':
    return linear('classifier', 'classifier')
  if architecture == 'Data2VecVisionForSemanticSegmentation':
    return _segmentation_rows(cfg)
  raise ValueError(f'{architecture!r} is not a {MODEL_TYPE} head')
