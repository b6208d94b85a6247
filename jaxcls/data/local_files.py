"""MNIST, Fashion-MNIST and CIFAR-10 from files a user already has (no network).

People keep these datasets in the forms their first framework left behind:
the four IDX files (from Yann LeCun's or Zalando's site, torchvision's
``MNIST/raw`` folder, Debian's ``dataset-fashion-mnist``), Keras's
``mnist.npz``, or CIFAR-10's Python or binary tarball. TFDS's own builders
download and checksum their files, so they reject most of these copies
(Debian's gzip bytes differ from the ones TFDS checksums, for example).

``LocalFiles`` is one TFDS builder, with one config per dataset
(``local_files/mnist``, ``local_files/fashion_mnist``, ``local_files/cifar10``),
that reads any of these forms from a folder and writes a normal TFDS dataset,
read like any other. It follows TFDS's manual-download convention: the folder
is handed over as ``DownloadConfig(manual_dir=...)``.

Which folder (:func:`candidate_folders`): ``--config.manual_dir`` if set;
else TFDS's default manual folder, ``<data_dir>/downloads/manual/<name>`` or
``<data_dir>/downloads/manual``; for Fashion-MNIST also
``$JAXCLS_FASHION_MNIST_DIR``, else Debian's folder. A folder's ``raw/``
subfolder (torchvision's layout) is searched as well.

Each file format has one reader (:func:`read_idx`, :func:`read_npz`,
:func:`read_cifar_python`, :func:`read_cifar_binary`). A damaged file, a file
of the wrong dataset or one of the wrong size, labels outside the classes or
a split of 0 examples raises :class:`CorruptDatasetFileError` with one line
that names the file. CIFAR-10's pickles are unpickled by an unpickler that
refuses every global but the few numpy ones a batch needs.

Prepared copies are keyed by what they were made from
(:func:`source_fingerprint`): the copy of files with fingerprint F is the
TFDS dataset under ``<data_dir>/local_files/<name>/by_source/F``, so changed
files are prepared again and unchanged ones are read from their copy.
Without source files (no ``--config.manual_dir`` and none in the default
folders), the newest copy is read; an explicit ``--config.manual_dir`` that
is missing or holds no files is an error, never a silent old copy.
"""

import dataclasses
import glob
import gzip
import hashlib
import io
import math
import os
import pickle
import tarfile
from collections.abc import Callable

import numpy as np
import tensorflow_datasets as tfds

from jaxcls.data import specs

DEBIAN_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_ENV = 'JAXCLS_FASHION_MNIST_DIR'

# Label counts of the real test splits: they tell MNIST and Fashion-MNIST
# apart (same file names, same shapes), so a swapped folder is caught.
_TEST_LABEL_COUNTS = {
  'mnist': (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
  'fashion_mnist': (1000,) * 10,
}
_TITLES = {
  'mnist': 'MNIST',
  'fashion_mnist': 'Fashion-MNIST',
  'cifar10': 'CIFAR-10',
}


class CorruptDatasetFileError(ValueError):
  """A source file is damaged, of another dataset, or of the wrong size."""


# A split as read from the files: uint8 images (N, H, W, C), int64 labels.
Arrays = tuple[np.ndarray, np.ndarray]


# ----------------------------------------------------------------- readers.


def _reason(e: BaseException) -> str:
  """An exception's message on one line (tarfile's has several), short."""
  return ' '.join(str(e).split())[:200] or type(e).__name__


def _read_bytes(path: str) -> bytes:
  """The bytes of ``path``, gunzipped if its name ends in ``.gz``."""
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      return f.read()
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise CorruptDatasetFileError(f'cannot read {path}: {_reason(e)}') from None


def read_idx(path: str) -> np.ndarray:
  """Reads one uint8 IDX file (optionally gzipped) into an array."""
  raw = _read_bytes(path)
  if len(raw) < 4 or raw[:2] != b'\x00\x00' or raw[2] != 0x08:
    raise CorruptDatasetFileError(f'{path} is not a uint8 IDX file')
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise CorruptDatasetFileError(
      f'{path} is truncated: it ends after {len(raw)} bytes, inside its '
      f'{header}-byte header; replace it with a complete copy'
    )
  shape = tuple(
    int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], 'big') for i in range(ndim)
  )
  size = math.prod(shape)  # Python ints: 2**32 * 2**32 does not wrap to 0.
  if len(raw) - header != size:
    problem = 'truncated' if len(raw) - header < size else 'too long'
    raise CorruptDatasetFileError(
      f'{path} is {problem}: its header says {shape} ({size} bytes of '
      f'data), the file has {len(raw) - header} bytes of data; replace it '
      'with a complete copy'
    )
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _idx_split(images_path: str, labels_path: str) -> Arrays:
  images, labels = read_idx(images_path), read_idx(labels_path)
  if images.ndim != 3 or images.shape[1:] != (28, 28):
    raise CorruptDatasetFileError(
      f'{images_path} holds images of shape {images.shape[1:]}, expected '
      '28x28 (wrong file?)'
    )
  if labels.ndim != 1 or len(labels) != len(images):
    raise CorruptDatasetFileError(
      f'{labels_path} holds {labels.shape} labels for the {len(images)} '
      f'images of {images_path} (files of different sets?)'
    )
  return images[..., None], labels.astype(np.int64)


