"""Input pipeline: TFDS splits read once into host memory, batched by index.

Each split is decoded once into numpy arrays (uint8 pixels; padded token
ids or features with lengths); a batch is a fancy-index into them, and
images are normalised and augmented on the device, in the jitted step.

* :mod:`.specs`: the datasets, their specs, preparing a builder once;
* :mod:`.local_files` (with :mod:`.file_readers`, :mod:`.file_formats`,
  :mod:`.source_folders`) and :mod:`.image_folder` (with
  :mod:`.image_listing`, :mod:`.image_decoding`): builders of local files;
* :mod:`.sources`: which builder serves a config, and :func:`load`;
* :mod:`.batches`: the (seed, epoch) order, batches, normalise and augment;
* :mod:`.sequences` (with :mod:`.text_files`, :mod:`.ucr`, :mod:`.tokens`,
  :mod:`.buckets`): texts and time series; :mod:`.fields`: config checks.
"""

from jaxcls.data import (
  batches,
  buckets,
  fields,
  image_folder,
  local_files,
  sequences,
  sources,
  specs,
)
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
  load_config,
  read_split,
  sequence_args,
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
  dataset_names,
  get_spec,
  is_sequence,
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
  'dataset_names',
  'epoch_permutation',
  'eval_batches',
  'folder_summary',
  'get_builder',
  'get_spec',
  'is_sequence',
  'image_folder',
  'load',
  'load_config',
  'sequence_args',
  'sequences',
  'buckets',
  'fields',
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
