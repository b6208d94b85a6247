"""Input pipeline: TFDS paths (mock and real offline files), augmentation,
exact-once evaluation batches, and the fast offline failure."""

import gzip
import hashlib
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxcls import data
from jaxcls.data import local_files as local_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.parametrize(
  'name,shape', [('mnist', (28, 28, 1)), ('cifar10', (32, 32, 3))]
)
def test_tfds_path_on_mock_data(name, shape, allow_download, tmp_path):
  with tfds.testing.mock_data(num_examples=50):
    ds = data.load(name, data_dir=str(tmp_path))
  assert ds.source == name
  for split in (ds.train, ds.val, ds.test):
    assert split.images.shape[1:] == shape and split.images.dtype == np.uint8
    assert split.labels.dtype == np.int32
    assert split.labels.min() >= 0 and split.labels.max() < 10


def _example_hashes(images, labels):
  return sorted(
    hashlib.sha1(im.tobytes() + bytes([lb])).hexdigest()
    for im, lb in zip(images, labels)
  )


@pytest.mark.slow
@pytest.mark.skipif(
  not local_data.files_present(),
  reason='needs dataset-fashion-mnist (see .ci/run)',
)
def test_offline_fashion_mnist_from_the_real_files():
  ds = data.load('fashion_mnist')
  assert (len(ds.train), len(ds.val), len(ds.test)) == (54000, 6000, 10000)
  # Train + validation are exactly TFDS's train split: the IDX train file.
  folder = os.environ.get(
    local_data.FASHION_MNIST_ENV, local_data.DEBIAN_FASHION_MNIST_DIR
  )
  splits = local_data.read_folder('fashion_mnist', folder)
  images, labels = splits['train']
  ours = _example_hashes(
    np.concatenate([ds.train.images, ds.val.images]),
    np.concatenate([ds.train.labels, ds.val.labels]),
  )
  assert ours == _example_hashes(images, labels)
  test_images, test_labels = splits['test']
  assert _example_hashes(ds.test.images, ds.test.labels) == _example_hashes(
    test_images, test_labels
  )
  assert np.bincount(ds.test.labels).tolist() == [1000] * 10


def test_corrupt_idx_file_is_named(tmp_path):
  good = np.zeros((3, 28, 28), np.uint8)
  header = bytes([0, 0, 8, 3]) + b''.join(
    int(d).to_bytes(4, 'big') for d in good.shape
  )
  path = tmp_path / 'train-images-idx3-ubyte.gz'
  with gzip.open(path, 'wb') as f:
    f.write(header + good.tobytes()[:-10])  # truncated
  with pytest.raises(local_data.CorruptDatasetFileError, match='truncated'):
    local_data.read_idx(str(path))
  path.write_bytes(b'not gzip at all')
  with pytest.raises(local_data.CorruptDatasetFileError, match=str(path)):
    local_data.read_idx(str(path))


@pytest.mark.slow
def test_missing_dataset_fails_fast_with_one_clear_line(tmp_path):
  start = time.monotonic()
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'experiments.mnist',
      f'--config.data_dir={tmp_path}',
      f'--workdir={tmp_path / "run"}',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=60,
    env={**os.environ, 'TFDS_DATA_DIR': str(tmp_path)},
  )
  assert time.monotonic() - start < 30  # minutes when TFDS retries offline
  assert proc.returncode == 2
  lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('error:')]
  assert len(lines) == 1 and 'Traceback' not in proc.stderr
  assert "dataset 'mnist' is not prepared" in lines[0]
  assert 'tfds build mnist' in lines[0] and str(tmp_path) in lines[0]
  assert not (tmp_path / 'run' / 'checkpoints' / 'latest' / '0').exists()


def test_normalize_is_the_articles():
  x = np.array([0, 127, 255], np.uint8)
  np.testing.assert_allclose(
    data.normalize(x), (x / 255 - 0.5) / 0.5, rtol=1e-6
  )


def test_random_crop_flip_is_a_shifted_window_of_the_padded_image():
  images = np.random.default_rng(0).integers(
    1, 256, (16, 32, 32, 3), dtype=np.uint8
  )
  out = np.asarray(data.random_crop_flip(jax.random.key(3), images))
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  flips = 0
  for i in range(16):
    windows = [
      padded[i, a : a + 32, b : b + 32] for a in range(9) for b in range(9)
    ]
    plain = any(np.array_equal(out[i], w) for w in windows)
    flipped = any(np.array_equal(out[i], w[:, ::-1]) for w in windows)
    assert plain or flipped
    flips += flipped and not plain
  assert 0 < flips < 16  # both flipped and unflipped examples occur
  assert not np.array_equal(
    out, np.asarray(data.random_crop_flip(jax.random.key(4), images))
  )


def test_epoch_permutation_is_a_function_of_seed_and_epoch():
  a = data.epoch_permutation(0, 3, 100)
  np.testing.assert_array_equal(a, data.epoch_permutation(0, 3, 100))
  assert sorted(a) == list(range(100))
  assert not np.array_equal(a, data.epoch_permutation(0, 4, 100))
  assert not np.array_equal(a, data.epoch_permutation(1, 3, 100))


@pytest.mark.parametrize(
  'n,batch,processes', [(10, 4, 1), (1000, 1000, 1), (1001, 64, 1), (77, 8, 2)]
)
def test_eval_batches_count_every_example_exactly_once(n, batch, processes):
  split = data.Split(
    np.zeros((n, 2, 2, 1), np.uint8), np.arange(n, dtype=np.int32)
  )
  seen = []
  for p in range(processes):
    for b in data.eval_batches(split, batch, p, processes):
      assert len(b['label']) == batch // processes
      seen.extend(b['label'][b['mask'] > 0].tolist())
  assert sorted(seen) == list(range(n))


def test_unknown_dataset_lists_the_choices():
  with pytest.raises(ValueError, match='choose one of'):
    data.get_spec('imagenet')


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
def test_an_offline_prepare_prints_jaxcls_lines_not_tfds_banner(
  tmp_path, capfd
):
  from test_local_data import mnist_like, write_idx_folder

  write_idx_folder(tmp_path / 'idx', mnist_like())
  builder = data.get_builder(
    'fashion_mnist', str(tmp_path / 'tfds'), manual_dir=str(tmp_path / 'idx')
  )
  assert builder.is_prepared()
  out, err = capfd.readouterr()
  assert out.startswith('Preparing fashion_mnist from ')
  assert 'later runs reuse it' in out
  assert 'Downloading and preparing' not in out + err
  assert '\x1b[' not in out + err and '\r' not in out + err
  assert 'examples/s' not in out + err  # No progress bars.


def test_an_image_folder_load_prints_its_classes_splits_and_shape(
  tmp_path, capsys
):
  from test_local_data import make_folder

  root = str(tmp_path / 'shades')
  make_folder(root, per_class=20, modes=('L',))
  ds = data.load(
    'image_folder', str(tmp_path / 'tfds'), manual_dir=root, image_size=16
  )
  line = capsys.readouterr().out.strip().splitlines()[-1]
  h, w, c = ds.spec.image_shape
  assert line == (
    f'Image folder {root}: 3 classes (bright, dark, mid); '
    f'{len(ds.train)} train / {len(ds.val)} validation / {len(ds.test)} '
    f'test images; each {h}x{w}x{c}'
  )
  assert len(ds.train) + len(ds.val) + len(ds.test) == 60 and c == 1