def read_npz(path: str) -> dict[str, Arrays]:
  """Keras's ``mnist.npz`` layout: ``x_train, y_train, x_test, y_test``."""
  try:
    with np.load(path) as f:
      arrays = {k: f[k] for k in f.files}
  except Exception as e:  # zipfile/pickle errors of many kinds.
    raise CorruptDatasetFileError(
      f'cannot read {path}: {type(e).__name__}: {_reason(e)}'
    ) from None
  missing = {'x_train', 'y_train', 'x_test', 'y_test'} - set(arrays)
  if missing:
    raise CorruptDatasetFileError(
      f'{path} lacks the arrays {sorted(missing)} of a Keras dataset '
      f'(has {sorted(arrays)})'
    )
  splits = {}
  for split in ('train', 'test'):
    x, y = arrays[f'x_{split}'], arrays[f'y_{split}']
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
      raise CorruptDatasetFileError(
        f'{path}: x_{split} is {x.dtype} {x.shape}, expected uint8 '
        '(N, 28, 28) (wrong file?)'
      )
    if y.ndim != 1 or len(y) != len(x):
      raise CorruptDatasetFileError(
        f'{path}: y_{split} has shape {y.shape} for {len(x)} images'
      )
    splits[split] = (x[..., None], y.astype(np.int64))
  return splits


def _cifar_members(path: str, names: list[str]) -> dict[str, bytes]:
  """The bytes of files ``names`` (relative) from a tarball or a folder."""
  out = {}
  if os.path.isdir(path):
    for name in names:
      file = os.path.join(path, os.path.basename(name))
      if not os.path.exists(file):
        raise CorruptDatasetFileError(f'{path} lacks {os.path.basename(name)}')
      with open(file, 'rb') as f:
        out[name] = f.read()
    return out
  try:
    with tarfile.open(path) as tar:
      for name in names:
        try:
          out[name] = tar.extractfile(name).read()
        except KeyError:
          raise CorruptDatasetFileError(
            f'{path} has no {name} (not a CIFAR-10 tarball?)'
          ) from None
  except (tarfile.TarError, OSError, EOFError) as e:
    raise CorruptDatasetFileError(f'cannot read {path}: {_reason(e)}') from None
  return out


def _cifar_hwc(flat: np.ndarray, where: str) -> np.ndarray:
  """Rows of 3072 bytes (R plane, G plane, B plane) to (N, 32, 32, 3)."""
  if flat.ndim != 2 or flat.shape[1] != 3072:
    raise CorruptDatasetFileError(
      f'{where} holds rows of shape {flat.shape[1:]}, expected 3072 bytes '
      '(32x32x3; wrong file?)'
    )
  return flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


_CIFAR_BATCHES = {
  'train': [f'data_batch_{i}' for i in range(1, 6)],
  'test': ['test_batch'],
}


