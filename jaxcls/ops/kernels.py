"""Faster kernels for XLA:CPU that compute the same functions as lax's.

**Small-channel convolutions.** XLA:CPU sends a convolution to YNNPACK only
when ``max(C_in, C_out) > 16``; smaller ones, such as the CNN's first (1 ->
16 channels), run on Eigen's slow generic kernel. :func:`shifted_conv` writes
such a convolution as ``kh * kw * C_in`` shifted multiply-adds of the padded
input, which XLA fuses into one loop; its gradients are lax's own.
:func:`conv_general_dilated` has ``lax.conv_general_dilated``'s signature and
takes that path only where it applies and wins (:func:`use_shifted`);
:class:`Conv` is ``flax.linen.Conv`` on it, a drop-in. The shifted forward
sums in another order than Eigen: outputs differ by float32 rounding.

**Max pooling.** :func:`max_pool_2x2` is 2x2 max pooling whose forward pass
prepares autodiff's own gradient, so the backward pass is one multiply and
does not pull the preceding convolution into a single-threaded fusion.
"""

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# Above this many channels (in or out) the shifted form loses: to YNNPACK
# under XLA's defaults (ynn_support.cc: IsConvolutionOpSupportedByYnn), and to
# Eigen under compiler_options().
MAX_SHIFTED_CHANNELS = 16
# Up to this many terms per output (kh * kw * C_in: a 3x3 stem on grey or RGB
# images) the shifted form wins whatever C_out is (benchmarks/NOTES.md).
MAX_SHIFTED_TERMS = 27

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _explicit_padding(padding, in_hw, kernel_hw) -> tuple[tuple[int, int], ...]:
  """``padding`` ('SAME', 'VALID' or pairs) as ``((lo, hi), (lo, hi))``."""
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(in_hw, kernel_hw, (1, 1), padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _shifted_forward(
  x: jax.Array, kernel: jax.Array, pads: tuple[tuple[int, int], ...]
) -> jax.Array:
  """The convolution as a sum of shifted, scaled copies of the input.

  ``x`` is ``(B, H, W, C_in)`` and ``kernel`` ``(kh, kw, C_in, C_out)``.
  Each term is one input channel at one offset, broadcast against that tap's
  ``C_out`` weights; XLA fuses the whole sum into one loop over the output.
  bfloat16 inputs accumulate in float32 and round once at the end.
  """
  kh, kw, c_in, _ = kernel.shape
  acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0))).astype(acc_dtype)
  k = kernel.astype(acc_dtype)
  out_h = xp.shape[1] - kh + 1
  out_w = xp.shape[2] - kw + 1
  acc = None
  for dy in range(kh):
    for dx in range(kw):
      # lax slices, not indexing: with a symbolic batch (jax.export) indexing
      # becomes a gather, which the TFLite converter cannot take.
      window = lax.slice_in_dim(xp, dy, dy + out_h, axis=1)
      window = lax.slice_in_dim(window, dx, dx + out_w, axis=2)
      for c in range(c_in):
        term = lax.slice_in_dim(window, c, c + 1, axis=3) * k[dy, dx, c]
        acc = term if acc is None else acc + term
  return acc.astype(x.dtype)


