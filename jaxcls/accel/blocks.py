"""Where a model asks for an accelerated path: one function per kind of op.

Each takes what the caller is about to trace and the caller's own XLA
function for it, and returns the accelerated replacement, or None for the
caller to run its own. Settings first (``off`` builds nothing), then whether
a kernel can run here at all, then :func:`jaxcls.accel.decide`. Every call
records the path it took (:func:`jaxcls.accel.path`).
"""

import jax

from jaxcls.accel import cpu_conv, cpu_rnn, cudnn_lstm
from jaxcls.accel import policy as accel


def conv_block(x_shape, features: int, dtype, xla_fn, wrt=(0, 1, 2)):
  """The kernel's module for ``max_pool_2x2(relu(conv3x3(x) + b))``, or None.

  Args:
    x_shape: the block's input shape ``(B, H, W, C_in)``.
    features: ``C_out``.
    dtype: the compute dtype.
    xla_fn: ``(x, kernel, bias) -> y`` on XLA's ops, timed against it.
    wrt: what a train step differentiates, of ``(x, kernel, bias)``: not
      ``x`` in the first layer (the image); nothing in evaluation, which
      then times the forward pass alone.

  Returns:
    :class:`jaxcls.accel.cpu_conv.ConvReluPool` (same parameters as a
    ``Conv`` named alike) where the kernel runs, else None.
  """
  b, h, w, c = (tuple(x_shape) + (0, 0, 0, 0))[:4]
  tail = {(0, 1, 2): '', (1, 2): ',no_dx', (): ',forward'}[tuple(wrt)]
  key = f'conv_block({b},{h},{w},{c}->{features}{tail})'
  if accel.settings().kernels == 'off':
    return accel.decide(key, None, None, None) or None  # Records 'xla'.
  reason = cpu_conv.why_not(x_shape, features, dtype)
  if reason:
    accel.ineligible(key, reason)
    return None
  f32 = jax.numpy.float32
  example = (
    jax.ShapeDtypeStruct(tuple(x_shape), f32),
    jax.ShapeDtypeStruct((3, 3, c, features), f32),
    jax.ShapeDtypeStruct((features,), f32),
  )
  if accel.decide(key, cpu_conv.conv_relu_pool, xla_fn, example, wrt):
    return cpu_conv.ConvReluPool
  return None


def lstm_sequence(dtype, hidden_size: int, args, xla_fn):
  """cuDNN's or the CPU kernel's ``lstm_sequence``, or None.

  Args:
    dtype: the compute dtype.
    hidden_size: H.
    args: ``(xs, w_i, w_h, b, (c, h))`` as about to be traced.
    xla_fn: the fused scan, a function of ``args``.
  """
  s = accel.settings()
  if cudnn_lstm.use_cudnn(dtype, s.cudnn_lstm):
    return cudnn_lstm.lstm_sequence
  return _cpu('lstm', cpu_rnn.lstm_sequence, dtype, hidden_size, args, xla_fn)


def gru_recurrence(dtype, hidden_size: int, args, xla_fn):
  """The CPU kernel's ``gru_recurrence`` for ``args``, or None."""
  return _cpu('gru', cpu_rnn.gru_recurrence, dtype, hidden_size, args, xla_fn)


def _cpu(name, kernel_fn, dtype, hidden_size, args, xla_fn):
  xs = args[0]
  steps, batch, features = (tuple(xs.shape) + (0, 0, 0))[:3]
  key = f'{name}({steps},{batch},{features}->{hidden_size})'
  if accel.settings().kernels == 'off':
    return accel.decide(key, None, None, None) or None  # Records 'xla'.
  reason = cpu_rnn.why_not(dtype, hidden_size)
  if not reason and steps == 0:
    reason = 'no time steps'
  if reason:
    accel.ineligible(key, reason)
    return None
  if accel.decide(key, kernel_fn, xla_fn, args):  # Shapes only are read.
    return kernel_fn
  return None
