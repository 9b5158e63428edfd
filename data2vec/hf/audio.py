"""Data2VecAudioModel <-> our Data2VecAudioModel: config fields and the weight table."""
from data2vec.hf.weights import Row, linear, norm, transformer_layer_rows

MODEL_TYPE = 'data2vec-audio'
ARCHITECTURE = 'Data2VecAudioModel'
PREFIX = 'data2vec_audio'  # where a head holds its base model
IGNORED_KEYS = ()

# Data2VecAudioConfig fields that are AudioConfig fields of the same name and meaning.
FIELDS = (
    'hidden_size', 'num_hidden_layers', 'num_attention_heads', 'intermediate_size', 'hidden_act',
    'hidden_dropout', 'activation_dropout', 'attention_dropout', 'feat_proj_dropout', 'layerdrop',
    'initializer_range', 'layer_norm_eps', 'feat_extract_activation', 'conv_dim', 'conv_stride',
    'conv_kernel', 'conv_bias', 'num_conv_pos_embedding_groups', 'conv_pos_kernel_size',
    'num_conv_pos_embeddings', 'mask_time_prob', 'mask_time_length', 'mask_time_min_masks',
    'mask_feature_prob', 'mask_feature_length', 'mask_feature_min_masks', 'add_adapter',
    'adapter_kernel_size', 'adapter_stride', 'num_adapter_layers', 'output_hidden_size',
    # Task-head fields, carried for the heads.
    'vocab_size', 'final_dropout', 'ctc_loss_reduction', 'ctc_zero_infinity',
    'use_weighted_layer_sum', 'classifier_proj_size', 'tdnn_dim', 'tdnn_kernel', 'tdnn_dilation',
    'xvector_output_dim', 'pad_token_id', 'bos_token_id', 'eos_token_id',
)
# PreTrainedConfig bookkeeping, and labels (data2vec.hf.io reads and writes those).
NO_EFFECT_FIELDS = (
    'model_type', 'architectures', 'transformers_version', '_name_or_path', 'dtype', 'torch_dtype',
    'output_hidden_states', 'output_attentions', 'return_dict', 'use_return_dict',
    'chunk_size_feed_forward', 'is_encoder_decoder', 'id2label', 'label2id', 'problem_type',
)
# Wav2Vec2Config fields that configs derived from wav2vec2 ones may carry; no Data2VecAudio class
# reads them.
WAV2VEC2_FIELDS = (
    'adapter_attn_dim', 'codevector_dim', 'contrastive_logits_temperature', 'diversity_loss_weight',
    'do_stable_layer_norm', 'feat_extract_norm', 'feat_quantizer_dropout', 'num_codevector_groups',
    'num_codevectors_per_group', 'num_negatives', 'proj_codevector_dim',
)
# Fields transformers reads and we check: the value always implied by the others, or the default.
CHECKED_FIELDS = ('num_feat_extract_layers', 'apply_spec_augment')
# AudioConfig fields with no Data2VecAudioConfig equivalent, and the value transformers implies.
_TRANSFORMERS_ONLY = {'norm_first': False, 'layer_scale_init_value': 0.0, 'key_bias': True,
                      'drop_path_rate': 0.0, 'relative_position_bias': 'none', 'window_size': None,
                      'use_alibi': False}


def model_class():
  from data2vec.models.audio import Data2VecAudioModel  # pylint: disable=g-import-not-at-top
  return Data2VecAudioModel


def config_from_hf(hf_config, tensor_keys=None):
  """A Data2VecAudioConfig dict (config.json) -> AudioConfig; raises on anything not supported."""
  del tensor_keys  # config.json records the whole structure (masked_spec_embed: the mask probs)
  from data2vec.models.audio import AudioConfig  # pylint: disable=g-import-not-at-top
  if hf_config.get('model_type') != MODEL_TYPE:
    raise ValueError(f'model_type={hf_config.get("model_type")!r} is not {MODEL_TYPE!r}')
  known = set(FIELDS + NO_EFFECT_FIELDS + WAV2VEC2_FIELDS + CHECKED_FIELDS)
  unknown = sorted(set(hf_config) - known)
  if unknown:
    raise ValueError(f'config.json has fields unknown to {ARCHITECTURE}: {unknown}')
  if hf_config.get('apply_spec_augment', True) is not True:
    raise ValueError(f'apply_spec_augment={hf_config["apply_spec_augment"]!r} is not supported '
                     '(masked_spec_embed is always applied at mask_time_indices)')
  cfg = AudioConfig.from_dict({k: hf_config[k] for k in FIELDS if k in hf_config})
  n = hf_config.get('num_feat_extract_layers', len(cfg.conv_dim))
  if n != len(cfg.conv_dim):
    raise ValueError(f'num_feat_extract_layers={n} != len(conv_dim)={len(cfg.conv_dim)}')
  return cfg


