"""The pretraining batches of a run's config: the modality's pipeline with its config blocks."""
import functools

import jax

from data2vec.input_pipeline import audio, text, vision
from data2vec.models import audio as audio_model
from data2vec.models import registry


def make_input(config, local_batch_size):
  """The pretraining batch iterator of this process (checkpointable: get_state/set_state)."""
  m, where = config.model, dict(process_index=jax.process_index(),
                                process_count=jax.process_count())
  if config.modality == 'vision':
    ds = vision.make_pretrain_dataset(
        data_dir=config.data_dir, split='train', image_size=m.image_size,
        patch_size=m.patch_size, num_channels=m.num_channels, batch_size=local_batch_size,
        seed=config.seed, **where, **config.masking, **config.input)
  elif config.modality == 'text':
    ds = text.make_pretrain_dataset(
        data_dir=config.data_dir, split='train', vocab_size=m.vocab_size,
        pad_token_id=m.pad_token_id, max_position_embeddings=m.max_position_embeddings,
        batch_size=local_batch_size, seed=config.seed, **where, **config.masking, **config.input)
  elif config.modality == 'audio':
    # Masks live on the encoder's frames: the conv output lengths of the clips' samples.
    num_frames = functools.partial(audio_model.feature_lengths, registry.model_config(config),
                                   add_adapter=False)
    ds = audio.make_pretrain_dataset(
        data_dir=config.data_dir, split='train', batch_size=local_batch_size, seed=config.seed,
        num_frames=num_frames, **where, **config.masking, **config.input)
  else:
    raise NotImplementedError(f'no {config.modality} input pipeline')
  return iter(ds)
