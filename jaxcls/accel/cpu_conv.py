"""The CNN's convolution block on the CPU, as a kernel of our own (XLA FFI).

A block is ``max_pool_2x2(relu(conv3x3(x, kernel, 'SAME') + bias))``: the
article's CNN is two of them. Under XLA:CPU its train step spends most of its
time around the convolutions rather than in them: the ReLU's mask and the
pool's routing are many full-resolution elementwise passes, and each weight
gradient waits for layout transposes. ``jaxcls/csrc/conv_cpu.cc`` does a
block in one call each way, with images split over XLA's intra-op threads.

Same function and parameters as :class:`jaxcls.ops.kernels.Conv` followed by
:func:`jaxcls.ops.activations.relu` and :func:`jaxcls.ops.kernels.max_pool_2x2`
(the tests compare values and every gradient), but another order of float
sums: a run on the kernel does not repeat bit for bit on XLA's ops
(``JAXCLS_KERNELS=off``). :func:`why_not` says where it cannot run; where it
can, :mod:`jaxcls.accel.choice` decides whether it does.
"""

import ctypes
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxcls.accel import build

_TARGETS = (
  'jaxcls_conv_block_forward',
  'jaxcls_conv_block_infer',
  'jaxcls_conv_block_backward',
  'jaxcls_conv_block_weight_grad',
  'jaxcls_conv_input_grad',
)
_state: dict = {'tried': False, 'library': None, 'error': None}


def _load() -> ctypes.CDLL | None:
  return build.load(
    _state,
    'conv_cpu',
    _TARGETS,
    'the CPU convolution kernel is',
    'CNN blocks run on XLA',
  )


def available() -> bool:
  """Whether the kernel is built and registered (builds on first call)."""
  return _load() is not None


def unavailable_reason() -> str | None:
  """Why :func:`available` is False (None if it is True or was not asked)."""
  return _state['error']


def why_not(x_shape: Sequence[int], features: int, dtype) -> str | None:
  """Why a block on ``x_shape`` images cannot run on the kernel, or None."""
  if jax.default_backend() != 'cpu':
    return f'the backend is {jax.default_backend()}'
  if jnp.dtype(dtype) != jnp.float32:
    return f'{jnp.dtype(dtype).name} compute'
  if len(x_shape) != 4 or x_shape[1] % 2 or x_shape[2] % 2 or 0 in x_shape:
    return f'images {tuple(x_shape)} are not (B, H, W, C) with H, W even'
  if features % 16:
    return f'{features} output channels (needs a multiple of 16)'
  if not available():
    return unavailable_reason()
  return None


def _require() -> None:
  if _load() is None:
    raise RuntimeError(
      f'the CPU convolution kernel is unavailable: {_state["error"]}'
    )


def _f32(shape) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def _pooled_shape(x, kernel):
  b, h, w, _ = x.shape
  return _f32((b, h // 2, w // 2, kernel.shape[-1]))


def _padded_pixels(h: int, w: int) -> int:
  """Pixels of one image on the kernel's zero-padded grid (conv_cpu.cc)."""
  return (h + 2) * (w + 2) + 8


@jax.custom_vjp
def conv_relu_pool(x: jax.Array, kernel: jax.Array, bias: jax.Array):
  """``max_pool_2x2(relu(conv(x, kernel, 'SAME') + bias))`` on the kernel.

  ``x`` ``(B, H, W, C_in)`` float32 with H and W even, ``kernel`` ``(3, 3,
  C_in, C_out)`` with ``C_out`` a multiple of 16, ``bias`` ``(C_out,)``;
  returns ``(B, H/2, W/2, C_out)``. Builds the kernel on first use;
  RuntimeError if it cannot be (:func:`why_not` is the check that falls
  back instead).
  """
  _require()
  return jax.ffi.ffi_call(
    'jaxcls_conv_block_infer',
    _pooled_shape(x, kernel),
    vmap_method='sequential',
  )(x, kernel, bias)


def _forward(x, kernel, bias):
  # One register-blocked implicit matmul per image with bias, ReLU and
  # pooling fused in. ``route`` is the factor that sends the pooled gradient
  # back (autodiff's own: 1/ties on a window's maxima where the
  # pre-activation is positive, else 0), as a code (:func:`_route`).
  _require()
  pooled, route = jax.ffi.ffi_call(
    'jaxcls_conv_block_forward',
    (
      _pooled_shape(x, kernel),
      jax.ShapeDtypeStruct((*x.shape[:3], kernel.shape[-1]), jnp.uint8),
    ),
    vmap_method='sequential',
  )(x, kernel, bias)
  return pooled, (x, kernel, route)


def _route(route: jax.Array, g: jax.Array) -> jax.Array:
  """d_z from d_pooled in XLA: what the kernel computes (``Route``)."""
  factor = jnp.select(
    [route == 1, route == 2, route == 3, route == 4],
    [jnp.float32(1), jnp.float32(0.5), jnp.float32(1 / 3), jnp.float32(0.25)],
    jnp.float32(0),
  )
  return jnp.repeat(jnp.repeat(g, 2, axis=1), 2, axis=2) * factor


def _backward(residuals, g):
  # The pre-activation gradient, the weight and bias gradients, and a second
  # call the input gradient (dropped by XLA where nothing needs it, as for the
  # image). The weight gradient sums fixed chunks of 8 images, then the chunks
  # in order, so results do not depend on the number of threads.
  x, kernel, route = residuals
  b, h, w, c_in = x.shape
  c_out = kernel.shape[-1]
  grads = (_f32(kernel.shape), _f32((c_out,)))
  if c_in % 16 == 0:
    d_zp, d_kernel, d_bias = jax.ffi.ffi_call(
      'jaxcls_conv_block_backward',
      (_f32((b, _padded_pixels(h, w), c_out)), *grads),
      vmap_method='sequential',
    )(x, route, g)
    d_x = jax.ffi.ffi_call(
      'jaxcls_conv_input_grad', _f32(x.shape), vmap_method='sequential'
    )(d_zp, kernel)
    return d_x, d_kernel, d_bias
  # Few input channels (an image): the kernel's weight gradient, and lax's
  # input gradient, which XLA drops where nothing uses it.
  d_kernel, d_bias = jax.ffi.ffi_call(
    'jaxcls_conv_block_weight_grad', grads, vmap_method='sequential'
  )(x, route, g)
  _, vjp = jax.vjp(
    lambda x: lax.conv_general_dilated(
      x, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    ),
    x,
  )
  (d_x,) = vjp(_route(route, g))
  return d_x, d_kernel, d_bias


conv_relu_pool.defvjp(_forward, _backward)


class ConvReluPool(nn.Module):
  """A 3x3 'SAME' convolution + bias, ReLU and 2x2 max pooling, in one op.

  The same parameters as ``jaxcls.ops.kernels.Conv(features, (3, 3),
  padding='SAME')`` (``kernel`` ``(3, 3, C_in, features)``, ``bias``; same
  initialisers), so a model can switch between the two with the same
  checkpoint. Only for inputs where :func:`why_not` is None.
  """

  features: int
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
      'kernel', self.kernel_init, (3, 3, x.shape[-1], self.features)
    )
    bias = self.param('bias', self.bias_init, (self.features,))
    f32 = jnp.float32
    return conv_relu_pool(x.astype(f32), kernel.astype(f32), bias.astype(f32))
