"""Reading an export back: :func:`load` gives a :class:`Served` predictor.

It takes the export folder or one artifact in it (``serving.jax``, the
``saved_model`` folder or ``model.onnx``). ``export.json`` beside it, when it
describes that artifact, gives the class names, and its sha256 is checked,
so a damaged file is refused in one line instead of predicting silently
wrong classes. An image export predicts from ``(images)``, a sequence run's
from ``(ids or features, lengths)``; its ``inputs.json`` (checked too) says
how to encode them.
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
  INPUTS_FILE,
  LENGTHS_NAME,
  METADATA_FILE,
  ONNX_FILE,
  SAVED_MODEL_DIR,
  SEQUENCE_INPUT_NAMES,
  SERVING_FILE,
  SIGNATURE,
  ExportError,
  input_kind,
  sha256,
)

_AGAIN = 'export again with python -m experiments.export'


@dataclasses.dataclass
class Served:
  """An export read back: ``predict(images) -> probabilities``, or for a
  sequence run ``predict(x, lengths)``: int32 ids ``(B, max_len)`` (or
  float32 features ``(B, max_len, C)``) and int32 lengths ``(B,)``.

  ``image_shape`` is one input's shape, from the artifact: ``(H, W, C)``, or
  ``(max_len,)`` / ``(max_len, C)``; ``kind`` is ``'image'``, ``'text'`` or
  ``'series'``. ``class_names`` come from ``export.json`` beside it (None
  without one: then classes are numbered), ``inputs`` from ``inputs.json``
  (a sequence run's vocabulary or channel statistics; else None).
  ``format`` is ``'jax'``, ``'saved_model'`` or ``'onnx'``.
  """

  predict: Callable[..., np.ndarray]
  image_shape: tuple[int, ...]
  class_names: list[str] | None
  format: str
  path: str
  kind: str = 'image'
  inputs: dict | None = None


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
    rank = {'image': 4, 'text': 2, 'series': 3}[
      meta['input'].get('kind', 'image')
    ]
    if len(shape) != rank or not all(isinstance(n, str) for n in names):
      raise ValueError('bad input shape or class names')
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise ExportError(
      f'{path}: not a jaxcls export.json ({type(e).__name__}: {e}); {_AGAIN}'
    ) from None
  if entry is None or os.path.basename(artifact) != entry.get('path'):
    return None  # Describes other files: use the artifact alone.
  checked = (
    os.path.join(artifact, 'saved_model.pb')
    if fmt == 'saved_model'
    else artifact
  )
  _check_sha(checked, entry.get('sha256'), path)
  return meta


def _check_sha(checked: str, recorded, metadata: str) -> None:
  """Raises ExportError unless file ``checked`` has sha256 ``recorded``."""
  if sha256(checked) != recorded:
    raise ExportError(
      f'{checked}: damaged or replaced (its sha256 is not the one in '
      f'{metadata}); {_AGAIN}'
    )


def _read_inputs(folder: str, meta: dict | None) -> dict | None:
  """A sequence export's ``inputs.json`` (checked against ``export.json``
  when that records it), or None when there is none."""
  path = os.path.join(folder, INPUTS_FILE)
  entry = ((meta or {}).get('input') or {}).get('inputs_file')
  if not os.path.isfile(path):
    if entry:
      raise ExportError(
        f'{path}: missing, but export.json records it; {_AGAIN}'
      )
    return None
  if entry:
    _check_sha(path, entry.get('sha256'), os.path.join(folder, METADATA_FILE))
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ExportError(
      f'{path}: not readable JSON ({type(e).__name__}); {_AGAIN}'
    ) from None


def _signature_error(path: str, got) -> ExportError:
  return ExportError(
    f'{path}: not a jaxcls serving export (it takes {got}, not one uint8 '
    'image batch, nor ids or features with lengths)'
  )


def _load_jax(path: str):
  """``(predict, input shape, kind)`` of a serialized jax.export file."""
  try:
    with open(path, 'rb') as f:
      exported = jax.export.deserialize(bytearray(f.read()))
  except OSError as e:
    raise ExportError(f'{path}: cannot be read ({e.strerror})') from None
  except Exception as e:  # flatbuffers raises struct.error, IndexError...
    raise ExportError(
      f'{path}: not a jax.export serialization, or a damaged '
      f'one ({type(e).__name__}); {_AGAIN}'
    ) from None
  avals = exported.in_avals
  kind = input_kind([(a.dtype, a.shape) for a in avals])
  if kind is None:
    raise _signature_error(path, [str(a) for a in avals])
  if exported.platforms and jax.default_backend() not in exported.platforms:
    raise ExportError(
      f'{path}: exported for {", ".join(exported.platforms)}, '
      f'not for this {jax.default_backend()}'
    )

  def predict(*arrays: np.ndarray) -> np.ndarray:
    if len(arrays) != len(avals):
      raise TypeError(f'{path} takes {len(avals)} arrays, not {len(arrays)}')
    if kind != 'image':  # Python or int64 ids, lengths: as exported.
      arrays = [np.asarray(x, a.dtype) for x, a in zip(arrays, avals)]
    out = exported.call(*arrays)
    if not isinstance(out, dict) or 'probabilities' not in out:
      raise ExportError(
        f'{path}: not a jaxcls serving export (its output has no probabilities)'
      )
    return np.asarray(out['probabilities'])

  return predict, tuple(avals[0].shape[1:]), kind


def _signature_inputs(signature) -> tuple[list[str], list]:
  """``(names, specs)`` of a SavedModel signature's arguments, in serving
  order (images; or ids or features, then lengths); ``[]`` if no match."""
  specs = signature.structured_input_signature[1] if signature else {}
  for names in (
    [INPUT_NAME],
    *([x, LENGTHS_NAME] for x in SEQUENCE_INPUT_NAMES.values()),
  ):
    if set(specs) == set(names):
      return names, [specs[n] for n in names]
  return [], []


def _load_saved_model(path: str):
  """``(predict, input shape, kind)`` of a SavedModel's serving signature."""
  import tensorflow as tf  # Lazy: only this format needs TensorFlow.

  try:
    loaded = tf.saved_model.load(path)
  except Exception as e:  # Damaged protobufs raise several types.
    reason = str(e).splitlines()[0][:200] if str(e) else ''
    raise ExportError(
      f'{path}: not a readable SavedModel ({type(e).__name__}: {reason}); '
      f'{_AGAIN}'
    ) from None
  signature = loaded.signatures.get(SIGNATURE)
  names, specs = _signature_inputs(signature)
  known = all(s.shape.rank is not None for s in specs)
  kind = (
    names and known and input_kind([(s.dtype.name, s.shape) for s in specs])
  )
  if not kind or 'probabilities' not in signature.structured_outputs:
    raise ExportError(
      f'{path}: has no jaxcls {SIGNATURE} signature ({INPUT_NAME}: uint8 '
      '(batch, H, W, C), or ids or features and lengths -> probabilities)'
    )

  def predict(*arrays: np.ndarray) -> np.ndarray:
    if len(arrays) != len(names):
      raise TypeError(f'{path} takes {len(names)} arrays: {", ".join(names)}')
    cast = [s.dtype if kind != 'image' else None for s in specs]
    feed = {n: tf.constant(x, d) for n, x, d in zip(names, arrays, cast)}
    return signature(**feed)['probabilities'].numpy()

  return predict, tuple(specs[0].shape[1:]), kind


