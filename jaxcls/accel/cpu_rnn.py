"""The LSTM's and GRU's recurrences on the CPU, as kernels of our own (XLA FFI).

Under XLA:CPU the fused scans (:func:`jaxcls.models.fused_rnn.lstm_sequence`,
:func:`jaxcls.models.fused_rnn.gru_recurrence`) are, per time step, a
single-threaded matmul and ~15 small kernels that run one after another.
``jaxcls/csrc/rnn_cpu.cc`` runs all T steps in one call: per step one matmul
and one fused, vectorised pass over the gates, with the batch split into row
blocks that run the whole sequence on XLA's intra-op threads at once.

Same math, parameters and gate layouts (PyTorch's i, f, g, o and r, z, n):
the tests compare values and every gradient with the fused scans, and check
that a row's result does not depend on how the batch was split. The bits are
not the fused scans' (another order of float sums, another exp): a run does
not repeat bit for bit with ``JAXCLS_KERNELS=off``. :func:`why_not` says where
they cannot run; where they can, :mod:`jaxcls.accel.choice` decides.
"""

import ctypes

import jax
import jax.numpy as jnp

from jaxcls.accel import build

_TARGETS = (
  'jaxcls_lstm_forward',
  'jaxcls_lstm_backward',
  'jaxcls_gru_forward',
  'jaxcls_gru_backward',
)
_state: dict = {'tried': False, 'library': None, 'error': None}


def _load() -> ctypes.CDLL | None:
  """Builds, loads and registers the kernels once per process."""
  return build.load(
    _state,
    'rnn_cpu',
    _TARGETS,
    'the CPU LSTM/GRU kernels are',
    'those layers run on the fused scans',
  )


def available() -> bool:
  """Whether the kernels are built and registered (builds on first call)."""
  return _load() is not None


def unavailable_reason() -> str | None:
  """Why :func:`available` is False (None if it is True or was not asked)."""
  return _state['error']


def why_not(dtype, hidden_size: int) -> str | None:
  """Why an LSTM or GRU layer cannot run on these kernels, or None."""
  if jax.default_backend() != 'cpu':
    return f'the backend is {jax.default_backend()}'
  if jnp.dtype(dtype) != jnp.float32:
    return f'{jnp.dtype(dtype).name} compute'
  if hidden_size % 16:
    return f'hidden size {hidden_size} (needs a multiple of 16)'
  if not available():
    return unavailable_reason()
  return None


def _require() -> None:
  """Builds and registers the kernels (at trace time) or says why not."""
  if _load() is None:
    raise RuntimeError(
      f'the CPU LSTM/GRU kernels are unavailable: {_state["error"]}'
    )


def _f32(shape) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def _forward(xs, w_i, w_h, b, carry):
  _require()
  c0, h0 = carry
  steps, batch, features = xs.shape
  hidden, gates = w_h.shape
  # The input projection stays in XLA: one big matmul before the loop.
  gates_x = (xs.reshape(-1, features) @ w_i + b).reshape(steps, batch, gates)
  hs, cs, acts = jax.ffi.ffi_call(
    'jaxcls_lstm_forward',
    (
      _f32((steps, batch, hidden)),
      _f32((steps, batch, hidden)),
      _f32((steps, batch, gates)),
    ),
    vmap_method='sequential',
  )(gates_x, w_h, c0, h0)
  return (hs, (cs[-1], hs[-1])), (xs, w_i, w_h, carry, hs, cs, acts)


def _backward(residuals, cotangents):
  xs, w_i, w_h, (c0, h0), hs, cs, acts = residuals
  d_hs, (d_c, d_h) = cotangents
  d_gates, d_c0, d_h0 = jax.ffi.ffi_call(
    'jaxcls_lstm_backward',
    (_f32(acts.shape), _f32(c0.shape), _f32(h0.shape)),
    vmap_method='sequential',
  )(acts, cs, c0, w_h, d_hs, d_c, d_h)
  # As in the fused scan: each weight gradient is one (T*B)-deep matmul.
  flat = d_gates.reshape(-1, d_gates.shape[-1])
  h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
  d_w_i = xs.reshape(-1, xs.shape[-1]).T @ flat
  d_w_h = h_prev.reshape(-1, w_h.shape[0]).T @ flat
  d_xs = (flat @ w_i.T).reshape(xs.shape).astype(xs.dtype)
  return d_xs, d_w_i, d_w_h, flat.sum(0), (d_c0, d_h0)


@jax.custom_vjp
def lstm_sequence(xs, w_i, w_h, b, carry):
  """:func:`jaxcls.models.fused_rnn.lstm_sequence` (float32) on the CPU kernel.

  ``xs`` ``(T, B, D)``, ``w_i`` ``(D, 4H)``, ``w_h`` ``(H, 4H)``, ``b``
  ``(4H,)``, ``carry`` ``(c, h)`` each ``(B, H)``; returns ``(hs (T, B, H),
  (c, h))``. Builds the kernels on first use; RuntimeError if they cannot
  be (:func:`why_not` is the check that falls back instead).
  """
  return _forward(xs, w_i, w_h, b, carry)[0]


lstm_sequence.defvjp(_forward, _backward)


def _gru_forward(projected, w_h, b_h, h0):
  _require()
  steps, batch, gates = projected.shape
  hidden = w_h.shape[0]
  hs, acts = jax.ffi.ffi_call(
    'jaxcls_gru_forward',
    (_f32((steps, batch, hidden)), _f32((steps, batch, 4 * hidden))),
    vmap_method='sequential',
  )(projected, w_h, b_h, h0)
  return (hs, hs[-1]), (w_h, h0, hs, acts)


def _gru_backward(residuals, cotangents):
  w_h, h0, hs, acts = residuals
  d_hs, d_h = cotangents
  gates = w_h.shape[1]
  per_step = _f32((*hs.shape[:2], gates))
  d_projected, d_hidden, d_h0 = jax.ffi.ffi_call(
    'jaxcls_gru_backward',
    (per_step, per_step, _f32(h0.shape)),
    vmap_method='sequential',
  )(acts, hs, h0, w_h, d_hs, d_h)
  # As in the fused scan: the weight gradient is one (T*B)-deep matmul.
  flat = d_hidden.reshape(-1, gates)
  h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
  d_w_h = h_prev.reshape(-1, w_h.shape[0]).T @ flat
  return d_projected, d_w_h, flat.sum(0), d_h0


@jax.custom_vjp
def gru_recurrence(projected, w_h, b_h, h0):
  """:func:`jaxcls.models.fused_rnn.gru_recurrence` (float32) on the CPU kernel.

  ``projected`` ``(T, B, 3H)`` is ``x_t @ W_i + b_i`` (gates r, z, n),
  ``w_h`` ``(H, 3H)``, ``b_h`` ``(3H,)``, ``h0`` ``(B, H)``; returns ``(hs
  (T, B, H), h)``. Builds the kernels on first use; RuntimeError if they
  cannot be (:func:`why_not` is the check that falls back instead).
  """
  return _gru_forward(projected, w_h, b_h, h0)[0]


gru_recurrence.defvjp(_gru_forward, _gru_backward)
