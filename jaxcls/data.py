"""Input pipeline: TFDS splits read once into host memory, batched by index.

The datasets here are small (MNIST-sized, CIFAR-10), so each split is decoded
once from TFDS into uint8 numpy arrays. A batch is then a fancy-index into
those arrays, handed to the device as uint8 (4x fewer bytes than float32);
normalisation and augmentation run on the device inside the jitted step.
TensorFlow is used only here, on the host, while loading.

The order of examples is a pure function of ``(seed, epoch)`` (see
:func:`epoch_permutation`), so any step's batch can be recomputed after a
restart without saving iterator state.
"""

import dataclasses
import io
import os
import socket
import time

import jax
import jax.numpy as jnp
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
  image_shape: tuple[int, int, int]
  num_classes: int
  augment: bool  # random crop (padding 4) + horizontal flip when training
  class_names: tuple[str, ...] = ()  # label i is class_names[i]


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
# A folder of class folders (jaxcls/image_folder.py): its spec comes from the
# prepared data, so it is not in the fixed table above.
IMAGE_FOLDER = 'image_folder'


class DatasetUnavailableError(RuntimeError):
  """A dataset is not prepared locally and cannot be downloaded."""


@dataclasses.dataclass
class Split:
  """One split in host memory: uint8 images (N, H, W, C), int32 labels (N,)."""

  images: np.ndarray
  labels: np.ndarray

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

  @property
  def train(self) -> Split:
    """All of this process's training examples, as one split."""
    if len(self.train_shards) == 1:
      return self.train_shards[0]
    return Split(
      np.concatenate([s.images for s in self.train_shards]),
      np.concatenate([s.labels for s in self.train_shards]),
    )


def check_dataset_name(name: str) -> None:
  """Raises ValueError with the choices if ``name`` is not a dataset here."""
  if name != IMAGE_FOLDER and name not in DATASETS:
    raise ValueError(
      f'unknown dataset {name!r}; choose one of '
      f'{sorted(DATASETS) + [IMAGE_FOLDER]}'
    )


def get_spec(name: str) -> DatasetSpec:
  """The spec of a fixed dataset (mnist, fashion_mnist, cifar10).

  An image folder's spec depends on its files: use :func:`dataset_spec`.
  """
  check_dataset_name(name)
  if name == IMAGE_FOLDER:
    raise ValueError(
      f'the spec of {IMAGE_FOLDER!r} comes from its files; '
      'use data.dataset_spec(config)'
    )
  return DATASETS[name]


def source_args(config) -> dict:
  """The config fields that say where a dataset's files are and how to shape
  them, as keyword arguments of :func:`get_builder` and :func:`load`."""
  return {
    'manual_dir': config.manual_dir,
    'image_size': config.image_size,
    'channels': config.channels,
  }


def builder_for(config):
  """The prepared TFDS builder of ``config.dataset`` (see get_builder)."""
  return get_builder(config.dataset, config.data_dir, **source_args(config))


def dataset_spec(config) -> DatasetSpec:
  """The spec of ``config.dataset``: the fixed table, or for an image folder
  its prepared TFDS dataset's image shape and class names."""
  if config.dataset != IMAGE_FOLDER:
    return get_spec(config.dataset)
  from jaxcls import image_folder  # Lazy: imports TFDS.

  return image_folder.spec(builder_for(config))


def _can_reach(host: str, timeout: float = 3.0) -> bool:
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return True
  except OSError:
    return False


def get_builder(
  name: str,
  data_dir: str | None = None,
  *,
  manual_dir: str | None = None,
  image_size: int = 0,
  channels: int = 0,
):
  """Returns a prepared TFDS builder for ``name``, preparing it if possible.

  For mnist, fashion_mnist and cifar10, in order: a prepared stock TFDS
  dataset in ``data_dir``; the dataset prepared from local files
  (``local_files/<name>``, see jaxcls/local_data.py), from ``manual_dir`` or
  the default folders; a TFDS download, tried only if the download host
  answers. Otherwise raises DatasetUnavailableError within seconds, naming
  the files that would do and where to put them.

  For ``image_folder``, the folder ``manual_dir`` prepared at ``image_size``
  and ``channels`` (0: chosen from the data; see jaxcls/image_folder.py).
  """
  import tensorflow_datasets as tfds  # Lazy: keeps `import jaxcls` light.

  check_dataset_name(name)
  if name == IMAGE_FOLDER:
    from jaxcls import image_folder

    return image_folder.get_builder(manual_dir, data_dir, image_size, channels)
  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  from jaxcls import local_data

  local = local_data.get_builder(name, data_dir, manual_dir)
  if local is not None:
    return local
  root = os.path.dirname(os.path.dirname(builder.data_dir))
  if not _can_reach(_DOWNLOAD_HOSTS[name]):
    raise DatasetUnavailableError(local_data.unavailable_message(name, root))
  prepare(builder)
  return builder


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


