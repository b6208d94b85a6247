"""The ONNX format of an export (``model.onnx``), and reading it back.

jax2onnx converts a serving function (:mod:`jaxcls.export.serving`; a
sequence run's, :mod:`jaxcls.export.sequence`) to ONNX operators of opset
:data:`OPSET`, every variable baked in as an initializer: input uint8
``images`` ``(batch, H, W, C)`` (or ``ids``/``features`` and ``lengths``)
with a symbolic ``batch``, outputs ``probabilities`` and ``logits``, float32
``(batch, num_classes)``. onnxruntime alone runs it. (tf2onnx cannot convert
the SavedModel's ``XlaCallModule`` op.) Some models do not convert (with
jax2onnx 0.12.5: the plain ``rnn`` cell, image or sequence model, whose
step scan loses the symbolic batch; a run with ``flip_tta``, whose
``jnp.split`` needs a concrete batch). Then :func:`record` raises
ExportError in one line when ONNX is the only format asked for, and
otherwise records that line in ``export.json``'s ``skipped``.
"""

import contextlib
import importlib
import io
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.export import serving
from jaxcls.export.common import (
  INPUT_NAME,
  ONNX_FILE,
  OUTPUT_NAMES,
  ExportError,
  input_kind,
  sha256,
  version,
)

OPSET = 21  # onnxruntime >= 1.20 runs it
# The versions measured together with requirements.txt's pins.
INSTALL = 'pip install jax2onnx==0.12.5 onnx==1.23.2 onnxruntime==1.32.0'
_INSTEAD = 'export --format=jax or --format=saved_model instead'


@contextlib.contextmanager
def _quiet():
  """Hides jax2onnx's noise: debug prints, and logged tracebacks of plugins
  it skips (for libraries newer or older than it expects)."""
  logger = logging.getLogger('jax2onnx')
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    logger.setLevel(level)


def _reason(e: Exception) -> str:
  """``Type: first line`` of an exception, at most 200 characters."""
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0] if text else ""}'[:200]


def require(module: str):
  """``module`` imported, or ExportError saying what to install."""
  try:
    with _quiet():
      return importlib.import_module(module)
  except ImportError as e:
    raise ExportError(
      f'the ONNX format needs {module}, which does not import ({_reason(e)})'
      f'; {INSTALL}; {_INSTEAD}'
    ) from None


def to_onnx(fn, specs, input_names, what: str) -> bytes:
  """``fn`` (arrays -> a dict of OUTPUT_NAMES) as a serialized ONNX model.

  Args:
    fn: the serving function.
    specs: a ``jax.ShapeDtypeStruct`` per argument, batch named ``'batch'``.
    input_names: the ONNX names of the arguments.
    what: the model's name in the error message.

  Raises:
    ExportError: in one line naming ``what``, when jax2onnx cannot convert it.
  """
  jax2onnx = require('jax2onnx')

  def outputs(*args):  # A tuple: ONNX outputs in OUTPUT_NAMES order.
    out = fn(*args)
    return tuple(out[name] for name in OUTPUT_NAMES)

  try:
    with _quiet():
      model = jax2onnx.to_onnx(
        outputs,
        list(specs),
        model_name='jaxcls',
        opset=OPSET,
        input_names=list(input_names),
        output_names=list(OUTPUT_NAMES),
      )
  except Exception as e:  # An unsupported primitive: any exception type.
    raise ExportError(
      f'{ONNX_FILE}: jax2onnx {version("jax2onnx")} cannot convert '
      f'{what} ({_reason(e)}); {_INSTEAD}'
    ) from None
  # Optional shape notes on intermediate values, which jax2onnx may get
  # wrong (NCHW for NHWC): onnx's checker refuses them, onnxruntime warns.
  del model.graph.value_info[:]
  return model.SerializeToString()


def convert(
  state, image_shape, flip_tta: bool = False, what: str = 'this model'
) -> bytes:
  """The serving function of ``state`` as a serialized ONNX model.

  Args:
    state: the train state to serve.
    image_shape: ``(H, W, C)`` of one image.
    flip_tta: as in :func:`~jaxcls.export.serving.serving_function`.
    what: the model's name in the error message.

  Returns:
    The bytes of the ONNX ``ModelProto`` (see :func:`to_onnx`).
  """
  require('jax2onnx')
  serve = serving.serving_function(state, flip_tta)
  spec = jax.ShapeDtypeStruct(('batch', *image_shape), jnp.uint8)
  return to_onnx(serve, [spec], [INPUT_NAME], what)


def _session(path: str, providers=None):
  """An onnxruntime session of ``path``, its log kept to errors."""
  ort = require('onnxruntime')
  options = ort.SessionOptions()
  options.log_severity_level = 3
  return ort.InferenceSession(
    path, options, providers=providers or ort.get_available_providers()
  )


def _check(path: str, check) -> None:
  """Raises ExportError unless onnxruntime runs ``path`` as the model:
  ``check(call)`` compares ``call(*arrays) -> outputs`` with it."""
  names = list(OUTPUT_NAMES)
  try:
    session = _session(path, ['CPUExecutionProvider'])
    inputs = [i.name for i in session.get_inputs()]
    check(
      lambda *xs: dict(zip(names, session.run(names, dict(zip(inputs, xs)))))
    )
  except ExportError:
    raise ExportError(
      f'{ONNX_FILE}: onnxruntime gives other outputs than the model '
      f'(jax2onnx {version("jax2onnx")} mis-converted it); {_INSTEAD}'
    ) from None
  except Exception as e:  # onnxruntime's own error types.
    raise ExportError(
      f'{ONNX_FILE}: onnxruntime cannot run what jax2onnx '
      f'{version("jax2onnx")} wrote ({_reason(e)}); {_INSTEAD}'
    ) from None


