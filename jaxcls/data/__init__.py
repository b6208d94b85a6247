"""Input pipeline: TFDS splits read once into host memory, batched by index.

The datasets are small (MNIST-sized, CIFAR-10), so each split is decoded once
from TFDS into uint8 numpy arrays. A batch is a fancy-index into them, handed
to the device as uint8 (4x fewer bytes than float32); normalisation and
augmentation run on the device inside the jitted step.

* :mod:`.specs`: the datasets, their specs, preparing a builder once;
* :mod:`.local_files`, :mod:`.image_folder`: TFDS builders for files a user
  has (no network);
* :mod:`.sources`: which builder serves a config, and :func:`load`;
* :mod:`.batches`: the (seed, epoch) order, batches, normalise and augment.
"""

from jaxcls.data import batches, image_folder, local_files, sources, specs
from jaxcls.data.specs import (
  DatasetSpec,
  DATASETS,
  IMAGE_FOLDER,
  DatasetUnavailableError,
  Split,
  Data,
  check_dataset_name,
  get_spec,
  prepare,
)
from jaxcls.data.sources import (
  source_args,
  builder_for,
  dataset_spec,
  get_builder,
  read_split,
  load,
  folder_summary,
)
from jaxcls.data.batches import (
  epoch_permutation,
  normalize,
  random_crop_flip,
  train_batch,
  sharded_train_batch,
  eval_batches,
)

__all__ = [
  'DATASETS',
  'Data',
  'DatasetSpec',
  'DatasetUnavailableError',
  'IMAGE_FOLDER',
  'Split',
  'builder_for',
  'check_dataset_name',
  'dataset_spec',
  'epoch_permutation',
  'eval_batches',
  'folder_summary',
  'get_builder',
  'get_spec',
  'load',
  'normalize',
  'prepare',
  'random_crop_flip',
  'read_split',
  'sharded_train_batch',
  'source_args',
  'train_batch',
]
