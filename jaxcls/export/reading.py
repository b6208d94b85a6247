"""Reading an export back: :func:`load` gives a :class:`Served` predictor.

It takes the export folder or one artifact in it (``serving.jax``, the
``saved_model`` folder or ``model.onnx``). ``export.json`` beside it, when it
describes that artifact, gives the class names, and its sha256 is checked,
so a damaged file is refused in one line instead of predicting silently
wrong classes.
"""

import dataclasses
import json
import os
from collections.abc import Callable

import jax
import numpy as np

from jaxcls.export import onnx
from jaxcls.export.common import (
  INPUT_NAME,
  METADATA_FILE,
  ONNX_FILE,
  SAVED_MODEL_DIR,
  SERVING_FILE,
  SIGNATURE,
  ExportError,
  sha256,
)


@dataclasses.dataclass
class Served:
  """An export read back: ``predict(images) -> probabilities``.

  ``image_shape`` comes from the artifact, ``class_names`` from
  ``export.json`` beside it (None without one: then classes are numbered).
  ``format`` is ``'jax'``, ``'saved_model'`` or ``'onnx'``.
  """

  predict: Callable[[np.ndarray], np.ndarray]
  image_shape: tuple[int, int, int]
  class_names: list[str] | None
  format: str
  path: str


def _find(path: str) -> tuple[str, str, str]:
  """``(format, artifact path, folder of export.json)`` for ``path``.

  ``path`` is the export folder (serving.jax is preferred: no TensorFlow;
  then saved_model, then model.onnx), the serving.jax file, a ``.onnx``
  file, or the saved_model folder.
  """
  path = os.path.abspath(path)
  if os.path.isfile(path):
    fmt = 'onnx' if path.endswith('.onnx') else 'jax'
    return fmt, path, os.path.dirname(path)
  if not os.path.isdir(path):
    raise ExportError(
      f'{path}: no such file or folder; write an export '
      'with python -m experiments.export --workdir=W'
    )
  if os.path.isfile(os.path.join(path, 'saved_model.pb')):
    return 'saved_model', path, os.path.dirname(path)
  if os.path.isfile(os.path.join(path, SERVING_FILE)):
    return 'jax', os.path.join(path, SERVING_FILE), path
  if os.path.isfile(os.path.join(path, SAVED_MODEL_DIR, 'saved_model.pb')):
    return 'saved_model', os.path.join(path, SAVED_MODEL_DIR), path
  if os.path.isfile(os.path.join(path, ONNX_FILE)):
    return 'onnx', os.path.join(path, ONNX_FILE), path
  raise ExportError(
    f'{path}: holds no {SERVING_FILE}, {ONNX_FILE} or SavedModel; pass '
    'the folder python -m experiments.export wrote (W/export)'
  )


