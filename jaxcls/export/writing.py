"""Writing an export folder: each format, checked, and ``export.json``.

* ``serving.jax``: the bytes of ``jax.export.Exported.serialize()``, StableHLO
  lowered for CPU and CUDA; ``jax.export.deserialize(bytes).call(images)``.
* ``saved_model/``: a TensorFlow SavedModel made by ``jax2tf`` (the same
  StableHLO in an ``XlaCallModule`` op); its ``serving_default`` signature
  takes ``images`` and returns the same dict.
* ``model.onnx``: ONNX (opset 21) by jax2onnx (:mod:`jaxcls.export.onnx`);
  a model it cannot convert is skipped, the reason in ``export.json``'s
  ``skipped``, when other formats are asked.

All are made from :func:`jaxcls.export.serving.serving_function`; a sequence
run's from :mod:`jaxcls.export.sequence`'s, on ``(ids or features,
lengths)``, with its ``inputs.json`` beside them. The folder is built aside
and moved into place once every artifact matches the model.
"""

import json
import os
import shutil

import jax

from jaxcls import config as config_lib
from jaxcls import data
from jaxcls.export import onnx, sequence, serving
from jaxcls.export.common import (
  FORMAT_VERSION,
  FORMATS,
  INPUT_NAME,
  METADATA_FILE,
  OUTPUT_NAMES,
  PLATFORMS,
  SAVED_MODEL_DIR,
  SERVING_FILE,
  SIGNATURE,
  ExportError,
  jaxcls_version,
  sha256,
  version,
)


def save_saved_model(
  state,
  image_shape: tuple[int, int, int],
  folder: str,
  platforms=PLATFORMS,
  flip_tta: bool = False,
) -> None:
  """Writes the serving function as a TF SavedModel into ``folder``.

  jax2tf puts the StableHLO in an ``XlaCallModule`` op, whose serialization
  version the loading TensorFlow must support (google/flax #5054).

  Args:
    state: the train state to serve.
    image_shape: ``(H, W, C)`` of one image.
    folder: where the SavedModel is written.
    platforms: the platforms the StableHLO is lowered for.
    flip_tta: as for :func:`~jaxcls.export.serving.serving_function`.

  Raises:
    ExportError: the installed TensorFlow is too old for the installed JAX.
  """
  import tensorflow as tf  # Lazy: only this format needs TensorFlow.
  from jax.experimental import jax2tf

  height, width, channels = image_shape
  converted = jax2tf.convert(
    serving.serving_function(state, flip_tta),
    polymorphic_shapes=[f'(batch, {height}, {width}, {channels})'],
    native_serialization_platforms=platforms,
    with_gradient=False,
  )
  serving.save_tf_module(
    converted,
    [tf.TensorSpec((None, *image_shape), tf.uint8, name=INPUT_NAME)],
    folder,
  )


def _run_results(workdir: str, checkpoint_meta: dict) -> dict:
  """What the checkpoint's metadata and ``results.json`` say of its scores.

  The test score is taken only when ``results.json`` scored this very
  checkpoint: the same fingerprint (as training computed it) and best epoch.
  A run still training, or one stopped before its test, has none yet.
  """
  found = {
    'config_fingerprint': checkpoint_meta.get('fingerprint'),
    'best_epoch': checkpoint_meta.get('epoch'),
    'best_val_accuracy': checkpoint_meta.get('best_val_accuracy'),
    'weights': checkpoint_meta.get('weights', 'live'),
  }
  try:
    with open(os.path.join(workdir, 'results.json')) as f:
      results = json.load(f)
  except (OSError, ValueError):
    return found
  if (
    isinstance(results, dict)
    and results.get('config_fingerprint') == found['config_fingerprint']
    and results.get('best_epoch') == found['best_epoch']
  ):
    found['test_accuracy'] = results.get('test_accuracy')
  return found


def _check_formats(formats) -> None:
  """Raises ExportError unless ``formats`` is a non-empty subset of FORMATS."""
  unknown = [f for f in formats if f not in FORMATS]
  if unknown or not formats:
    raise ExportError(
      f'unknown export format {unknown or formats}; choose '
      f'from {", ".join(FORMATS)} or all'
    )


