"""How the rest of jaxcls reaches its accelerators (:mod:`jaxcls.accel`).

The one place outside ``jaxcls/accel/`` that imports it. Without that
folder (deleted, or a build that leaves it out) every function here still
works, on XLA's own ops: :func:`jit` is ``jax.jit``, the ``*_block`` and
recurrence hooks return None (the caller runs its own XLA function) and
:func:`disabled` does nothing.
"""

import contextlib
import logging
from collections.abc import Callable

import jax

try:
  from jaxcls import accel
except ImportError:  # The accelerators are optional.
  accel = None


def jit(fn: Callable, **jit_kwargs) -> Callable:
  """``jax.jit`` with the accelerators' compiler options and settings.

  See :func:`jaxcls.accel.jit`: a function jitted here follows
  ``JAXCLS_KERNELS`` and :func:`jaxcls.accel.using` call by call.
  """
  if accel is None:
    return jax.jit(fn, **jit_kwargs)
  return accel.jit(fn, **jit_kwargs)


def disabled():
  """Traces inside run on XLA's own ops only (exports, FLOP counts)."""
  return accel.disabled() if accel else contextlib.nullcontext()


def conv_block(x_shape, features: int, dtype, xla_fn, wrt=(0, 1, 2)):
  """A fused conv-ReLU-max-pool module class to use instead, or None."""
  if accel is None:
    return None
  return accel.conv_block(x_shape, features, dtype, xla_fn, wrt)


def lstm_sequence(dtype, hidden_size: int, args, xla_fn):
  """An accelerated ``lstm_sequence`` for ``args``, or None."""
  if accel is None:
    return None
  return accel.lstm_sequence(dtype, hidden_size, args, xla_fn)


def gru_recurrence(dtype, hidden_size: int, args, xla_fn):
  """An accelerated ``gru_recurrence`` for ``args``, or None."""
  if accel is None:
    return None
  return accel.gru_recurrence(dtype, hidden_size, args, xla_fn)


def cpu_model() -> str:
  """``lscpu``'s model name: a speed figure is a property of a CPU."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  import platform

  return platform.processor() or platform.machine()


def path() -> dict:
  """The accelerated paths this process traced (:func:`jaxcls.accel.path`)."""
  if accel is None:
    return {'kernels': 'absent', 'choices': {}}
  return accel.path()


def following(recorded: dict | None):
  """Traces inside take a recorded :func:`path` again (a resumed run).

  One line for each recorded choice that cannot be taken here.
  """
  if not recorded:
    return contextlib.nullcontext()
  if accel is not None:
    return accel.following(recorded)
  choices = recorded.get('choices', {}).values()
  if any(v.get('path') == 'kernel' for v in choices):
    logging.getLogger('jaxcls').warning(
      'jaxcls: this run used jaxcls.accel kernels, which this install lacks; '
      "it continues on XLA's ops, not bit for bit"
    )
  return contextlib.nullcontext()