def read_split(builder, split: str) -> Split:
  """Decodes a whole TFDS split (any split string) into host arrays."""
  import tensorflow_datasets as tfds

  # Iterating in large batches: `batch_size=-1` crashes TF 2.21 under
  # tfds.testing.mock_data, and per-example iteration is slow.
  images, labels = [], []
  try:
    ds = builder.as_dataset(split=split, shuffle_files=False)
    for batch in tfds.as_numpy(ds.batch(4096)):
      images.append(batch['image'])
      labels.append(batch['label'])
  except Exception as e:  # TF raises DataLossError etc. for damaged files.
    first_line = (str(e).strip().splitlines() or [''])[0][:200]
    raise ValueError(
      f'the prepared files of {builder.name} in {builder.data_dir} are '
      f'corrupt ({type(e).__name__}: {first_line}); delete that folder so '
      'that it is prepared again'
    ) from None
  if not images:
    raise ValueError(f'split {split!r} of {builder.name} is empty')
  return Split(
    np.concatenate(images).astype(np.uint8),
    np.concatenate(labels).astype(np.int32),
  )


def load(
  name: str,
  data_dir: str | None = None,
  validation_percent: int = 10,
  train_examples: int = -1,
  num_shards: int = 1,
  shard_ids: tuple[int, ...] = (0,),
  *,
  manual_dir: str | None = None,
  image_size: int = 0,
  channels: int = 0,
) -> Data:
  """Loads train / validation / test for ``name`` into host memory.

  The validation split is TFDS's ``validation`` split where the dataset has
  one (an image folder with a ``val/`` folder), else the last
  ``validation_percent`` % of TFDS's train split; training uses the rest, or
  only its first ``train_examples`` if > 0. The training part is cut into
  ``num_shards`` equal parts (TFDS ``even_splits``) and only the parts in
  ``shard_ids`` are read: with several processes, each reads its own.
  Validation and test are read whole (small). ``manual_dir``, ``image_size``
  and ``channels`` are passed to :func:`get_builder`.
  """
  import tensorflow_datasets as tfds

  builder = get_builder(
    name,
    data_dir,
    manual_dir=manual_dir,
    image_size=image_size,
    channels=channels,
  )
  if name == IMAGE_FOLDER:
    from jaxcls import image_folder

    spec = image_folder.spec(builder)
  else:
    spec = get_spec(name)
  splits = builder.info.splits
  if 'validation' in splits and 'train' in splits:
    cut = splits['train'].num_examples
    end = cut if train_examples <= 0 else min(cut, train_examples)
    val_split = 'validation'
  elif 'train' in splits:
    # Absolute indices, so that a capped run decodes only what it uses.
    cut = splits['train'].num_examples * (100 - validation_percent) // 100
    end = cut if train_examples <= 0 else min(cut, train_examples)
    val_split = f'train[{cut}:]'
  else:  # No split sizes recorded (tfds.testing.mock_data): percentages.
    cut = end = f'{100 - validation_percent}%'
    val_split = f'train[{cut}:]'
  parts = tfds.even_splits(f'train[:{end}]', n=num_shards, drop_remainder=True)
  shards = [read_split(builder, parts[i]) for i in shard_ids]
  if train_examples > 0:
    n = train_examples // num_shards
    shards = [Split(s.images[:n], s.labels[:n]) for s in shards]
  val = read_split(builder, val_split)
  test = read_split(builder, 'test')
  for split in (*shards, val, test):
    if split.images.shape[1:] != spec.image_shape:
      raise ValueError(
        f'{builder.name} images have shape '
        f'{split.images.shape[1:]}, expected {spec.image_shape}'
      )
    if (
      split.labels.size
      and not 0 <= split.labels.min() <= split.labels.max() < spec.num_classes
    ):
      raise ValueError(
        f'{builder.name} has labels outside 0..'
        f'{spec.num_classes - 1}; its files are corrupt'
      )
  config_name = builder.builder_config.name if builder.builder_config else ''
  source = f'{builder.name}/{config_name}' if config_name else builder.name
  if name == IMAGE_FOLDER and jax.process_index() == 0:
    print(folder_summary(manual_dir, spec, shards, val, test))
  return Data(shards, val, test, spec, source=source)


