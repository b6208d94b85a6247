"""Local files through TFDS: MNIST/CIFAR-10 files in every format a user may
have, and folders of class folders, all written by these tests; every bad
input gets one line that names the file or folder."""

import gzip
import io
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from jaxcls import data
from jaxcls.data import image_folder
from jaxcls.data import local_files as local_data
from jaxcls.training import inspection
from jaxcls.training import run as train

pytestmark = pytest.mark.slow  # Trains models: the full tier.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDX_NAMES = {
  'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
  'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}


def one_line(excinfo) -> str:
  message = str(excinfo.value)
  assert '\n' not in message
  return message


# ------------------------------------------------- writers (the references).


def write_idx(path, array):
  header = bytes([0, 0, 8, array.ndim]) + b''.join(
    int(d).to_bytes(4, 'big') for d in array.shape
  )
  opener = gzip.open if str(path).endswith('.gz') else open
  with opener(path, 'wb') as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def random_split(rng, n, shape=(28, 28), counts=None):
  labels = (
    np.repeat(np.arange(10), counts)
    if counts is not None
    else rng.integers(0, 10, n)
  )
  images = rng.integers(0, 256, (len(labels), *shape), dtype=np.uint8)
  return images, labels.astype(np.uint8)


def mnist_like(seed=0):
  rng = np.random.default_rng(seed)
  return {'train': random_split(rng, 23), 'test': random_split(rng, 11)}


def write_idx_folder(folder, splits, gz=True):
  os.makedirs(folder, exist_ok=True)
  for split, (images, labels) in splits.items():
    image_name, label_name = IDX_NAMES[split]
    suffix = '.gz' if gz else ''
    write_idx(os.path.join(folder, image_name + suffix), images)
    write_idx(os.path.join(folder, label_name + suffix), labels)


def assert_same(read, written):
  """Read (N, H, W, C) splits equal the written (N, H, W[, C]) ones."""
  assert sorted(read) == sorted(written)
  for split, (images, labels) in written.items():
    got_images, got_labels = read[split]
    assert got_images.dtype == np.uint8
    np.testing.assert_array_equal(got_images.reshape(images.shape), images)
    np.testing.assert_array_equal(got_labels, labels)


def cifar_like(seed=0, per_batch=4):
  """HWC images per CIFAR batch file: {'data_batch_1': (images, labels)}."""
  rng = np.random.default_rng(seed)
  names = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']
  return {n: random_split(rng, per_batch, (32, 32, 3)) for n in names}


def planes(images):
  """CIFAR's row layout, built pixel by pixel: R plane, G plane, B plane."""
  rows = np.zeros((len(images), 3072), np.uint8)
  for i, image in enumerate(images):
    for c in range(3):
      for y in range(32):
        for x in range(32):
          rows[i, c * 1024 + y * 32 + x] = image[y, x, c]
  return rows


def cifar_expected(batches):
  train = [batches[f'data_batch_{i}'] for i in range(1, 6)]
  return {
    'train': (
      np.concatenate([b[0] for b in train]),
      np.concatenate([b[1] for b in train]),
    ),
    'test': batches['test_batch'],
  }


def add_to_tar(tar, name, payload):
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def cifar_pickle(images, labels):
  return pickle.dumps(
    {b'data': planes(images), b'labels': labels.tolist(), b'batch_label': b'x'}
  )


def write_cifar_python(path, batches, as_folder=False):
  if as_folder:
    os.makedirs(path, exist_ok=True)
    for name, (images, labels) in batches.items():
      with open(os.path.join(path, name), 'wb') as f:
        f.write(cifar_pickle(images, labels))
    return
  with tarfile.open(path, 'w:gz') as tar:
    for name, (images, labels) in batches.items():
      add_to_tar(
        tar, f'cifar-10-batches-py/{name}', cifar_pickle(images, labels)
      )


def write_cifar_binary(path, batches):
  with tarfile.open(path, 'w:gz') as tar:
    for name, (images, labels) in batches.items():
      records = np.concatenate([labels[:, None], planes(images)], axis=1)
      add_to_tar(tar, f'cifar-10-batches-bin/{name}.bin', records.tobytes())


