"""Listing a folder of class folders of images, and carving its splits.

Layouts (``ROOT`` is ``--config.manual_dir``)::

  ROOT/<class>/*.png|jpg|jpeg                 one folder per class, or
  ROOT/train/<class>/...  [ROOT/val/<class>/...]  [ROOT/test/<class>/...]

(``val`` may also be spelled ``validation`` or ``valid``.) Class names are the
folder names, sorted; label ``i`` is the ``i``-th name. Images may sit in
subfolders of a class folder, links followed; other files (and names starting
with '.') are ignored. Without ``ROOT/test``, test gets ``TEST_PERCENT`` % of
each class's images (at least one from every class with two or more), picked
by ``numpy.random.default_rng(SEED)`` from the class's files in sorted order.
"""

import contextlib
import os
import stat
import unicodedata

import numpy as np

EXTENSIONS = ('.png', '.jpg', '.jpeg')
SPLIT_FOLDERS = {
  'train': ('train',),
  'validation': ('val', 'validation', 'valid'),
  'test': ('test',),
}
TEST_PERCENT = 10
SEED = 0
LAYOUT = (
  'a folder per class (ROOT/<class>/*.png|jpg|jpeg), or ROOT/train/'
  '<class>/... with optional ROOT/val and ROOT/test'
)


class ImageFolderError(ValueError):
  """The folder's layout or one of its files cannot be used."""


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
    raise ImageFolderError(f'{root} is not a folder; expected {LAYOUT}')
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
  """Lists the images of the folder ``root`` per split, with their labels.

  Args:
    root: the folder, in one of the layouts of the module docstring.

  Returns:
    ``(files, class_names)``: ``files[split]`` lists ``(absolute path,
    label)``; splits without a folder are carved (see the module docstring).

  Raises:
    ImageFolderError: naming the folder or file, for no class or a single
      one, a class name TFDS cannot store, an empty class folder, a class in
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
    raise ImageFolderError(f'{train} has no class folders; expected {LAYOUT}')
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


def checked_class_names(root: str) -> list[str]:
  """The class names of the folder ``root``, without listing the images.

  Raises:
    ImageFolderError: as :func:`list_files` for the class folders of train.
  """
  return _class_names(_split_folders(root)['train'])


def listing_entries(root: str) -> list[tuple]:
  """Every file's path, size and modification time under ``root``, links
  followed (and their targets), so that a hash of them changes when a
  linked folder or file does."""
  entries = []
  for parent, _, dirs, files in _walk(root, hidden=True):
    for name in dirs:
      path = os.path.join(parent, name)
      if os.path.islink(path):
        entries.append((os.path.relpath(path, root), os.readlink(path)))
    entries += [_file_entry(os.path.join(parent, n), root) for n in files]
  return entries


def _file_entry(path: str, root: str) -> tuple:
  """``(path relative to root, size, mtime[, link target])`` of a file."""
  st = os.lstat(path)  # One call for a plain file, as os.walk's listing.
  link = stat.S_ISLNK(st.st_mode)
  if link:
    with contextlib.suppress(OSError):  # A broken link: its own.
      st = os.stat(path)
  entry = (os.path.relpath(path, root), st.st_size, st.st_mtime_ns)
  return (*entry, os.readlink(path)) if link else entry
