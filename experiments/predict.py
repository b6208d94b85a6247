"""Classify image files with the best checkpoint of a training workdir.

Run:  python -m experiments.predict --workdir=runs/fashion_mnist shoe.png \
        [more.jpg ...] [--top_k=3] [--invert]

Any PNG or JPEG (any size, any colour mode) is converted the way the model
was trained: to grayscale (MNIST, Fashion-MNIST) or RGB (CIFAR-10), cropped
to the model's aspect ratio around the centre and resized to its size (28x28
or 32x32), as uint8; the model normalises it as in training. MNIST-style
images are light objects on a dark background; ``--invert`` flips a dark-on-
light picture (a photo on white paper) to match. Prints the ``top_k`` classes
with their probabilities. An unreadable file or a missing checkpoint prints
``error: ...`` on one line and exits with status 2.
"""

import sys

from absl import app, flags

from jaxcls import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  # Defined only when run as a program, so that tests can import this module
  # next to other tools that define a --workdir flag too.
  flags.DEFINE_string('workdir', None,
                      'The training workdir (its best checkpoint is used).')
  flags.DEFINE_integer('top_k', 3, 'How many classes to print per image.')
  flags.DEFINE_bool('invert', False,
                    'Invert the pixels (dark objects on a light background).')


class BadImageError(ValueError):
  """An input file is missing or is not a readable image."""


def load_image(path: str, image_shape: tuple[int, int, int],
               invert: bool = False):
  """The file at ``path`` as uint8 (H, W, C) for a model of ``image_shape``.

  Raises BadImageError naming the file and what is wrong with it.
  """
  import numpy as np
  from PIL import Image, ImageOps, UnidentifiedImageError

  height, width, channels = image_shape
  try:
    with Image.open(path) as image:
      image.load()  # Decodes now, so a truncated file fails here.
      image = ImageOps.exif_transpose(image)  # Phone photos: upright.
      image = image.convert('L' if channels == 1 else 'RGB')
  except FileNotFoundError:
    raise BadImageError(f'{path}: no such file') from None
  except IsADirectoryError:
    raise BadImageError(f'{path}: is a directory, not an image') from None
  except UnidentifiedImageError:
    raise BadImageError(f'{path}: not an image PIL can read (expected PNG or '
                        'JPEG)') from None
  except (OSError, SyntaxError, ValueError) as e:  # Truncated or corrupt.
    raise BadImageError(f'{path}: corrupt or truncated image ({e})') from None
  image = ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
  if invert:
    image = ImageOps.invert(image)
  pixels = np.asarray(image, np.uint8)
  return pixels.reshape(height, width, channels)


def top_k(probs, names: list[str], k: int) -> list[tuple[str, float]]:
  """The ``k`` most probable ``(class name, probability)``, best first."""
  import numpy as np

  order = np.argsort(-probs, kind='stable')[:k]
  return [(names[i], float(probs[i])) for i in order]


def predict(workdir: str, paths: list[str], k: int = 3,
            invert: bool = False) -> list[list[tuple[str, float]]]:
  """Top-``k`` predictions for every file in ``paths``, in order."""
  import numpy as np
  from jaxcls import data, inspection

  if not paths:
    raise ValueError('no image files given; pass one or more PNG/JPEG paths')
  # Files are checked before the weights are restored: bad input fails fast.
  spec = data.dataset_spec(inspection.best_config(workdir))
  if not 1 <= k <= spec.num_classes:
    raise ValueError(f'--top_k must be in 1..{spec.num_classes}, got {k}')
  images = np.stack([load_image(p, spec.image_shape, invert) for p in paths])
  config, state = inspection.load_best(workdir)
  names = inspection.class_names(config)
  probs = inspection.predict_all(state, images, len(images))
  return [top_k(p, names, k) for p in probs]


def main(argv):
  if not FLAGS.workdir:
    sys.exit('error: --workdir is required (the folder training wrote to)')
  cli._quiet_logs()  # pylint: disable=protected-access
  try:
    results = predict(FLAGS.workdir, argv[1:], FLAGS.top_k, FLAGS.invert)
  except cli.EXPECTED_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  for path, best in zip(argv[1:], results):
    print(path)
    for rank, (name, p) in enumerate(best, 1):
      print(f'  {rank}. {name:<16s} {p:7.2%}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
