"""Ship a trained model: ``serving.jax`` (jax.export), a SavedModel and
``model.onnx``, each checked on the test images, and reading them back.
"""

from jaxcls.export import artifact, onnx
from jaxcls.export.artifact import (
  FORMAT_VERSION,
  FORMATS,
  INPUT_NAME,
  METADATA_FILE,
  ONNX_FILE,
  OUTPUT_NAMES,
  PLATFORMS,
  SAVED_MODEL_DIR,
  SERVING_FILE,
  SIGNATURE,
  ExportError,
  Served,
  check_outputs,
  export_jax,
  export_workdir,
  load,
  model_variables,
  save_saved_model,
  serving_function,
  write,
)

__all__ = [
  'ExportError',
  'FORMATS',
  'FORMAT_VERSION',
  'INPUT_NAME',
  'METADATA_FILE',
  'ONNX_FILE',
  'OUTPUT_NAMES',
  'PLATFORMS',
  'SAVED_MODEL_DIR',
  'SERVING_FILE',
  'SIGNATURE',
  'Served',
  'artifact',
  'check_outputs',
  'export_jax',
  'export_workdir',
  'load',
  'model_variables',
  'onnx',
  'save_saved_model',
  'serving_function',
  'write',
]
