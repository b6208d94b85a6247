"""The ``predict`` command: classify image or text files with a model.

:func:`predict` uses a workdir's best checkpoint, :func:`predict_exported`
an export of it (``jaxcls.export``). :func:`load_image` reads any PNG or
JPEG the way the model was trained (size, channels, 16-bit, transparency);
a file it cannot use raises :class:`BadImageError`. :func:`predict_text`
classifies texts (UTF-8 files, CSV rows) with a text run's checkpoint.
:data:`USAGE` is the ``--help`` text; ``python -m experiments.predict`` and
``jaxcls-predict`` run :func:`run`.
"""

from absl import flags

from jaxcls.commands import cli

FLAGS = flags.FLAGS

# What --help prints: absl shows the __main__ module's docstring, and
# experiments.predict takes this as its own.
USAGE = """\
Classify image files with a trained model: a workdir's best checkpoint,
or an export of it (``python -m experiments.export``).

Run:  python -m experiments.predict --workdir=runs/fashion_mnist shoe.png \
        [more.jpg ...] [--top_k=3] [--invert]
      python -m experiments.predict --exported=runs/fashion_mnist/export \
        shoe.png     # or .../serving.jax, .../model.onnx, .../saved_model

Any PNG or JPEG (any size, any colour mode) is converted the way the model
was trained: to grayscale (MNIST, Fashion-MNIST) or RGB (CIFAR-10), cropped
to the model's aspect ratio around the centre and resized to its size (28x28
or 32x32), as uint8; the model normalises it as in training. MNIST-style
images are light objects on a dark background; ``--invert`` flips a dark-on-
light picture (a photo on white paper) to match. Prints the ``top_k`` classes
with their probabilities. An unreadable file or a missing checkpoint prints
``error: ...`` on one line and exits with status 2.

How pixels are read (see :func:`load_image`):

* 16-bit images are scaled to 8 bits (65535 -> 255), not clipped.
* Transparent images: the object is what is opaque. A picture whose visible
  pixels are all one colour (a silhouette, icon or mask: its shape is only in
  the alpha channel) becomes its alpha, opaque = light on dark, like MNIST
  ink, whatever ``--invert`` says. Any other picture is composited onto the
  background MNIST and Fashion-MNIST have, black (for colour models too), or
  onto white with ``--invert``, which then turns it black.
* Images over ``MAX_PIXELS`` (PIL's decompression-bomb limit, 89 million
  pixels) are refused before they are decoded.

A text run's workdir classifies texts: ``--workdir=runs/spam mail.txt
rows.csv``. A file is one UTF-8 text (a BOM dropped), a ``.csv`` file one
per row of its ``text`` column (named ``file:line``), each encoded as the
run encoded its own (``inputs.json``); one longer than its ``max_len`` is
cut, and its line says so. A file that is not UTF-8, or a text with no
words (bytes), is one ``error:`` line naming it.
"""


def define_flags() -> None:
  """Defines ``--workdir``, ``--exported``, ``--top_k`` and ``--invert``."""
  # Defined only when run as a program, so that tests can import this module
  # next to other tools that define a --workdir flag too. Disclaimed: absl
  # then files the flags under the first caller outside this module, the
  # __main__ module (experiments.predict), whose flags --help lists.
  flags.disclaim_key_flags()
  flags.DEFINE_string(
    'workdir', None, 'The training workdir (its best checkpoint is used).'
  )
  flags.DEFINE_string(
    'exported',
    None,
    'An export instead of a workdir: the folder '
    'experiments.export wrote, its serving.jax, its model.onnx '
    '(onnxruntime) or its saved_model folder.',
  )
  flags.DEFINE_integer('top_k', 3, 'How many classes to print per input.')
  flags.DEFINE_bool(
    'invert', False, 'Invert the pixels (dark objects on a light background).'
  )


class BadImageError(ValueError):
  """An input file is missing or is not a readable image."""


