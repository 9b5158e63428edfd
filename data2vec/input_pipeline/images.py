"""Image sources: what the vision pipelines index, one uint8 RGB / grey image and label per id.

A prepared image set (`scripts/prepare_data.py images`, data2vec/preparation/images.py) is
ArrayRecord shards per split, `{split}-{i:05d}.array_record`, one record per image: the label as
4 little-endian bytes (int32, -1 = unlabelled) followed by the encoded file (JPEG, PNG, WebP).
Records are read through grain's ArrayRecordDataSource (written with group_size 1, so a random
read decompresses one record) and decoded here: JPEG with libjpeg-turbo (simplejpeg), anything
else, and the JPEGs simplejpeg cannot take (CMYK, progressive oddities), with pillow.

A set's `channels` (dataset.json, 3 unless said) fixes what every image becomes: uint8
[H, W, 3] RGB (grey repeated, palette and CMYK converted) or [H, W, 1] grey (Fashion-MNIST,
prepared by `prepare_data.py vision` as lossless PNGs). Transparency is composited onto white (a
stamp or icon's transparent background is most often meant as paper; black would invent a dark
frame).
"""
import io

import grain
import numpy as np
import PIL.Image
import simplejpeg

from data2vec.input_pipeline import datasets, files

UNLABELLED = -1
_LABEL_BYTES = 4
_JPEG_MAGIC = b'\xff\xd8'
RGB = 3


def encode_record(label, data):
  """bytes of one record: int32 label + the encoded image."""
  return np.int32(label).astype('<i4').tobytes() + data


def decode_record(record):
  """(label int, encoded image bytes) of a record."""
  return int(np.frombuffer(record[:_LABEL_BYTES], '<i4')[0]), record[_LABEL_BYTES:]


def _pillow_pixels(image, channels):
  if image.mode in ('RGBA', 'LA', 'PA') or 'transparency' in image.info:  # incl. colour keys
    image = image.convert('RGBA')
    paper = PIL.Image.new('RGBA', image.size, (255, 255, 255, 255))
    image = PIL.Image.alpha_composite(paper, image)
  if channels == 1:
    return np.asarray(image.convert('L'))[..., None]
  return np.asarray(image.convert('RGB'))


def decode_image(data, channels=RGB):
  """uint8 [H, W, channels] (3: RGB, 1: grey) of encoded image bytes; a ValueError when they are
  not a readable image."""
  if data[:2] == _JPEG_MAGIC:
    try:
      return simplejpeg.decode_jpeg(data, colorspace='RGB' if channels == RGB else 'GRAY')
    except ValueError:  # CMYK / YCCK and other JPEGs libjpeg-turbo will not convert
      pass
  try:
    with PIL.Image.open(io.BytesIO(data)) as image:
      image.load()
      return _pillow_pixels(image, channels)
  except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as e:
    raise ValueError(f'not a readable image ({type(e).__name__}: {e})') from None


class RecordSource:
  """A split of a prepared image set: source[i] -> uint8 [H, W, num_channels]; `labels` int32
  [N]."""

  def __init__(self, dataset, split):
    dataset.check_split(split)
    paths = [dataset.path / name for name in dataset.meta['shards'][split]]
    labels_path = dataset.path / f'{split}_labels.npy'
    missing = [p for p in (*paths, labels_path) if not p.is_file()]
    if missing:
      raise ValueError(f'{missing[0]} does not exist; prepare {dataset.path} again')
    try:
      self.records = grain.sources.ArrayRecordDataSource([str(p) for p in paths])
    except (RuntimeError, ValueError, OSError) as e:  # a truncated or foreign shard
      raise ValueError(f'{dataset.path}: the {split} shards {[p.name for p in paths]} are not all '
                       f'readable ArrayRecord files ({type(e).__name__}: {e}); prepare it '
                       'again') from None
    self.labels = files.load_npy(labels_path, 'images', mmap_mode=None)
    if not len(self.records) == len(self.labels) == dataset.num_examples(split):
      raise ValueError(f'{dataset.path}: {split} holds {len(self.records)} records and '
                       f'{len(self.labels)} labels, dataset.json says '
                       f'{dataset.num_examples(split)}; prepare it again')
    self.where = f'{dataset.path} {split}'
    self.num_channels = channels_of(dataset)

  def __len__(self):
    return len(self.records)

  def __getitem__(self, index):
    try:
      _, data = decode_record(self.records[int(index)])
      return decode_image(data, self.num_channels)
    except (RuntimeError, ValueError) as e:
      raise ValueError(f'{self.where} record {index}: {e}') from None


def channels_of(dataset):
  return dataset.meta.get('channels', RGB)


def open_split(data_dir, dataset, split, field='config.input.dataset'):
  """The image source (`source[i]`, `source.labels`, `source.num_channels`) of a split of a
  bundled or prepared set."""
  return RecordSource(datasets.load(data_dir, dataset, modality='vision', field=field), split)


def num_channels(data_dir, dataset, field='config.input.dataset'):
  """Channels of the set's images (reads dataset.json only)."""
  return channels_of(datasets.load(data_dir, dataset, modality='vision', field=field))


def check_channels(data_channels, model_channels, dataset, field='config.model.num_channels'):
  """Grey images go to an RGB model repeated; colour ones need an RGB model."""
  if model_channels not in (data_channels, RGB):
    raise ValueError(f'{field}={model_channels}: the images of {dataset!r} have {data_channels} '
                     f'channel(s); set {field}={data_channels}')