# ------------------------------------------------- readers, read back exactly.


@pytest.mark.parametrize('gz', [True, False])
def test_idx_files_read_back_exactly(tmp_path, gz):
  written = mnist_like()
  write_idx_folder(tmp_path, written, gz=gz)
  assert_same(local_data.read_folder('mnist', str(tmp_path)), written)


def test_torchvision_raw_folder_works_as_is(tmp_path):
  # torchvision keeps both the .gz and the extracted file in MNIST/raw.
  written = mnist_like(1)
  write_idx_folder(tmp_path / 'MNIST' / 'raw', written, gz=True)
  write_idx_folder(tmp_path / 'MNIST' / 'raw', written, gz=False)
  for folder in (tmp_path / 'MNIST' / 'raw', tmp_path / 'MNIST'):
    assert_same(local_data.read_folder('fashion_mnist', str(folder)), written)


@pytest.mark.parametrize(
  'name,file', [('mnist', 'mnist.npz'), ('fashion_mnist', 'fashion-mnist.npz')]
)
def test_keras_npz_reads_back_exactly(tmp_path, name, file):
  written = mnist_like(2)
  np.savez(
    tmp_path / file,
    x_train=written['train'][0],
    y_train=written['train'][1],
    x_test=written['test'][0],
    y_test=written['test'][1],
  )
  assert_same(local_data.read_folder(name, str(tmp_path)), written)


def test_cifar_planes_are_hwc_in_the_standard_order():
  image = np.zeros((1, 32, 32, 3), np.uint8)
  image[0, 0, 1] = (10, 20, 30)  # row 0, column 1
  row = planes(image)[0]
  assert (row[1], row[1024 + 1], row[2048 + 1]) == (10, 20, 30)


@pytest.mark.parametrize('layout', ['tarball', 'folder', 'binary'])
def test_cifar10_files_read_back_exactly(tmp_path, layout):
  batches = cifar_like()
  if layout == 'tarball':
    write_cifar_python(tmp_path / 'cifar-10-python.tar.gz', batches)
  elif layout == 'folder':
    write_cifar_python(
      tmp_path / 'cifar-10-batches-py', batches, as_folder=True
    )
  else:
    write_cifar_binary(tmp_path / 'cifar-10-binary.tar.gz', batches)
  assert_same(
    local_data.read_folder('cifar10', str(tmp_path)), cifar_expected(batches)
  )


def test_manual_dir_prepares_a_normal_tfds_dataset(tmp_path, monkeypatch):
  written = mnist_like(3)
  write_idx_folder(tmp_path / 'home' / 'data' / 'MNIST' / 'raw', written)
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  config = tiny_config(
    dataset='mnist',
    manual_dir='~/data/MNIST/raw',
    data_dir=str(tmp_path / 'tfds'),
  )
  ds = data.load('mnist', config.data_dir, **data.source_args(config))
  assert ds.source == 'local_files/mnist'
  images = np.concatenate([ds.train.images, ds.val.images])[..., 0]
  labels = np.concatenate([ds.train.labels, ds.val.labels])
  # TFDS writes examples in its own (hashed) order: compare as sets.
  order = np.lexsort([labels, images.reshape(len(images), -1).sum(1)])
  ref = np.lexsort(
    [written['train'][1], written['train'][0].reshape(23, -1).sum(1)]
  )
  np.testing.assert_array_equal(images[order], written['train'][0][ref])
  np.testing.assert_array_equal(labels[order], written['train'][1][ref])
  assert len(ds.test) == 11
  # Prepared once: without the folder it is still read like any dataset.
  os.rename(tmp_path / 'home', tmp_path / 'gone')
  assert len(data.load('mnist', config.data_dir).test) == 11


def test_tfds_default_manual_folder_is_searched(tmp_path):
  batches = cifar_like(4, per_batch=2)
  manual = tmp_path / 'downloads' / 'manual' / 'cifar10'
  manual.mkdir(parents=True)
  write_cifar_binary(manual / 'cifar-10-binary.tar.gz', batches)
  builder = data.get_builder('cifar10', str(tmp_path))
  assert builder.info.full_name.startswith('local_files/cifar10')
  test = data.read_split(builder, 'test')
  np.testing.assert_array_equal(
    test.images[np.argsort(test.images.reshape(2, -1).sum(1))],
    batches['test_batch'][0][
      np.argsort(batches['test_batch'][0].reshape(2, -1).sum(1))
    ],
  )


