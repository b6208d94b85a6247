"""Issue #29's faults in local dataset files: a prepared copy kept after its
source changed or went, negative labels, IDX sizes that wrap around, planted
CIFAR pickles and empty splits. Each is one line naming the file or folder,
from the library and from the command line (exit 2, no traceback)."""

import io
import os
import pickle
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxcls import data
from jaxcls.data import local_files as local_data
from test_local_data import (
  ROOT,
  add_to_tar,
  cifar_like,
  cifar_pickle,
  mnist_like,
  one_line,
  planes,
  write_idx,
  write_idx_folder,
)

Corrupt = local_data.CorruptDatasetFileError


def cli(tmp_path, experiment, *flags):
  """``python -m experiments.<experiment>`` on ``tmp_path/tfds``, tiny."""
  return subprocess.run(
    [
      sys.executable,
      '-m',
      f'experiments.{experiment}',
      f'--workdir={tmp_path / "run"}',
      f'--config.data_dir={tmp_path / "tfds"}',
      '--config.num_epochs=1',
      '--config.train_examples=16',
      '--config.batch_size=8',
      '--config.eval_batch_size=8',
      *flags,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'},
  )


def error_line(proc) -> str:
  """The one ``error:`` line of a run that must fail with exit 2."""
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('error:')]
  assert len(lines) == 1, proc.stderr[-3000:]
  return lines[0]


def labels_of(builder, split='test'):
  return sorted(data.read_split(builder, split).labels.tolist())


# ------------------------------------- 1. a prepared copy and its source.


def test_a_changed_manual_dir_is_prepared_again_an_unchanged_one_reused(
  tmp_path, monkeypatch
):
  src, tfds_dir = tmp_path / 'src', str(tmp_path / 'tfds')
  write_idx_folder(src, mnist_like(0), gz=False)
  first = local_data.get_builder('mnist', tfds_dir, manual_dir=str(src))
  prepared = data.specs.prepare
  monkeypatch.setattr(
    data.specs, 'prepare', lambda *a, **k: pytest.fail('again')
  )
  again = local_data.get_builder('mnist', tfds_dir, manual_dir=str(src))
  assert again.data_dir == first.data_dir  # Unchanged: its copy is read.
  monkeypatch.setattr(data.specs, 'prepare', prepared)
  written = mnist_like(1)  # Same names and sizes, new contents and times.
  write_idx_folder(src, written, gz=False)
  second = local_data.get_builder('mnist', tfds_dir, manual_dir=str(src))
  assert second.data_dir != first.data_dir
  assert labels_of(second) == sorted(written['test'][1].tolist())
  assert data.load('mnist', tfds_dir, manual_dir=str(src)).source == (
    'local_files/mnist'
  )


def test_the_default_folder_reuses_its_copy_and_sees_new_files(
  tmp_path, monkeypatch
):
  tfds_dir = str(tmp_path / 'tfds')
  manual = tmp_path / 'tfds' / 'downloads' / 'manual' / 'mnist'
  write_idx_folder(manual, mnist_like(2))
  first = local_data.get_builder('mnist', tfds_dir)
  prepared = data.specs.prepare
  monkeypatch.setattr(
    data.specs, 'prepare', lambda *a, **k: pytest.fail('again')
  )
  assert local_data.get_builder('mnist', tfds_dir).data_dir == first.data_dir
  monkeypatch.setattr(data.specs, 'prepare', prepared)
  written = mnist_like(3)
  write_idx_folder(manual, written)
  second = local_data.get_builder('mnist', tfds_dir)
  assert labels_of(second) == sorted(written['test'][1].tolist())
  shutil.rmtree(manual)  # Gone: the newest copy is still read.
  gone = local_data.get_builder('mnist', tfds_dir)
  assert gone.data_dir == second.data_dir


@pytest.mark.parametrize('case', ['missing', 'empty'])
def test_a_missing_or_empty_manual_dir_is_one_line_not_the_old_copy(
  tmp_path, case
):
  tfds_dir = str(tmp_path / 'tfds')
  write_idx_folder(tmp_path / 'src', mnist_like(4))
  local_data.get_builder('fashion_mnist', tfds_dir, str(tmp_path / 'src'))
  other = tmp_path / 'other'
  if case == 'empty':
    other.mkdir()
  with pytest.raises(FileNotFoundError) as e:
    local_data.get_builder('fashion_mnist', tfds_dir, manual_dir=str(other))
  start = (
    f'{other} is not a folder'
    if case == 'missing'
    else f'no Fashion-MNIST files in {other}: expected'
  )
  assert one_line(e).startswith(start)


