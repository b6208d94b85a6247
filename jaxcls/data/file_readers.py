"""The readers of the files MNIST, Fashion-MNIST and CIFAR-10 come in.

One reader per format: :func:`read_idx` (the four IDX files of LeCun's or
Zalando's site, torchvision's ``raw/``, Debian's ``dataset-fashion-mnist``),
:func:`read_npz` (Keras's ``mnist.npz``), :func:`read_cifar_python` and
:func:`read_cifar_binary` (CIFAR-10's tarballs or their extracted folders).
A damaged file, or one of the wrong shape or size, raises
:class:`CorruptDatasetFileError` with one line that names the file.

CIFAR-10's pickles are unpickled by an unpickler that refuses every global
but the few numpy ones a batch needs, so a planted pickle never runs code.
"""

import gzip
import io
import math
import os
import pickle
import tarfile

import numpy as np


class CorruptDatasetFileError(ValueError):
  """A source file is damaged, of another dataset, or of the wrong size."""


# A split as read from the files: uint8 images (N, H, W, C), int64 labels.
Arrays = tuple[np.ndarray, np.ndarray]


def reason(e: BaseException) -> str:
  """An exception's message on one line (tarfile's has several), short."""
  return ' '.join(str(e).split())[:200] or type(e).__name__


def _read_bytes(path: str) -> bytes:
  """The bytes of ``path``, gunzipped if its name ends in ``.gz``."""
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      return f.read()
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise CorruptDatasetFileError(f'cannot read {path}: {reason(e)}') from None


def read_idx(path: str) -> np.ndarray:
  """Reads one uint8 IDX file (optionally gzipped) into an array.

  Args:
    path: the file; a name ending in ``.gz`` is gunzipped.

  Returns:
    The uint8 array of the shape the file's header gives.

  Raises:
    CorruptDatasetFileError: the file cannot be read, is not a uint8 IDX
      file, or holds more or fewer bytes than its header says.
  """
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


def read_idx_files(train_images, train_labels, test_images, test_labels):
  """Reads MNIST-style splits from the four IDX files.

  Args:
    train_images, train_labels, test_images, test_labels: their paths.

  Returns:
    ``{'train': (images, labels), 'test': ...}``: uint8 (N, 28, 28, 1)
    images and int64 labels.

  Raises:
    CorruptDatasetFileError: as :func:`read_idx`, or for files whose shapes
      are not 28x28 images with one label each.
  """
  return {
    'train': _idx_split(train_images, train_labels),
    'test': _idx_split(test_images, test_labels),
  }


def read_npz(path: str) -> dict[str, Arrays]:
  """Reads Keras's ``mnist.npz`` layout: ``x_train, y_train, x_test, y_test``.

  Args:
    path: the ``.npz`` file.

  Returns:
    ``{'train': (images, labels), 'test': ...}``: uint8 (N, 28, 28, 1)
    images and int64 labels.

  Raises:
    CorruptDatasetFileError: the file cannot be read, lacks an array, or
      holds arrays of other types or shapes.
  """
  try:
    with np.load(path) as f:
      arrays = {k: f[k] for k in f.files}
  except Exception as e:  # zipfile/pickle errors of many kinds.
    raise CorruptDatasetFileError(
      f'cannot read {path}: {type(e).__name__}: {reason(e)}'
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
    raise CorruptDatasetFileError(f'cannot read {path}: {reason(e)}') from None
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
      f'{where} is not a CIFAR-10 batch ({type(e).__name__}: {reason(e)[:80]})'
    ) from None
  return flat, labels


def read_cifar_python(path: str) -> dict[str, Arrays]:
  """Reads ``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py/``.

  Args:
    path: the tarball or the folder.

  Returns:
    ``{'train': (images, labels), 'test': ...}``: uint8 (N, 32, 32, 3)
    images and int64 labels.

  Raises:
    CorruptDatasetFileError: a batch is missing, is not a CIFAR-10 batch, or
      refers to a global no batch needs (it is then never unpickled).
  """
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
  """Reads ``cifar-10-binary.tar.gz``: records of 1 label byte + 3072 pixels.

  Args:
    path: the tarball or its extracted ``cifar-10-batches-bin/`` folder.

  Returns:
    ``{'train': (images, labels), 'test': ...}``: uint8 (N, 32, 32, 3)
    images and int64 labels.

  Raises:
    CorruptDatasetFileError: a batch is missing, empty, or not a whole
      number of records.
  """
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