def test_fashion_mnist_env_folder_still_works(tmp_path, monkeypatch):
  folder = tmp_path / 'fm'
  write_idx_folder(folder, mnist_like(5))
  monkeypatch.setenv(local_data.FASHION_MNIST_ENV, str(folder))
  assert local_data.candidate_folders('fashion_mnist', None, None)[-1] == (
    str(folder)
  )
  monkeypatch.delenv(local_data.FASHION_MNIST_ENV)
  assert local_data.candidate_folders('fashion_mnist', None, None)[-1] == (
    '/usr/share/datasets/fashion-mnist'
  )


# ------------------------------------------------- bad tutorial-dataset files.


def test_truncated_and_damaged_idx_files_are_named(tmp_path):
  write_idx_folder(tmp_path, mnist_like())
  path = tmp_path / 'train-images-idx3-ubyte.gz'
  with gzip.open(path, 'rb') as f:
    raw = f.read()
  with gzip.open(path, 'wb') as f:
    f.write(raw[:-10])
  with pytest.raises(local_data.CorruptDatasetFileError) as e:
    local_data.read_folder('mnist', str(tmp_path))
  assert 'truncated' in one_line(e) and str(path) in one_line(e)
  path.write_bytes(b'not gzip at all')
  with pytest.raises(local_data.CorruptDatasetFileError) as e:
    local_data.read_folder('mnist', str(tmp_path))
  assert one_line(e).startswith(f'cannot read {path}')


def test_wrong_size_and_mismatched_idx_files_are_named(tmp_path):
  rng = np.random.default_rng(0)
  write_idx_folder(
    tmp_path,
    {'train': random_split(rng, 4, (32, 32)), 'test': random_split(rng, 4)},
  )
  with pytest.raises(local_data.CorruptDatasetFileError) as e:
    local_data.read_folder('mnist', str(tmp_path))
  assert 'train-images-idx3-ubyte.gz' in one_line(e)
  assert '(32, 32), expected 28x28' in one_line(e)
  write_idx_folder(tmp_path, mnist_like())
  write_idx(tmp_path / 't10k-labels-idx1-ubyte.gz', np.zeros(3, np.uint8))
  with pytest.raises(local_data.CorruptDatasetFileError) as e:
    local_data.read_folder('mnist', str(tmp_path))
  assert 't10k-labels-idx1-ubyte.gz holds (3,) labels for the 11' in (
    one_line(e)
  )


def test_the_wrong_dataset_is_recognised(tmp_path):
  rng = np.random.default_rng(0)
  mnist_counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
  write_idx_folder(
    tmp_path,
    {
      'train': random_split(rng, 5),
      'test': random_split(rng, 0, counts=mnist_counts),
    },
  )
  with pytest.raises(local_data.CorruptDatasetFileError) as e:
    local_data.read_folder('fashion_mnist', str(tmp_path))
  assert 'holds MNIST, not Fashion-MNIST' in one_line(e)
  assert str(tmp_path) in one_line(e)
  local_data.read_folder('mnist', str(tmp_path))  # Right for MNIST.
  # CIFAR-100-like labels in a CIFAR-10 tarball.
  batches = cifar_like()
  batches['test_batch'] = (
    batches['test_batch'][0],
    np.array([0, 1, 2, 57], np.uint8),
  )
  write_cifar_binary(tmp_path / 'cifar-10-binary.tar.gz', batches)
  with pytest.raises(local_data.CorruptDatasetFileError) as e:
    local_data.read_folder('cifar10', str(tmp_path))
  assert 'labels go up to 57' in one_line(e)
  assert 'cifar-10-binary.tar.gz' in one_line(e)