def _load_onnx(path: str):
  """``(predict, input shape, kind)`` of a model.onnx, by onnxruntime."""
  predict, shape = onnx.load(path)
  return (
    predict,
    shape,
    'image' if len(shape) == 3 else ('text' if len(shape) == 1 else 'series'),
  )


# Format (as _find names it) -> ``path -> (predict, input shape, kind)``.
_LOADERS = {
  'jax': _load_jax,
  'saved_model': _load_saved_model,
  'onnx': _load_onnx,
}


def load(path: str) -> Served:
  """Reads the export at ``path``.

  Args:
    path: the export folder, or its serving.jax, saved_model or model.onnx.

  Returns:
    The artifact's predictor, its input shape and kind, ``export.json``'s
    class names and a sequence export's ``inputs.json``.

  Raises:
    ExportError: in one line naming the file, for a missing, damaged or
      foreign file.
  """
  fmt, artifact, folder = _find(path)
  meta = _read_metadata(folder, fmt, artifact)
  predict, shape, kind = _LOADERS[fmt](artifact)
  names = None
  if meta is not None:
    said = (
      tuple(meta['input']['shape'][1:]),
      meta['input'].get('kind', 'image'),
    )
    if said != (shape, kind):
      raise ExportError(
        f'{artifact}: takes {kind} inputs of shape {shape}, but '
        f'{os.path.join(folder, METADATA_FILE)} says {said[1]} of '
        f'{said[0]}; export again'
      )
    names = list(meta['class_names'])
  inputs = _read_inputs(folder, meta) if kind != 'image' else None
  return Served(predict, shape, names, fmt, artifact, kind, inputs)
