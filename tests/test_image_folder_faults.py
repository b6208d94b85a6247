"""Image folders built to break the preparation (issue #29): symbolic links
that change, loop or alias, class names TFDS cannot store, huge images and
too few images to split. Each is noticed, or refused in one line naming the
folder or file, by the library and by the CLI (exit 2, no traceback)."""

import os
import shutil
import struct
import subprocess
import sys
import zlib

import pytest
from PIL import Image

from jaxcls import data
from jaxcls.data import image_folder
from test_local_data import ROOT, make_folder, one_line

TWO = {'a': 30, 'b': 200}


def two_classes(root, per_class=2, **kwargs):
  make_folder(str(root), per_class=per_class, modes=('L',), **kwargs)


def builder(root, tmp_path):
  return data.get_builder(
    'image_folder', str(tmp_path / 'tfds'), manual_dir=str(root)
  )


def refused(root, tmp_path) -> str:
  with pytest.raises(image_folder.ImageFolderError) as e:
    builder(root, tmp_path)
  return one_line(e)


def num_examples(prepared) -> int:
  return sum(s.num_examples for s in prepared.info.splits.values())


def cli_error(root, tmp_path) -> str:
  """The one ``error:`` line of the image-folder CLI on ``root`` (exit 2)."""
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'experiments.image_folder',
      f'--config.manual_dir={root}',
      f'--config.data_dir={tmp_path / "tfds"}',
      f'--workdir={tmp_path / "run"}',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=180,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('error:')]
  assert len(lines) == 1, proc.stderr[-2000:]
  return lines[0].removeprefix('error: ')


# ------------------------------------------------- 1: linked class folders.


def test_changes_in_a_linked_class_folder_are_noticed(tmp_path):
  pool, root = tmp_path / 'pool', tmp_path / 'f'
  make_folder(str(pool), per_class=10, modes=('L',), classes={'b': 200})
  make_folder(str(root), per_class=10, modes=('L',), classes={'a': 30})
  os.symlink(pool / 'b', root / 'b')
  first = builder(root, tmp_path)
  assert num_examples(first) == 20
  assert first.info.features['label'].names == ['a', 'b']
  # 20 images added to the linked folder, then 3 deleted.
  make_folder(str(pool), per_class=30, seed=1, modes=('L',), classes={'b': 9})
  for i in range(3):
    os.remove(pool / 'b' / f'{i:03d}.png')
  second = builder(root, tmp_path)
  assert second.data_dir != first.data_dir
  assert num_examples(second) == 10 + 27
  assert builder(root, tmp_path).data_dir == second.data_dir  # reused


def test_a_retargeted_image_link_is_noticed(tmp_path):
  root = tmp_path / 'f'
  two_classes(root, classes=TWO)
  for name, level in (('x', 0), ('y', 255)):  # same size, same time
    Image.new('L', (8, 8), level).save(
      tmp_path / f'{name}.png', compress_level=0
    )
    os.utime(tmp_path / f'{name}.png', ns=(10**18, 10**18))
  assert os.path.getsize(tmp_path / 'x.png') == os.path.getsize(
    tmp_path / 'y.png'
  )
  os.symlink(tmp_path / 'x.png', root / 'a' / 'link.png')
  first = builder(root, tmp_path)
  os.remove(root / 'a' / 'link.png')
  os.symlink(tmp_path / 'y.png', root / 'a' / 'link.png')
  assert builder(root, tmp_path).data_dir != first.data_dir


# ------------------------------------------------- 2: loops and aliases.


@pytest.mark.parametrize('target', ['root', 'parent'])
def test_a_class_folder_linked_to_an_ancestor_is_refused(tmp_path, target):
  root = tmp_path / 'f'
  two_classes(root, classes=TWO)
  os.symlink(root if target == 'root' else tmp_path, root / 'all')
  message = refused(root, tmp_path)
  assert message.startswith(f'{root / "all"}: a symbolic link to ')
  assert 'contains the link itself' in message


def test_links_that_alias_or_loop_are_refused(tmp_path):
  root = tmp_path / 'f'
  two_classes(root, classes=TWO)
  # Another class's folder: its images would carry two labels.
  os.symlink(root / 'a', root / 'c')
  message = refused(root, tmp_path)
  assert message.startswith(f'{root / "c"}: the same folder as {root / "a"}')
  os.remove(root / 'c')
  # A link to another class's image.
  os.symlink(root / 'a' / '000.png', root / 'b' / 'z.png')
  message = refused(root, tmp_path)
  assert message.startswith(f'{root / "b" / "z.png"}: the same file as ')
  os.remove(root / 'b' / 'z.png')
  # Loops inside a class: to itself, and through a folder outside.
  os.symlink(root / 'a', root / 'a' / 'again')
  assert refused(root, tmp_path).startswith(f'{root / "a" / "again"}: ')
  os.remove(root / 'a' / 'again')
  (tmp_path / 'out').mkdir()
  os.symlink(root / 'a', tmp_path / 'out' / 'back')
  os.symlink(tmp_path / 'out', root / 'a' / 'out')
  culprit = root / 'a' / 'out' / 'back'
  assert refused(root, tmp_path).startswith(f'{culprit}: a symbolic link')
  os.remove(tmp_path / 'out' / 'back')
  assert num_examples(builder(root, tmp_path)) == 4  # an empty link is fine


