"""A folder of class folders of images, prepared as a normal TFDS dataset.

Layouts (``ROOT`` is ``--config.manual_dir``)::

  ROOT/<class>/*.png|jpg|jpeg                 one folder per class, or
  ROOT/train/<class>/...  [ROOT/val/<class>/...]  [ROOT/test/<class>/...]

(``val`` may also be spelled ``validation`` or ``valid``.) Class names are the
folder names, sorted; label ``i`` is the ``i``-th name. Images may sit in
subfolders of a class folder; other files (and names starting with '.') are
ignored.

Missing splits are carved with fixed rules, so every run sees the same ones:

- test: without ``ROOT/test``, 10% of each class's images (at least one from
  every class with two or more), picked by ``numpy.random.default_rng(0)``
  from the class's files in sorted order;
- validation: without ``ROOT/val``, the last ``validation_percent`` % of the
  prepared train split (see jaxcls.data.load); TFDS orders a split by a
  fixed hash of each example's key (here the file's path), so this is a fixed
  mix of all classes.

Every image is converted to one size and channel count, as
``experiments.predict`` converts its input: 16-bit grayscale scaled to 8 bits
(not clipped), transparency composited onto black (the background MNIST-
style data has), PIL's ``convert`` to 'L' (channels=1) or 'RGB' (channels=3)
for every other mode (palette, CMYK, ...), then ``ImageOps.fit`` (centre crop
to square, Lanczos resize) to ``image_size`` x ``image_size``. Defaults,
chosen from the data when the config leaves them 0:

- ``channels``: 1 if every image is grayscale (PIL modes 1, L, LA, I, I;16,
  F), else 3 (palette images count as colour);
- ``image_size``: the median of the images' shorter sides, clipped to
  [8, 64] (larger images make the CNN's dense layer large; ask for more with
  ``--config.image_size``).

The prepared dataset lives in ``<data_dir>/image_folder_data/<config>/``,
where the config name is the folder's name plus a hash of its absolute path,
the requested size and channels, and the names, sizes and modification times
of its files: a changed folder is prepared again, an unchanged one is reused,
and a prepared one can still be read (e.g. by predict) after the folder is
gone. An empty class folder, an unreadable image or a single class stops with
one line naming the folder or file.
"""

import dataclasses
import glob
import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds

from jaxcls import data

EXTENSIONS = ('.png', '.jpg', '.jpeg')
SPLIT_FOLDERS = {
  'train': ('train',),
  'validation': ('val', 'validation', 'valid'),
  'test': ('test',),
}
TEST_PERCENT = 10
SEED = 0
DEFAULT_SIZE_RANGE = (8, 64)
_GRAY_MODES = (
  '1',
  'L',
  'LA',
  'La',
  'I',
  'I;16',
  'I;16B',
  'I;16L',
  'I;16N',
  'F',
)
_LAYOUT = (
  'a folder per class (ROOT/<class>/*.png|jpg|jpeg), or ROOT/train/'
  '<class>/... with optional ROOT/val and ROOT/test'
)


class ImageFolderError(ValueError):
  """The folder's layout or one of its files cannot be used."""


@dataclasses.dataclass
class Scan:
  """What preparing needs: files per split (paths relative to ``root``, with
  their labels), the class names, and the size and channels to convert to."""

  root: str
  files: dict[str, list[tuple[str, int]]]
  class_names: list[str]
  image_size: int
  channels: int


def _subfolders(folder: str) -> list[str]:
  return sorted(
    n
    for n in os.listdir(folder)
    if not n.startswith('.') and os.path.isdir(os.path.join(folder, n))
  )


def _images_in(folder: str) -> list[str]:
  """Image files under ``folder`` (any depth), sorted, hidden ones skipped."""
  found = []
  for parent, dirs, files in os.walk(folder):
    dirs[:] = [d for d in dirs if not d.startswith('.')]
    found += [
      os.path.join(parent, f)
      for f in files
      if not f.startswith('.') and f.lower().endswith(EXTENSIONS)
    ]
  return sorted(found)