@pytest.mark.slow  # Starts a process.
def test_cli_a_missing_manual_dir_is_one_line_not_the_old_copy(tmp_path):
  write_idx_folder(tmp_path / 'src', mnist_like(4))
  local_data.get_builder(
    'fashion_mnist', str(tmp_path / 'tfds'), str(tmp_path / 'src')
  )
  line = error_line(
    cli(tmp_path, 'fashion_mnist', f'--config.manual_dir={tmp_path}/gone')
  )
  assert line.startswith(f'error: {tmp_path}/gone is not a folder; put ')
  assert not (tmp_path / 'run' / 'checkpoints').exists()


# ------------------------------------- 2. negative labels.


def write_npz(path, splits):
  np.savez(
    path,
    x_train=splits['train'][0],
    y_train=splits['train'][1],
    x_test=splits['test'][0],
    y_test=splits['test'][1],
  )


def with_label(splits, split, index, value):
  images, labels = splits[split]
  labels = labels.astype(np.int64)
  labels[index] = value
  return {**splits, split: (images, labels)}


def test_a_negative_label_names_the_file_and_fixing_it_rebuilds(tmp_path):
  src, tfds_dir = tmp_path / 'src', str(tmp_path / 'tfds')
  src.mkdir()
  written = mnist_like(5)
  write_npz(src / 'mnist.npz', with_label(written, 'train', 3, -1))
  with pytest.raises(Corrupt) as e:
    local_data.get_builder('mnist', tfds_dir, manual_dir=str(src))
  assert one_line(e).startswith(f'{src}/mnist.npz: train labels go down to -1')
  assert not os.path.exists(tfds_dir)  # Nothing was written.
  write_npz(src / 'mnist.npz', written)  # Fixed: prepared from it.
  builder = local_data.get_builder('mnist', tfds_dir, manual_dir=str(src))
  assert labels_of(builder, 'train') == sorted(written['train'][1].tolist())


def test_a_negative_cifar_label_names_the_tarball(tmp_path):
  batches = cifar_like()
  images, labels = batches['data_batch_2']
  batches['data_batch_2'] = (images, np.array([0, -1, 2, 3]))
  tarball = tmp_path / 'cifar-10-python.tar.gz'
  with tarfile.open(tarball, 'w:gz') as tar:
    for name, (images, labels) in batches.items():
      add_to_tar(
        tar, f'cifar-10-batches-py/{name}', cifar_pickle(images, labels)
      )
  with pytest.raises(Corrupt) as e:
    local_data.read_folder('cifar10', str(tmp_path))
  assert one_line(e).startswith(f'{tarball}: train labels go down to -1')


@pytest.mark.slow  # Starts a process.
def test_cli_a_negative_label_names_the_file(tmp_path):
  (tmp_path / 'src').mkdir()
  path = tmp_path / 'src' / 'fashion-mnist.npz'
  write_npz(path, with_label(mnist_like(6), 'train', 0, -1))
  line = error_line(
    cli(tmp_path, 'fashion_mnist', f'--config.manual_dir={tmp_path}/src')
  )
  assert line.startswith(f'error: {path}: train labels go down to -1, ')


def legacy_copy_with_a_bad_label(tmp_path, monkeypatch, name='mnist'):
  """What an older jaxcls left: a copy in <tfds>/local_files/<name>/1.0.0,
  keyed by nothing, with a -1 label that it let through."""
  write_idx_folder(tmp_path / 'src', mnist_like(7))
  bad = with_label(
    local_data.read_folder(name, str(tmp_path / 'src')), 'train', 0, -1
  )
  with monkeypatch.context() as m:
    m.setattr(local_data, 'read_folder', lambda *args: bad)
    builder = local_data.LocalFiles(config=name, data_dir=tmp_path / 'tfds')
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
        manual_dir=str(tmp_path / 'src')
      )
    )
  shutil.rmtree(tmp_path / 'src')  # The source is gone (or fixed).
  return str(builder.data_dir)


