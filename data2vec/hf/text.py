"""Data2VecTextModel <-> our Data2VecTextModel: config.json fields and the weight table."""
from data2vec.hf import weights

MODEL_TYPE = 'data2vec-text'
ARCHITECTURE = 'Data2VecTextModel'
PREFIX = 'data2vec_text'  # where a head holds its base model
# Transformers < 4.31 saved the position_ids buffer in the state dict; older versions saved the LM
# heads' decoder, which transformers ties to the word embeddings and lm_head.bias on loading.
IGNORED_KEYS = ('embeddings.position_ids', 'lm_head.decoder.')

# transformers name -> ours.
_FIELDS = {
    'vocab_size': 'vocab_size',
    'hidden_size': 'hidden_size',
    'num_hidden_layers': 'num_hidden_layers',
    'num_attention_heads': 'num_attention_heads',
    'intermediate_size': 'intermediate_size',
    'hidden_act': 'hidden_act',
    'hidden_dropout_prob': 'hidden_dropout',
    'attention_probs_dropout_prob': 'attention_dropout',
    'max_position_embeddings': 'max_position_embeddings',
    'type_vocab_size': 'type_vocab_size',
    'initializer_range': 'initializer_range',
    'layer_norm_eps': 'layer_norm_eps',
    'pad_token_id': 'pad_token_id',
    'bos_token_id': 'bos_token_id',
    'eos_token_id': 'eos_token_id',
    'is_decoder': 'is_decoder',
    'classifier_dropout': 'classifier_dropout',
    'tie_word_embeddings': 'tie_word_embeddings',
}

# Fields whose only supported value is the one given (anything else is another model).
_REQUIRED = {
    'model_type': MODEL_TYPE,
    'add_cross_attention': False,
    'position_embedding_type': 'absolute',  # removed in transformers 5; older configs have it
    'pruned_heads': {},                     # transformers 4
}

# TextConfig fields that transformers cannot express, with the only value it implements.
_TRANSFORMERS_ONLY = {'activation_dropout': 0.0, 'layerdrop': 0.0}

# Fields that do not change the base model's outputs: bookkeeping, task heads, generation and
# caching, and chunk_size_feed_forward (chunking the FFN gives the same numbers).
IGNORED_FIELDS = (
    'transformers_version', 'architectures', '_name_or_path', 'name_or_path', 'dtype',
    'torch_dtype', 'use_bfloat16', 'output_hidden_states', 'output_attentions', 'return_dict',
    'torchscript', 'gradient_checkpointing', 'chunk_size_feed_forward', 'is_encoder_decoder',
    'tie_encoder_decoder', 'cross_attention_hidden_size', 'use_cache',
    # Labels: data2vec.hf.io reads and writes them for every modality.
    'id2label', 'label2id', 'num_labels', 'problem_type', 'finetuning_task',
    'task_specific_params', 'tokenizer_class', 'prefix', 'sep_token_id', 'decoder_start_token_id',
    'tf_legacy_loss',
    # GenerationConfig fields that transformers 4 kept in config.json.
    'max_length', 'min_length', 'do_sample', 'early_stopping', 'num_beams', 'num_beam_groups',
    'diversity_penalty', 'temperature', 'top_k', 'top_p', 'typical_p', 'repetition_penalty',
    'length_penalty', 'no_repeat_ngram_size', 'encoder_no_repeat_ngram_size', 'bad_words_ids',
    'num_return_sequences', 'output_scores', 'return_dict_in_generate', 'forced_bos_token_id',
    'forced_eos_token_id', 'remove_invalid_values', 'exponential_decay_length_penalty',
    'suppress_tokens', 'begin_suppress_tokens',
)


def model_class():
  from data2vec.models.text import Data2VecTextModel  # pylint: disable=g-import-not-at-top
  return Data2VecTextModel