def folder_summary(root, spec: DatasetSpec, shards, val, test) -> str:
  """What an image-folder run chose, in one line: classes, splits, shape."""
  names = ', '.join(spec.class_names[:12])
  more = len(spec.class_names) - 12
  names += f', ... ({more} more)' if more > 0 else ''
  h, w, c = spec.image_shape
  train = sum(len(s) for s in shards)
  return (
    f'Image folder {root}: {spec.num_classes} classes ({names}); '
    f'{train} train / {len(val)} validation / {len(test)} test images; '
    f'each {h}x{w}x{c}'
  )


def epoch_permutation(
  seed: int, epoch: int, n: int, shard: int = 0
) -> np.ndarray:
  """The order of a shard's ``n`` examples in ``epoch``: a function of
  (seed, epoch, shard) only, so a resumed run sees the same batches."""
  return np.random.default_rng([seed, epoch, shard]).permutation(n)


def normalize(images: jax.Array) -> jax.Array:
  """uint8 pixels to float32 in [-1, 1]: ``(x / 255 - 0.5) / 0.5`` (article)."""
  return (images.astype(jnp.float32) / 255.0 - 0.5) / 0.5


def random_crop_flip(
  rng: jax.Array, images: jax.Array, padding: int = 4
) -> jax.Array:
  """Random crop after zero-padding by ``padding``, and random h-flip.

  The same augmentation as torchvision's ``RandomCrop(32, padding=4)`` and
  ``RandomHorizontalFlip()`` in the article, done on the device per example.
  """
  b, h, w, c = images.shape
  crop_key, flip_key = jax.random.split(rng)
  padded = jnp.pad(
    images, ((0, 0), (padding, padding), (padding, padding), (0, 0))
  )
  offsets = jax.random.randint(crop_key, (b, 2), 0, 2 * padding + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

  cropped = jax.vmap(crop)(padded, offsets)
  flip = jax.random.bernoulli(flip_key, 0.5, (b, 1, 1, 1))
  return jnp.where(flip, cropped[:, :, ::-1, :], cropped)


def train_batch(
  split: Split, order: np.ndarray, index: int, batch_size: int
) -> dict[str, np.ndarray]:
  """Batch ``index`` of an epoch whose example order is ``order``."""
  rows = order[index * batch_size : (index + 1) * batch_size]
  return {'image': split.images[rows], 'label': split.labels[rows]}


def sharded_train_batch(
  shards: list[Split], orders: list[np.ndarray], index: int, per_shard: int
) -> dict[str, np.ndarray]:
  """Batch ``index`` from each shard (in its own order), concatenated."""
  parts = [train_batch(s, o, index, per_shard) for s, o in zip(shards, orders)]
  if len(parts) == 1:
    return parts[0]
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def eval_batches(
  split: Split, batch_size: int, process_index: int = 0, process_count: int = 1
):
  """Yields this process's rows of each global batch, padded, with a mask.

  The last batch is padded to ``batch_size`` with copies of example 0 whose
  ``mask`` is 0, so every example is counted exactly once and every batch has
  the same shape (one compilation). With several processes, each yields its
  own contiguous share of the rows of every global batch.
  """
  local = batch_size // process_count
  n = len(split)
  for start in range(0, n, batch_size):
    rows = np.arange(start, start + batch_size)
    rows = rows[process_index * local : (process_index + 1) * local]
    mask = rows < n
    rows = np.where(mask, rows, 0)
    yield {
      'image': split.images[rows],
      'label': split.labels[rows],
      'mask': mask.astype(np.float32),
    }