def test_a_prepared_copy_with_bad_labels_names_the_folder_to_delete(
  tmp_path, monkeypatch
):
  folder = legacy_copy_with_a_bad_label(tmp_path, monkeypatch)
  assert folder == f'{tmp_path}/tfds/local_files/mnist/1.0.0'
  with pytest.raises(Corrupt) as e:
    local_data.get_builder('mnist', str(tmp_path / 'tfds'))
  assert one_line(e).startswith(
    f'the prepared copy {folder} holds labels from -1 to '
  )
  assert 'delete that folder' in one_line(e)
  shutil.rmtree(folder)  # As told: then nothing stale is left to read.
  assert local_data.get_builder('mnist', str(tmp_path / 'tfds')) is None


@pytest.mark.slow  # Starts a process.
def test_cli_a_prepared_copy_with_bad_labels_names_the_folder(
  tmp_path, monkeypatch
):
  folder = legacy_copy_with_a_bad_label(tmp_path, monkeypatch)
  line = error_line(cli(tmp_path, 'mnist'))
  assert line.startswith(f'error: the prepared copy {folder} holds labels')


# ------------------------------------- 3. IDX sizes that wrap around.


def write_header(path, dims, data=b''):
  path.write_bytes(
    bytes([0, 0, 8, len(dims)])
    + b''.join(d.to_bytes(4, 'big') for d in dims)
    + data
  )


@pytest.mark.parametrize(
  'dims,data,words',
  [
    ((2**31, 2**31, 4), b'', 'truncated'),  # 2**64 bytes: 0 in uint64
    ((2**16,) * 4, b'\x00' * 8, 'truncated'),
    ((1, 28, 28), b'\x00' * 785, 'too long'),
  ],
  ids=['wraps-to-0', 'wraps-to-0-4d', 'longer'],
)
def test_idx_sizes_are_checked_in_python_ints_naming_the_file(
  tmp_path, dims, data, words
):
  path = tmp_path / 'train-images-idx3-ubyte'
  write_header(path, dims, data)
  with pytest.raises(Corrupt) as e:
    local_data.read_idx(str(path))
  assert one_line(e).startswith(f'{path} is {words}: its header says ')
  assert 'replace it' in one_line(e)


@pytest.mark.slow  # Starts a process.
def test_cli_an_idx_size_that_wraps_names_the_file(tmp_path):
  write_idx_folder(tmp_path / 'src', mnist_like(8), gz=False)
  path = tmp_path / 'src' / 'train-images-idx3-ubyte'
  write_header(path, (2**31, 2**31, 4))
  line = error_line(
    cli(tmp_path, 'fashion_mnist', f'--config.manual_dir={tmp_path}/src')
  )
  assert line.startswith(f'error: {path} is truncated: ')


# ------------------------------------- 4. planted CIFAR-10 pickles.


class Payload:
  """Pickles as a call of ``function(argument)`` when unpickled."""

  def __init__(self, function, argument):
    self.function, self.argument = function, argument

  def __reduce__(self):
    return self.function, (self.argument,)


class Py2Pickler(pickle._Pickler):
  """Pickles bytes as Python 2's str, like CIFAR-10's own batches (Python 3
  pickles them as calls of ``_codecs.encode`` at protocol 2)."""

  dispatch = pickle._Pickler.dispatch.copy()

  def save_str(self, obj):
    size = len(obj)
    if size < 256:
      self.write(pickle.SHORT_BINSTRING + bytes([size]) + obj)
    else:
      self.write(pickle.BINSTRING + size.to_bytes(4, 'little') + obj)
    self.memoize(obj)

  dispatch[bytes] = save_str


def cifar_py2_pickle(images, labels):
  """A batch as CIFAR-10's files hold it: protocol 2, numpy 1's names."""
  batch = {b'batch_label': b'x', b'labels': labels.tolist()}
  batch[b'data'] = planes(images)
  stream = io.BytesIO()
  Py2Pickler(stream, protocol=2).dump(batch)
  raw = stream.getvalue().replace(b'numpy._core.', b'numpy.core.')
  assert b'numpy.core.multiarray\n_reconstruct' in raw
  assert b'_codecs' not in raw
  return raw


