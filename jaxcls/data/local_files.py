"""MNIST, Fashion-MNIST and CIFAR-10 from files a user already has (no network).

TFDS's own builders download and checksum their files, so they reject most
copies people keep (Debian's gzip bytes differ from the ones TFDS checksums,
for example). ``LocalFiles`` is one TFDS builder, with one config per dataset
(``local_files/mnist``, ``local_files/fashion_mnist``, ``local_files/cifar10``),
that reads any of those copies from a folder (TFDS's manual-download
convention: ``DownloadConfig(manual_dir=...)``) and writes a normal TFDS
dataset. The folders searched are in :mod:`.source_folders`, the formats in
:mod:`.file_formats` and their readers in :mod:`.file_readers`.

Prepared copies are keyed by what they were made from (see
:func:`source_fingerprint` and :func:`copy_dir`): changed files are prepared
again, unchanged ones are read from their copy.
"""

import glob
import hashlib
import os

import tensorflow_datasets as tfds

from jaxcls.data import specs
from jaxcls.data.file_formats import (
  FORMATS,
  TITLES,
  Format,
  files_wanted,
  find_files,
  read_folder,
)
from jaxcls.data.file_readers import (
  Arrays,
  CorruptDatasetFileError,
  read_cifar_binary,
  read_cifar_python,
  read_idx,
  read_npz,
  reason,
)
from jaxcls.data.source_folders import (
  DEBIAN_FASHION_MNIST_DIR,
  FASHION_MNIST_ENV,
  candidate_folders,
  data_root,
  default_manual_dir,
  files_present,
  unavailable_message,
)

__all__ = [
  'DEBIAN_FASHION_MNIST_DIR',
  'FASHION_MNIST_ENV',
  'FORMATS',
  'Arrays',
  'CorruptDatasetFileError',
  'Format',
  'LocalFiles',
  'candidate_folders',
  'check_prepared',
  'copy_dir',
  'default_manual_dir',
  'files_present',
  'files_wanted',
  'find_files',
  'get_builder',
  'read_cifar_binary',
  'read_cifar_python',
  'read_folder',
  'read_idx',
  'read_npz',
  'source_fingerprint',
  'unavailable_message',
]


class LocalFiles(tfds.core.GeneratorBasedBuilder):
  """MNIST, Fashion-MNIST or CIFAR-10 prepared from local files."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'The tutorial datasets from local files.'}
  BUILDER_CONFIGS = [
    tfds.core.BuilderConfig(
      name=n, description=f'{TITLES[n]} from local files: {files_wanted(n)}'
    )
    for n in FORMATS
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = '\n'.join(
    f'{TITLES[n]}: {files_wanted(n)}.' for n in FORMATS
  )

  def _info(self) -> tfds.core.DatasetInfo:
    spec = specs.get_spec(self.builder_config.name)
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=spec.image_shape),
          'label': tfds.features.ClassLabel(names=list(spec.class_names)),
        }
      ),
      supervised_keys=('image', 'label'),
    )

  # The arrays that get_builder read and checked, if it did: they are what
  # the copy is keyed by, and they are not read twice.
  source_splits: dict[str, Arrays] | None = None

  def _split_generators(self, dl_manager):
    splits = self.source_splits or read_folder(
      self.builder_config.name, str(dl_manager.manual_dir)
    )
    return {
      split: self._generate_examples(*arrays)
      for split, arrays in splits.items()
    }

  def _generate_examples(self, images, labels):
    for i in range(len(labels)):
      yield i, {'image': images[i], 'label': int(labels[i])}


def _files_under(path: str) -> list[str]:
  """``path`` if it is a file, else every file under it, in sorted order."""
  if not os.path.isdir(path):
    return [path]
  files = []
  for parent, dirs, names in os.walk(path):
    dirs.sort()
    files += [os.path.join(parent, n) for n in sorted(names)]
  return files


def source_fingerprint(paths: tuple[str, ...]) -> str:
  """What a prepared copy is made from: a hash of the source files' names,
  sizes and modification times (nanoseconds), not of their bytes.

  Every run computes it, and stat'ing four files is free where hashing
  CIFAR-10's 170 MB is not; an edit, a new download or a copy (``cp``
  without ``-p``) gives a file a new modification time. The names are
  relative to the folder that holds them: a moved folder reuses its copy.

  Args:
    paths: the source files (or folders of them) that :func:`find_files` found.

  Returns:
    16 hex digits.
  """
  entries = []
  for path in paths:
    top = os.path.dirname(path)
    for file in _files_under(path):
      st = os.stat(file)
      entries.append(
        f'{os.path.relpath(file, top)}\t{st.st_size}\t{st.st_mtime_ns}'
      )
  return hashlib.sha256('\n'.join(entries).encode()).hexdigest()[:16]


def copy_dir(name: str, data_dir: str | None, fingerprint: str) -> str:
  """The TFDS data folder of ``name``'s copy made from given source files.

  Args:
    name: ``mnist``, ``fashion_mnist`` or ``cifar10``.
    data_dir: TFDS's data folder (None: TFDS's default).
    fingerprint: the :func:`source_fingerprint` of the source files.

  Returns:
    ``<data_dir>/local_files/<name>/by_source/<fingerprint>`` (the dataset
    itself is in its ``local_files/<name>/1.0.0``).
  """
  root = data_root(data_dir)
  return os.path.join(root, 'local_files', name, 'by_source', fingerprint)


def _find_source(name: str, manual_dir, data_dir):
  """``(folder, paths)`` of the first candidate folder holding ``name``'s
  files; None if none does."""
  for folder in candidate_folders(name, manual_dir, data_dir):
    found = find_files(name, folder)
    if found:
      return folder, found[1]
  return None


def _version_dir(tfds_dir: str, name: str) -> str:
  """Where the builder of data folder ``tfds_dir`` keeps ``name``'s copy."""
  return os.path.join(tfds_dir, 'local_files', name, str(LocalFiles.VERSION))


