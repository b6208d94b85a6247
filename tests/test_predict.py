"""The predict tool: image files of any size and mode -> top-k classes."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from experiments import predict
from jaxcls import data, inspection
from trained_workdir import trained_workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def test_images():
  split = data.read_split(data.get_builder('fashion_mnist'), 'test[:4]')
  return split.images, split.labels


def reference_probs(state, images: np.ndarray) -> np.ndarray:
  """Softmax of the model, normalised by hand as in training (numpy)."""
  logits = np.asarray(state.apply_fn(
      {'params': state.params}, (images.astype(np.float32) / 255 - 0.5) / 0.5))
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_exact_size_png_is_passed_through(tmp_path, test_images):
  path = str(tmp_path / 'x.png')
  Image.fromarray(test_images[0][0, ..., 0]).save(path)
  out = predict.load_image(path, (28, 28, 1))
  assert out.dtype == np.uint8 and out.shape == (28, 28, 1)
  np.testing.assert_array_equal(out, test_images[0][0])
  np.testing.assert_array_equal(predict.load_image(path, (28, 28, 1), True),
                                255 - test_images[0][0])


@pytest.mark.parametrize('mode,size,fmt', [
    ('RGB', (300, 200), 'JPEG'), ('RGBA', (17, 40), 'PNG'),
    ('P', (64, 64), 'PNG'), ('L', (1000, 1000), 'JPEG')])
def test_any_size_and_mode_becomes_model_shape(tmp_path, mode, size, fmt):
  rng = np.random.default_rng(0)
  image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3),
                                       dtype=np.uint8)).convert(mode)
  path = str(tmp_path / f'x.{fmt.lower()}')
  image.save(path, format=fmt)
  gray = predict.load_image(path, (28, 28, 1))
  rgb = predict.load_image(path, (32, 32, 3))
  assert gray.shape == (28, 28, 1) and gray.dtype == np.uint8
  assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8


def test_constant_image_stays_constant(tmp_path):
  # Resizing must not shift or rescale pixel values.
  path = str(tmp_path / 'x.png')
  Image.new('RGB', (123, 45), (200, 200, 200)).save(path)
  np.testing.assert_array_equal(predict.load_image(path, (28, 28, 1)), 200)


@pytest.mark.parametrize('content,message', [
    (None, 'no such file'), (b'hello', 'not an image'),
    ('truncated', 'corrupt or truncated')])
def test_bad_files_raise_one_clear_error(tmp_path, content, message):
  path = tmp_path / 'bad.png'
  if content == 'truncated':
    Image.new('L', (64, 64), 7).save(tmp_path / 'good.jpg', format='JPEG')
    data_bytes = (tmp_path / 'good.jpg').read_bytes()
    path = tmp_path / 'bad.jpg'
    path.write_bytes(data_bytes[:len(data_bytes) // 2])
  elif content is not None:
    path.write_bytes(content)
  with pytest.raises(predict.BadImageError, match=message) as e:
    predict.load_image(str(path), (28, 28, 1))
  assert str(e.value).startswith(f'{path}: ') and '\n' not in str(e.value)


def test_top_k_matches_argsort():
  probs = np.array([0.1, 0.5, 0.05, 0.35])
  assert predict.top_k(probs, list('abcd'), 3) == [
      ('b', 0.5), ('d', 0.35), ('a', 0.1)]


def test_predictions_match_the_model(tmp_path, test_images):
  workdir, _ = trained_workdir()
  images, _ = test_images
  paths = []
  for i, image in enumerate(images):
    paths.append(str(tmp_path / f'{i}.png'))
    Image.fromarray(image[..., 0]).save(paths[-1])
  out = predict.predict(workdir, paths, k=10)
  _, state = inspection.load_best(workdir)
  expected = reference_probs(state, images)
  names = data.get_spec('fashion_mnist').class_names
  for got, probs in zip(out, expected):
    assert [n for n, _ in got] == [names[i] for i in np.argsort(-probs)]
    np.testing.assert_allclose([p for _, p in got], np.sort(probs)[::-1],
                               rtol=1e-4, atol=1e-6)


def test_top_k_out_of_range_is_refused(tmp_path):
  workdir, _ = trained_workdir()
  path = str(tmp_path / 'x.png')
  Image.new('L', (28, 28)).save(path)
  with pytest.raises(ValueError, match='top_k must be in 1..10'):
    predict.predict(workdir, [path], k=11)


def run_cli(*args):
  return subprocess.run([sys.executable, '-m', 'experiments.predict', *args],
                        capture_output=True, text=True, timeout=120, cwd=REPO)


def test_cli_prints_top_k_and_rejects_bad_files(tmp_path, test_images):
  workdir, _ = trained_workdir()
  good = str(tmp_path / 'good.jpg')
  Image.fromarray(test_images[0][1, ..., 0]).resize((280, 280)).convert(
      'RGB').save(good)
  bad = str(tmp_path / 'bad.png')
  with open(bad, 'w') as f:
    f.write('not a png')
  proc = run_cli(f'--workdir={workdir}', good, '--top_k=2')
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert lines[0] == good and len(lines) == 3
  assert lines[1].lstrip().startswith('1. ') and lines[2].endswith('%')
  proc = run_cli(f'--workdir={workdir}', good, bad)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(f'error: {bad}: ')