# The globals that CIFAR-10's python batches refer to: a batch is a dict of
# bytes, lists of ints and bytes and one uint8 array, which pickle rebuilds
# with these (numpy 1, as in CIFAR's own files, wrote ``numpy.core``; numpy
# 2 writes ``numpy._core``). Nothing else is ever looked up.
_CIFAR_PICKLE_GLOBALS = frozenset(
  {
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'),
    ('numpy', 'ndarray'),
    ('numpy', 'dtype'),
  }
)


class _RefusedGlobalError(pickle.UnpicklingError):
  """A pickle asked for a global that no CIFAR-10 batch needs."""


class _CifarUnpickler(pickle.Unpickler):
  """Unpickles CIFAR-10 batches and nothing else.

  Any global but those of ``_CIFAR_PICKLE_GLOBALS`` is refused before it is
  imported, so a planted pickle's payload (``os.system``, ``eval``, ...)
  never runs.
  """

  def find_class(self, module, name):
    if (module, name) not in _CIFAR_PICKLE_GLOBALS:
      raise _RefusedGlobalError(f'{module}.{name}')
    return super().find_class(module, name)


def _unpickle_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
  """A CIFAR-10 python batch's (rows, labels), with the restricted unpickler."""
  try:
    batch = _CifarUnpickler(io.BytesIO(raw), encoding='bytes').load()
    flat = np.asarray(batch[b'data'], np.uint8)
    labels = np.asarray(batch[b'labels'], np.int64)
  except _RefusedGlobalError as e:
    raise CorruptDatasetFileError(
      f'{where} refers to {e}, which no CIFAR-10 batch does: refused to '
      'unpickle it (tampered with, or not CIFAR-10); replace it with the '
      'original file'
    ) from None
  except Exception as e:  # Unpickling garbage raises many types.
    raise CorruptDatasetFileError(
      f'{where} is not a CIFAR-10 batch ({type(e).__name__}: {_reason(e)[:80]})'
    ) from None
  return flat, labels


def read_cifar_python(path: str) -> dict[str, Arrays]:
  """``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py/``."""
  names = {
    s: [f'cifar-10-batches-py/{b}' for b in batches]
    for s, batches in _CIFAR_BATCHES.items()
  }
  files = _cifar_members(path, sum(names.values(), []))
  splits = {}
  for split, members in names.items():
    images, labels = [], []
    for name in members:
      where = f'{path}: {os.path.basename(name)}'
      flat, batch_labels = _unpickle_batch(files[name], where)
      images.append(_cifar_hwc(flat, where))
      if len(batch_labels) != len(images[-1]):
        raise CorruptDatasetFileError(
          f'{where} has {len(batch_labels)} labels for {len(images[-1])} images'
        )
      labels.append(batch_labels)
    splits[split] = (np.concatenate(images), np.concatenate(labels))
  return splits


def read_cifar_binary(path: str) -> dict[str, Arrays]:
  """``cifar-10-binary.tar.gz``: records of 1 label byte + 3072 pixels."""
  names = {
    s: [f'cifar-10-batches-bin/{b}.bin' for b in batches]
    for s, batches in _CIFAR_BATCHES.items()
  }
  files = _cifar_members(path, sum(names.values(), []))
  splits = {}
  for split, members in names.items():
    images, labels = [], []
    for name in members:
      where = f'{path}: {os.path.basename(name)}'
      raw = np.frombuffer(files[name], np.uint8)
      if raw.size == 0 or raw.size % 3073:
        raise CorruptDatasetFileError(
          f'{where} is {raw.size} bytes, not a multiple of 3073 (one label '
          'byte and 32x32x3 pixels per image); damaged or not CIFAR-10'
        )
      records = raw.reshape(-1, 3073)
      images.append(_cifar_hwc(records[:, 1:], where))
      labels.append(records[:, 0].astype(np.int64))
    splits[split] = (np.concatenate(images), np.concatenate(labels))
  return splits


# ----------------------------------------------------------------- formats.