def _read_metadata(folder: str, fmt: str, artifact: str) -> dict | None:
  """``export.json`` of ``folder`` if it describes ``artifact``; else None.

  Raises ExportError when it is unreadable, or when the artifact's sha256 is
  not the one recorded (a damaged or replaced file).
  """
  path = os.path.join(folder, METADATA_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      meta = json.load(f)
    entry = meta['files'].get(fmt)
    shape, names = meta['input']['shape'], meta['class_names']
    if len(shape) != 4 or not all(isinstance(n, str) for n in names):
      raise ValueError('bad input shape or class names')
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise ExportError(
      f'{path}: not a jaxcls export.json ({type(e).__name__}'
      f': {e}); export again with python -m '
      'experiments.export'
    ) from None
  if entry is None or os.path.basename(artifact) != entry.get('path'):
    return None  # Describes other files: use the artifact alone.
  checked = (
    os.path.join(artifact, 'saved_model.pb')
    if fmt == 'saved_model'
    else artifact
  )
  if sha256(checked) != entry.get('sha256'):
    raise ExportError(
      f'{checked}: damaged or replaced (its sha256 is not the '
      f'one in {path}); export again with python -m '
      'experiments.export'
    )
  return meta


def _load_jax(path: str):
  """``(predict, image_shape)`` of a serialized jax.export file."""
  try:
    with open(path, 'rb') as f:
      exported = jax.export.deserialize(bytearray(f.read()))
  except OSError as e:
    raise ExportError(f'{path}: cannot be read ({e.strerror})') from None
  except Exception as e:  # flatbuffers raises struct.error, IndexError...
    raise ExportError(
      f'{path}: not a jax.export serialization, or a damaged '
      f'one ({type(e).__name__}); export again with python '
      '-m experiments.export'
    ) from None
  avals = exported.in_avals
  if (
    len(avals) != 1
    or avals[0].dtype != np.uint8
    or len(avals[0].shape) != 4
    or not all(isinstance(d, int) for d in avals[0].shape[1:])
  ):
    raise ExportError(
      f'{path}: not a jaxcls serving export (it takes '
      f'{[str(a) for a in avals]}, not one uint8 image batch)'
    )
  if exported.platforms and jax.default_backend() not in exported.platforms:
    raise ExportError(
      f'{path}: exported for {", ".join(exported.platforms)}, '
      f'not for this {jax.default_backend()}'
    )

  def predict(images: np.ndarray) -> np.ndarray:
    out = exported.call(images)
    if not isinstance(out, dict) or 'probabilities' not in out:
      raise ExportError(
        f'{path}: not a jaxcls serving export (its output has no probabilities)'
      )
    return np.asarray(out['probabilities'])

  return predict, tuple(avals[0].shape[1:])


def _load_saved_model(path: str):
  """``(predict, image_shape)`` of a SavedModel's serving signature."""
  import tensorflow as tf  # Lazy: only this format needs TensorFlow.

  try:
    loaded = tf.saved_model.load(path)
  except Exception as e:  # Damaged protobufs raise several types.
    reason = str(e).splitlines()[0][:200] if str(e) else ''
    raise ExportError(
      f'{path}: not a readable SavedModel ({type(e).__name__}'
      f': {reason}); export again with python -m '
      'experiments.export'
    ) from None
  signature = loaded.signatures.get(SIGNATURE)
  specs = signature.structured_input_signature[1] if signature else {}
  spec = specs.get(INPUT_NAME)
  if (
    spec is None
    or spec.dtype != tf.uint8
    or spec.shape.rank != 4
    or None in spec.shape[1:]
    or 'probabilities' not in signature.structured_outputs
  ):
    raise ExportError(
      f'{path}: has no jaxcls {SIGNATURE} signature '
      f'({INPUT_NAME}: uint8 (batch, H, W, C) -> '
      'probabilities)'
    )

  def predict(images: np.ndarray) -> np.ndarray:
    out = signature(**{INPUT_NAME: tf.constant(images)})
    return out['probabilities'].numpy()

  return predict, tuple(spec.shape[1:])


# Format (as _find names it) -> ``path -> (predict, image_shape)``.
_LOADERS = {
  'jax': _load_jax,
  'saved_model': _load_saved_model,
  'onnx': onnx.load,
}


def load(path: str) -> Served:
  """Reads the export at ``path``.

  Args:
    path: the export folder, or its serving.jax, saved_model or model.onnx.

  Returns:
    The artifact's predictor, its image shape and ``export.json``'s class
    names.

  Raises:
    ExportError: in one line naming the file, for a missing, damaged or
      foreign file.
  """
  fmt, artifact, folder = _find(path)
  meta = _read_metadata(folder, fmt, artifact)
  predict, image_shape = _LOADERS[fmt](artifact)
  names = None
  if meta is not None:
    if tuple(meta['input']['shape'][1:]) != image_shape:
      raise ExportError(
        f'{artifact}: takes images of shape {image_shape}, '
        f'but {os.path.join(folder, METADATA_FILE)} says '
        f'{tuple(meta["input"]["shape"][1:])}; export again'
      )
    names = list(meta['class_names'])
  return Served(predict, image_shape, names, fmt, artifact)
