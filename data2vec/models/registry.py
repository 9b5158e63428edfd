"""The encoder of each modality: its config and model classes, and the model config of a run."""
from data2vec.models import audio, text, vision

# modality -> (config class, encoder class): the transformers Data2Vec{Text,Audio,Vision}Model.
MODELS = {
    'text': (text.TextConfig, text.Data2VecTextModel),
    'audio': (audio.AudioConfig, audio.Data2VecAudioModel),
    'vision': (vision.VisionConfig, vision.Data2VecVisionModel),
}


def model_config(config):
  """The encoder config (a TextConfig, AudioConfig or VisionConfig) of a run's `config.model`."""
  model_cls, _ = MODELS[config.modality]
  return model_cls.from_dict(config.model.to_dict())