@dataclasses.dataclass(frozen=True)
class Format:
  """One way of keeping a dataset in a folder, and its reader."""

  description: str  # the files, as the user would put them in the folder
  find: Callable[[str], tuple[str, ...] | None]  # their paths, or None
  read: Callable[..., dict[str, Arrays]]  # paths -> {'train': .., 'test': ..}


def _first(folder: str, names: tuple[str, ...]) -> str | None:
  for name in names:
    path = os.path.join(folder, name)
    if os.path.exists(path):
      return path
  return None


_IDX_STEMS = (
  'train-images-idx3-ubyte',
  'train-labels-idx1-ubyte',
  't10k-images-idx3-ubyte',
  't10k-labels-idx1-ubyte',
)


def _find_idx(folder: str) -> tuple[str, ...] | None:
  paths = []
  for stem in _IDX_STEMS:
    dotted = stem.replace('-idx', '.idx')  # Kaggle's spelling
    path = _first(folder, (stem + '.gz', stem, dotted + '.gz', dotted))
    if path is None:
      return None
    paths.append(path)
  return tuple(paths)


def _read_idx_files(train_images, train_labels, test_images, test_labels):
  return {
    'train': _idx_split(train_images, train_labels),
    'test': _idx_split(test_images, test_labels),
  }


def _finder(*names: str) -> Callable[[str], tuple[str, ...] | None]:
  def find(folder):
    path = _first(folder, names)
    return None if path is None else (path,)

  return find


_IDX = Format(
  'the four IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, '
  't10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each gzipped .gz or '
  "not; torchvision's raw/ folder as it is)",
  _find_idx,
  _read_idx_files,
)

FORMATS = {
  'mnist': (_IDX, Format("Keras's mnist.npz", _finder('mnist.npz'), read_npz)),
  'fashion_mnist': (
    _IDX,
    Format(
      'fashion-mnist.npz (Keras layout: x_train, y_train, x_test, y_test)',
      _finder('fashion-mnist.npz', 'fashion_mnist.npz'),
      read_npz,
    ),
  ),
  'cifar10': (
    Format(
      'cifar-10-python.tar.gz or its extracted cifar-10-batches-py/ folder',
      _finder('cifar-10-python.tar.gz', 'cifar-10-batches-py'),
      read_cifar_python,
    ),
    Format(
      'cifar-10-binary.tar.gz or its extracted cifar-10-batches-bin/ folder',
      _finder('cifar-10-binary.tar.gz', 'cifar-10-batches-bin'),
      read_cifar_binary,
    ),
  ),
}


def files_wanted(name: str) -> str:
  """What a folder must hold for ``name``, in words (for error messages)."""
  return ', or '.join(f.description for f in FORMATS[name])


def find_files(name: str, folder: str):
  """``(format, paths)`` of the first format of ``name`` found in ``folder``
  or its torchvision-style ``raw/`` subfolder; None if there is none."""
  for where in (folder, os.path.join(folder, 'raw')):
    for fmt in FORMATS[name]:
      paths = fmt.find(where)
      if paths:
        return fmt, paths
  return None


def _split_file(paths: tuple[str, ...], split: str, labels=False) -> str:
  """The file among ``paths`` that holds ``split``'s images (or labels)."""
  if len(paths) == len(_IDX_STEMS):  # One IDX file per split and kind.
    return paths[(0 if split == 'train' else 2) + int(labels)]
  return paths[0]


def _check_splits(name: str, splits: dict[str, Arrays], paths) -> None:
  """Raises CorruptDatasetFileError, naming the split and its file, for a
  split of 0 examples or labels outside ``0..num_classes - 1``."""
  num_classes = specs.get_spec(name).num_classes
  for split, (_, labels) in splits.items():
    if not len(labels):
      raise CorruptDatasetFileError(
        f'{_split_file(paths, split)} holds 0 {split} examples, so the '
        f'{split} split of {_TITLES[name]} would be empty; replace it with '
        'the complete file'
      )
    where = _split_file(paths, split, labels=True)
    if labels.min() < 0:
      raise CorruptDatasetFileError(
        f'{where}: {split} labels go down to {labels.min()}, but '
        f'{_TITLES[name]} labels are 0..{num_classes - 1} (a damaged or '
        'edited file?); fix the file or use the original'
      )
    if labels.max() >= num_classes:
      raise CorruptDatasetFileError(
        f'{where}: {split} labels go up to {labels.max()}, but '
        f'{_TITLES[name]} has {num_classes} classes (another dataset?)'
      )


