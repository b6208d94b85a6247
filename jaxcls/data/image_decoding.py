"""Opening, checking and converting one image of an image folder.

Every image is converted to one size and channel count, as
``experiments.predict`` converts its input: 16-bit grayscale scaled to 8 bits
(not clipped), transparency composited onto black (the background MNIST-
style data has), PIL's ``convert`` to 'L' (channels=1) or 'RGB' (channels=3)
for every other mode (palette, CMYK, ...), then ``ImageOps.fit`` (centre crop
to square, Lanczos resize) to ``image_size`` x ``image_size``. An image that
cannot be read, or has over ``MAX_PIXELS`` (PIL's decompression-bomb limit,
as predict's), raises ImageFolderError naming the file.
"""

import re
import warnings

import numpy as np

from jaxcls.data.image_listing import ImageFolderError

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
  """``(image_size, channels)``, the zeros filled in from the images' headers.

  ``channels``: 1 if every image is grayscale (PIL modes 1, L, LA, I, I;16,
  F), else 3 (palette images count as colour); ``image_size``: the median
  of the shorter sides, clipped to ``DEFAULT_SIZE_RANGE`` (larger images
  make the CNN's dense layer large; ask for more with --config.image_size).

  Args:
    paths: the images, all opened (so a bad one stops before any writing).
    image_size, channels: the config's; 0 is chosen from the images.

  Raises:
    ImageFolderError: an image cannot be read or has over ``MAX_PIXELS``.
  """
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
  """The image at ``path`` as uint8 ``(image_size, image_size, channels)``.

  Converted as the module docstring says.

  Args:
    path: a PNG or JPEG file.
    image_size: the side of the square it is fitted to.
    channels: 1 (grayscale) or 3 (RGB).

  Raises:
    ImageFolderError: the file cannot be read, is corrupt or truncated, or
      has over ``MAX_PIXELS``.
  """
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
