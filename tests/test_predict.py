"""The predict tool: image files of any size and mode -> top-k classes."""

import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from jaxcls import data
from jaxcls.commands import predict
from jaxcls.training import inspection
from trained_workdir import trained_workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def test_images():
  split = data.read_split(data.get_builder('fashion_mnist'), 'test[:4]')
  return split.images, split.labels


def reference_probs(state, images: np.ndarray) -> np.ndarray:
  """Softmax of the model, normalised by hand as in training (numpy)."""
  logits = np.asarray(
    state.apply_fn(
      {'params': state.params}, (images.astype(np.float32) / 255 - 0.5) / 0.5
    )
  )
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_exact_size_png_is_passed_through(tmp_path, test_images):
  path = str(tmp_path / 'x.png')
  Image.fromarray(test_images[0][0, ..., 0]).save(path)
  out = predict.load_image(path, (28, 28, 1))
  assert out.dtype == np.uint8 and out.shape == (28, 28, 1)
  np.testing.assert_array_equal(out, test_images[0][0])
  np.testing.assert_array_equal(
    predict.load_image(path, (28, 28, 1), True), 255 - test_images[0][0]
  )


@pytest.mark.parametrize(
  'mode,size,fmt',
  [
    ('RGB', (300, 200), 'JPEG'),
    ('RGBA', (17, 40), 'PNG'),
    ('P', (64, 64), 'PNG'),
    ('L', (1000, 1000), 'JPEG'),
  ],
)
def test_any_size_and_mode_becomes_model_shape(tmp_path, mode, size, fmt):
  rng = np.random.default_rng(0)
  image = Image.fromarray(
    rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  ).convert(mode)
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