def _check(name: str, splits: dict[str, Arrays], paths) -> None:
  """Raises CorruptDatasetFileError if the arrays are not ``name``'s."""
  _check_splits(name, splits, paths)
  where = ', '.join(paths) if len(paths) == 1 else os.path.dirname(paths[0])
  counts = tuple(np.bincount(splits['test'][1], minlength=10).tolist())
  for other, known in _TEST_LABEL_COUNTS.items():
    if other != name and name in _TEST_LABEL_COUNTS and counts == known:
      raise CorruptDatasetFileError(
        f'{where} holds {_TITLES[other]}, not {_TITLES[name]} (its test '
        f"labels count {_TITLES[other]}'s); use --config.dataset={other} "
        'or a folder with the right files'
      )


def read_folder(name: str, folder: str) -> dict[str, Arrays]:
  """``{'train': (images, labels), 'test': ...}`` of ``name`` from ``folder``.

  Raises CorruptDatasetFileError (one line, naming the file) if the files
  found are damaged, of another dataset or of the wrong size, hold labels
  outside the classes or a split of 0 examples, and FileNotFoundError if the
  folder holds no usable files.
  """
  if not os.path.isdir(folder):
    raise FileNotFoundError(
      f'{folder} is not a folder; put {files_wanted(name)} there'
    )
  found = find_files(name, folder)
  if found is None:
    raise FileNotFoundError(
      f'no {_TITLES[name]} files in {folder}: expected {files_wanted(name)}'
    )
  fmt, paths = found
  splits = fmt.read(*paths)
  _check(name, splits, paths)
  return splits


def _data_root(data_dir: str | None) -> str:
  """``data_dir``, or TFDS's default data folder, with ``~`` expanded."""
  return os.path.expanduser(
    data_dir or tfds.core.constants.get_default_data_dir()
  )


def default_manual_dir(name: str, data_dir: str | None) -> str:
  """TFDS's manual folder for ``name``: ``<data_dir>/downloads/manual``."""
  return os.path.join(_data_root(data_dir), 'downloads', 'manual', name)


def candidate_folders(
  name: str, manual_dir: str | None, data_dir: str | None
) -> list[str]:
  """The folders searched for ``name``'s files, in order (see the module
  docstring). An explicit ``manual_dir`` is the only one searched."""
  if manual_dir:
    return [os.path.expanduser(manual_dir)]
  tfds_manual = default_manual_dir(name, data_dir)
  folders = [tfds_manual, os.path.dirname(tfds_manual)]
  if name == 'fashion_mnist':
    folders.append(os.environ.get(FASHION_MNIST_ENV, DEBIAN_FASHION_MNIST_DIR))
  return folders


def files_present(
  name: str = 'fashion_mnist',
  manual_dir: str | None = None,
  data_dir: str | None = None,
) -> bool:
  """Whether some folder holds files of ``name`` (not whether they are good)."""
  return any(
    find_files(name, f) for f in candidate_folders(name, manual_dir, data_dir)
  )


def unavailable_message(name: str, data_dir: str) -> str:
  """The one line for a dataset that is neither prepared nor downloadable."""
  msg = (
    f"dataset '{name}' is not prepared in {data_dir} and cannot be "
    f'downloaded (no network). Put {files_wanted(name)} in a folder and '
    f'pass --config.manual_dir=FOLDER, or put them in '
    f'{default_manual_dir(name, data_dir)}; or prepare it where there is '
    f'network with `tfds build {name} --data_dir DIR` and copy '
    f'DIR/{name} into {data_dir} (or point --config.data_dir or '
    'TFDS_DATA_DIR at a folder that holds it)'
  )
  if name == 'fashion_mnist':
    msg += (
      f'; or `apt-get install dataset-fashion-mnist` '
      f'(or set ${FASHION_MNIST_ENV} to a folder of the IDX files)'
    )
  return msg + '.'