def _metadata(config, state, spec, flip_tta, class_names, run_results):
  """``export.json`` before any artifact is written: ``files`` is empty."""
  image_shape = tuple(spec.image_shape)
  return {
    'format_version': FORMAT_VERSION,
    'dataset': config.dataset,
    'model': config.model,
    'class_names': list(
      class_names or spec.class_names or map(str, range(spec.num_classes))
    ),
    'input': {
      'name': INPUT_NAME,
      'shape': [None, *image_shape],
      'dtype': 'uint8',
      'layout': 'NHWC',
      'pixels': '0..255, raw: normalised inside the function',
    },
    'outputs': {
      name: {'shape': [None, spec.num_classes], 'dtype': 'float32'}
      for name in OUTPUT_NAMES
    },
    'config_fingerprint': config_lib.fingerprint(config),
    'flip_tta': flip_tta,  # The served probabilities average the mirror.
    'checkpoint_step': int(jax.device_get(state.step)),
    'test_accuracy': None,
    **(run_results or {}),  # The run's own fingerprint wins, if known.
    'versions': {
      'jaxcls': jaxcls_version(),
      'jax': jax.__version__,
      'jaxlib': version('jaxlib'),
      'flax': version('flax'),
    },
    'files': {},
    'config': config.to_dict(),
  }


def _write_jax(state, image_shape, folder, serve, flip_tta) -> dict:
  """Writes ``folder/serving.jax``, checked once read back; its entry."""
  exported = serving.export_jax(state, image_shape, flip_tta=flip_tta)
  path = os.path.join(folder, SERVING_FILE)
  serialized = exported.serialize()
  with open(path, 'wb') as f:
    f.write(serialized)
  reloaded = jax.export.deserialize(serialized)
  serving.check_outputs(reloaded.call, serve, image_shape, SERVING_FILE)
  return {
    'path': SERVING_FILE,
    'sha256': sha256(path),
    'platforms': list(exported.platforms),
    'calling_convention_version': exported.calling_convention_version,
    'load': 'jax.export.deserialize(open(path, "rb").read()).call(images)',
  }


def _write_saved_model(state, image_shape, folder, serve, flip_tta, versions):
  """Writes ``folder/saved_model``, checked once loaded; its entry.

  Adds TensorFlow's version to ``versions``.
  """
  import tensorflow as tf

  path = os.path.join(folder, SAVED_MODEL_DIR)
  save_saved_model(state, image_shape, path, flip_tta=flip_tta)
  signature = tf.saved_model.load(path).signatures[SIGNATURE]
  serving.check_outputs(
    lambda x: signature(**{INPUT_NAME: tf.constant(x)}),
    serve,
    image_shape,
    SAVED_MODEL_DIR,
  )
  versions['tensorflow'] = tf.__version__
  return {
    'path': SAVED_MODEL_DIR,
    'sha256': sha256(os.path.join(path, 'saved_model.pb')),
    'platforms': list(PLATFORMS),
    'signature': SIGNATURE,
    # A TensorFlow that loads it must run XlaCallModule this new.
    'xla_call_module_version': (
      jax.config.jax_export_calling_convention_version
    ),
    'load': f'tf.saved_model.load(path).signatures["{SIGNATURE}"]'
    f'({INPUT_NAME}=images)',
  }


def write(
  config,
  state,
  folder: str,
  formats=FORMATS,
  class_names: list[str] | None = None,
  run_results: dict | None = None,
  inputs: dict | None = None,
) -> dict:
  """Exports ``state`` into ``folder``: built in a temporary sibling folder,
  checked against the model, then moved into place (with no other formats).

  Args:
    config: the run's config (dataset, model, ``flip_tta``).
    state: the train state to export.
    folder: the export folder, replaced as a whole.
    formats: some of FORMATS.
    class_names: the classes' names; else the dataset's, or numbers.
    run_results: the run's scores, as ``export_workdir`` reads them.
    inputs: a sequence run's ``inputs.json`` (:mod:`.sequence`), else None.

  Returns:
    The metadata written to ``export.json``.
  """
  _check_formats(formats)
  spec = _spec(config, inputs)
  # The run's evaluation: a model validated and tested with flip TTA is
  # served with it, so the export scores what results.json reports.
  flip_tta = bool(config.flip_tta)
  folder = os.path.abspath(folder)
  tmp = f'{folder}.tmp-{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  meta = _metadata(config, state, spec, flip_tta, class_names, run_results)
  try:
    if inputs is None:
      _write_images(meta, state, tuple(spec.image_shape), tmp, formats)
    else:
      sequence.write_files(meta, state, spec, inputs, tmp, formats)
    with open(os.path.join(tmp, METADATA_FILE), 'w') as f:
      json.dump(meta, f, indent=2)
      f.write('\n')
    _replace_folder(tmp, folder)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return meta