def write_cifar_tarball(path, batches, make=cifar_pickle, planted=None):
  """``planted``: (batch name, payload) put into that batch's dict."""
  with tarfile.open(path, 'w:gz') as tar:
    for name, (images, labels) in batches.items():
      raw = make(images, labels)
      if planted and planted[0] == name:
        batch = {b'data': planes(images), b'labels': labels.tolist()}
        raw = pickle.dumps({**batch, b'batch_label': planted[1]})
      add_to_tar(tar, f'cifar-10-batches-py/{name}', raw)


@pytest.mark.parametrize('via', ['os.system', 'builtins.eval'])
def test_a_planted_cifar_pickle_is_refused_and_never_runs(tmp_path, via):
  marker = tmp_path / 'ran'
  payload = (
    Payload(os.system, f'touch {marker}')
    if via == 'os.system'
    else Payload(eval, f"open({str(marker)!r}, 'w').close()")
  )
  tarball = tmp_path / 'cifar-10-python.tar.gz'
  batches = cifar_like(9)
  write_cifar_tarball(tarball, batches, planted=('data_batch_2', payload))
  with pytest.raises(Corrupt) as e:
    local_data.read_folder('cifar10', str(tmp_path))
  culprit = 'posix.system' if via == 'os.system' else 'builtins.eval'
  assert one_line(e).startswith(
    f'{tarball}: data_batch_2 refers to {culprit}, which no CIFAR-10 batch '
    'does: refused to unpickle it'
  )
  assert not marker.exists()
  # The real files' pickles (Python 2's, numpy 1's names) and Python 3's
  # still load.
  for make in (cifar_py2_pickle, cifar_pickle):
    write_cifar_tarball(tarball, batches, make)
    splits = local_data.read_folder('cifar10', str(tmp_path))
    np.testing.assert_array_equal(splits['test'][0], batches['test_batch'][0])
    np.testing.assert_array_equal(
      splits['train'][1][4:8], batches['data_batch_2'][1]
    )


@pytest.mark.slow  # Starts a process.
def test_cli_a_planted_cifar_pickle_is_one_line_and_never_runs(tmp_path):
  marker = tmp_path / 'ran'
  tarball = tmp_path / 'src' / 'cifar-10-python.tar.gz'
  tarball.parent.mkdir()
  planted = ('test_batch', Payload(os.system, f'touch {marker}'))
  write_cifar_tarball(tarball, cifar_like(10), planted=planted)
  line = error_line(
    cli(tmp_path, 'cifar10', f'--config.manual_dir={tmp_path}/src')
  )
  assert line.startswith(f'error: {tarball}: test_batch refers to posix.')
  assert not marker.exists()


# ------------------------------------- 5. splits of 0 examples.


def test_a_split_of_zero_examples_names_the_split_and_the_file(tmp_path):
  written = mnist_like(11)
  empty = (np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8))
  write_idx_folder(tmp_path / 'idx', {**written, 'train': empty})
  with pytest.raises(Corrupt) as e:
    local_data.get_builder(
      'mnist', str(tmp_path / 'tfds'), manual_dir=str(tmp_path / 'idx')
    )
  assert one_line(e).startswith(
    f'{tmp_path}/idx/train-images-idx3-ubyte.gz holds 0 train examples, so '
    'the train split of MNIST would be empty'
  )
  batches = cifar_like(12)
  batches['test_batch'] = (
    np.zeros((0, 32, 32, 3), np.uint8),
    np.zeros(0, np.uint8),
  )
  tarball = tmp_path / 'cifar' / 'cifar-10-python.tar.gz'
  tarball.parent.mkdir()
  write_cifar_tarball(tarball, batches)
  with pytest.raises(Corrupt) as e:
    local_data.read_folder('cifar10', str(tarball.parent))
  assert one_line(e).startswith(
    f'{tarball} holds 0 test examples, so the test split of CIFAR-10'
  )


@pytest.mark.slow  # Starts a process.
def test_cli_a_split_of_zero_examples_is_one_line(tmp_path):
  write_idx_folder(tmp_path / 'src', mnist_like(13))
  path = tmp_path / 'src' / 't10k-images-idx3-ubyte.gz'
  write_idx(path, np.zeros((0, 28, 28), np.uint8))
  write_idx(tmp_path / 'src' / 't10k-labels-idx1-ubyte.gz', np.zeros(0))
  line = error_line(
    cli(tmp_path, 'fashion_mnist', f'--config.manual_dir={tmp_path}/src')
  )
  assert line.startswith(f'error: {path} holds 0 test examples, so the test')