# ----------------------------------------------------------------- builder.


class LocalFiles(tfds.core.GeneratorBasedBuilder):
  """MNIST, Fashion-MNIST or CIFAR-10 prepared from local files."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'The tutorial datasets from local files.'}
  BUILDER_CONFIGS = [
    tfds.core.BuilderConfig(
      name=n, description=f'{_TITLES[n]} from local files: {files_wanted(n)}'
    )
    for n in FORMATS
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = '\n'.join(
    f'{_TITLES[n]}: {files_wanted(n)}.' for n in FORMATS
  )

  def _info(self) -> tfds.core.DatasetInfo:
    spec = specs.get_spec(self.builder_config.name)
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=spec.image_shape),
          'label': tfds.features.ClassLabel(names=list(spec.class_names)),
        }
      ),
      supervised_keys=('image', 'label'),
    )

  # The arrays that get_builder read and checked, if it did: they are what
  # the copy is keyed by, and they are not read twice.
  source_splits: dict[str, Arrays] | None = None

  def _split_generators(self, dl_manager):
    splits = self.source_splits or read_folder(
      self.builder_config.name, str(dl_manager.manual_dir)
    )
    return {
      split: self._generate_examples(*arrays)
      for split, arrays in splits.items()
    }

  def _generate_examples(self, images, labels):
    for i in range(len(labels)):
      yield i, {'image': images[i], 'label': int(labels[i])}


def _files_under(path: str) -> list[str]:
  """``path`` if it is a file, else every file under it, in sorted order."""
  if not os.path.isdir(path):
    return [path]
  files = []
  for parent, dirs, names in os.walk(path):
    dirs.sort()
    files += [os.path.join(parent, n) for n in sorted(names)]
  return files


def source_fingerprint(paths: tuple[str, ...]) -> str:
  """What a prepared copy is made from: a hash of the source files' names,
  sizes and modification times (nanoseconds), not of their bytes.

  Why not the bytes: every run computes it (twice: the CLI's early check and
  the loader), and stat'ing four files is free where hashing CIFAR-10's 170
  MB is not; an edit, a new download or a copy (``cp`` without ``-p``) gives
  a file a new modification time, so changed files are never missed unless
  one forges the time. The names are relative to the folder that holds
  them, not absolute: a moved folder (``mv`` keeps the times) reuses its
  copy.
  """
  entries = []
  for path in paths:
    top = os.path.dirname(path)
    for file in _files_under(path):
      st = os.stat(file)
      entries.append(
        f'{os.path.relpath(file, top)}\t{st.st_size}\t{st.st_mtime_ns}'
      )
  return hashlib.sha256('\n'.join(entries).encode()).hexdigest()[:16]


def copy_dir(name: str, data_dir: str | None, fingerprint: str) -> str:
  """The TFDS data folder of ``name``'s copy made from the source files of
  ``fingerprint``: ``<data_dir>/local_files/<name>/by_source/<fingerprint>``
  (the dataset itself is in its ``local_files/<name>/1.0.0``)."""
  root = _data_root(data_dir)
  return os.path.join(root, 'local_files', name, 'by_source', fingerprint)


def _find_source(name: str, manual_dir, data_dir):
  """``(folder, paths)`` of the first candidate folder holding ``name``'s
  files; None if none does."""
  for folder in candidate_folders(name, manual_dir, data_dir):
    found = find_files(name, folder)
    if found:
      return folder, found[1]
  return None


def _version_dir(tfds_dir: str, name: str) -> str:
  """Where the builder of data folder ``tfds_dir`` keeps ``name``'s copy."""
  return os.path.join(tfds_dir, 'local_files', name, str(LocalFiles.VERSION))


