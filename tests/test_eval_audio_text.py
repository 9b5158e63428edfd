"""Speech and text probes: labelled examples, padded batches, raw baselines, eval.py and the ridge
probe on the real spoken digits and WordNet supersenses."""
import collections
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

import eval as eval_lib
from configs import common, probe_audio, probe_text
from data2vec import pretraining, sharding
from data2vec.evaluators import data, features, ridge
from data2vec.input_pipeline import datasets, labelled, text_data
from data2vec.models import audio, registry
from data2vec.preparation import bundled_text
from tests.test_speech_data import needs_speech
from tests.test_pretraining import micro_config
from tests.test_text_data import needs_text_data

DATA_DIR = common.DEFAULT_DATA_DIR
PROBE_CONFIGS = {'audio': probe_audio, 'text': probe_text}
NEEDS_DATA = {'audio': needs_speech, 'text': needs_text_data}
MODALITIES = [pytest.param(m, marks=NEEDS_DATA[m]) for m in ('audio', 'text')]
TEXT_LENGTH = 24  # the micro text encoder's probe length


def micro_train_config(modality):
  """A two-layer encoder of the tiny recipe that takes the real probe inputs."""
  config = micro_config(modality)
  if modality == 'text':  # the real 8k BPE, TEXT_LENGTH tokens
    config.model.update(dict(vocab_size=8192, max_position_embeddings=TEXT_LENGTH + 2))
    config.input.max_length = TEXT_LENGTH
  return config


def probe_config(modality, **overrides):
  config = PROBE_CONFIGS[modality].get_config('1,all')  # the rarest supersense is 5%
  config.update(dict(seeds=(0, 1), num_train_examples=120, num_test_examples=100, batch_size=40))
  if modality == 'text':
    config.input.max_length = TEXT_LENGTH
  config.classifier.steps = 100
  config.update_from_flattened_dict(overrides)
  return config


def collect(batches):
  """The valid rows of all batches, concatenated: {key: array}."""
  rows = [{k: np.asarray(v)[np.asarray(b['valid'])] for k, v in b.items()} for b in batches]
  return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


# ------------------------------------------------------------------ labelled examples