def test_a_broken_link_is_skipped_unless_it_is_an_image(tmp_path):
  root = tmp_path / 'f'
  two_classes(root, classes=TWO)
  os.symlink(tmp_path / 'gone.txt', root / 'notes.txt')  # not listed
  os.symlink(tmp_path / 'gone', root / 'a' / 'old')  # not a folder now
  assert num_examples(builder(root, tmp_path)) == 4
  os.symlink(tmp_path / 'gone.png', root / 'b' / 'x.png')
  message = refused(root, tmp_path)
  assert message.startswith(f'{root / "b" / "x.png"}: no such file')


@pytest.mark.slow
def test_cli_refuses_a_class_folder_linked_to_the_root(tmp_path):
  root = tmp_path / 'f'
  two_classes(root, classes=TWO)
  os.symlink(root, root / 'all')
  assert cli_error(root, tmp_path).startswith(f'{root / "all"}: a symbolic')


# ------------------------------------------------- 3: class names.


@pytest.mark.parametrize('name', ['a\nb', 'tab\there', 'cr\rx', ' lead'])
def test_a_class_name_labels_txt_cannot_hold_is_refused(tmp_path, name):
  root = tmp_path / 'f'
  two_classes(root, classes={'a': 30, name: 200})
  message = refused(root, tmp_path)
  assert message.startswith(repr(str(root / name)) + ': ')
  assert 'rename the folder' in message
  os.rename(root / name, root / 'b ç')  # spaces and accents are fine
  assert builder(root, tmp_path).info.features['label'].names == ['a', 'b ç']


@pytest.mark.slow
def test_cli_refuses_a_class_name_with_a_newline(tmp_path):
  root = tmp_path / 'f'
  two_classes(root, classes={'a': 30, 'b\nc': 200})
  message = cli_error(root, tmp_path)
  assert message.startswith(repr(str(root / 'b\nc')) + ': ')


# ------------------------------------------------- 4: huge images.


def write_png_header(path, side):
  """A ``side`` x ``side`` grayscale PNG with no pixel data (a few bytes):
  PIL reads its size from the header, as from a real image's."""

  def chunk(kind, body):
    crc = zlib.crc32(kind + body)
    return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', crc)

  header = struct.pack('>IIBBBBB', side, side, 8, 0, 0, 0, 0)
  with open(path, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header))
    f.write(chunk(b'IDAT', zlib.compress(b'')) + chunk(b'IEND', b''))


@pytest.mark.parametrize('side', [20000, 10000])  # over 2x, over 1x PIL's
def test_an_image_over_the_pixel_limit_is_refused(tmp_path, side):
  root = tmp_path / 'f'
  two_classes(root, classes=TWO)
  write_png_header(root / 'b' / 'huge.png', side)
  message = refused(root, tmp_path)
  assert message.startswith(f'{root / "b" / "huge.png"}: {side**2:,} pixels')
  assert 'more than the 89,478,485' in message
  assert not os.path.exists(tmp_path / 'tfds' / 'image_folder_data')


@pytest.mark.slow
def test_cli_refuses_a_20000_pixel_square_png(tmp_path):
  root = tmp_path / 'f'
  two_classes(root, classes=TWO)
  write_png_header(root / 'a' / 'huge.png', 20000)
  message = cli_error(root, tmp_path)
  assert message.startswith(f'{root / "a" / "huge.png"}: 400,000,000 pixels')


# ------------------------------------------------- 5: too few to split.


def test_one_image_per_class_is_refused_before_preparing(tmp_path):
  root = tmp_path / 'f'
  two_classes(root, per_class=1, classes=TWO)
  message = refused(root, tmp_path)
  assert message.startswith(f'{root}: 2 images (1 per class) are too few')
  assert 'train would get 2 (validation is cut from it) and test 0' in message
  assert not os.path.exists(tmp_path / 'tfds' / 'image_folder_data')
  make_folder(str(root), per_class=2, modes=('L',), classes={'a': 30})
  assert num_examples(builder(root, tmp_path)) == 3  # 2 + 1 is enough


@pytest.mark.parametrize('split', ['val', 'test'])
def test_a_split_folder_without_images_is_refused(tmp_path, split):
  root = tmp_path / 'f'
  two_classes(root / 'train', classes=TWO)
  (root / split).mkdir()
  message = refused(root, tmp_path)
  assert message.startswith(f'{root / split}: no class folders of images')
  shutil.rmtree(root / split)
  assert num_examples(builder(root, tmp_path)) == 4


@pytest.mark.slow
def test_cli_refuses_one_image_per_class(tmp_path):
  root = tmp_path / 'f'
  two_classes(root, per_class=1, classes=TWO)
  assert cli_error(root, tmp_path).startswith(f'{root}: 2 images')