def test_damaged_cifar_files_are_named(tmp_path):
  batches = cifar_like()
  tarball = tmp_path / 'cifar-10-python.tar.gz'
  with tarfile.open(tarball, 'w:gz') as tar:  # one batch missing
    for name, (images, labels) in list(batches.items())[1:]:
      add_to_tar(
        tar, f'cifar-10-batches-py/{name}', cifar_pickle(images, labels)
      )
  with pytest.raises(local_data.CorruptDatasetFileError) as e:
    local_data.read_folder('cifar10', str(tmp_path))
  assert f'{tarball} has no cifar-10-batches-py/data_batch_1' in one_line(e)
  tarball.write_bytes(b'\x1f\x8b garbage')
  with pytest.raises(local_data.CorruptDatasetFileError) as e:
    local_data.read_folder('cifar10', str(tmp_path))
  assert one_line(e).startswith(f'cannot read {tarball}')
  tarball.unlink()
  folder = tmp_path / 'cifar-10-batches-py'
  write_cifar_python(folder, batches, as_folder=True)
  (folder / 'data_batch_3').write_bytes(b'not a pickle')
  with pytest.raises(local_data.CorruptDatasetFileError) as e:
    local_data.read_folder('cifar10', str(tmp_path))
  assert f'{folder}: data_batch_3 is not a CIFAR-10 batch' in one_line(e)
  binary = tmp_path / 'other'
  binary.mkdir()
  with tarfile.open(binary / 'cifar-10-binary.tar.gz', 'w:gz') as tar:
    for name in list(batches):
      add_to_tar(tar, f'cifar-10-batches-bin/{name}.bin', b'\x00' * 3000)
  with pytest.raises(local_data.CorruptDatasetFileError) as e:
    local_data.read_folder('cifar10', str(binary))
  assert 'data_batch_1.bin is 3000 bytes, not a multiple of 3073' in (
    one_line(e)
  )


def test_npz_of_the_wrong_shape_is_named(tmp_path):
  np.savez(
    tmp_path / 'mnist.npz',
    x_train=np.zeros((2, 32, 32, 3), np.uint8),
    y_train=np.zeros(2),
    x_test=np.zeros((2, 28, 28), np.uint8),
    y_test=np.zeros(2),
  )
  with pytest.raises(local_data.CorruptDatasetFileError) as e:
    local_data.read_folder('mnist', str(tmp_path))
  assert 'mnist.npz: x_train is uint8 (2, 32, 32, 3)' in one_line(e)
  np.savez(tmp_path / 'mnist.npz', images=np.zeros(2))
  with pytest.raises(local_data.CorruptDatasetFileError) as e:
    local_data.read_folder('mnist', str(tmp_path))
  assert 'lacks the arrays' in one_line(e)


def test_a_manual_dir_without_the_files_says_which_would_do(tmp_path):
  (tmp_path / 'notes.txt').write_text('hi')
  with pytest.raises(FileNotFoundError) as e:
    data.get_builder('mnist', str(tmp_path / 'tfds'), manual_dir=str(tmp_path))
  assert one_line(e).startswith(f'no MNIST files in {tmp_path}: expected')
  assert 'train-images-idx3-ubyte' in one_line(e) and 'mnist.npz' in (
    one_line(e)
  )


def test_unavailable_message_names_the_files_and_where_they_go(tmp_path):
  message = local_data.unavailable_message('cifar10', str(tmp_path))
  assert '\n' not in message
  for part in (
    'cifar-10-python.tar.gz',
    'cifar-10-batches-py',
    'cifar-10-binary.tar.gz',
    '--config.manual_dir=FOLDER',
    f'{tmp_path}/downloads/manual/cifar10',
    'tfds build cifar10',
  ):
    assert part in message


def test_cli_reports_a_damaged_file_in_one_line(tmp_path):
  write_idx_folder(tmp_path / 'mnist', mnist_like())
  (tmp_path / 'mnist' / 't10k-images-idx3-ubyte.gz').write_bytes(b'\x1f\x8b!')
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'experiments.mnist',
      f'--config.manual_dir={tmp_path / "mnist"}',
      f'--config.data_dir={tmp_path / "tfds"}',
      f'--workdir={tmp_path / "run"}',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('error:')]
  assert len(lines) == 1
  assert lines[0].startswith(
    f'error: cannot read {tmp_path}/mnist/t10k-images-idx3-ubyte.gz: '
  )