# PIL's own decompression-bomb threshold (it warns above it and refuses above
# twice it): a 9459x9459 image, more than any phone camera writes by default.
MAX_PIXELS = 89_478_485
# Visible pixels within this many levels of one colour carry no picture of
# their own: the shape is in the alpha channel.
_FLAT_COLOUR_LEVELS = 8
_SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')


def _eight_bit(image):
  """16-bit grayscale scaled to 8 bits (PIL's convert would clip at 255)."""
  import numpy as np
  from PIL import Image

  if image.mode not in _SIXTEEN_BIT_MODES:
    return image
  pixels = np.asarray(image).astype(np.float64)
  return Image.fromarray(
    np.rint(np.clip(pixels, 0, 65535) / 257).astype(np.uint8), 'L'
  )


def _flatten_alpha(image, invert: bool):
  """An RGB image with the transparency resolved (see :data:`USAGE`).

  A picture drawn only in alpha (all visible pixels one colour, alpha not
  constant) becomes its alpha as light-on-dark ink; any other picture is
  composited onto black (white when ``invert``: the picture is dark on light
  and the inversion that follows makes the background black).
  """
  import numpy as np
  from PIL import Image

  if not image.has_transparency_data:
    return image
  rgba = np.asarray(image.convert('RGBA')).astype(np.float64)
  colour, alpha = rgba[..., :3], rgba[..., 3:] / 255
  visible = colour[alpha[..., 0] > 0]
  if (
    len(visible)
    and np.ptp(alpha) > 0
    and np.ptp(visible, axis=0).max() <= _FLAT_COLOUR_LEVELS
  ):
    ink = alpha * 255  # Opaque = object = light, as MNIST's ink.
    out = np.repeat(255 - ink if invert else ink, 3, axis=-1)
  else:
    background = 255.0 if invert else 0.0
    out = colour * alpha + background * (1 - alpha)
  return Image.fromarray(np.rint(out).astype(np.uint8), 'RGB')


def load_image(
  path: str, image_shape: tuple[int, int, int], invert: bool = False
):
  """The file at ``path`` as uint8 (H, W, C) for a model of ``image_shape``.

  Converted as :data:`USAGE` describes: channels, 16 bits, transparency,
  then cropped around the centre and resized.

  Args:
    path: a PNG or JPEG file.
    image_shape: the model's ``(H, W, C)``; C is 1 (grayscale) or 3 (RGB).
    invert: flip a dark-on-light picture to light-on-dark.

  Raises:
    BadImageError: naming the file and what is wrong with it.
  """
  import re
  import warnings

  import numpy as np
  from PIL import Image, ImageOps, UnidentifiedImageError

  height, width, channels = image_shape
  try:
    with warnings.catch_warnings():
      # Sizes are checked below, with a clearer message than PIL's warning.
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      with Image.open(path) as image:
        pixels = image.size[0] * image.size[1]
        if pixels > MAX_PIXELS:
          raise Image.DecompressionBombError(f'({pixels} pixels)')
        image.load()  # Decodes now, so a truncated file fails here.
        image = ImageOps.exif_transpose(image)  # Phone photos: upright.
        image = _flatten_alpha(_eight_bit(image), invert)
        image = image.convert('L' if channels == 1 else 'RGB')
  except FileNotFoundError:
    raise BadImageError(f'{path}: no such file') from None
  except IsADirectoryError:
    raise BadImageError(f'{path}: is a directory, not an image') from None
  except UnidentifiedImageError:
    raise BadImageError(
      f'{path}: not an image PIL can read (expected PNG or JPEG)'
    ) from None
  except Image.DecompressionBombError as e:  # Before a single pixel decodes.
    size = re.search(r'\((\d+) pixels\)', str(e))
    size = f'{int(size.group(1)):,} pixels' if size else 'too many pixels'
    raise BadImageError(
      f'{path}: {size}, more than the {MAX_PIXELS:,} '
      'predict decodes; scale the image down first'
    ) from None
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


