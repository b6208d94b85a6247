"""A folder of class folders of images, prepared as a normal TFDS dataset.

The layout and the test split carved from it are in :mod:`.image_listing`,
the conversion of each image in :mod:`.image_decoding`. Without ``ROOT/val``,
validation is the last ``validation_percent`` % of the prepared train split
(see jaxcls.data.load): TFDS orders a split by a fixed hash of each example's
key (here the file's path), so this is a fixed mix of all classes.

The prepared dataset lives in ``<data_dir>/image_folder_data/<config>/``,
where the config name is the folder's name plus a hash of its absolute path,
the requested size and channels, and the names, sizes and modification times
of its files, links followed: a changed folder is prepared again, an
unchanged one is reused, and a prepared one can still be read (e.g. by
predict) after the folder is gone. Every check runs before anything is written.
"""

import dataclasses
import glob
import hashlib
import os

import tensorflow_datasets as tfds

from jaxcls.data import specs
from jaxcls.data.image_decoding import (
  DEFAULT_SIZE_RANGE,
  MAX_PIXELS,
  choose_defaults,
  load_image,
)
from jaxcls.data.image_listing import (
  EXTENSIONS,
  LAYOUT,
  SEED,
  SPLIT_FOLDERS,
  TEST_PERCENT,
  ImageFolderError,
  checked_class_names,
  list_files,
  listing_entries,
)

__all__ = [
  'DEFAULT_SIZE_RANGE',
  'EXTENSIONS',
  'MAX_PIXELS',
  'SEED',
  'SPLIT_FOLDERS',
  'TEST_PERCENT',
  'ImageFolderData',
  'ImageFolderError',
  'Scan',
  'choose_defaults',
  'get_builder',
  'list_files',
  'load_image',
  'scan',
  'spec',
]


@dataclasses.dataclass
class Scan:
  """What preparing needs: files per split (paths relative to ``root``, with
  their labels), the class names, and the size and channels to convert to."""

  root: str
  files: dict[str, list[tuple[str, int]]]
  class_names: list[str]
  image_size: int
  channels: int


def scan(root: str, image_size: int = 0, channels: int = 0) -> Scan:
  """Lists, checks and sizes the folder ``root`` (no pixels decoded).

  Args:
    root: the folder; image_size, channels: as for :func:`get_builder`.

  Returns:
    Its :class:`Scan`, with paths relative to ``root``.

  Raises:
    ImageFolderError: as :func:`list_files` and :func:`choose_defaults`.
  """
  files, class_names = list_files(root)
  image_size, channels = choose_defaults(
    [p for split in files.values() for p, _ in split], image_size, channels
  )
  relative = {
    split: [(os.path.relpath(p, root), label) for p, label in fs]
    for split, fs in files.items()
  }
  return Scan(root, relative, class_names, image_size, channels)


class ImageFolderData(tfds.core.GeneratorBasedBuilder):
  """A folder of class folders; built from a :class:`Scan` of it."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Class folders of PNG/JPEG images.'}

  def __init__(self, *, folder_scan: Scan, **kwargs):
    self._scan = folder_scan
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    s = self._scan
    return self.dataset_info_from_configs(
      description=f'Images from {s.root}, as {s.image_size}x'
      f'{s.image_size}x{s.channels}.',
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(
            shape=(s.image_size, s.image_size, s.channels)
          ),
          'label': tfds.features.ClassLabel(names=s.class_names),
        }
      ),
      supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The files are read in place.
    return {
      split: self._generate_examples(files)
      for split, files in self._scan.files.items()
    }

  def _generate_examples(self, files):
    s = self._scan
    for relative, label in files:
      image = load_image(
        os.path.join(s.root, relative), s.image_size, s.channels
      )
      yield relative, {'image': image, 'label': label}


def _hash(*parts) -> str:
  return hashlib.sha256('\n'.join(map(str, parts)).encode()).hexdigest()[:8]


def _config_prefix(root: str, image_size: int, channels: int) -> str:
  base = (
    ''.join(c if c.isalnum() else '_' for c in os.path.basename(root).lower())[
      :40
    ]
    or 'root'
  )
  return f'{base}_{_hash(root, image_size, channels)}'


def _listing_hash(root: str) -> str:
  """A hash of the files under ``root`` (see ``listing_entries``), so that
  a change in the folder, or in a linked folder or file, prepares it again."""
  return _hash(*listing_entries(root))


def _prepared(path: str) -> bool:
  return os.path.exists(os.path.join(path, 'dataset_info.json'))


def _newest_copy(root: str, pattern: str):
  """The builder of the newest prepared copy that matches ``pattern``."""
  copies = [p for p in glob.glob(pattern) if _prepared(p)]
  if not copies:
    raise ImageFolderError(f'{root} is not a folder; expected {LAYOUT}')
  return tfds.builder_from_directory(max(copies, key=os.path.getmtime))


def get_builder(
  manual_dir: str | None,
  data_dir: str | None = None,
  image_size: int = 0,
  channels: int = 0,
):
  """The prepared TFDS dataset of the folder ``manual_dir``.

  It is prepared now unless a copy of the folder as it is now was prepared
  before; a folder that is gone gives its newest prepared copy.

  Args:
    manual_dir: the folder (``--config.manual_dir``).
    data_dir: TFDS's data folder (None: TFDS's default).
    image_size, channels: the size and channels to convert to (0: chosen
      from the images, see :func:`choose_defaults`).

  Raises:
    ImageFolderError: naming the folder or file (see :func:`list_files`,
      :func:`choose_defaults` and :func:`load_image`).
  """
  if not manual_dir:
    raise ImageFolderError(
      f'dataset {specs.IMAGE_FOLDER!r} needs --config.manual_dir=PATH, {LAYOUT}'
    )
  root = os.path.abspath(os.path.expanduser(manual_dir))
  data_root = os.path.expanduser(
    data_dir or tfds.core.constants.get_default_data_dir()
  )
  base = os.path.join(data_root, 'image_folder_data')
  prefix = _config_prefix(root, image_size, channels)
  version = str(ImageFolderData.VERSION)
  if not os.path.isdir(root):
    # Gone (e.g. predict on another machine): the newest prepared copy.
    return _newest_copy(root, os.path.join(base, prefix + '_*', version))
  # Names are checked even for a copy prepared before they were refused.
  checked_class_names(root)
  name = f'{prefix}_{_listing_hash(root)}'
  path = os.path.join(base, name, version)
  if _prepared(path):
    return tfds.builder_from_directory(path)
  builder = ImageFolderData(
    folder_scan=scan(root, image_size, channels),
    data_dir=data_root,
    config=tfds.core.BuilderConfig(name=name, description=f'{root}'),
  )
  specs.prepare(builder)
  return tfds.builder_from_directory(path)


def spec(builder) -> specs.DatasetSpec:
  """The DatasetSpec of a prepared image-folder builder (from its info)."""
  features = builder.info.features
  return specs.DatasetSpec(
    image_shape=tuple(features['image'].shape),
    num_classes=features['label'].num_classes,
    augment=False,
    class_names=tuple(features['label'].names),
  )