# ------------------------------------------------- image folders.

# Three classes told apart by brightness; every image a different size, in
# one of six modes, as PNG or JPEG.
CLASSES = {'bright': 215, 'dark': 35, 'mid': 125}
MODES = ('L', 'RGB', 'RGBA', 'P', 'I;16', 'JPEG-RGB')


def make_image(rng, level, mode, size):
  h, w = size
  gray = np.clip(level + rng.integers(-20, 21, (h, w)), 0, 255)
  rgb = np.stack([gray, gray * 0.9, np.minimum(gray * 1.1, 255)], -1)
  if mode == 'L':
    return Image.fromarray(gray.astype(np.uint8), 'L'), 'png'
  if mode == 'I;16':
    return Image.fromarray((gray * 257).astype(np.uint16)), 'png'
  image = Image.fromarray(rgb.astype(np.uint8), 'RGB')
  if mode == 'RGBA':
    image.putalpha(255)
  elif mode == 'P':
    image = image.convert('P', palette=Image.Palette.ADAPTIVE)
  return image, 'jpg' if mode.startswith('JPEG') else 'png'


def make_folder(root, per_class=30, seed=0, classes=CLASSES, modes=MODES):
  """Writes ``root/<class>/<i>.png|jpg``; returns the shorter sides."""
  rng = np.random.default_rng(seed)
  sides = []
  for name, level in classes.items():
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(per_class):
      size = tuple(rng.integers(14, 40, 2).tolist())
      image, ext = make_image(rng, level, modes[i % len(modes)], size)
      image.save(os.path.join(root, name, f'{i:03d}.{ext}'))
      sides.append(min(size))
  return sides


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('images') / 'shades'
  sides = make_folder(str(root))
  return str(root), sides


def folder_config(root, data_dir, **overrides):
  return tiny_config(
    **{
      'dataset': 'image_folder',
      'manual_dir': root,
      'data_dir': data_dir,
      'train_examples': -1,
      'batch_size': 16,
      'eval_batch_size': 64,
      'num_epochs': 2,
      'learning_rate': 3e-3,
      **overrides,
    }
  )


@pytest.fixture(scope='module')
def folder_tfds(tmp_path_factory):
  """One TFDS data_dir for the runs on ``folder``: it is prepared once."""
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def trained(folder, folder_tfds, tmp_path_factory):
  root, _ = folder
  config = folder_config(root, folder_tfds)
  workdir = str(tmp_path_factory.mktemp('cnn'))
  return config, workdir, train.train_and_evaluate(config, workdir)


def test_defaults_come_from_the_data(folder, tmp_path):
  root, sides = folder
  builder = data.get_builder('image_folder', str(tmp_path), manual_dir=root)
  spec = image_folder.spec(builder)
  size = int(np.clip(np.median(sides), 8, 64))
  assert spec.image_shape == (size, size, 3)  # colour images present
  assert spec.class_names == ('bright', 'dark', 'mid')
  gray = tmp_path / 'gray'
  make_folder(str(gray), per_class=3, modes=('L', 'I;16'))
  spec = image_folder.spec(
    data.get_builder(
      'image_folder', str(tmp_path), manual_dir=str(gray), image_size=12
    )
  )
  assert spec.image_shape == (12, 12, 1)