def config_to_hf(cfg):
  """AudioConfig -> a complete Data2VecAudioConfig dict (config.json)."""
  for name, value in _TRANSFORMERS_ONLY.items():
    if getattr(cfg, name) != value:
      raise ValueError(f'{name}={getattr(cfg, name)!r} has no {ARCHITECTURE} equivalent '
                       f'(transformers implies {value!r})')
  d = {}
  for k in FIELDS:
    v = getattr(cfg, k)
    d[k] = list(v) if isinstance(v, tuple) else v
  d.update(num_feat_extract_layers=len(cfg.conv_dim), model_type=MODEL_TYPE,
           architectures=[ARCHITECTURE])
  return d


def _conv(ours, theirs, bias=True):
  rows = [Row(f'{ours}/kernel', f'{theirs}.weight', 'conv1d')]
  if bias:
    rows.append(Row(f'{ours}/bias', f'{theirs}.bias'))
  return rows


def weight_rows(cfg):
  rows = []
  for j in range(len(cfg.conv_dim)):
    rows += _conv(f'feature_extractor/conv_layers/{j}/conv',
                  f'feature_extractor.conv_layers.{j}.conv', bias=cfg.conv_bias)
    rows += norm(f'feature_extractor/conv_layers/{j}/layer_norm',
                 f'feature_extractor.conv_layers.{j}.layer_norm')
  rows += norm('feature_projection/layer_norm', 'feature_projection.layer_norm')
  rows += linear('feature_projection/projection', 'feature_projection.projection')
  if cfg.has_masked_spec_embed:
    rows.append(Row('masked_spec_embed', 'masked_spec_embed'))
  for j in range(cfg.num_conv_pos_embeddings):
    rows += _conv(f'pos_conv_embed/layers/{j}', f'encoder.pos_conv_embed.layers.{j}.conv')
  rows += norm('encoder_layer_norm', 'encoder.layer_norm')
  layer = 'encoder.layers.{i}'
  rows += transformer_layer_rows(cfg, 'encoder/layers', {
      'query': f'{layer}.attention.q_proj',
      'key': f'{layer}.attention.k_proj',
      'value': f'{layer}.attention.v_proj',
      'attention_output': f'{layer}.attention.out_proj',
      'attention_norm': f'{layer}.layer_norm',
      'intermediate': f'{layer}.feed_forward.intermediate_dense',
      'output': f'{layer}.feed_forward.output_dense',
      'mlp_norm': f'{layer}.final_layer_norm',
  })
  if cfg.add_adapter:
    if cfg.adapter_size != cfg.hidden_size:
      rows += linear('adapter/proj', 'adapter.proj')
      rows += norm('adapter/proj_layer_norm', 'adapter.proj_layer_norm')
    for j in range(cfg.num_adapter_layers):
      rows += _conv(f'adapter/layers/{j}', f'adapter.layers.{j}.conv')
  return rows


def head_rows(architecture, cfg):
  """The rows of the tensors a head adds to its base model (which sits under PREFIX)."""
  if architecture == 'Data2VecAudioForCTC':
    return linear('lm_head', 'lm_head')
  rows = [Row('layer_weights', 'layer_weights')] if cfg.use_weighted_layer_sum else []
  if architecture == 'Data2VecAudioForSequenceClassification':
    return rows + linear('projector', 'projector') + linear('classifier', 'classifier')
  if architecture == 'Data2VecAudioForAudioFrameClassification':
    return rows + linear('classifier', 'classifier')
  if architecture == 'Data2VecAudioForXVector':
    rows += linear('projector', 'projector')
    for j in range(len(cfg.tdnn_dim)):
      rows += linear(f'tdnn/{j}/kernel', f'tdnn.{j}.kernel')
    return (rows + linear('feature_extractor', 'feature_extractor') +
            linear('classifier', 'classifier') + [Row('objective/weight', 'objective.weight')])
  raise ValueError(f'{architecture!r} is not a {MODEL_TYPE} head')
