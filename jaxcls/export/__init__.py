"""Ship a trained model: ``serving.jax`` (jax.export), a SavedModel and
``model.onnx``, each checked on the test images, and reading them back.

:mod:`~jaxcls.export.common` holds the file names and :class:`ExportError`,
:mod:`~jaxcls.export.serving` the serving function every format is made
from, :mod:`~jaxcls.export.onnx` the ONNX format,
:mod:`~jaxcls.export.sequence` a sequence run's serving function (ids or
features, and lengths) and formats, and :mod:`~jaxcls.export.writing` and
:mod:`~jaxcls.export.reading` the writing of an export folder (:func:`write`)
and its reading back (:func:`load`). Each imports only the ones before it in
that list.
"""

from jaxcls.export import common, onnx, reading, sequence, serving, writing
from jaxcls.export.common import (
  FORMAT_VERSION,
  FORMATS,
  INPUT_NAME,
  INPUTS_FILE,
  LENGTHS_NAME,
  METADATA_FILE,
  ONNX_FILE,
  OUTPUT_NAMES,
  PLATFORMS,
  SAVED_MODEL_DIR,
  SEQUENCE_INPUT_NAMES,
  SERVING_FILE,
  SIGNATURE,
  ExportError,
)
from jaxcls.export.reading import Served, load
from jaxcls.export.serving import (
  check_outputs,
  export_jax,
  model_variables,
  serving_function,
)
from jaxcls.export.writing import export_workdir, save_saved_model, write

__all__ = [
  'ExportError',
  'FORMATS',
  'FORMAT_VERSION',
  'INPUTS_FILE',
  'INPUT_NAME',
  'LENGTHS_NAME',
  'METADATA_FILE',
  'ONNX_FILE',
  'OUTPUT_NAMES',
  'PLATFORMS',
  'SAVED_MODEL_DIR',
  'SEQUENCE_INPUT_NAMES',
  'SERVING_FILE',
  'SIGNATURE',
  'Served',
  'check_outputs',
  'common',
  'export_jax',
  'export_workdir',
  'load',
  'model_variables',
  'onnx',
  'reading',
  'save_saved_model',
  'sequence',
  'serving',
  'serving_function',
  'write',
  'writing',
]
