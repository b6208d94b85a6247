"""Where a split comes from: a prepared TFDS builder, local files, an image
folder or a download, read once into host memory.

TensorFlow is used only here, on the host, while loading.
"""

import os
import socket

import jax
import numpy as np

from jaxcls.data import image_folder, local_files, sequences, specs


def source_args(config) -> dict:
  """The config fields that say where a dataset's files are and how to shape
  them, as keyword arguments of :func:`get_builder` and :func:`load`."""
  return {
    'manual_dir': config.manual_dir,
    'image_size': config.image_size,
    'channels': config.channels,
  }


def sequence_args(config) -> dict:
  """The config fields that say how a sequence dataset becomes arrays (see
  :func:`.sequences.load`); empty for images."""
  if not specs.is_sequence(config.dataset):
    return {}
  return {
    'max_len': config.max_len,
    'tokenizer': config.tokenizer,
    'vocab_size': config.vocab_size,
    'num_buckets': config.num_buckets,
    'email_headers': config.email_headers,
  }


def builder_for(config):
  """The prepared TFDS builder of ``config.dataset`` (see get_builder)."""
  if specs.is_sequence(config.dataset):
    return sequences.get_builder(
      config.dataset, config.data_dir, config.manual_dir
    )
  return get_builder(config.dataset, config.data_dir, **source_args(config))


def dataset_spec(config) -> specs.DatasetSpec:
  """The spec of ``config.dataset``: the fixed table, or for an image folder
  its prepared TFDS dataset's image shape and class names; for sequences,
  their loaded data's (the vocabulary is built from the training split)."""
  if specs.is_sequence(config.dataset):
    return load_config(config).spec
  if config.dataset != specs.IMAGE_FOLDER:
    return specs.get_spec(config.dataset)
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

  For the fixed datasets, in order: a prepared stock TFDS dataset; one made
  from local files (:mod:`.local_files`); a download, if the host answers.

  Args:
    name: a dataset of ``specs.DATASETS``, or ``image_folder``.
    data_dir: TFDS's data folder (None: TFDS's default).
    manual_dir: the folder of the dataset's files (None: the default ones).
    image_size, channels: an image folder's (0: chosen from the data).

  Raises:
    DatasetUnavailableError: within seconds, naming the files that would do.
    ImageFolderError, CorruptDatasetFileError: for a bad folder or files.
  """
  import tensorflow_datasets as tfds  # Lazy: keeps `import jaxcls` light.

  specs.check_dataset_name(name)
  if name == specs.IMAGE_FOLDER:
    return image_folder.get_builder(manual_dir, data_dir, image_size, channels)
  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  local = local_files.get_builder(name, data_dir, manual_dir)
  if local is not None:
    return local
  root = os.path.dirname(os.path.dirname(builder.data_dir))
  if not _can_reach(specs._DOWNLOAD_HOSTS[name]):
    raise specs.DatasetUnavailableError(
      local_files.unavailable_message(name, root)
    )
  specs.prepare(builder)
  return builder


def read_split(builder, split: str) -> specs.Split:
  """Decodes a whole TFDS split (any split string) into host arrays.

  Raises:
    ValueError: the prepared files are corrupt, or the split is empty.
  """
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
  return specs.Split(
    np.concatenate(images).astype(np.uint8),
    np.concatenate(labels).astype(np.int32),
  )


def _spec(name: str, builder) -> specs.DatasetSpec:
  """The spec of ``name``, served by the prepared ``builder``."""
  if name == specs.IMAGE_FOLDER:
    return image_folder.spec(builder)
  return specs.get_spec(name)


def _train_end_and_validation(
  splits, validation_percent: int, train_examples: int
) -> tuple[int | str, str]:
  """``(end, validation split)``: training reads ``train[:end]``."""
  if 'validation' in splits and 'train' in splits:
    cut = splits['train'].num_examples
    end = cut if train_examples <= 0 else min(cut, train_examples)
    return end, 'validation'
  if 'train' in splits:
    # Absolute indices, so that a capped run decodes only what it uses.
    cut = splits['train'].num_examples * (100 - validation_percent) // 100
    end = cut if train_examples <= 0 else min(cut, train_examples)
    return end, f'train[{cut}:]'
  # No split sizes recorded (tfds.testing.mock_data): percentages.
  cut = f'{100 - validation_percent}%'
  return cut, f'train[{cut}:]'


def _check_split(builder, spec: specs.DatasetSpec, split: specs.Split):
  """ValueError if ``split`` does not have ``spec``'s shape and classes."""
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


def _source_name(builder) -> str:
  """``name/config`` of the builder (``name`` where it has no config)."""
  config_name = builder.builder_config.name if builder.builder_config else ''
  return f'{builder.name}/{config_name}' if config_name else builder.name


def load_config(config, num_shards: int = 1, shard_ids=(0,)) -> specs.Data:
  """:func:`load` with ``config``'s fields."""
  return load(
    config.dataset,
    config.data_dir,
    config.validation_percent,
    config.train_examples,
    num_shards,
    shard_ids,
    **source_args(config),
    **sequence_args(config),
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
  **sequence_kwargs,
) -> specs.Data:
  """Loads train / validation / test for ``name`` into host memory (a
  sequence dataset: :func:`.sequences.load`, with ``sequence_kwargs``).

  Args:
    name, data_dir, manual_dir, image_size, channels: see :func:`get_builder`.
    validation_percent: the % at the end of TFDS's train split that validates
      where there is no ``validation`` split (an image folder's val/).
    train_examples, num_shards, shard_ids: train on the first train_examples
      (all if <= 0), cut in num_shards equal parts; read only parts shard_ids.

  Returns :class:`specs.Data`: this process's train shards, validation,
  test, spec. Raises ValueError if the prepared files are corrupt or of
  another shape.
  """
  import tensorflow_datasets as tfds

  if specs.is_sequence(name):
    where = dict(manual_dir=manual_dir, **sequence_kwargs)
    args = (validation_percent, train_examples, num_shards, shard_ids)
    return sequences.load(name, data_dir, *args, **where)
  builder = get_builder(
    name,
    data_dir,
    manual_dir=manual_dir,
    image_size=image_size,
    channels=channels,
  )
  spec = _spec(name, builder)
  end, val_split = _train_end_and_validation(
    builder.info.splits, validation_percent, train_examples
  )
  # Equal parts (TFDS even_splits): with several processes, each reads its
  # own; validation and test are read whole (small).
  parts = tfds.even_splits(f'train[:{end}]', n=num_shards, drop_remainder=True)
  shards = [read_split(builder, parts[i]) for i in shard_ids]
  if train_examples > 0:
    n = train_examples // num_shards
    shards = [specs.Split(s.images[:n], s.labels[:n]) for s in shards]
  val = read_split(builder, val_split)
  test = read_split(builder, 'test')
  for split in (*shards, val, test):
    _check_split(builder, spec, split)
  if name == specs.IMAGE_FOLDER and jax.process_index() == 0:
    print(folder_summary(manual_dir, spec, shards, val, test))
  return specs.Data(shards, val, test, spec, source=_source_name(builder))


def folder_summary(root, spec: specs.DatasetSpec, shards, val, test) -> str:
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