def _newest_copy(name: str, data_dir: str | None):
  """The builder of the newest prepared copy of ``name`` (one keyed by its
  source, or one an older jaxcls prepared in ``<data_dir>/local_files``);
  None if there is none."""
  keyed = glob.glob(
    os.path.join(glob.escape(copy_dir(name, data_dir, '')), '*')
  )
  tfds_dirs = [
    d
    for d in [*keyed, data_root(data_dir)]
    if os.path.exists(os.path.join(_version_dir(d, name), 'dataset_info.json'))
  ]
  if not tfds_dirs:
    return None
  newest = max(tfds_dirs, key=lambda d: os.path.getmtime(_version_dir(d, name)))
  return LocalFiles(config=name, data_dir=newest)


def _label_range(folder: str) -> tuple[int, int]:
  """The smallest and largest label in a prepared copy's TFRecord files."""
  import tensorflow as tf  # Imported by TFDS already.

  spec = {'label': tf.io.FixedLenFeature([], tf.int64)}
  lo, hi = 0, 0
  for path in sorted(
    glob.glob(os.path.join(glob.escape(folder), '*.tfrecord*'))
  ):
    for records in tf.data.TFRecordDataset(path).batch(8192):
      labels = tf.io.parse_example(records, spec)['label'].numpy()
      if labels.size:
        lo, hi = min(lo, int(labels.min())), max(hi, int(labels.max()))
  return lo, hi


# The copies this process found good, by folder and info file time: the CLI
# and the loader both ask for the builder, the labels are read once.
_CHECKED: set[tuple[str, int]] = set()


def check_prepared(builder, name: str) -> None:
  """Checks that a prepared copy can be read and holds only valid labels.

  Done once per copy and process: an older jaxcls let a -1 label through.

  Args:
    builder: a prepared :class:`LocalFiles` builder.
    name: its dataset, whose number of classes bounds the labels.

  Raises:
    CorruptDatasetFileError: naming the folder to delete, if the copy holds
      labels outside the classes or cannot be read.
  """
  import tensorflow as tf

  folder = str(builder.data_dir)
  key = (folder, os.stat(os.path.join(folder, 'dataset_info.json')).st_mtime_ns)
  if key in _CHECKED:
    return
  num_classes = specs.get_spec(name).num_classes
  try:  # Only the labels are read: about 0.2 s for Fashion-MNIST.
    lo, hi = _label_range(folder)
  except tf.errors.OpError as e:
    raise CorruptDatasetFileError(
      f'the prepared copy {folder} is corrupt ({type(e).__name__}: '
      f'{reason(e)[:100]}); delete that folder so that it is prepared again'
    ) from None
  if lo < 0 or hi >= num_classes:
    raise CorruptDatasetFileError(
      f'the prepared copy {folder} holds labels from {lo} to {hi}, outside '
      f'0..{num_classes - 1} (made from bad files by an older jaxcls?); '
      'delete that folder so that it is prepared again from good files'
    )
  _CHECKED.add(key)


def get_builder(
  name: str, data_dir: str | None = None, manual_dir: str | None = None
):
  """The prepared ``local_files/<name>`` builder, prepared now if need be.

  Args:
    name, data_dir: the dataset, and TFDS's data folder (None: its default).
    manual_dir: the folder of the files; None: the default folders.

  Returns:
    The copy made from the first folder's files as they are now, or without
    such a folder the newest prepared copy; None if there is none either.

  Raises:
    FileNotFoundError: ``manual_dir`` is given but is missing or holds no
      usable files (an old copy is not used then).
    CorruptDatasetFileError: damaged or wrong files, or a bad prepared copy.
  """
  found = _find_source(name, manual_dir, data_dir)
  if found is None:
    if manual_dir:  # Asked for explicitly: say what is missing there.
      read_folder(name, candidate_folders(name, manual_dir, data_dir)[0])
    builder = _newest_copy(name, data_dir)
    if builder is not None:
      check_prepared(builder, name)
    return builder
  folder, paths = found
  tfds_dir = copy_dir(name, data_dir, source_fingerprint(paths))
  builder = LocalFiles(config=name, data_dir=tfds_dir)
  if builder.is_prepared():
    check_prepared(builder, name)
    return builder
  # Read and checked before anything is written: a bad file leaves nothing.
  builder.source_splits = read_folder(name, folder)
  specs.prepare(
    builder,
    download_config=tfds.download.DownloadConfig(manual_dir=folder),
    download_dir=os.path.join(data_root(data_dir), 'downloads'),
  )
  return LocalFiles(config=name, data_dir=tfds_dir)  # Reads the new info.
