"""The datasets jaxcls knows, the containers a split is read into, and
preparing a TFDS builder once.

A fixed dataset's spec (image shape, classes, augmentation) is a table entry;
an image folder's comes from its prepared files.
"""

import dataclasses
import io
import os
import time

import numpy as np

# Where each stock TFDS builder downloads from: probed (3 s timeout) before a
# download is tried, because TFDS itself retries offline for minutes.
_DOWNLOAD_HOSTS = {
  'mnist': 'storage.googleapis.com',
  'fashion_mnist': 'fashion-mnist.s3-website.eu-central-1.amazonaws.com',
  'cifar10': 'www.cs.toronto.edu',
}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What a model is built for: one example's shape, the classes.

  For images ``image_shape`` is (H, W, C) of uint8 pixels; for sequences it
  is one padded example, ``(max_len,)`` int32 token ids or ``(max_len, C)``
  float32 features (``input_dtype``).
  """

  image_shape: tuple[int, ...]
  num_classes: int
  augment: bool  # random crop (padding 4) + horizontal flip when training
  class_names: tuple[str, ...] = ()  # label i is class_names[i]
  input_dtype: str = 'uint8'  # 'int32' token ids, 'float32' features

  @property
  def is_sequence(self) -> bool:
    return self.input_dtype != 'uint8'


DATASETS = {
  'mnist': DatasetSpec(
    (28, 28, 1), 10, augment=False, class_names=tuple(str(i) for i in range(10))
  ),
  'fashion_mnist': DatasetSpec(
    (28, 28, 1),
    10,
    augment=False,
    class_names=(
      'T-shirt/top',
      'Trouser',
      'Pullover',
      'Dress',
      'Coat',
      'Sandal',
      'Shirt',
      'Sneaker',
      'Bag',
      'Ankle boot',
    ),
  ),
  'cifar10': DatasetSpec(
    (32, 32, 3),
    10,
    augment=True,
    class_names=(
      'airplane',
      'automobile',
      'bird',
      'cat',
      'deer',
      'dog',
      'frog',
      'horse',
      'ship',
      'truck',
    ),
  ),
}


# A folder of class folders (jaxcls/data/image_folder.py): its spec comes
# from the prepared data, so it is not in the fixed table above.
IMAGE_FOLDER = 'image_folder'

# Sequence datasets (jaxcls/data/sequences.py): texts, and any UCR/UEA
# problem as 'ucr/<Name>' (e.g. 'ucr/JapaneseVowels').
TEXT_DATASETS = ('spam_assassin', 'text_folder')
UCR_PREFIX = 'ucr/'


def is_sequence(name: str) -> bool:
  """Whether dataset ``name`` is one of sequences (text or time series)."""
  return name in TEXT_DATASETS or (
    name.startswith(UCR_PREFIX) and len(name) > len(UCR_PREFIX)
  )


class DatasetUnavailableError(RuntimeError):
  """A dataset is not prepared locally and cannot be downloaded."""


@dataclasses.dataclass
class Split:
  """One split in host memory: uint8 images (N, H, W, C), int32 labels (N,).

  A split of sequences holds them padded in ``images`` ((N, T) int32 ids or
  (N, T, C) float32, zero after each end) and their int32 ``lengths`` (N,).
  """

  images: np.ndarray
  labels: np.ndarray
  lengths: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass
class Data:
  """Train shards (this process's), validation and test, in host memory.

  ``train_shards`` are equal-sized, disjoint parts of the training split;
  a global batch takes ``batch_size / num_shards`` examples from each shard
  (see :func:`sharded_train_batch`). The shards of all processes together
  make the whole split, so the same global batches arise whether one process
  holds every shard or each of several processes holds its own.
  """

  train_shards: list[Split]
  val: Split
  test: Split
  spec: DatasetSpec
  source: str  # which TFDS builder the data came from
  # Sequences: the padded lengths a batch may have (jaxcls/data/buckets.py).
  buckets: tuple[int, ...] = ()
  # Sequences: how inputs were made (vocabulary, normalisation), for predict.
  inputs: dict = dataclasses.field(default_factory=dict)

  @property
  def train(self) -> Split:
    """All of this process's training examples, as one split."""
    if len(self.train_shards) == 1:
      return self.train_shards[0]
    parts = self.train_shards
    return Split(
      np.concatenate([s.images for s in parts]),
      np.concatenate([s.labels for s in parts]),
      None
      if parts[0].lengths is None
      else np.concatenate([s.lengths for s in parts]),
    )


def check_dataset_name(name: str) -> None:
  """Checks that ``name`` is a dataset jaxcls knows.

  Raises:
    ValueError: naming the choices, if it is not.
  """
  if name != IMAGE_FOLDER and name not in DATASETS and not is_sequence(name):
    raise ValueError(
      f'unknown dataset {name!r}; choose one of {dataset_names()}'
    )


def dataset_names() -> list[str]:
  """The dataset names a config may give (a UCR problem as 'ucr/<Name>')."""
  return [
    *sorted(DATASETS),
    IMAGE_FOLDER,
    *TEXT_DATASETS,
    UCR_PREFIX + '<Name>',
  ]


def get_spec(name: str) -> DatasetSpec:
  """The spec of a fixed dataset (mnist, fashion_mnist, cifar10).

  Raises:
    ValueError: for an unknown name, or for ``image_folder``, whose spec
      depends on its files (see ``sources.dataset_spec``).
  """
  check_dataset_name(name)
  if name == IMAGE_FOLDER or is_sequence(name):
    raise ValueError(
      f'the spec of {name!r} comes from its files; '
      'use data.dataset_spec(config)'
    )
  return DATASETS[name]


def prepare(builder, **kwargs) -> None:
  """``builder.download_and_prepare(**kwargs)``, one process at a time.

  An flock on the dataset's folder serialises runs that prepare the same
  dataset; whoever holds it first removes the ``incomplete.*`` folders that a
  killed earlier prepare left behind (no one else can be writing them then).
  """
  import fcntl
  import shutil

  folder = os.path.dirname(builder.data_dir)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, '.jaxcls-prepare.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if builder.is_prepared():  # Another run prepared it while we waited.
      return
    for name in os.listdir(folder):
      if name.startswith('incomplete.'):
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    _quiet_prepare(builder, **kwargs)


def _quiet_prepare(builder, **kwargs) -> None:
  """Prepares with one line of jaxcls's own before and after, instead of
  TFDS's download banner (sizes unknown offline) and progress bars, whose
  escape codes fill a log."""
  import contextlib

  import tensorflow_datasets as tfds

  # <data_dir>/.../<dataset or config>/<version>: what is prepared.
  what = os.path.basename(os.path.dirname(builder.data_dir))
  config = getattr(builder, 'builder_config', None)
  source = (
    getattr(kwargs.get('download_config'), 'manual_dir', None)
    or getattr(config, 'description', None)
    or what
  )
  print(f'Preparing {what} from {source} into {builder.data_dir} ...')
  tfds.display_progress_bar(False)
  t0 = time.perf_counter()
  try:
    with contextlib.redirect_stdout(io.StringIO()):  # TFDS's banner lines.
      builder.download_and_prepare(**kwargs)
  finally:
    tfds.display_progress_bar(True)
  print(
    f'Prepared {what} in {time.perf_counter() - t0:.0f} s; later runs reuse it.'
  )