@pytest.mark.parametrize(
  'content,message',
  [
    (None, 'no such file'),
    (b'hello', 'not an image'),
    ('truncated', 'corrupt or truncated'),
  ],
)
def test_bad_files_raise_one_clear_error(tmp_path, content, message):
  path = tmp_path / 'bad.png'
  if content == 'truncated':
    Image.new('L', (64, 64), 7).save(tmp_path / 'good.jpg', format='JPEG')
    data_bytes = (tmp_path / 'good.jpg').read_bytes()
    path = tmp_path / 'bad.jpg'
    path.write_bytes(data_bytes[: len(data_bytes) // 2])
  elif content is not None:
    path.write_bytes(content)
  with pytest.raises(predict.BadImageError, match=message) as e:
    predict.load_image(str(path), (28, 28, 1))
  assert str(e.value).startswith(f'{path}: ') and '\n' not in str(e.value)


def write_png(path, pixels: np.ndarray, colour_type: int) -> None:
  """``pixels`` (H, W, C) uint8 or uint16 as a PNG, written by hand: PIL
  cannot write 16-bit colour. ``colour_type``: 0 gray, 2 RGB, 4 LA, 6 RGBA."""
  height, width = pixels.shape[:2]
  big_endian = pixels.astype(pixels.dtype.newbyteorder('>'))
  rows = b''.join(b'\0' + big_endian[r].tobytes() for r in range(height))
  write_png_chunks(
    path, width, height, 8 * pixels.itemsize, colour_type, zlib.compress(rows)
  )


def write_png_chunks(path, width, height, depth, colour_type, idat) -> None:
  def chunk(kind: bytes, body: bytes) -> bytes:
    return (
      struct.pack('>I', len(body))
      + kind
      + body
      + struct.pack('>I', zlib.crc32(kind + body))
    )

  header = struct.pack('>IIBBBBB', width, height, depth, colour_type, 0, 0, 0)
  with open(path, 'wb') as f:
    f.write(
      b'\x89PNG\r\n\x1a\n'
      + chunk(b'IHDR', header)
      + chunk(b'IDAT', idat)
      + chunk(b'IEND', b'')
    )


@pytest.mark.parametrize('colour_type', [0, 2])  # 16-bit gray, 16-bit RGB
def test_16_bit_png_is_scaled_not_clipped(tmp_path, test_images, colour_type):
  image = test_images[0][0]  # (28, 28, 1) uint8
  wide = image.astype(np.uint16) * 257  # The same picture in 16 bits.
  path = str(tmp_path / 'x16.png')
  write_png(
    path, np.repeat(wide, 3 if colour_type == 2 else 1, -1), colour_type
  )
  np.testing.assert_array_equal(predict.load_image(path, (28, 28, 1)), image)


def rgba_png(path, colour: np.ndarray, alpha: np.ndarray) -> str:
  Image.fromarray(np.concatenate([colour, alpha], -1), 'RGBA').save(path)
  return str(path)


@pytest.mark.parametrize('colour', [(0, 0, 0), (255, 255, 255), (200, 0, 0)])
@pytest.mark.parametrize('invert', [False, True])
def test_object_drawn_only_in_alpha_survives(
  tmp_path, test_images, colour, invert
):
  # A silhouette: one colour everywhere, the shape only in the alpha channel.
  # The model must see the shape as MNIST ink: opaque = light on dark.
  image = test_images[0][0]
  path = rgba_png(
    tmp_path / 'x.png', np.broadcast_to(np.uint8(colour), (28, 28, 3)), image
  )
  np.testing.assert_array_equal(
    predict.load_image(path, (28, 28, 1), invert), image
  )
  la = str(tmp_path / 'la.png')
  Image.fromarray(np.concatenate([np.zeros_like(image), image], -1), 'LA').save(
    la
  )
  np.testing.assert_array_equal(
    predict.load_image(la, (28, 28, 1), invert), image
  )


def gray(rgb: np.ndarray) -> np.ndarray:
  """ITU-R 601 luma, the formula of PIL's convert('L')."""
  return rgb @ np.array([0.299, 0.587, 0.114])


@pytest.mark.parametrize('invert', [False, True])
def test_transparent_picture_is_composited_onto_the_background(
  tmp_path, invert
):
  rng = np.random.default_rng(0)
  colour = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
  alpha = rng.integers(0, 256, (28, 28, 1), dtype=np.uint8)
  path = rgba_png(tmp_path / 'x.png', colour, alpha)
  a = alpha[..., 0] / 255
  # Onto black; with --invert onto white, which the inversion makes black.
  background = 255 if invert else 0
  composite = gray(colour.astype(np.float64)) * a + background * (1 - a)
  expected = 255 - composite if invert else composite
  got = predict.load_image(path, (28, 28, 1), invert)[..., 0]
  assert np.abs(got - expected).max() <= 1  # rounding of two conversions


def test_opaque_alpha_changes_nothing(tmp_path):
  rng = np.random.default_rng(1)
  colour = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
  opaque = np.full((28, 28, 1), 255, np.uint8)
  rgba = rgba_png(tmp_path / 'x.png', colour, opaque)
  Image.fromarray(colour).save(tmp_path / 'rgb.png')
  for shape in ((28, 28, 1), (28, 28, 3)):
    np.testing.assert_array_equal(
      predict.load_image(rgba, shape),
      predict.load_image(str(tmp_path / 'rgb.png'), shape),
    )
  flat = rgba_png(
    tmp_path / 'flat.png', np.full((28, 28, 3), 90, np.uint8), opaque
  )
  np.testing.assert_array_equal(predict.load_image(flat, (28, 28, 1)), 90)


def write_huge_png(path, side: int = 20000) -> None:
  """A real ``side`` x ``side`` black PNG (400 MB of pixels, 0.4 MB file)."""
  compressor = zlib.compressobj(1)
  row = bytes(side + 1)  # filter byte + one gray row
  idat = b''.join(compressor.compress(row) for _ in range(side))
  write_png_chunks(path, side, side, 8, 0, idat + compressor.flush())


@pytest.fixture(scope='module')
def huge_png(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('huge') / 'huge.png')
  write_huge_png(path)
  return path


def test_huge_png_is_refused_before_decoding(huge_png, tmp_path, monkeypatch):
  with pytest.raises(predict.BadImageError) as e:
    predict.load_image(huge_png, (28, 28, 1))
  assert str(e.value).startswith(f'{huge_png}: 400,000,000 pixels, more than')
  assert 'scale the image down' in str(e.value)
  # Below PIL's own refusal, the tool's cap applies.
  monkeypatch.setattr(predict, 'MAX_PIXELS', 1000)
  small = str(tmp_path / 'x.png')
  Image.new('L', (40, 40)).save(small)
  with pytest.raises(
    predict.BadImageError, match='1,600 pixels, more than the 1,000'
  ):
    predict.load_image(small, (28, 28, 1))


def test_top_k_matches_argsort():
  probs = np.array([0.1, 0.5, 0.05, 0.35])
  assert predict.top_k(probs, list('abcd'), 3) == [
    ('b', 0.5),
    ('d', 0.35),
    ('a', 0.1),
  ]


@pytest.mark.slow
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
    np.testing.assert_allclose(
      [p for _, p in got], np.sort(probs)[::-1], rtol=1e-4, atol=1e-6
    )


@pytest.mark.slow  # Reads the shared trained workdir (a training run).
def test_top_k_out_of_range_is_refused(tmp_path):
  workdir, _ = trained_workdir()
  path = str(tmp_path / 'x.png')
  Image.new('L', (28, 28)).save(path)
  with pytest.raises(ValueError, match='top_k must be in 1..10'):
    predict.predict(workdir, [path], k=11)


def run_cli(*args):
  return subprocess.run(
    [sys.executable, '-m', 'experiments.predict', *args],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=REPO,
  )


@pytest.mark.slow
def test_cli_prints_top_k_and_rejects_bad_files(tmp_path, test_images):
  workdir, _ = trained_workdir()
  good = str(tmp_path / 'good.jpg')
  Image.fromarray(test_images[0][1, ..., 0]).resize((280, 280)).convert(
    'RGB'
  ).save(good)
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


@pytest.mark.slow
def test_cli_refuses_a_huge_png_in_one_line(huge_png):
  workdir, _ = trained_workdir()
  proc = run_cli(f'--workdir={workdir}', huge_png)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'error: {huge_png}: ')
