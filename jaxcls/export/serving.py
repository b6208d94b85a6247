"""The serving function every format is made from, and the check of each.

It takes a batch of raw uint8 images ``(batch, H, W, C)`` (any batch size)
and returns ``{'probabilities': (batch, num_classes), 'logits': (batch,
num_classes)}``, both float32. Normalisation happens inside it, and every
model variable (``params`` and any other collection the train state carries,
such as BatchNorm's ``batch_stats``) is baked in as a constant, so an
artifact needs no jaxcls code and no checkpoint. :func:`check_outputs` runs
a written artifact against it before the export is reported written.
"""

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls import data
from jaxcls.export.common import OUTPUT_NAMES, PLATFORMS, SIGNATURE, ExportError
from jaxcls.ops import fastpath, techniques

# What the export checks against the model before it reports success: a
# float32 result may differ by rounding between XLA compilations.
_TOLERANCE = 1e-5

# TrainState fields that are not model variables. ``ema`` is a moving average
# of the variables, not a collection: a best checkpoint whose EMA weights won
# holds them as its params already.
_NOT_VARIABLES = ('step', 'apply_fn', 'params', 'tx', 'opt_state', 'ema')


def model_variables(state) -> dict:
  """All variables the model is applied with: ``params`` and the rest.

  Any other non-empty mapping field of the train state (``batch_stats`` of a
  BatchNorm model, say) is a variable collection under its field name.

  Args:
    state: a train state (or any dataclass with ``params``).

  Returns:
    ``{'params': ..., collection: ...}``, as ``apply_fn`` takes them.
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

  The model runs in inference mode (no dropout, running statistics).

  Args:
    state: the train state whose ``apply_fn`` and variables are served.
    flip_tta: the run's ``config.flip_tta``: average each image's
      probabilities with its mirror image's, as the run's own evaluation
      did; ``logits`` are then the log of those probabilities.

  Returns:
    A function of uint8 ``(batch, H, W, C)`` images giving both outputs as
    float32 ``(batch, num_classes)``.
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
  """The serving function exported for ``platforms``, with a symbolic batch.

  Args:
    state: the train state to serve.
    image_shape: ``(H, W, C)`` of one image.
    platforms: the platforms the StableHLO is lowered for.
    flip_tta: as in :func:`serving_function`.

  Returns:
    The ``jax.export.Exported`` of the jitted serving function.
  """
  (batch,) = jax.export.symbolic_shape('batch')
  spec = jax.ShapeDtypeStruct((batch, *image_shape), jnp.uint8)
  return jax.export.export(
    jax.jit(serving_function(state, flip_tta)), platforms=platforms
  )(spec)


def save_tf_module(converted, input_signature, folder: str) -> None:
  """Writes ``converted`` (a jax2tf function) as a SavedModel whose
  ``serving_default`` signature takes ``input_signature`` (TensorSpecs).

  jax2tf puts the StableHLO in an ``XlaCallModule`` op, whose serialization
  version the loading TensorFlow must support (google/flax #5054): an older
  one raises ExportError in one line.
  """
  import tensorflow as tf  # Lazy: only this format needs TensorFlow.

  module = tf.Module()
  module.serve = tf.function(
    converted, autograph=False, input_signature=list(input_signature)
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


def check_outputs(call, serve, image_shape, what: str) -> None:
  """Raises ExportError unless ``call`` gives ``serve``'s outputs.

  Runs a deterministic batch of 3 images (black, white and noise) through
  both: the export is verified before it is reported written.

  Args:
    call: the artifact read back: images -> a mapping of the outputs.
    serve: the serving function (the model's own outputs).
    image_shape: ``(H, W, C)`` of one image.
    what: the artifact's name, for the error message.

  Raises:
    ExportError: an output differs beyond rounding.
  """
  rng = np.random.default_rng(0)
  images = np.stack(
    [
      np.zeros(image_shape, np.uint8),
      np.full(image_shape, 255, np.uint8),
      rng.integers(0, 256, image_shape, dtype=np.uint8),
    ]
  )
  compare_outputs(call(images), serve(images), what)


def compare_outputs(got, expected, what: str) -> None:
  """Raises ExportError unless the mapping ``got`` holds ``expected``'s
  outputs (each of OUTPUT_NAMES) to within rounding."""
  expected = jax.device_get(expected)
  for name in OUTPUT_NAMES:
    if not np.allclose(
      np.asarray(got[name]), expected[name], rtol=_TOLERANCE, atol=_TOLERANCE
    ):
      raise ExportError(
        f"{what}: its {name} differ from the model's; the "
        'installed JAX/TensorFlow pair may be incompatible '
        '(install the versions pinned in requirements.txt)'
      )