def _split_folders(root: str) -> dict[str, str]:
  """``{'train': path, ['validation': path], ['test': path]}`` of ``root``."""
  if not os.path.isdir(root):
    raise ImageFolderError(f'{root} is not a folder; expected {_LAYOUT}')
  names = _subfolders(root)
  if 'train' not in names:
    return {'train': root}
  folders, known = {}, set()
  for split, spellings in SPLIT_FOLDERS.items():
    for spelling in spellings:
      if spelling in names:
        folders.setdefault(split, os.path.join(root, spelling))
        known.add(spelling)
  extra = [n for n in names if n not in known]
  if extra:
    raise ImageFolderError(
      f'{os.path.join(root, extra[0])}: unexpected folder next to '
      f'{root}/train; expected only train, val and test there'
    )
  return folders


def list_files(root: str) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
  """``(files per split, class names)`` of the folder ``root``.

  ``files[split]`` lists ``(absolute path, label)``; splits without a folder
  are carved as the module docstring says. Raises ImageFolderError naming
  the folder for no class, a single class, an empty class folder, or a class
  in val/test that train lacks.
  """
  folders = _split_folders(root)
  train = folders['train']
  class_names = _subfolders(train)
  if not class_names:
    raise ImageFolderError(f'{train} has no class folders; expected {_LAYOUT}')
  if len(class_names) == 1:
    raise ImageFolderError(
      f'{train} has only one class folder ({class_names[0]}); a classifier '
      'needs at least two, one folder per class'
    )
  files = {}
  for split, folder in folders.items():
    names = _subfolders(folder)
    unknown = [n for n in names if n not in class_names]
    if unknown:
      raise ImageFolderError(
        f'{os.path.join(folder, unknown[0])}: class not in {train} (the '
        'training classes are ' + ', '.join(class_names) + ')'
      )
    files[split] = []
    for name in names:
      images = _images_in(os.path.join(folder, name))
      if not images:
        raise ImageFolderError(
          f'{os.path.join(folder, name)}: empty class folder (no '
          f'{"/".join(EXTENSIONS)} images); add images or remove it'
        )
      files[split] += [(path, class_names.index(name)) for path in images]
  if 'test' not in files:
    files['train'], files['test'] = _carve(files['train'], len(class_names))
  return files, class_names


def _carve(files: list[tuple[str, int]], num_classes: int):
  """Splits off ``TEST_PERCENT`` % of each class, picked with ``SEED``."""
  rng = np.random.default_rng(SEED)
  keep, carved = [], []
  for label in range(num_classes):
    mine = [f for f in files if f[1] == label]
    n = len(mine) * TEST_PERCENT // 100
    n = max(n, 1) if len(mine) >= 2 else 0
    picked = set(rng.permutation(len(mine))[:n].tolist())
    for i, f in enumerate(mine):
      (carved if i in picked else keep).append(f)
  return keep, carved


def _reason(e: BaseException) -> str:
  """An exception's message on one line, short."""
  return ' '.join(str(e).split())[:200] or type(e).__name__


def _open(path: str):
  """``PIL.Image`` of ``path`` (header read); ImageFolderError if unreadable."""
  from PIL import Image, UnidentifiedImageError

  try:
    return Image.open(path)
  except UnidentifiedImageError:
    raise ImageFolderError(
      f'{path}: not an image PIL can read (expected PNG '
      'or JPEG); delete or replace it'
    ) from None
  except OSError as e:
    raise ImageFolderError(f'{path}: cannot read it ({_reason(e)})') from None


def choose_defaults(
  paths: list[str], image_size: int = 0, channels: int = 0
) -> tuple[int, int]:
  """``(image_size, channels)``, the zeros filled in from the images' headers
  (rules in the module docstring). Every file is opened, so an unreadable
  one is reported here, before anything is written."""
  sides, gray = [], True
  for path in paths:
    with _open(path) as image:
      sides.append(min(image.size))
      gray = gray and image.mode in _GRAY_MODES
  if not image_size:
    image_size = int(np.clip(np.median(sides), *DEFAULT_SIZE_RANGE))
  if not channels:
    channels = 1 if gray else 3
  return image_size, channels


