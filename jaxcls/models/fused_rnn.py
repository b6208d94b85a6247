"""Fused LSTM and GRU sequence kernels with hand-written backward passes.

Autodiff of a scan accumulates each weight gradient inside the backward loop:
one small ``(H x B) @ (B x G*H)`` matmul and an add per time step. These
kernels keep the gate activations from the forward scan, run only the
recurrence backwards (the gate gradients and ``dh @ W_h^T``), and form each
weight gradient after the loop as one ``(T*B)``-deep matmul.

The math is the cells' own (:mod:`jaxcls.models.rnn_cells`;
tests/test_recurrent.py checks values and gradients against the step path);
only the order of the float sums differs. Everything is time-major,
``(T, B, F)``; gate math and the carried state are float32, only the matmuls
use ``dtype``. Gate layouts are PyTorch's: i, f, g, o and r, z, n.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp

Carry = Any  # h (B, H) for RNN and GRU; (c, h) for LSTM.


def _dot(a: jax.Array, b: jax.Array, dtype) -> jax.Array:
  """``a @ b`` in ``dtype`` (the matmul dtype), returned as float32."""
  return jnp.dot(a.astype(dtype), b.astype(dtype)).astype(jnp.float32)


def _shifted_back(first: jax.Array, stacked: jax.Array) -> jax.Array:
  """``[first, stacked[0], ..., stacked[T-2]]``: the state before each step."""
  return jnp.concatenate([first[None], stacked[:-1]], axis=0)


def _hidden_weight_grad(h0, hs, d_hidden, dtype) -> jax.Array:
  """``dW_h``: every step's previous ``h`` against its gate gradients.

  ``d_hidden`` is ``(T*B, G*H)``; one ``(T*B)``-deep matmul for all steps.
  """
  h_prev = _shifted_back(h0, hs).reshape(-1, h0.shape[-1])
  return _dot(h_prev.T, d_hidden, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def lstm_sequence(
  dtype,
  xs: jax.Array,
  w_i: jax.Array,
  w_h: jax.Array,
  b: jax.Array,
  carry: Carry,
) -> tuple[jax.Array, Carry]:
  """An LSTM layer over ``xs``, forward and backward fused.

  Args:
    dtype: the matmul dtype (static).
    xs: the inputs, ``(T, B, D)``.
    w_i: the input kernel, ``(D, 4H)``, gates i, f, g, o.
    w_h: the hidden kernel, ``(H, 4H)``.
    b: the bias, ``(4H,)``.
    carry: the initial ``(c, h)``, each ``(B, H)`` float32.

  Returns:
    ``(hs, (c, h))``: every step's ``h`` ``(T, B, H)`` and the last state.
  """
  return _lstm_forward(dtype, xs, w_i, w_h, b, carry)[0]


def _lstm_step(w, b, dtype, carry, x):
  """``((c, h), x_t) -> ((c, h), (h, c, [i, f, g, o] activated))``."""
  c, h = carry
  # One matmul of [x_t, h] with the stacked [W_i; W_h] per step: on XLA:CPU
  # that beats projecting every input ahead of the scan, since the
  # (T, B, 4H) projected array no longer streams through memory.
  gates = _dot(jnp.concatenate([x.astype(h.dtype), h], -1), w, dtype) + b
  i, f, g, o = jnp.split(gates, 4, axis=-1)
  i, f, g, o = (
    jax.nn.sigmoid(i),
    jax.nn.sigmoid(f),
    jnp.tanh(g),
    jax.nn.sigmoid(o),
  )
  c = f * c + i * g
  h = o * jnp.tanh(c)
  return (c, h), (h, c, jnp.concatenate([i, f, g, o], -1))


def _lstm_forward(dtype, xs, w_i, w_h, b, carry):
  w = jnp.concatenate([w_i, w_h], axis=0)
  step = functools.partial(_lstm_step, w, b, dtype)
  last, (hs, cs, acts) = jax.lax.scan(step, carry, xs)
  return (hs, last), (xs, w_i, w_h, carry, hs, cs, acts)


def _lstm_step_backward(w_h_t, dtype, carry, inputs):
  """``((dc, dh), step's residuals) -> ((dc, dh) before it, d_gates)``."""
  d_c, d_h = carry
  d_h_out, a, c_prev, c = inputs
  d_h = d_h + d_h_out
  i, f, g, o = jnp.split(a, 4, axis=-1)
  tanh_c = jnp.tanh(c)
  d_c = d_c + d_h * o * (1.0 - tanh_c * tanh_c)
  d_gates = jnp.concatenate(
    [
      d_c * g * i * (1.0 - i),
      d_c * c_prev * f * (1.0 - f),
      d_c * i * (1.0 - g * g),
      d_h * tanh_c * o * (1.0 - o),
    ],
    -1,
  )
  return (d_c * f, _dot(d_gates, w_h_t, dtype)), d_gates


def _lstm_backward(dtype, residuals, cotangents):
  xs, w_i, w_h, (c0, h0), hs, cs, acts = residuals
  d_hs, (d_c, d_h) = cotangents
  step = functools.partial(_lstm_step_backward, w_h.T, dtype)
  (d_c0, d_h0), d_gates = jax.lax.scan(
    step, (d_c, d_h), (d_hs, acts, _shifted_back(c0, cs), cs), reverse=True
  )
  # The weight gradients after the loop, one (T*B)-deep matmul each.
  flat = d_gates.reshape(-1, d_gates.shape[-1])
  d_w_i = _dot(xs.reshape(-1, xs.shape[-1]).T, flat, dtype)
  d_w_h = _hidden_weight_grad(h0, hs, flat, dtype)
  d_xs = _dot(flat, w_i.T, dtype).reshape(xs.shape).astype(xs.dtype)
  return d_xs, d_w_i, d_w_h, flat.sum(0), (d_c0, d_h0)


lstm_sequence.defvjp(
  lambda dtype, *args: _lstm_forward(dtype, *args), _lstm_backward
)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def gru_recurrence(
  dtype, projected: jax.Array, w_h: jax.Array, b_h: jax.Array, h: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """A GRU layer's recurrence over inputs projected beforehand, fused.

  Args:
    dtype: the matmul dtype (static).
    projected: ``x_t @ W_i + b_i`` for every step, ``(T, B, 3H)`` float32,
      gates r, z, n.
    w_h: the hidden kernel, ``(H, 3H)``.
    b_h: the hidden bias, ``(3H,)``.
    h: the initial state, ``(B, H)`` float32.

  Returns:
    ``(hs, h)``: every step's ``h`` ``(T, B, H)`` and the last one.
  """
  return _gru_forward(dtype, projected, w_h, b_h, h)[0]


def _gru_step(w_h, b_h, dtype, h, x):
  """``(h, projected x_t) -> (h, (h, [r, z, n, W_hn h + b_hn]))``."""
  x_r, x_z, x_n = jnp.split(x, 3, axis=-1)
  h_r, h_z, h_n = jnp.split(_dot(h, w_h, dtype) + b_h, 3, axis=-1)
  r = jax.nn.sigmoid(x_r + h_r)
  z = jax.nn.sigmoid(x_z + h_z)
  n = jnp.tanh(x_n + r * h_n)
  h = (1.0 - z) * n + z * h
  return h, (h, jnp.concatenate([r, z, n, h_n], -1))


def _gru_forward(dtype, projected, w_h, b_h, h0):
  step = functools.partial(_gru_step, w_h, b_h, dtype)
  last, (hs, acts) = jax.lax.scan(step, h0, projected)
  return (hs, last), (w_h, h0, hs, acts)


def _gru_step_backward(w_h_t, dtype, d_h, inputs):
  """``(dh, step's residuals) -> (dh before it, (d_projected, d_hidden))``."""
  d_h_out, a, h_prev = inputs
  d_h = d_h + d_h_out
  r, z, n, h_n = jnp.split(a, 4, axis=-1)
  d_n = d_h * (1.0 - z) * (1.0 - n * n)
  d_r = d_n * h_n * r * (1.0 - r)
  d_z = d_h * (h_prev - n) * z * (1.0 - z)
  d_x = jnp.concatenate([d_r, d_z, d_n], -1)
  d_hidden = jnp.concatenate([d_r, d_z, d_n * r], -1)
  return d_h * z + _dot(d_hidden, w_h_t, dtype), (d_x, d_hidden)


def _gru_backward(dtype, residuals, cotangents):
  w_h, h0, hs, acts = residuals
  d_hs, d_h = cotangents
  step = functools.partial(_gru_step_backward, w_h.T, dtype)
  d_h0, (d_projected, d_hidden) = jax.lax.scan(
    step, d_h, (d_hs, acts, _shifted_back(h0, hs)), reverse=True
  )
  flat = d_hidden.reshape(-1, d_hidden.shape[-1])
  d_w_h = _hidden_weight_grad(h0, hs, flat, dtype)
  return d_projected, d_w_h, flat.sum(0), d_h0


gru_recurrence.defvjp(
  lambda dtype, *args: _gru_forward(dtype, *args), _gru_backward
)