def test_conversion_of_modes_and_bit_depths(tmp_path):
  values = np.array([[0, 257 * 100], [257 * 200, 65535]], np.uint16)
  Image.fromarray(values).save(tmp_path / 'deep.png')
  got = image_folder.load_image(str(tmp_path / 'deep.png'), 2, 1)
  np.testing.assert_array_equal(got[..., 0], [[0, 100], [200, 255]])
  rgba = np.zeros((4, 4, 4), np.uint8)
  rgba[..., :3] = (200, 100, 50)
  rgba[:, :2, 3] = 255  # left half opaque, right half transparent
  Image.fromarray(rgba[..., :3], 'RGB').convert('P').save(tmp_path / 'pal.png')
  got = image_folder.load_image(str(tmp_path / 'pal.png'), 4, 3)
  np.testing.assert_allclose(
    got.reshape(-1, 3), [[200, 100, 50]] * 16, atol=8
  )  # the palette quantises
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 'rgba.png')
  got = image_folder.load_image(str(tmp_path / 'rgba.png'), 4, 3)
  np.testing.assert_array_equal(got[:, :2], np.full((4, 2, 3), (200, 100, 50)))
  np.testing.assert_array_equal(got[:, 2:], 0)  # onto black, like predict
  gray = image_folder.load_image(str(tmp_path / 'rgba.png'), 4, 1)[..., 0]
  assert gray[0, 0] == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
  assert (gray[:, 2:] == 0).all()
  # Non-square: cropped around the centre, like experiments.predict.
  wide = np.zeros((4, 12), np.uint8)
  wide[:, 4:8] = 255
  Image.fromarray(wide).save(tmp_path / 'wide.png')
  np.testing.assert_array_equal(
    image_folder.load_image(str(tmp_path / 'wide.png'), 4, 1)[..., 0],
    np.full((4, 4), 255),
  )


def test_missing_test_split_is_carved_per_class_with_a_fixed_seed(folder):
  root, _ = folder
  files, names = image_folder.list_files(root)
  assert names == ['bright', 'dark', 'mid']
  assert [lb for _, lb in files['test']] == [0] * 3 + [1] * 3 + [2] * 3
  assert len(files['train']) == 81
  assert not {p for p, _ in files['test']} & {p for p, _ in files['train']}
  again, _ = image_folder.list_files(root)
  assert again == files


def test_cnn_learns_the_folder_well_above_chance(trained):
  config, workdir, results = trained
  assert results['data_source'].startswith('image_folder_data/shades_')
  assert results['test_accuracy'] >= 0.8  # chance: 1/3; test: 9 images
  assert inspection.class_names(config) == ['bright', 'dark', 'mid']


def test_predict_and_report_show_the_folder_names(trained, tmp_path):
  from experiments import predict, report

  _, workdir, results = trained
  image, _ = make_image(np.random.default_rng(9), 35, 'RGB', (30, 20))
  image.save(tmp_path / 'x.png')
  out = predict.predict(workdir, [str(tmp_path / 'x.png')], k=3)
  assert sorted(n for n, _ in out[0]) == ['bright', 'dark', 'mid']
  assert out[0][0][0] == 'dark'
  reported = report.report(workdir, num_misclassified=4)
  assert reported['class_names'] == ['bright', 'dark', 'mid']
  assert reported['test_accuracy'] == pytest.approx(results['test_accuracy'])


def test_lstm_reads_the_folder_row_by_row(
  folder, folder_tfds, trained, tmp_path
):
  # Rows of image_size * 3 colour values: (B, H, W * C) sequences.
  root, _ = folder
  config = folder_config(root, folder_tfds, model='lstm', hidden_size=32)
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['data_source'] == trained[2]['data_source']  # same data
  assert results['test_accuracy'] >= 0.8  # chance: 1/3


def test_split_folders_are_used_as_given(tmp_path):
  root = tmp_path / 'split'
  make_folder(str(root / 'train'), per_class=6, seed=1)
  make_folder(str(root / 'val'), per_class=2, seed=2)
  make_folder(
    str(root / 'test'), per_class=3, seed=3, classes={'dark': 35, 'mid': 125}
  )  # a class may be absent
  ds = data.load(
    'image_folder',
    str(tmp_path / 'tfds'),
    manual_dir=str(root),
    image_size=10,
    channels=1,
  )
  assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 6, 6)
  assert ds.spec.image_shape == (10, 10, 1)
  assert sorted(ds.test.labels.tolist()) == [1] * 3 + [2] * 3
  # Dark images are darker than mid ones, whatever the split's order.
  for split in (ds.train, ds.val, ds.test):
    means = split.images.reshape(len(split), -1).mean(1)
    assert means[split.labels == 1].max() < means[split.labels == 2].min()


