"""Which files make each dataset, found in a folder, read and checked.

A :class:`Format` is one way of keeping a dataset in a folder (the four IDX
files, a Keras ``.npz``, a CIFAR-10 tarball or folder) with its reader from
:mod:`.file_readers`. :func:`read_folder` reads the first format found and
checks the arrays belong to the dataset asked for: labels inside the
classes, no empty split, and not MNIST's test labels where Fashion-MNIST's
were expected (or the other way around).
"""

import dataclasses
import os
from collections.abc import Callable

import numpy as np

from jaxcls.data import specs
from jaxcls.data.file_readers import (
  Arrays,
  CorruptDatasetFileError,
  read_cifar_binary,
  read_cifar_python,
  read_idx_files,
  read_npz,
)

# Label counts of the real test splits: they tell MNIST and Fashion-MNIST
# apart (same file names, same shapes), so a swapped folder is caught.
_TEST_LABEL_COUNTS = {
  'mnist': (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
  'fashion_mnist': (1000,) * 10,
}
TITLES = {
  'mnist': 'MNIST',
  'fashion_mnist': 'Fashion-MNIST',
  'cifar10': 'CIFAR-10',
}


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
  read_idx_files,
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
  """Finds the first format of ``name`` in ``folder`` or its ``raw/``.

  Args:
    name: ``mnist``, ``fashion_mnist`` or ``cifar10``.
    folder: the folder; its torchvision-style ``raw/`` subfolder is
      searched after it.

  Returns:
    ``(format, paths)`` of the first :class:`Format` found; None if none is.
  """
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
        f'{split} split of {TITLES[name]} would be empty; replace it with '
        'the complete file'
      )
    where = _split_file(paths, split, labels=True)
    if labels.min() < 0:
      raise CorruptDatasetFileError(
        f'{where}: {split} labels go down to {labels.min()}, but '
        f'{TITLES[name]} labels are 0..{num_classes - 1} (a damaged or '
        'edited file?); fix the file or use the original'
      )
    if labels.max() >= num_classes:
      raise CorruptDatasetFileError(
        f'{where}: {split} labels go up to {labels.max()}, but '
        f'{TITLES[name]} has {num_classes} classes (another dataset?)'
      )


def _check(name: str, splits: dict[str, Arrays], paths) -> None:
  """Raises CorruptDatasetFileError if the arrays are not ``name``'s."""
  _check_splits(name, splits, paths)
  where = ', '.join(paths) if len(paths) == 1 else os.path.dirname(paths[0])
  counts = tuple(np.bincount(splits['test'][1], minlength=10).tolist())
  for other, known in _TEST_LABEL_COUNTS.items():
    if other != name and name in _TEST_LABEL_COUNTS and counts == known:
      raise CorruptDatasetFileError(
        f'{where} holds {TITLES[other]}, not {TITLES[name]} (its test '
        f"labels count {TITLES[other]}'s); use --config.dataset={other} "
        'or a folder with the right files'
      )


def read_folder(name: str, folder: str) -> dict[str, Arrays]:
  """Reads and checks ``name``'s files from ``folder``.

  Args:
    name: ``mnist``, ``fashion_mnist`` or ``cifar10``.
    folder: the folder of the files (see :func:`find_files`).

  Returns:
    ``{'train': (images, labels), 'test': ...}``, as the readers give them.

  Raises:
    CorruptDatasetFileError: (one line, naming the file) the files are
      damaged, of another dataset or of the wrong size, hold labels outside
      the classes or a split of 0 examples.
    FileNotFoundError: ``folder`` is missing or holds no usable files.
  """
  if not os.path.isdir(folder):
    raise FileNotFoundError(
      f'{folder} is not a folder; put {files_wanted(name)} there'
    )
  found = find_files(name, folder)
  if found is None:
    raise FileNotFoundError(
      f'no {TITLES[name]} files in {folder}: expected {files_wanted(name)}'
    )
  fmt, paths = found
  splits = fmt.read(*paths)
  _check(name, splits, paths)
  return splits
