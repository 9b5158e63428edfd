"""Labelled probe data per modality: every example of a split once, in order, unaugmented.

`input_config` is the `input` block of a train or probe config (dataset name and
normalisation); the encoder's model config fixes the input shape.
"""
NUM_CLASSES = {'fashion_mnist': 10}


def labelled_batches(modality, *, data_dir, input_config, split, model_config, batch_size,
                     process_index=0, process_count=1):
  """(batches with `label` and `valid`, num_classes) of `split`.

  model_config: the encoder's (VisionConfig, ...); None probes the raw inputs at their native
  resolution.
  """
  if modality != 'vision':
    raise NotImplementedError(f'no {modality} probe data yet: the speech and text probe sets '
                              'come with their input pipelines')
  from data2vec.input_pipeline import vision as vision_input  # pylint: disable=g-import-not-at-top
  dataset = input_config.dataset
  if model_config is None:
    images, _ = vision_input.load_arrays(data_dir, dataset, split)
    image_size, num_channels = images.shape[1], 1
  else:
    image_size, num_channels = model_config.image_size, model_config.num_channels
  batches = vision_input.make_eval_dataset(
      data_dir=data_dir, split=split, image_size=image_size, num_channels=num_channels,
      batch_size=batch_size, mean=input_config.mean, std=input_config.std, dataset=dataset,
      process_index=process_index, process_count=process_count)
  return batches, NUM_CLASSES[dataset]
