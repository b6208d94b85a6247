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
of its files, symbolic links followed (a link's target counts too): a changed
folder is prepared again, an unchanged one is reused, and a prepared one can
still be read (e.g. by predict) after the folder is gone.

Stops with one line naming the folder or file, before anything is written:
an empty class folder, a single class, an unreadable image, one over
``MAX_PIXELS`` (PIL's decompression-bomb limit, as predict's), a class name
with a control character or line break or edge white space (TFDS's
labels.txt holds one stripped name a line), a link that loops (to the folder
holding it or above) or that leads to a file or folder listed already (its
images would be used twice), and too few images for every split to get one.
"""

import contextlib
import dataclasses
import glob
import hashlib
import os
import re
import stat
import unicodedata
import warnings

import numpy as np
import tensorflow_datasets as tfds

from jaxcls.data import specs

EXTENSIONS = ('.png', '.jpg', '.jpeg')
SPLIT_FOLDERS = {
  'train': ('train',),
  'validation': ('val', 'validation', 'valid'),
  'test': ('test',),
}
TEST_PERCENT = 10
SEED = 0
DEFAULT_SIZE_RANGE = (8, 64)
# Larger images are refused before they are decoded: PIL's default
# decompression-bomb limit (Image.MAX_IMAGE_PIXELS), as experiments.predict.
MAX_PIXELS = 89_478_485
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


def _entries(folder: str, hidden: bool) -> tuple[list[str], list[str]]:
  """``(sub-folder names, other names)`` in ``folder``, sorted; links to
  folders count as folders. Unlistable folders look empty, as in os.walk."""
  dirs, files = [], []
  try:
    with os.scandir(folder) as entries:
      for entry in entries:
        if not hidden and entry.name.startswith('.'):
          continue
        try:
          is_dir = entry.is_dir()
        except OSError:
          is_dir = False
        (dirs if is_dir else files).append(entry.name)
  except OSError:
    pass
  return sorted(dirs), sorted(files)


def _real_folder(path: str, above: tuple[str, ...]) -> str:
  """The real path of the folder ``path``; ``above`` holds the real paths
  of the folders it was reached through. Raises ImageFolderError for a link
  to one of them or to a folder holding one (a loop)."""
  if above and not os.path.islink(path):
    return os.path.join(above[-1], os.path.basename(path))
  real = os.path.realpath(path)
  for folder in above:
    if os.path.commonpath([folder, real]) == real:
      raise ImageFolderError(
        f'{path}: a symbolic link to {real}, a folder that contains the '
        'link itself, so its images would be listed again inside it (a '
        'loop); remove the link or point it at a folder of its own images'
      )
  return real


def _walk(top: str, hidden: bool = False, above: tuple[str, ...] = ()):
  """``(folder, its real path, sub-folder names, file names)`` for ``top``
  and every folder under it, top-down in sorted order, following links (as
  ``os.walk(top, followlinks=True)``) but refusing loops (ImageFolderError).

  Names starting with '.' are skipped; with ``hidden`` they are listed, and
  hidden folders are entered unless they are links. ``above``: the real
  paths of the folders ``top`` was reached through.
  """
  stack = [(top, (*above, _real_folder(top, above)))]
  while stack:
    folder, reals = stack.pop()
    dirs, files = _entries(folder, hidden)
    yield folder, reals[-1], dirs, files
    for name in reversed(dirs):
      path = os.path.join(folder, name)
      if not (name.startswith('.') and os.path.islink(path)):
        stack.append((path, (*reals, _real_folder(path, reals))))


def _once(path: str, real: str, seen: dict[str, str]) -> None:
  """Records that ``path`` is ``real``; ImageFolderError if another listed
  path was too (links make a file or folder appear twice)."""
  other = seen.setdefault(real, path)
  if other == path:
    return
  if os.path.islink(other) and not os.path.islink(path):
    path, other = other, path  # Name the link.
  kind = 'folder' if os.path.isdir(path) else 'file'
  raise ImageFolderError(
    f'{path}: the same {kind} as {other} (a symbolic link leads to both), so '
    'its images would be used twice, in two classes or splits; remove the link'
  )


def _images_in(
  folder: str, above: tuple[str, ...] = (), seen: dict | None = None
) -> list[str]:
  """Image files under ``folder`` (any depth, links followed), sorted,
  hidden ones skipped. ``seen`` (real path: path) is shared by the folders
  of one listing, so that nothing is listed twice."""
  seen = {} if seen is None else seen
  found = []
  for parent, real, _, files in _walk(folder, above=above):
    _once(parent, real, seen)
    for name in files:
      if name.lower().endswith(EXTENSIONS):
        path = os.path.join(parent, name)
        if os.path.islink(path):
          _once(path, os.path.realpath(path), seen)
        else:
          _once(path, os.path.join(real, name), seen)
        found.append(path)
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
    _check_name(os.path.join(root, extra[0]))
    raise ImageFolderError(
      f'{os.path.join(root, extra[0])}: unexpected folder next to '
      f'{root}/train; expected only train, val and test there'
    )
  return folders


def list_files(root: str) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
  """``(files per split, class names)`` of the folder ``root``.

  ``files[split]`` lists ``(absolute path, label)``; splits without a folder
  are carved as the module docstring says. Links are followed. Raises
  ImageFolderError naming the folder or file for no class, a single class,
  a class name TFDS cannot store, an empty class folder, a class in
  val/test that train lacks, a link that loops or leads to a file listed
  already, or a split that would get no image.
  """
  folders = _split_folders(root)
  train = folders['train']
  class_names = _class_names(train)
  files, seen = {}, {}
  above = (os.path.realpath(root),)
  for split, folder in folders.items():
    if folder != root:  # ROOT/train, ROOT/val, ROOT/test
      above_split = (*above, _real_folder(folder, above))
    else:
      above_split = above
    names = _subfolders(folder)
    unknown = [n for n in names if n not in class_names]
    if unknown:
      _check_name(os.path.join(folder, unknown[0]))
      raise ImageFolderError(
        f'{os.path.join(folder, unknown[0])}: class not in {train} (the '
        'training classes are ' + ', '.join(class_names) + ')'
      )
    files[split] = []
    for name in names:
      path = os.path.join(folder, name)
      images = _images_in(path, above_split, seen)
      if not images:
        raise ImageFolderError(
          f'{path}: empty class folder (no {"/".join(EXTENSIONS)} images); '
          'add images or remove it'
        )
      files[split] += [(p, class_names.index(name)) for p in images]
  if 'test' not in files:
    files['train'], files['test'] = _carve(files['train'], len(class_names))
  _check_splits(root, folders, files)
  return files, class_names


def _class_names(train: str) -> list[str]:
  """The class folders' names in ``train``, checked (see list_files)."""
  class_names = _subfolders(train)
  if not class_names:
    raise ImageFolderError(f'{train} has no class folders; expected {_LAYOUT}')
  for name in class_names:
    _check_name(os.path.join(train, name))
  if len(class_names) == 1:
    raise ImageFolderError(
      f'{train} has only one class folder ({class_names[0]}); a classifier '
      'needs at least two, one folder per class'
    )
  return class_names


def _check_name(path: str) -> None:
  """ImageFolderError unless the folder's name can be a class name: TFDS's
  labels.txt holds one UTF-8 name a line, read back stripped."""
  name = os.path.basename(path)
  bad = [c for c in name if unicodedata.category(c) in ('Cc', 'Cs', 'Zl', 'Zp')]
  if bad:
    raise ImageFolderError(
      f'{path!r}: the folder name holds {bad[0]!r} (a control character, '
      'line break or undecodable byte), which a class name cannot (TFDS '
      'keeps one name a line in labels.txt); rename the folder'
    )
  if name != name.strip():
    raise ImageFolderError(
      f'{path!r}: the folder name starts or ends with white space, which '
      "TFDS's labels.txt drops from a class name; rename the folder"
    )


def _check_splits(root: str, folders: dict, files: dict) -> None:
  """ImageFolderError for a split that would get no image."""
  for split, folder in folders.items():
    if not files[split]:  # Only a val or test folder can be empty here.
      raise ImageFolderError(
        f'{folder}: no class folders of images (as in {folders["train"]}); '
        'add some or remove the folder'
      )
  if not files['test']:  # Carved from classes of one image each.
    total = len(files['train'])
    raise ImageFolderError(
      f'{folders["train"]}: {total} images (1 per class) are too few to '
      f'split: train would get {total} (validation is cut from it) and test '
      f'0, which needs at least 1 ({TEST_PERCENT}% of each class, 1 from '
      'each class of 2 or more); add images (dozens per class to learn '
      f'anything) or put test images in {root}/test/<class>/ beside '
      f'{root}/train/<class>/'
    )


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
  """``PIL.Image`` of ``path`` (header read); ImageFolderError if unreadable
  or larger than ``MAX_PIXELS``."""
  from PIL import Image, UnidentifiedImageError

  try:
    with warnings.catch_warnings():
      # Sizes are checked below, with a clearer message than PIL's warning.
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      image = Image.open(path)
  except Image.DecompressionBombError as e:  # Over twice PIL's limit.
    pixels = re.search(r'\((\d+) pixels\)', str(e))
    raise _too_big(path, int(pixels.group(1)) if pixels else 0) from None
  except UnidentifiedImageError:
    raise ImageFolderError(
      f'{path}: not an image PIL can read (expected PNG '
      'or JPEG); delete or replace it'
    ) from None
  except FileNotFoundError:
    raise ImageFolderError(
      f'{path}: no such file (a broken link?); remove it or fix the link'
    ) from None
  except OSError as e:
    raise ImageFolderError(f'{path}: cannot read it ({_reason(e)})') from None
  if image.size[0] * image.size[1] > MAX_PIXELS:
    image.close()
    raise _too_big(path, image.size[0] * image.size[1])
  return image


def _too_big(path: str, pixels: int) -> ImageFolderError:
  size = f'{pixels:,} pixels' if pixels else 'too many pixels'
  return ImageFolderError(
    f"{path}: {size}, more than the {MAX_PIXELS:,} an image may have (PIL's "
    'decompression-bomb limit, as in predict); scale it down or remove it'
  )


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
  """A hash of every file's path, size and modification time under root,
  links followed (and their targets), so that a change in a linked folder
  or file prepares the folder again."""
  entries = []
  for parent, _, dirs, files in _walk(root, hidden=True):
    for name in dirs:
      path = os.path.join(parent, name)
      if os.path.islink(path):
        entries.append((os.path.relpath(path, root), os.readlink(path)))
    entries += [_file_entry(os.path.join(parent, n), root) for n in files]
  return _hash(*entries)


def _file_entry(path: str, root: str) -> tuple:
  """``(path relative to root, size, mtime[, link target])`` of a file."""
  st = os.lstat(path)  # One call for a plain file, as os.walk's listing.
  link = stat.S_ISLNK(st.st_mode)
  if link:
    with contextlib.suppress(OSError):  # A broken link: its own.
      st = os.stat(path)
  entry = (os.path.relpath(path, root), st.st_size, st.st_mtime_ns)
  return (*entry, os.readlink(path)) if link else entry


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
      f'dataset {specs.IMAGE_FOLDER!r} needs --config.manual_dir=PATH, {_LAYOUT}'
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
  # Names are checked even for a copy prepared before they were refused.
  _class_names(_split_folders(root)['train'])
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
