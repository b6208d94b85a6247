"""The LSTM layer on cuDNN, through ``jax.experimental.rnn``, on NVIDIA GPUs.

cuDNN's LSTM is PyTorch's: gates i, f, g, o, weights ``W_ih (4H, D)`` and
``W_hh (4H, H)`` and two biases. :class:`jaxcls.models.rnn_cells.LSTMCell`
keeps that gate order with the kernels transposed and one bias, so moving to
cuDNN repacks the parameters (:func:`pack_weights`) without changing the
math; autodiff runs through the packing, so the gradients land on jaxcls's
own parameters and checkpoints are the same on every backend.

:func:`use_cudnn` decides; elsewhere the fused scan
(:func:`jaxcls.models.fused_rnn.lstm_sequence`) runs. Off by default: the
article's small LSTM trains slower on cuDNN than on the fused scan; turn it
on (``jaxcls.accel.configure(cudnn_lstm=True)``) for longer sequences or
wider layers. cuDNN may use TF32 on Ampere and newer GPUs, as XLA's float32
matmuls do; ``jax.default_matmul_precision('highest')`` turns it off for both.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import rnn
from jax.interpreters import mlir
from jaxlib.mlir import ir


def _row_major(types) -> ir.ArrayAttr:
  """Row-major layouts (minor-to-major ``rank-1, ..., 0``) for ``types``."""
  return ir.ArrayAttr.get(
    [
      ir.DenseIntElementsAttr.get(
        np.arange(ir.RankedTensorType(t).rank - 1, -1, -1, dtype=np.int64),
        type=ir.IndexType.get(),
      )
      for t in types
    ]
  )


def _with_row_major_layouts(lowering):
  """``lowering`` with row-major layouts pinned on the custom call it emits."""

  def lower(ctx, *args, **params):
    results = lowering(ctx, *args, **params)
    call = results[0].owner
    call = getattr(call, 'operation', call)  # An OpView or an Operation.
    call.attributes['operand_layouts'] = _row_major(
      [v.type for v in call.operands]
    )
    call.attributes['result_layouts'] = _row_major(
      [v.type for v in call.results]
    )
    return results

  return lower


# jaxlib emits cuDNN's RNN custom call without operand or result layouts, so
# XLA may lay a buffer out in another order (e.g. turn a transpose that feeds
# the call into a relabelling of the same memory), while cuDNN reads and
# writes row-major memory: the results were then wrong. Hence jaxlib's
# lowerings, re-registered with row-major layouts pinned on the call.
_gpu_rnn = getattr(rnn, 'gpu_rnn', None)
if _gpu_rnn is not None and hasattr(_gpu_rnn, 'cudnn_rnn_bwd_lowering'):
  mlir.register_lowering(
    rnn.rnn_fwd_p,
    _with_row_major_layouts(_gpu_rnn.cudnn_rnn_lowering),
    platform='cuda',
  )
  mlir.register_lowering(
    rnn.rnn_bwd_p,
    _with_row_major_layouts(_gpu_rnn.cudnn_rnn_bwd_lowering),
    platform='cuda',
  )


def use_cudnn(dtype, enabled: bool) -> bool:
  """Whether :class:`LSTMCell` layers in ``dtype`` run on cuDNN here.

  Only when ``enabled`` (``cudnn_lstm`` in :func:`jaxcls.accel.settings`),
  the default backend is a GPU and the matmul dtype is float32 (cuDNN's RNN
  in ``jax.experimental.rnn`` has no bfloat16 path).
  """
  return (
    enabled
    and jnp.dtype(dtype) == jnp.float32
    and jax.default_backend() == 'gpu'
    and _gpu_rnn is not None
  )


def pack_weights(w_i: jax.Array, w_h: jax.Array, b: jax.Array) -> jax.Array:
  """jaxcls's LSTM parameters as cuDNN's flat weight vector (one layer).

  ``w_i (D, 4H)``, ``w_h (H, 4H)``, ``b (4H,)`` become
  ``[W_ih.ravel(), W_hh.ravel(), b_ih, b_hh]`` with ``W_ih = w_i.T``,
  ``W_hh = w_h.T``, ``b_ih = b`` and ``b_hh = 0``: the layout of
  ``jax.experimental.rnn.unpack_lstm_weights``.
  """
  return jnp.concatenate(
    [w_i.T.ravel(), w_h.T.ravel(), b, jnp.zeros_like(b)]
  ).astype(jnp.float32)


def lstm_sequence(xs, w_i, w_h, b, carry):
  """:func:`jaxcls.models.fused_rnn.lstm_sequence` (float32) on cuDNN.

  ``xs (T, B, D)`` time-major, ``carry = (c, h)``; returns
  ``(hs (T, B, H), (c, h))``. Differentiable in every argument.
  """
  c0, h0 = carry
  steps, batch, features = xs.shape
  hidden = w_h.shape[0]
  ys, h_n, c_n = rnn.lstm(
    jnp.swapaxes(xs, 0, 1).astype(jnp.float32),  # cuDNN takes batch-first.
    h0[None],
    c0[None],
    pack_weights(w_i, w_h, b),
    jnp.full((batch,), steps, jnp.int32),
    features,
    hidden,
    1,  # num_layers
    0.0,  # dropout
    False,  # bidirectional
  )
  return jnp.swapaxes(ys, 0, 1), (c_n[0], h_n[0])