@pytest.mark.parametrize(
  'case',
  [
    'empty',
    'single',
    'none',
    'unreadable',
    'truncated',
    'unknown',
    'extra',
    'missing',
  ],
)
def test_bad_folders_get_one_line_naming_the_culprit(tmp_path, case):
  root = tmp_path / 'f'
  if case != 'missing':
    make_folder(
      str(root),
      per_class=2,
      modes=('L',),
      classes={'a': 30} if case == 'single' else {'a': 30, 'b': 90},
    )
  culprit, words = str(root), ''
  if case == 'empty':
    (root / 'c').mkdir()
    culprit, words = str(root / 'c'), 'empty class folder'
  elif case == 'single':
    culprit, words = str(root), 'only one class folder (a)'
  elif case == 'none':
    root = tmp_path / 'f' / 'a'
    culprit, words = str(root), 'has no class folders'
  elif case == 'unreadable':
    (root / 'b' / 'x.png').write_bytes(b'not a png')
    culprit, words = str(root / 'b' / 'x.png'), 'not an image PIL can read'
  elif case == 'truncated':
    path = root / 'b' / '000.png'
    path.write_bytes(path.read_bytes()[:60])
    culprit, words = str(path), 'corrupt or truncated image'
  elif case in ('unknown', 'extra'):
    os.rename(root, tmp_path / 'train')
    root.mkdir()
    os.rename(tmp_path / 'train', root / 'train')
    make_folder(
      str(root / ('test' if case == 'unknown' else 'extras')),
      per_class=1,
      classes={'z': 0},
    )
    culprit, words = (
      (str(root / 'test' / 'z'), 'class not in')
      if case == 'unknown'
      else (str(root / 'extras'), 'unexpected folder')
    )
  elif case == 'missing':
    words = 'is not a folder'
  with pytest.raises(image_folder.ImageFolderError) as e:
    data.load('image_folder', str(tmp_path / 'tfds'), manual_dir=str(root))
  assert one_line(e).startswith(culprit) and words in one_line(e)


def test_config_asks_for_the_folder_and_checks_the_fields():
  from jaxcls import config as config_lib

  with pytest.raises(ValueError, match='needs --config.manual_dir=PATH'):
    config_lib.validate(tiny_config(dataset='image_folder'))
  with pytest.raises(ValueError, match='channels must be 1, 3 or 0'):
    config_lib.validate(
      tiny_config(dataset='image_folder', manual_dir='x', channels=2)
    )
  with pytest.raises(ValueError, match="apply to dataset 'image_folder' only"):
    config_lib.validate(tiny_config(image_size=32))
  with pytest.raises(ValueError, match='image_folder'):
    data.get_spec('image_folder')


def test_cli_reports_an_empty_class_in_one_line(tmp_path):
  make_folder(str(tmp_path / 'f'), per_class=2, modes=('L',))
  (tmp_path / 'f' / 'empty').mkdir()
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'experiments.image_folder',
      f'--config.manual_dir={tmp_path / "f"}',
      f'--config.data_dir={tmp_path / "tfds"}',
      f'--workdir={tmp_path / "run"}',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('error:')]
  assert lines == [
    f'error: {tmp_path}/f/empty: empty class folder (no '
    '.png/.jpg/.jpeg images); add images or remove it'
  ]


def test_a_changed_folder_is_prepared_again_and_a_gone_one_still_read(tmp_path):
  root = tmp_path / 'f'
  make_folder(str(root), per_class=2, modes=('L',), classes={'a': 30, 'b': 200})
  tfds_dir = str(tmp_path / 'tfds')
  first = data.get_builder('image_folder', tfds_dir, manual_dir=str(root))
  assert (
    data.get_builder('image_folder', tfds_dir, manual_dir=str(root)).data_dir
    == first.data_dir
  )
  make_folder(
    str(root), per_class=3, modes=('L',), seed=1, classes={'a': 30, 'b': 200}
  )  # one more image per class
  second = data.get_builder('image_folder', tfds_dir, manual_dir=str(root))
  assert second.data_dir != first.data_dir
  assert second.info.splits['train'].num_examples == 4  # 6 less 2 for test
  os.utime(second.data_dir)  # the newest copy, whatever the clock did
  os.rename(root, tmp_path / 'moved')
  gone = data.get_builder('image_folder', tfds_dir, manual_dir=str(root))
  assert gone.data_dir == second.data_dir