def config_from_hf(hf_config, tensor_keys=None):
  """A Data2VecTextConfig dict (config.json) -> TextConfig; raises on anything not supported.

  config.json does not record Data2VecTextModel's `add_pooling_layer`: the checkpoint's
  `tensor_keys` decide it; without them it is transformers' default, True.
  """
  from data2vec.models.text import TextConfig  # pylint: disable=g-import-not-at-top
  unknown = sorted(set(hf_config) - set(_FIELDS) - set(_REQUIRED) - set(IGNORED_FIELDS))
  if unknown:
    raise ValueError(f'{MODEL_TYPE} config field(s) {unknown} are not known to this mapping')
  for name, supported in _REQUIRED.items():
    if name in hf_config and hf_config[name] != supported:
      raise ValueError(f'{name}={hf_config[name]!r} is not supported (only {supported!r})')
  kwargs = {ours: hf_config[theirs] for theirs, ours in _FIELDS.items() if theirs in hf_config}
  if isinstance(kwargs.get('eos_token_id'), list):
    kwargs['eos_token_id'] = tuple(kwargs['eos_token_id'])
  if tensor_keys is not None:
    kwargs['add_pooling_layer'] = 'pooler.dense.weight' in tensor_keys
  return TextConfig(**kwargs)


def config_to_hf(cfg):
  """TextConfig -> a complete config.json dict for transformers' Data2VecTextModel."""
  for name, value in _TRANSFORMERS_ONLY.items():
    if getattr(cfg, name) != value:
      raise ValueError(f'{name}={getattr(cfg, name)!r} has no {ARCHITECTURE} equivalent '
                       f'(transformers implies {value!r})')
  d = {theirs: getattr(cfg, ours) for theirs, ours in _FIELDS.items()}
  if isinstance(d['eos_token_id'], tuple):
    d['eos_token_id'] = list(d['eos_token_id'])
  d.update(model_type=MODEL_TYPE, architectures=[ARCHITECTURE], add_cross_attention=False,
           use_cache=True)
  return d


def weight_rows(cfg):
  """One row per tensor of transformers' Data2VecTextModel."""
  layer = 'encoder.layer.{i}.'
  rows = [
      weights.Row('embeddings/word_embeddings/embedding', 'embeddings.word_embeddings.weight'),
      weights.Row('embeddings/position_embeddings/embedding',
                  'embeddings.position_embeddings.weight'),
      weights.Row('embeddings/token_type_embeddings/embedding',
                  'embeddings.token_type_embeddings.weight'),
      *weights.norm('embeddings/layer_norm', 'embeddings.LayerNorm'),
      *weights.transformer_layer_rows(cfg, 'encoder/layers', {
          'query': layer + 'attention.self.query',
          'key': layer + 'attention.self.key',
          'value': layer + 'attention.self.value',
          'attention_output': layer + 'attention.output.dense',
          'attention_norm': layer + 'attention.output.LayerNorm',
          'intermediate': layer + 'intermediate.dense',
          'output': layer + 'output.dense',
          'mlp_norm': layer + 'output.LayerNorm',
      }),
  ]
  if cfg.add_pooling_layer:
    rows += weights.linear('pooler', 'pooler.dense')
  return rows


def head_rows(architecture, cfg):
  """The rows of the tensors a head adds to its base model (which sits under PREFIX).

  The LM heads' decoder is the word embedding table and lm_head.bias (transformers ties them).
  """
  del cfg  # every text head has the same tensors whatever the config
  if architecture in ('Data2VecTextForMaskedLM', 'Data2VecTextForCausalLM'):
    return [weights.Row('lm_head/bias', 'lm_head.bias'),
            *weights.linear('lm_head/dense', 'lm_head.dense'),
            *weights.norm('lm_head/layer_norm', 'lm_head.layer_norm')]
  if architecture == 'Data2VecTextForSequenceClassification':
    return (weights.linear('classifier/dense', 'classifier.dense') +
            weights.linear('classifier/out_proj', 'classifier.out_proj'))
  if architecture in ('Data2VecTextForMultipleChoice', 'Data2VecTextForTokenClassification'):
    return weights.linear('classifier', 'classifier')
  if architecture == 'Data2VecTextForQuestionAnswering':
    return weights.linear('qa_outputs', 'qa_outputs')
  raise ValueError(f'{architecture!r} is not a {MODEL_TYPE} head')
