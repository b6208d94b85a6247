"""Input pipeline: TFDS splits read once into host memory, batched by index.

The datasets are small (MNIST-sized, CIFAR-10), so each split is decoded once
into uint8 numpy arrays; a batch is a fancy-index into them, handed to the
device as uint8 (4x fewer bytes than float32) and normalised and augmented
there, inside the jitted step.

* :mod:`.specs`: the datasets, their specs, preparing a builder once;
* :mod:`.local_files` (reading with :mod:`.file_readers`, :mod:`.file_formats`
  and :mod:`.source_folders`) and :mod:`.image_folder` (with
  :mod:`.image_listing`, :mod:`.image_decoding`): TFDS builders for files a
  user has (no network);
* :mod:`.sources`: which builder serves a config, and :func:`load`;
* :mod:`.batches`: the (seed, epoch) order, batches, normalise and augment.
"""

from jaxcls.data import batches, image_folder, local_files, sources, specs
from jaxcls.data.batches import (
  epoch_permutation,
  eval_batches,
  normalize,
  random_crop_flip,
  sharded_train_batch,
  train_batch,
)
from jaxcls.data.sources import (
  builder_for,
  dataset_spec,
  folder_summary,
  get_builder,
  load,
  read_split,
  source_args,
)
from jaxcls.data.specs import (
  DATASETS,
  IMAGE_FOLDER,
  Data,
  DatasetSpec,
  DatasetUnavailableError,
  Split,
  check_dataset_name,
  get_spec,
  prepare,
)

__all__ = [
  'DATASETS',
  'Data',
  'DatasetSpec',
  'DatasetUnavailableError',
  'IMAGE_FOLDER',
  'Split',
  'batches',
  'builder_for',
  'check_dataset_name',
  'dataset_spec',
  'epoch_permutation',
  'eval_batches',
  'folder_summary',
  'get_builder',
  'get_spec',
  'image_folder',
  'load',
  'local_files',
  'normalize',
  'prepare',
  'random_crop_flip',
  'read_split',
  'sharded_train_batch',
  'source_args',
  'sources',
  'specs',
  'train_batch',
]
