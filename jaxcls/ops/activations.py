"""Activation functions, by name, with the standard math.

The tutorial article this project grew from gets three things wrong; jaxcls
implements the textbook definitions, and these docstrings say where:

* tanh: the article divides ``(e^x - e^-x) / (e^x + e^-x)`` once more by
  ``(e^2 - 1)``; that is wrong: ``tanh(x) = (e^x - e^-x) / (e^x + e^-x)``.
* ReLU: the article calls it zero-centred (its outputs are never negative)
  and gives its derivative as ``max(0, x)``, which is ReLU itself. The
  derivative is the step function: ``1`` for ``x > 0``, ``0`` for ``x < 0``
  (JAX uses ``0`` at ``x == 0``).
* softmax: not "multi-label": one distribution over mutually exclusive
  classes. Multi-label problems use an independent sigmoid per class.

All functions are thin aliases of ``jax.nn``, so they stay jittable and fast.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

Activation = Callable[[jax.Array], jax.Array]


def sigmoid(x: jax.Array) -> jax.Array:
  """Logistic sigmoid, ``1 / (1 + exp(-x))``."""
  return jax.nn.sigmoid(x)


def tanh(x: jax.Array) -> jax.Array:
  """Hyperbolic tangent, ``(e^x - e^-x) / (e^x + e^-x)``.

  The article divides this once more by ``(e^2 - 1)``; that is a mistake.
  """
  return jnp.tanh(x)


def relu(x: jax.Array) -> jax.Array:
  """Rectified linear unit, ``max(0, x)``.

  Its derivative is ``1`` where ``x > 0`` and ``0`` elsewhere, not
  ``max(0, x)`` as the article says. See :func:`relu_derivative`.
  """
  return jax.nn.relu(x)


def relu_derivative(x: jax.Array) -> jax.Array:
  """The derivative of :func:`relu`: ``1`` for ``x > 0``, else ``0``."""
  return (x > 0).astype(jnp.result_type(x, jnp.float32))


def leaky_relu(x: jax.Array, negative_slope: float = 0.01) -> jax.Array:
  """``x`` for ``x >= 0``, ``negative_slope * x`` otherwise."""
  return jax.nn.leaky_relu(x, negative_slope)


def elu(x: jax.Array, alpha: float = 1.0) -> jax.Array:
  """``x`` for ``x > 0``, ``alpha * (exp(x) - 1)`` otherwise."""
  return jax.nn.elu(x, alpha)


def softmax(z: jax.Array, axis: int = -1) -> jax.Array:
  """``exp(z_i) / sum_j exp(z_j)``, computed stably (max subtracted first).

  Softmax is for multi-class, single-label outputs: the probabilities of
  mutually exclusive classes sum to 1. The article's "multi-label" is wrong.
  """
  return jax.nn.softmax(z, axis=axis)


ACTIVATIONS: dict[str, Activation] = {
  'relu': relu,
  'sigmoid': sigmoid,
  'tanh': tanh,
  'leaky_relu': leaky_relu,
  'elu': elu,
}


def get_activation(name: str) -> Activation:
  """Returns the activation called ``name`` (one of :data:`ACTIVATIONS`)."""
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(
      f'unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}'
    ) from None