def save(model: bytes, folder: str, check, feed: str) -> dict:
  """Writes ``model`` as ``folder/model.onnx``, checked by ``check`` (as
  :func:`_check` calls it; a file that fails is removed). ``feed`` is the
  ``run`` argument the entry's ``load`` line shows. Returns that entry."""
  path = os.path.join(folder, ONNX_FILE)
  with open(path, 'wb') as f:
    f.write(model)
  try:
    _check(path, check)
  except ExportError:
    os.remove(path)  # Skipped: the folder must not hold a bad file.
    raise
  return {
    'path': ONNX_FILE,
    'sha256': sha256(path),
    'opset': OPSET,
    'load': f'onnxruntime.InferenceSession(path).run(None, {feed}) -> '
    f'[{", ".join(OUTPUT_NAMES)}]',
  }


def write(
  state, image_shape, folder: str, serve, flip_tta=False, what='this model'
) -> dict:
  """Writes ``folder/model.onnx``, checked against ``serve`` on the CPU.

  Args:
    state: the train state to serve.
    image_shape: ``(H, W, C)`` of one image.
    folder: the folder the file is written into.
    serve: the serving function the file is checked against.
    flip_tta, what: as for :func:`convert`.

  Returns:
    Its entry of ``export.json``'s ``files``.

  Raises:
    ExportError: it cannot be converted, or runs otherwise than ``serve``.
  """
  require('onnxruntime')  # Before the conversion's seconds are spent.
  model = convert(state, image_shape, flip_tta, what)
  return save(
    model,
    folder,
    lambda call: serving.check_outputs(call, serve, image_shape, ONNX_FILE),
    f'{{"{INPUT_NAME}": images}}',
  )


def record(meta: dict, write_file, alone: bool) -> None:
  """``meta['files']['onnx'] = write_file()`` and the versions, or (when
  that raises ExportError and ``alone`` is false) its one-line reason as
  ``meta['skipped']['onnx']``; when ``alone``, the error is raised."""
  try:
    meta['files']['onnx'] = write_file()
  except ExportError as e:
    if alone:
      raise
    reason = str(e).removesuffix(f'; {_INSTEAD}')
    meta.setdefault('skipped', {})['onnx'] = (
      f'{reason}; {ONNX_FILE} not written, the other formats are'
    )
    return
  for package in ('jax2onnx', 'onnx', 'onnxruntime'):
    meta['versions'][package] = version(package)


def add_to(meta: dict, state, image_shape, folder, serve, alone: bool):
  """Writes model.onnx into ``folder`` and describes it in ``meta``.

  Args:
    meta: ``export.json`` being written; gets the file's entry and versions,
      or the one-line reason it was skipped as ``meta['skipped']['onnx']``.
    state: the train state to serve.
    image_shape: ``(H, W, C)`` of one image.
    folder: the folder the file is written into.
    serve: the serving function the file is checked against.
    alone: whether ONNX is the only format asked for.

  Raises:
    ExportError: it cannot be written and ``alone`` is true (else the other
      formats are still written).
  """
  what = f'the {meta["model"]} model' + (
    ' with flip_tta' if meta['flip_tta'] else ''
  )
  flip_tta = meta['flip_tta']
  record(
    meta,
    lambda: write(state, image_shape, folder, serve, flip_tta, what),
    alone,
  )


def _dtype(onnx_type: str) -> str:
  """The numpy name of an onnxruntime input type: ``tensor(float)`` is
  ``float32``; ``tensor(uint8)``, ``uint8``."""
  name = onnx_type.removeprefix('tensor(').removesuffix(')')
  return {'float': 'float32', 'double': 'float64'}.get(name, name)


def load(path: str):
  """Reads a model.onnx back, run by onnxruntime.

  Args:
    path: the model.onnx file.

  Returns:
    ``(predict, shape)``: images (or ids or features, and lengths) ->
    probabilities, and the shape of one input: ``(H, W, C)``, or
    ``(max_len,)`` / ``(max_len, C)``.

  Raises:
    ExportError: onnxruntime cannot read it, or it is no jaxcls export.
  """
  try:
    session = _session(path)
  except ExportError:
    raise
  except Exception as e:  # onnxruntime raises its own types.
    raise ExportError(
      f'{path}: not a readable ONNX model ({_reason(e)}); export again '
      'with python -m experiments.export --format=onnx'
    ) from None
  inputs = session.get_inputs()
  dtypes = [_dtype(i.type) for i in inputs]
  kind = input_kind([(d, i.shape) for d, i in zip(dtypes, inputs)])
  if kind is None or 'probabilities' not in [
    o.name for o in session.get_outputs()
  ]:
    raise ExportError(
      f'{path}: not a jaxcls serving export (it takes '
      f'{[(i.type, i.shape) for i in inputs]}, not one uint8 image batch '
      'nor ids or features with lengths -> probabilities)'
    )
  names = [i.name for i in inputs]

  def predict(*arrays: np.ndarray) -> np.ndarray:
    if len(arrays) != len(names):
      raise TypeError(f'{path} takes {len(names)} arrays: {", ".join(names)}')
    feed = {
      n: np.ascontiguousarray(a, d) for n, a, d in zip(names, arrays, dtypes)
    }
    return session.run(['probabilities'], feed)[0]

  return predict, tuple(inputs[0].shape[1:])