def _spec(config, inputs: dict | None):
  """The run's DatasetSpec: a sequence run's from its ``inputs.json``."""
  if inputs is None and data.is_sequence(config.dataset):
    raise ExportError(
      f'a {config.dataset} run is exported with its inputs.json: pass '
      'inputs=, or use export_workdir'
    )
  if inputs is None:
    return data.dataset_spec(config)
  from jaxcls.training import inspection

  if config.flip_tta:
    raise ExportError(
      'flip_tta mirrors images: a sequence run is served without it; '
      'export a run trained with --config.flip_tta=False'
    )
  try:
    return inspection.spec_from_inputs(inputs)
  except ValueError as e:
    raise ExportError(str(e)) from None


def _write_images(meta, state, image_shape, folder, formats) -> None:
  """Writes an image run's ``formats`` into ``folder``, filling ``meta``."""
  flip_tta = meta['flip_tta']
  serve = jax.jit(serving.serving_function(state, flip_tta))
  files = meta['files']
  if 'jax' in formats:
    files['jax'] = _write_jax(state, image_shape, folder, serve, flip_tta)
  if 'saved_model' in formats:
    files['saved_model'] = _write_saved_model(
      state, image_shape, folder, serve, flip_tta, meta['versions']
    )
  if 'onnx' in formats:
    alone = set(formats) == {'onnx'}  # Else skipped if not convertible.
    onnx.add_to(meta, state, image_shape, folder, serve, alone)


def _replace_folder(new: str, folder: str) -> None:
  """Moves ``new`` to ``folder``, replacing (then deleting) an old one."""
  old = f'{folder}.old-{os.getpid()}'
  if os.path.exists(folder):
    os.rename(folder, old)
  os.rename(new, folder)
  shutil.rmtree(old, ignore_errors=True)


def export_workdir(
  workdir: str, formats=FORMATS, folder: str | None = None
) -> tuple[str, dict]:
  """Exports the best checkpoint of ``workdir`` (see :func:`write`); the test
  accuracy comes from ``results.json`` when that scores this checkpoint.

  Args:
    workdir: the run's folder.
    formats: some of FORMATS.
    folder: the export folder; ``workdir/export`` by default.

  Returns:
    ``(folder, metadata)``.

  Raises:
    ExportError: the best checkpoint kept changing while it was read.
  """
  from jaxcls.training import inspection

  for _ in range(3):  # A live run may replace the best checkpoint meanwhile.
    before = inspection.best_meta(workdir)
    config, state = inspection.load_best(workdir)
    if inspection.best_meta(workdir) == before:
      break
  else:
    raise ExportError(
      f'{workdir}: the best checkpoint kept changing while '
      'it was read; export when training has ended'
    )
  folder = folder or os.path.join(workdir, 'export')
  meta = write(
    config,
    state,
    folder,
    formats,
    class_names=inspection.class_names(config, workdir),
    run_results=_run_results(workdir, before),
    inputs=_sequence_inputs(config, workdir),
  )
  return folder, meta


def _sequence_inputs(config, workdir: str) -> dict | None:
  """A sequence run's ``inputs.json``; None for an image run."""
  from jaxcls.training import workdir as workdir_lib

  if not data.is_sequence(config.dataset):
    return None
  inputs = workdir_lib.read_inputs(workdir)
  if inputs is None:
    raise ExportError(
      f'{workdir_lib.inputs_path(workdir)} is missing (it holds how the run '
      'encoded its inputs); train again to write it'
    )
  return inputs
