"""Ship a trained model: a self-contained serving artifact, and reading it back.

The serving function takes a batch of raw uint8 images ``(batch, H, W, C)``
(any batch size) and returns ``{'probabilities': (batch, num_classes),
'logits': (batch, num_classes)}``, both float32. Normalisation happens inside
it, and every model variable (``params`` and any other collection the train
state carries, such as BatchNorm's ``batch_stats``) is baked in as a constant,
so the artifact needs no jaxcls code and no checkpoint.

Three formats are written from it:

* ``serving.jax``: the bytes of ``jax.export.Exported.serialize()``, StableHLO
  lowered for CPU and CUDA. ``jax.export.deserialize(bytes).call(images)``
  runs it.
* ``saved_model/``: a TensorFlow SavedModel made by ``jax2tf`` (native
  serialization: the same StableHLO inside an ``XlaCallModule`` op). Its
  ``serving_default`` signature takes ``images`` and returns the same dict.
* ``model.onnx``: ONNX (opset 21) converted by jax2onnx
  (:mod:`jaxcls.export.onnx`); onnxruntime runs it with ``{'images':
  images}`` and returns ``[probabilities, logits]``. A model jax2onnx cannot
  convert is skipped, with the reason in ``export.json``'s ``skipped``, when
  other formats are written too.

``export.json`` beside them records the class names, the input shape and
dtype, the config and its fingerprint, the test accuracy, the versions and
the sha256 of each artifact. :func:`load` checks those sums, so a damaged
file is refused in one line instead of predicting silently wrong classes.
"""

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import shutil
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls import config as config_lib
from jaxcls import data
from jaxcls.ops import fastpath, techniques

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
# What the export checks against the model before it reports success: a
# float32 result may differ by rounding between XLA compilations.
_TOLERANCE = 1e-5

# TrainState fields that are not model variables. ``ema`` is a moving average
# of the variables, not a collection: a best checkpoint whose EMA weights won
# holds them as its params already.
_NOT_VARIABLES = ('step', 'apply_fn', 'params', 'tx', 'opt_state', 'ema')


class ExportError(ValueError):
  """An export cannot be written, or a file is not a usable export."""


def model_variables(state) -> dict:
  """All variables the model is applied with: ``params`` and the rest.

  Any other non-empty mapping field of the train state (``batch_stats`` of a
  BatchNorm model, say) is a variable collection under its field name.
  """
  variables = {'params': state.params}
  for field in dataclasses.fields(state):
    value = getattr(state, field.name)
    if (
      field.name not in _NOT_VARIABLES and isinstance(value, Mapping) and value
    ):
      variables[field.name] = value
  return variables


def serving_function(
  state, flip_tta: bool = False
) -> Callable[[jax.Array], dict]:
  """``images -> {'probabilities', 'logits'}`` with the variables closed over.

  ``images`` is uint8 ``(batch, H, W, C)``; both outputs are float32
  ``(batch, num_classes)``. The model runs in inference mode (no dropout,
  running statistics). ``flip_tta`` (the run's ``config.flip_tta``) averages
  each image's probabilities with its mirror image's, as the run's own
  evaluation did; ``logits`` are then the log of those probabilities.
  """
  variables = model_variables(state)
  apply_fn = state.apply_fn

  def serve(images: jax.Array) -> dict:
    # An export runs where jaxcls is not (TF Serving, GPUs): no custom calls.
    with fastpath.disabled():
      logits = techniques.eval_logits(
        apply_fn, variables, data.normalize(images), flip_tta
      ).astype(jnp.float32)
    return {'probabilities': jax.nn.softmax(logits, axis=-1), 'logits': logits}

  return serve


def export_jax(
  state,
  image_shape: tuple[int, int, int],
  platforms=PLATFORMS,
  flip_tta: bool = False,
) -> jax.export.Exported:
  """The serving function exported for ``platforms``, with a symbolic batch."""
  (batch,) = jax.export.symbolic_shape('batch')
  spec = jax.ShapeDtypeStruct((batch, *image_shape), jnp.uint8)
  return jax.export.export(
    jax.jit(serving_function(state, flip_tta)), platforms=platforms
  )(spec)


def save_saved_model(
  state,
  image_shape: tuple[int, int, int],
  folder: str,
  platforms=PLATFORMS,
  flip_tta: bool = False,
) -> None:
  """Writes the serving function as a TF SavedModel into ``folder``.

  jax2tf's native serialization puts the StableHLO of :func:`export_jax`
  inside an ``XlaCallModule`` op; the loading TensorFlow must support that
  op's serialization version (google/flax #5054). Raises ExportError when
  the installed TensorFlow is too old for the installed JAX.
  """
  import tensorflow as tf  # Lazy: only this format needs TensorFlow.
  from jax.experimental import jax2tf

  height, width, channels = image_shape
  converted = jax2tf.convert(
    serving_function(state, flip_tta),
    polymorphic_shapes=[f'(batch, {height}, {width}, {channels})'],
    native_serialization_platforms=platforms,
    with_gradient=False,
  )
  module = tf.Module()
  module.serve = tf.function(
    converted,
    autograph=False,
    input_signature=[
      tf.TensorSpec((None, *image_shape), tf.uint8, name=INPUT_NAME)
    ],
  )
  try:
    signature = module.serve.get_concrete_function()
  except NotImplementedError as e:  # XlaCallModule version too new for TF.
    raise ExportError(
      f'this TensorFlow {tf.__version__} cannot hold a JAX '
      f'{jax.__version__} export ({str(e).splitlines()[0]}); install the '
      'pair pinned in requirements.txt'
    ) from None
  tf.saved_model.save(module, folder, signatures={SIGNATURE: signature})


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return 'unknown'