def _newest_copy(name: str, data_dir: str | None):
  """The builder of the newest prepared copy of ``name`` (one keyed by its
  source, or one an older jaxcls prepared in ``<data_dir>/local_files``);
  None if there is none."""
  keyed = glob.glob(
    os.path.join(glob.escape(copy_dir(name, data_dir, '')), '*')
  )
  tfds_dirs = [
    d
    for d in [*keyed, _data_root(data_dir)]
    if os.path.exists(os.path.join(_version_dir(d, name), 'dataset_info.json'))
  ]
  if not tfds_dirs:
    return None
  newest = max(tfds_dirs, key=lambda d: os.path.getmtime(_version_dir(d, name)))
  return LocalFiles(config=name, data_dir=newest)


def _label_range(folder: str) -> tuple[int, int]:
  """The smallest and largest label in a prepared copy's TFRecord files."""
  import tensorflow as tf  # Imported by TFDS already.

  spec = {'label': tf.io.FixedLenFeature([], tf.int64)}
  lo, hi = 0, 0
  for path in sorted(
    glob.glob(os.path.join(glob.escape(folder), '*.tfrecord*'))
  ):
    for records in tf.data.TFRecordDataset(path).batch(8192):
      labels = tf.io.parse_example(records, spec)['label'].numpy()
      if labels.size:
        lo, hi = min(lo, int(labels.min())), max(hi, int(labels.max()))
  return lo, hi


# The copies this process found good, by folder and info file time: the CLI
# and the loader both ask for the builder, the labels are read once.
_CHECKED: set[tuple[str, int]] = set()


def check_prepared(builder, name: str) -> None:
  """Raises CorruptDatasetFileError, naming the folder to delete, if a
  prepared copy holds labels outside the classes (an older jaxcls let a -1
  through) or cannot be read. Reads only the labels: about 0.2 s for
  Fashion-MNIST."""
  import tensorflow as tf

  folder = str(builder.data_dir)
  key = (folder, os.stat(os.path.join(folder, 'dataset_info.json')).st_mtime_ns)
  if key in _CHECKED:
    return
  num_classes = specs.get_spec(name).num_classes
  try:
    lo, hi = _label_range(folder)
  except tf.errors.OpError as e:
    raise CorruptDatasetFileError(
      f'the prepared copy {folder} is corrupt ({type(e).__name__}: '
      f'{_reason(e)[:100]}); delete that folder so that it is prepared again'
    ) from None
  if lo < 0 or hi >= num_classes:
    raise CorruptDatasetFileError(
      f'the prepared copy {folder} holds labels from {lo} to {hi}, outside '
      f'0..{num_classes - 1} (made from bad files by an older jaxcls?); '
      'delete that folder so that it is prepared again from good files'
    )
  _CHECKED.add(key)


def get_builder(
  name: str, data_dir: str | None = None, manual_dir: str | None = None
):
  """The prepared ``local_files/<name>`` builder of the first folder that
  holds ``name``'s files: the copy made from those files as they are now
  (see :func:`source_fingerprint`), prepared if there is none. Without such
  a folder, the newest prepared copy; None if there is none either.

  Raises FileNotFoundError if ``manual_dir`` is given but is missing or holds
  no usable files (an old copy is not used then), and CorruptDatasetFileError
  for damaged or wrong files, or a prepared copy that holds bad labels.
  """
  found = _find_source(name, manual_dir, data_dir)
  if found is None:
    if manual_dir:  # Asked for explicitly: say what is missing there.
      read_folder(name, candidate_folders(name, manual_dir, data_dir)[0])
    builder = _newest_copy(name, data_dir)
    if builder is not None:
      check_prepared(builder, name)
    return builder
  folder, paths = found
  tfds_dir = copy_dir(name, data_dir, source_fingerprint(paths))
  builder = LocalFiles(config=name, data_dir=tfds_dir)
  if builder.is_prepared():
    check_prepared(builder, name)
    return builder
  # Read and checked before anything is written: a bad file leaves nothing.
  builder.source_splits = read_folder(name, folder)
  specs.prepare(
    builder,
    download_config=tfds.download.DownloadConfig(manual_dir=folder),
    download_dir=os.path.join(_data_root(data_dir), 'downloads'),
  )
  return LocalFiles(config=name, data_dir=tfds_dir)  # Reads the new info.
