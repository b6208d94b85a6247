"""What every export format shares: its file names, its error, its checksums.

An export folder holds ``serving.jax``, ``saved_model/`` and ``model.onnx``
(those asked for) and ``export.json``, which records the class names, the
input, the config, the versions and the sha256 of each artifact. Writing
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
