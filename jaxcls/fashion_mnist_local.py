"""A TFDS builder for Fashion-MNIST from local IDX files (no network).

Debian's ``dataset-fashion-mnist`` package installs the real Fashion-MNIST IDX
files in ``/usr/share/datasets/fashion-mnist``. TFDS's own ``fashion_mnist``
builder rejects them (their gzip bytes differ from the ones it checksums), so
this builder reads the same images and labels itself and writes a normal TFDS
dataset (``fashion_mnist_local``) that is read like any other.

The folder is ``$JAXCLS_FASHION_MNIST_DIR`` if set, else the Debian one. It
must hold the four standard files, gzipped or not:
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``.
"""

import gzip
import os

import numpy as np
import tensorflow_datasets as tfds

DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
CLASS_NAMES = [
    'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
    'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot',
]
_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}


class CorruptDatasetFileError(ValueError):
  """An IDX file is truncated or not an IDX file."""


def source_dir() -> str:
  return os.environ.get('JAXCLS_FASHION_MNIST_DIR', DEBIAN_DIR)


def _find(folder: str, stem: str) -> str | None:
  for name in (stem + '.gz', stem):
    path = os.path.join(folder, name)
    if os.path.exists(path):
      return path
  return None


def files_present(folder: str | None = None) -> bool:
  folder = folder or source_dir()
  return all(_find(folder, f) for pair in _FILES.values() for f in pair)


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (optionally gzipped) into a uint8 array.

  Raises CorruptDatasetFileError with the path if the file is damaged.
  """
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise CorruptDatasetFileError(f'cannot read {path}: {e}') from None
  if len(data) < 4 or data[:2] != b'\x00\x00' or data[2] != 0x08:
    raise CorruptDatasetFileError(f'{path} is not a uint8 IDX file')
  ndim = data[3]
  header = 4 + 4 * ndim
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big')
                for i in range(ndim))
  if len(data) != header + int(np.prod(shape)):
    raise CorruptDatasetFileError(
        f'{path} is truncated: header says {shape}, '
        f'file has {len(data) - header} bytes of data')
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def read_split(split: str, folder: str | None = None):
  """Returns ``(images (N, 28, 28, 1) uint8, labels (N,) int64)``."""
  folder = folder or source_dir()
  image_stem, label_stem = _FILES[split]
  images = read_idx(_find(folder, image_stem))
  labels = read_idx(_find(folder, label_stem)).astype(np.int64)
  if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
    raise CorruptDatasetFileError(
        f'{folder}: {split} images {images.shape} do not match labels '
        f'{labels.shape}')
  if labels.max(initial=0) > 9:
    raise CorruptDatasetFileError(f'{folder}: {split} labels exceed 9')
  return images[..., None], labels


class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST, prepared from local IDX files instead of a download."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Fashion-MNIST from local IDX files.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(28, 28, 1)),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://github.com/zalandoresearch/fashion-mnist',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    return {split: self._generate_examples(split) for split in _FILES}

  def _generate_examples(self, split):
    images, labels = read_split(split)
    for i in range(len(labels)):
      yield i, {'image': images[i], 'label': int(labels[i])}