def _lax_conv(x, kernel, pads):
  return lax.conv_general_dilated(
    x, kernel, (1, 1), pads, dimension_numbers=_NHWC
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def shifted_conv(
  x: jax.Array, kernel: jax.Array, pads: tuple[tuple[int, int], ...]
) -> jax.Array:
  """A stride-1 NHWC/HWIO convolution: shifted forward, lax's backward.

  ``pads`` are explicit ``((top, bottom), (left, right))`` pairs. Computes
  what ``lax.conv_general_dilated(x, kernel, (1, 1), pads,
  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))`` computes.
  """
  return _shifted_forward(x, kernel, pads)


def _shifted_conv_fwd(x, kernel, pads):
  return _shifted_forward(x, kernel, pads), (x, kernel)


def _shifted_conv_bwd(pads, residuals, g):
  # lax's gradients: the shifted form would be slow for the weight gradient,
  # while lax's contracts over the batch and so is eligible for YNNPACK. XLA
  # drops the input gradient where nothing needs it (the first layer).
  x, kernel = residuals
  _, vjp = jax.vjp(lambda x, k: _lax_conv(x, k, pads), x, kernel)
  return vjp(g)


shifted_conv.defvjp(_shifted_conv_fwd, _shifted_conv_bwd)


def _as_pair(value, default=1) -> tuple[int, ...]:
  if value is None:
    return (default, default)
  if isinstance(value, int):
    return (value, value)
  return tuple(value)


def _is_nhwc(dimension_numbers, ndim: int) -> bool:
  if dimension_numbers is None or ndim != 4:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return dimension_numbers == lax.conv_dimension_numbers(
      (1, 1, 1, 1), (1, 1, 1, 1), _NHWC
    )
  return tuple(dimension_numbers) == _NHWC


def use_shifted(
  lhs_shape: Sequence[int],
  rhs_shape: Sequence[int],
  window_strides=(1, 1),
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=_NHWC,
  feature_group_count: int = 1,
  backend: str | None = None,
) -> bool:
  """Whether :func:`conv_general_dilated` takes the shifted path.

  Only on XLA:CPU (elsewhere cuDNN or the TPU's convolution units win), and
  only for plain 2-D stride-1 NHWC/HWIO convolutions that are small:
  ``max(C_in, C_out) <= MAX_SHIFTED_CHANNELS``, or few terms per output
  (``kh * kw * C_in <= MAX_SHIFTED_TERMS``, a stem on grey or RGB images).
  """
  if (backend or jax.default_backend()) != 'cpu':
    return False
  if not _is_nhwc(dimension_numbers, len(lhs_shape)):
    return False
  if (
    _as_pair(window_strides) != (1, 1)
    or _as_pair(lhs_dilation) != (1, 1)
    or _as_pair(rhs_dilation) != (1, 1)
    or feature_group_count != 1
  ):
    return False
  kh, kw, c_in, c_out = rhs_shape
  return (
    max(c_in, c_out) <= MAX_SHIFTED_CHANNELS
    or kh * kw * c_in <= MAX_SHIFTED_TERMS
  )


def conv_general_dilated(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  batch_group_count=1,
  precision=None,
  preferred_element_type=None,
):
  """``lax.conv_general_dilated``, with the shifted path where it wins.

  Same arguments and result; see :func:`use_shifted` for when the shifted
  path (:func:`shifted_conv`) is taken. Anything it does not cover
  (``precision``, ``preferred_element_type``, batch groups) goes to lax.
  """
  if (
    batch_group_count == 1
    and precision is None
    and preferred_element_type is None
    and use_shifted(
      lhs.shape,
      rhs.shape,
      window_strides,
      lhs_dilation,
      rhs_dilation,
      dimension_numbers,
      feature_group_count,
    )
  ):
    pads = _explicit_padding(padding, lhs.shape[1:3], rhs.shape[:2])
    return shifted_conv(lhs, rhs, pads)
  return lax.conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    batch_group_count=batch_group_count,
    precision=precision,
    preferred_element_type=preferred_element_type,
  )


class Conv(nn.Conv):
  """``flax.linen.Conv`` whose convolution is :func:`conv_general_dilated`.

  A drop-in: the same fields, parameters (``kernel``, ``bias``), names and
  initialisation, so checkpoints of ``nn.Conv`` models load unchanged.
  """

  conv_general_dilated: Callable | None = conv_general_dilated


def _windows_2x2(x: jax.Array) -> jax.Array:
  """``(B, H, W, C)`` as ``(B, H//2, 2, W//2, 2, C)``, odd edges dropped."""
  b, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2, :]
  return x.reshape(b, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling, stride 2, with autodiff's gradient computed up front.

  The value and the gradient are those of ``jnp.max`` over each window
  (a tie splits the gradient equally, as jax does). Autodiff forms the
  gradient in the backward pass as ``g / count * mask``; XLA:CPU then fuses
  that division, with the count's reduction, into the preceding layer's
  input-gradient convolution or matmul, and runs the fused region on
  single-threaded YNNPACK. Here the forward pass stores ``mask / count`` and
  the backward pass is one multiply, so the convolution stays a plain
  multithreaded one (benchmarks/NOTES.md).
  """
  # Without differentiation (evaluation, export) the plain reduction: the
  # same values, and no slices that a symbolic batch size would make dynamic.
  return jnp.max(_windows_2x2(x), axis=(2, 4))


def _max_pool_2x2_fwd(x):
  windows = _windows_2x2(x)
  # The four corners, combined by elementwise maxima and sums (not
  # reductions), so XLA emits one loop fusion instead of a YNNPACK reduction.
  corners = [
    lax.index_in_dim(lax.index_in_dim(windows, i, 2, False), j, 3, False)
    for i in (0, 1)
    for j in (0, 1)
  ]
  y = jnp.maximum(
    jnp.maximum(corners[0], corners[1]), jnp.maximum(corners[2], corners[3])
  )
  hits = [(c == y).astype(x.dtype) for c in corners]
  count = hits[0] + hits[1] + hits[2] + hits[3]
  weights = jnp.stack([h / count for h in hits], axis=-2)  # (..., 4, C)
  return y, (weights, x.shape)


def _max_pool_2x2_bwd(residuals, g):
  weights, (b, h, w, c) = residuals
  dx = g[..., None, :] * weights  # (B, H/2, W/2, 4, C), corners (i, j)
  dx = dx.reshape(b, h // 2, w // 2, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  dx = dx.reshape(b, h // 2 * 2, w // 2 * 2, c)
  return (jnp.pad(dx, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


__all__ = [
  'MAX_SHIFTED_CHANNELS',
  'MAX_SHIFTED_TERMS',
  'Conv',
  'conv_general_dilated',
  'max_pool_2x2',
  'shifted_conv',
  'use_shifted',
]