def predict(
  workdir: str, paths: list[str], k: int = 3, invert: bool = False
) -> list[list[tuple[str, float]]]:
  """Top-``k`` predictions for every file in ``paths``, in order.

  Args:
    workdir: a training workdir; its best checkpoint is used.
    paths: image files, read by :func:`load_image`.
    k: how many classes per image, 1 to the number of classes.
    invert: passed to :func:`load_image`.

  Returns:
    One list of ``(class name, probability)`` per file, best first.

  Raises:
    ValueError: no paths, a bad ``k`` or an unusable file (all checked
      before the weights are restored).
  """
  import numpy as np

  from jaxcls import data
  from jaxcls.training import inspection

  if not paths:
    raise ValueError('no image files given; pass one or more PNG/JPEG paths')
  # Files are checked before the weights are restored: bad input fails fast.
  spec = data.dataset_spec(inspection.best_config(workdir))
  if not 1 <= k <= spec.num_classes:
    raise ValueError(f'--top_k must be in 1..{spec.num_classes}, got {k}')
  images = np.stack([load_image(p, spec.image_shape, invert) for p in paths])
  config, state = inspection.load_best(workdir)
  names = inspection.class_names(config)
  probs = inspection.predict_all(
    state, images, len(images), flip_tta=config.flip_tta
  )
  return [top_k(p, names, k) for p in probs]


def predict_exported(
  path: str, paths: list[str], k: int = 3, invert: bool = False
) -> list[list[tuple[str, float]]]:
  """Like :func:`predict`, from an export (no model is built or restored).

  Args:
    path: what ``experiments.export`` wrote: the export folder, its
      ``serving.jax``, ``model.onnx`` (onnxruntime) or ``saved_model``
      folder, each checked against ``export.json``'s sha256.
    paths, k, invert: as for :func:`predict`.

  Returns what :func:`predict` does.

  Raises:
    ValueError: as :func:`predict`, an unusable export (``ExportError``) or
      classes that ``export.json`` does not name.
  """
  import numpy as np

  from jaxcls import export

  if not paths:
    raise ValueError('no image files given; pass one or more PNG/JPEG paths')
  served = export.load(path)
  if getattr(served, 'kind', 'image') != 'image':
    kind = f'{path}: a {served.kind} export, not an image one'
    raise ValueError(f'{kind}; call export.load(path).predict(x, lengths)')
  num_classes = len(served.class_names) if served.class_names else None
  if k < 1 or (num_classes and k > num_classes):
    raise ValueError(
      f'--top_k must be in 1..{num_classes or "classes"}, got {k}'
    )
  images = np.stack([load_image(p, served.image_shape, invert) for p in paths])
  probs = served.predict(images)
  names = served.class_names or [str(i) for i in range(probs.shape[-1])]
  if len(names) != probs.shape[-1] or k > len(names):
    raise ValueError(
      f'{served.path}: gives {probs.shape[-1]} classes, '
      f'export.json names {len(names)}; export again'
    )
  return [top_k(p, names, k) for p in probs]


class BadTextError(ValueError):
  """An input file is missing, not UTF-8, or holds an empty text."""


def read_text(path: str) -> str:
  """The UTF-8 text of the file at ``path`` (a leading BOM dropped)."""
  try:
    with open(path, 'rb') as f:
      raw = f.read()
    return raw.decode('utf-8-sig')
  except OSError as e:
    raise BadTextError(f'{path}: {e.strerror or e}') from None
  except UnicodeDecodeError as e:
    line = raw[: e.start].count(b'\n') + 1
    raise BadTextError(
      f'{path}: not UTF-8 (byte 0x{raw[e.start]:02x} on line {line}); '
      'save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)'
    ) from None