def _jsonl(dataset, split):
  with open(os.path.join(DATA_DIR, dataset, f'{split}.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


@needs_speech
def test_audio_examples_are_the_normalised_clips_of_the_split():
  clips, records = labelled.audio_examples(DATA_DIR, 'spoken_digits', 'test')
  assert records == _jsonl('spoken_digits', 'test')
  shards = datasets.load(DATA_DIR, 'spoken_digits').meta['shards']['test']
  for clip, r in zip(clips[::50], records[::50]):
    shard = np.load(os.path.join(DATA_DIR, 'spoken_digits', shards[r['shard']]), mmap_mode='r')
    raw = shard[r['offset']:r['offset'] + r['num_samples']] / 32768
    np.testing.assert_allclose(clip, (raw - raw.mean()) / np.sqrt(raw.var() + 1e-5), atol=1e-5)
  train_voices = {r['speaker'] for r in _jsonl('spoken_digits', 'train')}
  assert train_voices.isdisjoint(r['speaker'] for r in records)
  with pytest.raises(ValueError, match="'speech_pool' has 0 classes: a probe needs a labelled"):
    data.num_classes(DATA_DIR, 'speech_pool', 'audio')


@needs_text_data
def test_supersense_examples_match_the_roberta_tokenizer():
  from transformers import RobertaTokenizerFast  # pylint: disable=g-import-not-at-top
  examples = labelled.text_examples(DATA_DIR, 'wordnet_supersense', 'test', 12)
  records = [json.loads(line) for line in open(
      bundled_text.work_dir(DATA_DIR) / 'documents' / 'wordnet_supersense' / 'test' /
      'wordnet_supersense.jsonl', encoding='utf-8')]
  np.testing.assert_array_equal(examples.labels,
                                [examples.classes.index(r['label']) for r in records])
  reference = RobertaTokenizerFast.from_pretrained(
      os.path.join(DATA_DIR, 'wordnet_supersense', 'tokenizer'))
  expected = reference([r['text'] for r in records[:300]], truncation=True,
                       max_length=12)['input_ids']
  assert [x.tolist() for x in examples.ids[:300]] == expected
  assert max(map(len, examples.ids)) == 12 and all(x.dtype == np.int32 for x in examples.ids[:300])


# ------------------------------------------------------------------ padded batches

@pytest.mark.parametrize('modality', MODALITIES)
def test_batches_hold_every_example_once_padded_to_one_length(modality):
  input_config = probe_config(modality).input
  kw = dict(data_dir=DATA_DIR, input_config=input_config, split='test',
            model_config=None, batch_size=64, process_count=2)
  if modality == 'audio':
    examples, records = labelled.audio_examples(DATA_DIR, 'spoken_digits', 'test')
    labels = [int(r['label']) for r in records]
    longest = max(r['num_samples'] for s in ('train', 'validation', 'test')
                  for r in _jsonl('spoken_digits', s))
    key, pad = 'input_values', 0
  else:
    text = labelled.text_examples(DATA_DIR, 'wordnet_supersense', 'test', TEXT_LENGTH)
    examples, labels = text.ids, text.labels
    key, pad = 'input_ids', text_data.PAD_ID
  per_process = []
  for p in range(2):
    batches, num_classes = data.labelled_batches(modality, process_index=p, **kw)
    batches = list(batches)
    assert num_classes == 10 and len({b[key].shape for b in batches}) == 1
    per_process.append((len(batches), collect(batches)))
  assert per_process[0][0] == per_process[1][0]  # the same number of batches on every process
  rows = {k: np.concatenate([got[k] for _, got in per_process]) for k in per_process[0][1]}
  length = rows[key].shape[1]
  if modality == 'audio':  # the longest clip of any split, rounded up to 0.1 s
    assert length % 1600 == 0 and length - 1600 < longest <= length
  else:
    assert length == TEXT_LENGTH
  lengths = rows['attention_mask'].sum(1)
  assert (rows['attention_mask'] == (np.arange(length) < lengths[:, None])).all()
  assert (rows[key][rows['attention_mask'] == 0] == pad).all()
  found = collections.Counter((rows[key][i, :n].tobytes(), rows['label'][i])
                              for i, n in enumerate(lengths))
  assert found == collections.Counter((x.tobytes(), y) for x, y in zip(examples, labels))
  # The files group examples by voice or label; the fixed order spreads the first ones.
  first, _ = data.labelled_batches(modality, **{**kw, 'process_count': 1})
  assert len(set(next(iter(first))['label'].tolist())) == 10


# ------------------------------------------------------------------ raw-feature baselines

def test_log_mel_matches_transformers():
  from transformers import audio_utils  # pylint: disable=g-import-not-at-top
  wave = np.random.default_rng(0).normal(size=5000)
  expected = audio_utils.spectrogram(
      wave, audio_utils.window_function(400, 'hann'), 400, 160, 512, power=2.0, center=False,
      mel_filters=audio_utils.mel_filter_bank(257, 40, 0, 8000, 16000, mel_scale='htk'),
      mel_floor=features.MEL_FLOOR, log_mel='log', dtype=np.float64).T
  np.testing.assert_allclose(features.log_mel(wave, **features.LOG_MEL), expected, atol=1e-5)


def test_raw_audio_features_are_log_mel_statistics_of_the_valid_samples():
  waves = np.random.default_rng(0).normal(size=(2, 4000)).astype(np.float32)
  mask = (np.arange(4000) < np.array([[4000], [2500]])).astype(np.int32)
  fn = features.raw_feature_fn('audio', None, None)
  got = fn({'input_values': np.where(mask, waves, 0), 'attention_mask': mask})
  bands = features.log_mel(waves[1, :2500], **features.LOG_MEL)
  assert got.shape == (2, 80)
  np.testing.assert_allclose(got[1], np.r_[bands.mean(0), bands.std(0)], rtol=1e-5)


@needs_text_data
def test_bag_of_tokens_counts_the_frequent_training_ids():
  input_config = probe_text.get_config().input
  train_ids = labelled.text_examples(DATA_DIR, 'wordnet_supersense', 'train',
                                     input_config.max_length).ids
  frequency = collections.Counter(np.concatenate(train_ids).tolist())
  common = [i for i, _ in frequency.most_common(4)]
  unseen = [i for i in range(8192) if i not in frequency][:2]
  ids = np.array([[0, common[2], common[2], unseen[0], common[3], 2, 1],
                  [0, common[1], unseen[1], 2, 1, 1, 1]])
  got = features.raw_feature_fn('text', input_config, DATA_DIR)(
      {'input_ids': ids, 'attention_mask': (ids != 1).astype(np.int32)})
  assert got.shape == (2, features.RAW_TEXT_IDS)
  # Every id once per valid occurrence, each its own column; ids unseen in train are dropped.
  for row in range(2):
    kept = [i for i in ids[row] if i != 1 and i not in unseen]
    assert sorted(got[row][got[row] > 0]) == sorted(collections.Counter(kept).values())
  assert (got[:, got[0] == 2] == [[2], [0]]).all()  # common[2], twice in row 0


# ------------------------------------------------------------------ encoder features

def test_audio_features_ignore_padding():
  # One positional conv layer: a second one would see the first's output on the padded frames
  # (zeroed once, before the stack, as in transformers and fairseq), hence one padded length
  # per data set in the probes.
  cfg = audio.AudioConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 2),
                          conv_kernel=(10, 3), num_conv_pos_embeddings=1,
                          conv_pos_kernel_size=5, num_conv_pos_embedding_groups=2)
  model = audio.Data2VecAudioModel(cfg, rngs=nnx.Rngs(0))
  fn = jax.jit(features.feature_fn(nnx.graphdef(model), 'audio', -1, 2))
  params = nnx.to_pure_dict(nnx.state(model))
  wave = np.random.default_rng(0).normal(size=2000).astype(np.float32)
  padded = np.zeros((2, 3000), np.float32)
  padded[0, :2000] = wave
  mask = (np.arange(3000) < np.array([[2000], [3000]])).astype(np.int32)
  alone = fn(params, {'input_values': wave[None], 'attention_mask': np.ones((1, 2000), np.int32)})
  got = fn(params, {'input_values': padded, 'attention_mask': mask})
  np.testing.assert_allclose(got[:1], alone, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ eval.py and the ridge probe

@pytest.fixture(scope='module', params=MODALITIES)
def untrained(request, tmp_path_factory):
  """A workdir with only the config of a micro encoder: what random_init probes."""
  path = tmp_path_factory.mktemp(request.param)
  config = micro_train_config(request.param)
  (path / 'config.json').write_text(config.to_json())
  return request.param, str(path), config


def test_random_init_probe_is_deterministic_and_writes_json(untrained, tmp_path):
  modality, path, config = untrained
  result = eval_lib.evaluate(probe_config(modality, random_init=True), workdir=path,
                             out=str(tmp_path / 'a'))
  name = f'probe_{modality}_random_init'
  with open(tmp_path / 'a' / f'{name}.json') as f:
    assert json.load(f) == json.loads(json.dumps(result))
  assert result['name'] == name and result['source']['init_seed'] == config.seed
  assert result['data'] == dict(dataset=data.PROBE_DATASETS[modality], eval_split='test',
                                num_train=120, num_test=100, num_classes=10, feature_dim=32)
  assert [(r['labels_per_class'], r['seed'], r['num_train_examples']) for r in result['runs']] == [
      (1, 0, 10), (1, 1, 10), (0, 0, 120), (0, 1, 120)]
  assert all(len(r['per_class_accuracy']) == 10 for r in result['runs'])
  again = eval_lib.evaluate(probe_config(modality, random_init=True), workdir=path,
                            out=str(tmp_path / 'b'))
  assert again['runs'] == result['runs']
  # Scored on the validation split (to choose a layer): the same classifiers, other examples.
  val = eval_lib.evaluate(probe_config(modality, random_init=True, eval_split='validation'),
                          workdir=path, out=str(tmp_path / 'a'))
  assert val['name'] == f'{name}_validation' and val['data']['eval_split'] == 'validation'
  assert (tmp_path / 'a' / f'{name}_validation.json').is_file()
  assert [r['accuracy'] for r in val['runs']] != [r['accuracy'] for r in result['runs']]


@pytest.mark.parametrize('modality', MODALITIES)
def test_raw_baseline_beats_chance(modality, tmp_path):
  result = eval_lib.evaluate(
      probe_config(modality, raw_features=True, num_train_examples=300, num_test_examples=300),
      out=str(tmp_path))
  assert result['name'] == f'probe_{modality}_raw'
  assert result['data']['feature_dim'] == {'audio': 80, 'text': features.RAW_TEXT_IDS}[modality]
  assert result['summary']['all']['accuracy_mean'] > 0.3  # chance: 0.1, majority class < 0.2


def test_bad_inputs_raise_before_any_work(untrained):
  modality, path, _ = untrained
  cases = [({'input.dataset': 'fashion_mnist'}, "dataset='fashion_mnist'"),
           ({'eval_split': 'dev'}, "eval_split='dev': must be one of")]
  if modality == 'text':
    cases += [({'input.max_length': TEXT_LENGTH + 1}, 'exceeds the 24 positions'),
              # pretrained on wordnet_glosses: the 8k BPE, not GPT-2's
              ({'input.dataset': 'wordnet_supersense_gpt2'},
               "wordnet_supersense_gpt2's tokenizer .* is not the encoder's")]
  for overrides, message in cases:
    with pytest.raises(ValueError, match=message):
      eval_lib.evaluate(probe_config(modality, random_init=True, **overrides), workdir=path)
  assert not os.path.exists(os.path.join(path, 'eval'))


@pytest.mark.parametrize('modality', MODALITIES)
def test_ridge_probe_scores_the_features_eval_extracts(modality):
  config = micro_train_config(modality)
  config.ridge_probe.update(dict(num_train=64, num_test=32))  # whole batches of 16 and 32
  mesh = sharding.make_mesh(config.mesh)
  encoder_def, _ = pretraining.graph_defs(config)
  model = registry.MODELS[modality][1](registry.model_config(config), rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model))
  got = ridge.RidgeProbe(config, encoder_def, mesh)(params)['ridge_probe_accuracy']
  # The same examples through eval.py's path, on one device.
  fn = jax.jit(features.feature_fn(encoder_def, modality, -1, 1))
  xy = []
  for split, n in (('train', 64), ('test', 32)):
    batches, _ = data.labelled_batches(modality, data_dir=config.data_dir,
                                       input_config=data.probe_input(config), split=split,
                                       model_config=registry.model_config(config),
                                       batch_size=16)
    xy += features.extract(lambda b: fn(params, b), batches, n)
  assert got == pytest.approx(ridge.ridge_accuracy(*xy, num_classes=10, l2_reg=1.0), abs=1e-6)
