"""Activations against the textbook formulas, computed in numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcls.ops import activations

X = np.linspace(-6, 6, 101).astype(np.float32)


def test_tanh_is_the_textbook_formula_not_the_articles():
  textbook = (np.exp(X) - np.exp(-X)) / (np.exp(X) + np.exp(-X))
  np.testing.assert_allclose(activations.tanh(X), textbook, atol=1e-6)
  articles = textbook / (np.e**2 - 1)
  assert not np.allclose(activations.tanh(X), articles, atol=1e-3)


def test_relu_derivative_is_a_step_not_max0x():
  grad = jax.vmap(jax.grad(activations.relu))(X)
  np.testing.assert_array_equal(grad, (X > 0).astype(np.float32))
  np.testing.assert_array_equal(activations.relu_derivative(X), grad)
  assert not np.allclose(grad, np.maximum(0, X))  # the article's claim


def test_sigmoid_and_softmax():
  np.testing.assert_allclose(
    activations.sigmoid(X), 1 / (1 + np.exp(-X)), rtol=1e-6
  )
  z = np.random.default_rng(0).normal(size=(4, 10)).astype(np.float32) * 30
  ref = np.exp(z - z.max(-1, keepdims=True))
  ref /= ref.sum(-1, keepdims=True)
  out = activations.softmax(z)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-6)


def test_leaky_relu_and_elu():
  np.testing.assert_allclose(
    activations.leaky_relu(X), np.where(X >= 0, X, 0.01 * X), rtol=1e-6
  )
  np.testing.assert_allclose(
    activations.elu(X), np.where(X > 0, X, np.expm1(X)), rtol=1e-5, atol=1e-6
  )


def test_unknown_activation_names_the_choices():
  with pytest.raises(ValueError, match='choose one of'):
    activations.get_activation('swish2')


def test_activations_jit():
  for fn in activations.ACTIVATIONS.values():
    np.testing.assert_allclose(jax.jit(fn)(X), fn(jnp.asarray(X)), rtol=1e-6)