def read_texts(path: str) -> list[tuple[str, str]]:
  """``(name, text)`` pairs: the file's text, or for a ``.csv`` file each
  row's ``text`` column, named ``path:line`` (blank lines skipped)."""
  import csv
  import io

  text = read_text(path)
  if not path.lower().endswith('.csv'):
    return [(path, text)]
  reader = csv.reader(io.StringIO(text, newline=''))
  limit = csv.field_size_limit(2**31 - 1)  # Emails exceed 128 KiB.
  try:
    header = [h.strip().lower() for h in next(reader, [])]
    if 'text' not in header:
      raise BadTextError(f'{path}: no text column in its header ({header})')
    i = header.index('text')
    rows = [
      (f'{path}:{reader.line_num}', row[i] if i < len(row) else '')
      for row in reader
      if any(field.strip() for field in row)
    ]
  except csv.Error as e:
    raise BadTextError(f'{path}:{reader.line_num}: {e}') from None
  finally:
    csv.field_size_limit(limit)
  if not rows:
    raise BadTextError(f'{path}: no rows after the header')
  return rows


def predict_text(workdir: str, paths: list[str], k=None) -> list[tuple]:
  """``(name, top-k (class name, probability), note)`` of a text run for
  each text of ``paths`` (see :data:`USAGE`), in order; the note says if it
  was cut to ``max_len``; ``k=None``: 3, or all classes when fewer.
  ValueError, before the weights are restored: no paths, a bad ``k``, no
  text run's ``inputs.json``, a bad file or row."""
  from jaxcls.training import inspection

  if not paths:
    raise ValueError('no files given; pass text files or CSV files')
  inputs = inspection.text_inputs(workdir)
  names, max_len = inputs['class_names'], inputs['max_len']
  k = min(3, len(names)) if k is None else k
  if not 1 <= k <= len(names):
    raise ValueError(f'--top_k must be in 1..{len(names)}, got {k}')
  named = [item for path in paths for item in read_texts(path)]
  steps = inspection.text_steps(inputs, [text for _, text in named])
  unit = 'bytes' if inputs['tokens'] == 'bytes' else 'words'
  for (name, _), n in zip(named, steps):
    if not n:
      raise BadTextError(f'{name}: empty text (no {unit} to classify)')
  padded = inspection.encode_texts(inputs, [text for _, text in named])
  config, state = inspection.load_best(workdir)
  batch = min(len(named), config.eval_batch_size)
  probs = inspection.predict_all(
    state, padded.array, batch, config.flip_tta, padded.lengths
  )
  cut = f' (cut to its first {max_len:,} of {{:,}} {unit})'
  return [
    (name, top_k(p, names, k), cut.format(n) if n > max_len else '')
    for (name, _), p, n in zip(named, probs, steps)
  ]


def main(argv):
  """The absl main: predicts for every input in ``argv[1:]``, prints it."""
  from jaxcls import data
  from jaxcls.training import inspection

  paths, k, invert = argv[1:], FLAGS.top_k, FLAGS.invert
  if bool(FLAGS.workdir) == bool(FLAGS.exported):
    cli.fail(
      'pass --workdir (the folder training wrote to) or --exported '
      '(what experiments.export wrote), one of them'
    )
  workdir = FLAGS.workdir
  if workdir and data.is_sequence(inspection.best_config(workdir).dataset):
    if invert:
      raise ValueError('--invert is for images; this run classifies texts')
    found = predict_text(workdir, paths, k if FLAGS['top_k'].present else None)
  else:
    if FLAGS.exported:
      images = predict_exported(FLAGS.exported, paths, k, invert)
    else:
      images = predict(workdir, paths, k, invert)
    found = [(path, best, '') for path, best in zip(paths, images)]
  for name, best, note in found:
    print(f'{name}{note}')
    for rank, (label, p) in enumerate(best, 1):
      print(f'  {rank}. {label:<16s} {p:7.2%}')


def run() -> None:
  """The command: defines the flags and runs :func:`main` on ``sys.argv``."""
  define_flags()
  cli.app_run(main)