def load_image(path: str, image_size: int, channels: int) -> np.ndarray:
  """The image at ``path`` as uint8 ``(image_size, image_size, channels)``."""
  from PIL import Image, ImageOps

  try:
    with _open(path) as image:
      image.load()  # Decodes now, so a truncated file fails here.
      image = ImageOps.exif_transpose(image)
      if image.mode.startswith('I') or image.mode == 'F':
        # PIL's 'I;16' -> 'L' clips at 255; scale 16 bits to 8 instead.
        pixels = np.asarray(image, np.float64)
        if image.mode != 'F':
          pixels = pixels / 257.0
        image = Image.fromarray(
          np.clip(np.round(pixels), 0, 255).astype(np.uint8), 'L'
        )
      if image.has_transparency_data:  # RGBA, LA, palette with transparency
        rgba = np.asarray(image.convert('RGBA'), np.float64)
        image = Image.fromarray(
          np.rint(rgba[..., :3] * rgba[..., 3:] / 255).astype(np.uint8), 'RGB'
        )
      image = image.convert('L' if channels == 1 else 'RGB')
  except ImageFolderError:
    raise
  except (OSError, SyntaxError, ValueError) as e:  # Truncated or corrupt.
    raise ImageFolderError(
      f'{path}: corrupt or truncated image ({_reason(e)}); delete or replace it'
    ) from None
  image = ImageOps.fit(
    image, (image_size, image_size), Image.Resampling.LANCZOS
  )
  return np.asarray(image, np.uint8).reshape(image_size, image_size, channels)


def scan(root: str, image_size: int = 0, channels: int = 0) -> Scan:
  """Lists, checks and sizes the folder ``root`` (no pixels decoded)."""
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
  """A hash of every file's path, size and modification time under root."""
  entries = []
  for parent, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(files):
      st = os.stat(os.path.join(parent, name))
      entries.append(
        (
          os.path.relpath(os.path.join(parent, name), root),
          st.st_size,
          st.st_mtime_ns,
        )
      )
  return _hash(*entries)


def _prepared(path: str) -> bool:
  return os.path.exists(os.path.join(path, 'dataset_info.json'))


def get_builder(
  manual_dir: str | None,
  data_dir: str | None = None,
  image_size: int = 0,
  channels: int = 0,
):
  """The prepared TFDS dataset of the folder ``manual_dir``; prepares it
  unless a copy of the folder as it is now was prepared before."""
  if not manual_dir:
    raise ImageFolderError(
      f'dataset {data.IMAGE_FOLDER!r} needs --config.manual_dir=PATH, {_LAYOUT}'
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
    copies = [
      p
      for p in glob.glob(os.path.join(base, prefix + '_*', version))
      if _prepared(p)
    ]
    if not copies:
      raise ImageFolderError(f'{root} is not a folder; expected {_LAYOUT}')
    return tfds.builder_from_directory(max(copies, key=os.path.getmtime))
  name = f'{prefix}_{_listing_hash(root)}'
  path = os.path.join(base, name, version)
  if _prepared(path):
    return tfds.builder_from_directory(path)
  builder = ImageFolderData(
    folder_scan=scan(root, image_size, channels),
    data_dir=data_root,
    config=tfds.core.BuilderConfig(name=name, description=f'{root}'),
  )
  data.prepare(builder)
  return tfds.builder_from_directory(path)


def spec(builder) -> data.DatasetSpec:
  """The DatasetSpec of a prepared image-folder builder (from its info)."""
  features = builder.info.features
  return data.DatasetSpec(
    image_shape=tuple(features['image'].shape),
    num_classes=features['label'].num_classes,
    augment=False,
    class_names=tuple(features['label'].names),
  )