def _jaxcls_version() -> str:
  from jaxcls import __version__  # a literal: loads nothing

  return __version__ or _version('jaxcls')


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


def check_outputs(call, serve, image_shape, what: str) -> None:
  """Raises ExportError unless ``call`` gives ``serve``'s outputs.

  Runs a deterministic batch of 3 images (black, white and noise) through
  both: the export is verified before it is reported written.
  """
  rng = np.random.default_rng(0)
  images = np.stack(
    [
      np.zeros(image_shape, np.uint8),
      np.full(image_shape, 255, np.uint8),
      rng.integers(0, 256, image_shape, dtype=np.uint8),
    ]
  )
  expected = jax.device_get(serve(images))
  got = call(images)
  for name in OUTPUT_NAMES:
    if not np.allclose(
      np.asarray(got[name]), expected[name], rtol=_TOLERANCE, atol=_TOLERANCE
    ):
      raise ExportError(
        f"{what}: its {name} differ from the model's; the "
        'installed JAX/TensorFlow pair may be incompatible '
        '(install the versions pinned in requirements.txt)'
      )


def write(
  config,
  state,
  folder: str,
  formats=FORMATS,
  class_names: list[str] | None = None,
  run_results: dict | None = None,
) -> dict:
  """Exports ``state`` (a model of ``config``) into ``folder``.

  The export is built in a temporary sibling folder, verified against the
  model (:func:`check_outputs`) and then moved into place, so ``folder``
  always holds one complete export; formats not asked for are not kept.
  Returns the metadata written to ``export.json``.
  """
  unknown = [f for f in formats if f not in FORMATS]
  if unknown or not formats:
    raise ExportError(
      f'unknown export format {unknown or formats}; choose '
      f'from {", ".join(FORMATS)} or all'
    )
  spec = data.dataset_spec(config)
  image_shape = tuple(spec.image_shape)
  # The run's evaluation: a model validated and tested with flip TTA is
  # served with it, so the export scores what results.json reports.
  flip_tta = bool(config.flip_tta)
  serve = jax.jit(serving_function(state, flip_tta))
  folder = os.path.abspath(folder)
  tmp = f'{folder}.tmp-{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  meta = {
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
      'jaxcls': _jaxcls_version(),
      'jax': jax.__version__,
      'jaxlib': _version('jaxlib'),
      'flax': _version('flax'),
    },
    'files': {},
    'config': config.to_dict(),
  }
  try:
    if 'jax' in formats:
      exported = export_jax(state, image_shape, flip_tta=flip_tta)
      path = os.path.join(tmp, SERVING_FILE)
      serialized = exported.serialize()
      with open(path, 'wb') as f:
        f.write(serialized)
      reloaded = jax.export.deserialize(serialized)
      check_outputs(reloaded.call, serve, image_shape, SERVING_FILE)
      meta['files']['jax'] = {
        'path': SERVING_FILE,
        'sha256': _sha256(path),
        'platforms': list(exported.platforms),
        'calling_convention_version': exported.calling_convention_version,
        'load': 'jax.export.deserialize(open(path, "rb").read()).call(images)',
      }
    if 'saved_model' in formats:
      import tensorflow as tf

      path = os.path.join(tmp, SAVED_MODEL_DIR)
      save_saved_model(state, image_shape, path, flip_tta=flip_tta)
      signature = tf.saved_model.load(path).signatures[SIGNATURE]
      check_outputs(
        lambda x: signature(**{INPUT_NAME: tf.constant(x)}),
        serve,
        image_shape,
        SAVED_MODEL_DIR,
      )
      meta['versions']['tensorflow'] = tf.__version__
      meta['files']['saved_model'] = {
        'path': SAVED_MODEL_DIR,
        'sha256': _sha256(os.path.join(path, 'saved_model.pb')),
        'platforms': list(PLATFORMS),
        'signature': SIGNATURE,
        # A TensorFlow that loads it must run XlaCallModule this new.
        'xla_call_module_version': (
          jax.config.jax_export_calling_convention_version
        ),
        'load': f'tf.saved_model.load(path).signatures["{SIGNATURE}"]'
        f'({INPUT_NAME}=images)',
      }
    if 'onnx' in formats:
      from jaxcls.export import onnx as export_onnx

      alone = set(formats) == {'onnx'}  # Else skipped if not convertible.
      export_onnx.add_to(meta, state, image_shape, tmp, serve, alone)
    with open(os.path.join(tmp, METADATA_FILE), 'w') as f:
      json.dump(meta, f, indent=2)
      f.write('\n')
    _replace_folder(tmp, folder)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return meta


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
  """Exports the best checkpoint of ``workdir`` to ``folder`` (W/export).

  Returns ``(folder, metadata)``. The test accuracy comes from the run's
  ``results.json`` when that scores this very checkpoint.
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
    class_names=inspection.class_names(config),
    run_results=_run_results(workdir, before),
  )
  return folder, meta


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
  if _sha256(checked) != entry.get('sha256'):
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
  import tensorflow as tf

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


def _load_onnx(path: str):
  """``(predict, image_shape)`` of a model.onnx (onnxruntime)."""
  from jaxcls.export import onnx as export_onnx

  return export_onnx.load(path)


_LOADERS = {'jax': _load_jax, 'saved_model': _load_saved_model}


def load(path: str) -> Served:
  """Reads the export at ``path`` (export folder, serving.jax, saved_model
  or model.onnx).

  Raises ExportError, in one line naming the file, for a missing, damaged or
  foreign file.
  """
  fmt, artifact, folder = _find(path)
  meta = _read_metadata(folder, fmt, artifact)
  predict, image_shape = _LOADERS.get(fmt, _load_onnx)(artifact)
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
