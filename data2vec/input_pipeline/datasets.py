"""Prepared data sets by name: what `config.input.dataset` names and the pipelines open.

A user's data set is the folder DATA_DIR/NAME that `scripts/prepare_data.py {images,audio,text}
--src SRC --name NAME` writes (data2vec/preparation/), described by its `dataset.json`:

  format    'images' | 'audio' | 'text' (FORMATS: the modality follows from it)
  version   FORMAT_VERSION
  name      NAME;  source: the --src it was prepared from
  splits    {split: number of examples (images, clips or documents)}
  classes   [class name, ...] (label i is classes[i]) or null when unlabelled
  skipped   {'count': n, 'first': [path, ...]}: sources that could not be decoded
  ...       what the format adds (data2vec/preparation/<format>.py documents its files)

The bundled sets of `scripts/prepare_data.py {vision,audio,text}` are known by name (BUNDLED):
Fashion-MNIST is written as a prepared image set, DATA_DIR/fashion_mnist, and the speech sets as
prepared audio sets, DATA_DIR/{speech_pool,spoken_digits,spoken_digit_strings}, and the text
sets as prepared text sets, DATA_DIR/{python_docs,wordnet_glosses,wordnet_supersense,
wordnet_supersense_gpt2,english,debian_packages,wordnet_supersense_english}
(data2vec/preparation/bundled_text.py: each in one tokenizer).
"""
import dataclasses
import json
import pathlib
import re

FORMAT_VERSION = 1
META_FILE = 'dataset.json'
FORMATS = {'images': 'vision', 'audio': 'audio', 'text': 'text'}  # format -> modality
PREPARE_COMMAND = {'vision': 'images', 'audio': 'audio', 'text': 'text'}  # modality -> command
BUNDLED = {
    'fashion_mnist': 'vision',
    'speech_pool': 'audio', 'spoken_digits': 'audio', 'spoken_digit_strings': 'audio',
    'python_docs': 'text', 'wordnet_glosses': 'text', 'wordnet_supersense': 'text',
    'wordnet_supersense_gpt2': 'text', 'english': 'text', 'debian_packages': 'text',
    'wordnet_supersense_english': 'text',
}
# Folders of DATA_DIR that are not data sets: the bundled sets' parents and the download cache.
RESERVED = frozenset({'cache'})
NAME_PATTERN = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]{0,63}')


@dataclasses.dataclass(frozen=True)
class Dataset:
  """An opened user data set: `meta` is its dataset.json."""
  name: str
  path: pathlib.Path
  meta: dict

  @property
  def format(self):
    return self.meta['format']

  @property
  def modality(self):
    return FORMATS[self.meta['format']]

  @property
  def classes(self):
    return tuple(self.meta['classes']) if self.meta.get('classes') else ()

  def num_examples(self, split):
    return self.meta['splits'][split]

  def check_split(self, split, field='split'):
    if split not in self.meta['splits']:
      raise ValueError(f'{field}={split!r}: {self.path} has the splits '
                       f'{sorted(self.meta["splits"])}')


def check_name(name, *, bundled=False):
  """A --name for a new data set: a plain folder name, not a bundled set's (unless `bundled`:
  prepare_data.py writing one of them)."""
  if not NAME_PATTERN.fullmatch(name or '') or name.endswith(('.tmp', '.old', '.partial')):
    raise ValueError(f'--name={name!r}: use letters, digits, _ . - (at most 64; not ending in '
                     '.tmp, .old or .partial)')
  if (name in BUNDLED and not bundled) or name in RESERVED:
    raise ValueError(f'--name={name!r} is a bundled data set or folder of DATA_DIR; choose another')
  return name


def is_bundled(name):
  return name in BUNDLED


def modality_of(data_dir, name, field='config.input.dataset'):
  """The modality of a bundled or prepared data set (opens dataset.json only)."""
  if name in BUNDLED:
    return BUNDLED[name]
  return load(data_dir, name, field=field).modality


def load(data_dir, name, *, modality=None, field='config.input.dataset'):
  """Opens the prepared data set DATA_DIR/NAME; errors name `field` and the file."""
  if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name in RESERVED:
    raise ValueError(f'{field}={name!r} is not a data set name')
  if name in BUNDLED and modality is not None and BUNDLED[name] != modality:
    raise ValueError(f'{field}={name!r} is a {BUNDLED[name]} data set; the config is for '
                     f'{modality}')
  path = pathlib.Path(data_dir) / name
  meta_path = path / META_FILE
  if not meta_path.is_file() and name in BUNDLED:
    raise ValueError(f'{field}={name!r}: {meta_path} does not exist; run `python '
                     f'scripts/prepare_data.py {BUNDLED[name]} --data_dir {data_dir}`')
  if not meta_path.is_file():
    command = PREPARE_COMMAND.get(modality, '{images,audio,text}')
    raise ValueError(f'{field}={name!r}: {meta_path} does not exist (bundled sets: '
                     f'{", ".join(sorted(BUNDLED))}); prepare your data with `python '
                     f'scripts/prepare_data.py {command} --src SRC --name {name} --data_dir '
                     f'{data_dir}`')
  try:
    meta = json.loads(meta_path.read_text(encoding='utf-8'))
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f'{meta_path}: not a JSON file ({e}); prepare the data set again') from None
  if (not isinstance(meta, dict) or meta.get('format') not in FORMATS
      or not isinstance(meta.get('splits'), dict)):
    raise ValueError(f'{meta_path}: not a data set description (needs "format" in '
                     f'{sorted(FORMATS)} and "splits"); prepare the data set again')
  if meta.get('version') != FORMAT_VERSION:
    raise ValueError(f'{meta_path}: format version {meta.get("version")!r}, this code reads '
                     f'{FORMAT_VERSION}; prepare the data set again')
  dataset = Dataset(name=name, path=path, meta=meta)
  if modality is not None and dataset.modality != modality:
    raise ValueError(f'{field}={name!r} is a {dataset.modality} data set ({meta_path}); the '
                     f'config is for {modality}')
  return dataset
