"""What every export format shares: its file names, its error, its checksums.

An export folder holds ``serving.jax``, ``saved_model/`` and ``model.onnx``
(those asked for) and ``export.json``, which records the class names, the
input, the config, the versions and the sha256 of each artifact (a sequence
run's also ``inputs.json``, its vocabulary or channel statistics). Writing
(:mod:`jaxcls.export.writing`), reading (:mod:`jaxcls.export.reading`) and
the ONNX format (:mod:`jaxcls.export.onnx`) all import these from here.
"""

import hashlib
import importlib.metadata

SERVING_FILE = 'serving.jax'
SAVED_MODEL_DIR = 'saved_model'
ONNX_FILE = 'model.onnx'
METADATA_FILE = 'export.json'
FORMATS = ('jax', 'saved_model', 'onnx')
PLATFORMS = ('cpu', 'cuda')
SIGNATURE = 'serving_default'
INPUT_NAME = 'images'
OUTPUT_NAMES = ('probabilities', 'logits')
# A sequence export's inputs: ids (text) or features (series), then lengths.
SEQUENCE_INPUT_NAMES = {'text': 'ids', 'series': 'features'}
LENGTHS_NAME = 'lengths'
INPUTS_FILE = 'inputs.json'  # A sequence run's, copied beside its export.
FORMAT_VERSION = 1


class ExportError(ValueError):
  """An export cannot be written, or a file is not a usable export."""


def sha256(path: str) -> str:
  """The hex sha256 of the file at ``path``, read in 1 MiB blocks."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def version(package: str) -> str:
  """The installed version of ``package``, or ``'unknown'``."""
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return 'unknown'


def jaxcls_version() -> str:
  """jaxcls's own version: the package's literal, else its metadata."""
  from jaxcls import __version__  # a literal: loads nothing

  return __version__ or version('jaxcls')


def input_kind(inputs) -> str | None:
  """``'image'``, ``'text'`` or ``'series'``: what a serving artifact takes,
  from ``[(dtype name, shape)]`` of its arguments (the batch dimension may
  be anything, the others must be ints); None when it is no jaxcls
  serving function's (one uint8 NHWC batch; or ids or features, lengths)."""
  inputs = [(str(dtype), tuple(shape)) for dtype, shape in inputs]
  if not all(isinstance(d, int) for _, shape in inputs for d in shape[1:]):
    return None
  if len(inputs) == 1:
    dtype, shape = inputs[0]
    return 'image' if (dtype, len(shape)) == ('uint8', 4) else None
  if len(inputs) != 2 or (inputs[1][0], len(inputs[1][1])) != ('int32', 1):
    return None
  kinds = {('int32', 2): 'text', ('float32', 3): 'series'}
  return kinds.get((inputs[0][0], len(inputs[0][1])))
