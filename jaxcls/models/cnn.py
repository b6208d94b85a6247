"""The tutorial article's CNN: two convolution blocks and a dense head.

A block is a 3x3 convolution, the activation and 2x2 pooling (BatchNorm
before the activation if asked). Max pooling keeps NaN
(:func:`nan_max_pool_2x2`), and a plain conv-ReLU-max-pool block may run as
one fused op on an accelerator (:meth:`CNN.fused_block`) from the same
parameters. The model contract (``train``, dropout keys, ``batch_stats``) is
:mod:`jaxcls.models`'.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcls.models import resnet
from jaxcls.ops import activations, fastpath, kernels

# max_pool_2x2 lives in kernels (resnet uses it too); kept here for callers.
from jaxcls.ops.kernels import _windows_2x2, max_pool_2x2  # noqa: F401


@jax.custom_vjp
def nan_max_pool_2x2(x: jax.Array) -> jax.Array:
  """:func:`max_pool_2x2`, NaN wherever its window holds a NaN.

  The CNN's max pooling. A max reduction (``jnp.max``, ``reduce_window``
  alike) that XLA:CPU hands to YNNPACK (with the ops around it: the whole
  CNN at evaluation) skips NaN: a NaN or inf pixel gave finite logits on
  XLA's ops where numpy and the CPU kernel (:mod:`jaxcls.accel.cpu_conv`)
  give NaN. A select puts the window's NaN back; the other values are the
  reduction's. Without slices, which a symbolic batch size would make
  dynamic (exports, TFLite). Differentiated, the forward and backward rules
  are :func:`max_pool_2x2`'s own, whose elementwise maxima keep NaN: the
  train step's program is unchanged.
  """
  # isnan on the 4-D images: TFLite has no 6-D comparison.
  has_nan = jnp.any(_windows_2x2(jnp.isnan(x)), axis=(2, 4))
  y = jnp.max(_windows_2x2(x), axis=(2, 4))
  return jnp.where(has_nan, jnp.asarray(jnp.nan, y.dtype), y)


nan_max_pool_2x2.defvjp(kernels._max_pool_2x2_fwd, kernels._max_pool_2x2_bwd)


def pool_2x2(x: jax.Array, reduce=jnp.max) -> jax.Array:
  """2x2 pooling with stride 2 ('VALID', like ``nn.max_pool``/``avg_pool``).

  Written as a reshape and a reduction rather than ``lax.reduce_window``:
  the same values, but the gradient of ``reduce_window`` max is
  ``select_and_scatter``, which made the whole CNN train step 4-6x slower on
  XLA:CPU (benchmarks/NOTES.md). An odd last row/column is dropped, as VALID
  pooling does. ``reduce=jnp.max`` goes through :func:`nan_max_pool_2x2`
  (:func:`max_pool_2x2`'s values and gradient, NaN kept).
  """
  if reduce is jnp.max:
    return nan_max_pool_2x2(x)
  return reduce(_windows_2x2(x), axis=(2, 4))


def conv_relu_pool(x, kernel, bias):
  """``max_pool_2x2(relu(conv3x3(x, kernel, 'SAME') + bias))`` on XLA's ops.

  What :class:`CNN`'s block computes without BatchNorm, as a function.
  """
  y = kernels.conv_general_dilated(
    x, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  return nan_max_pool_2x2(activations.relu(y + bias))


class CNN(nn.Module):
  """The article's two-convolution CNN.

  conv 3x3/16 -> act -> pool 2x2 -> conv 3x3/32 -> act -> pool 2x2 ->
  dense 128 -> act -> [dropout] -> dense num_classes.

  Convolutions use 'SAME' padding (the article's ``padding=1``), so a 28x28
  input ends at 7x7x32 and a 32x32 input at 8x8x32 before the dense layers.
  """

  num_classes: int = 10
  activation: str = 'relu'
  pooling: str = 'max'  # 'max' or 'avg'
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32  # compute dtype; parameters stay float32
  # BatchNorm after each convolution (before the activation), as in flax's
  # examples/imagenet: momentum 0.9, epsilon 1e-5, float32 statistics. The
  # convolution then has no bias: BN subtracts the batch mean, so a bias would
  # cancel out and get no gradient; BN's own offset takes its place. Apply
  # with ``train=True`` and ``mutable=['batch_stats']``.
  batchnorm: bool = False
  batchnorm_axis_name: str | None = None  # the pmap axis, under pmap

  def fused_block(self, x_shape, features: int, wrt=(0, 1, 2)):
    """The module that runs a conv-ReLU-max-pool block as one op, or None.

    :mod:`jaxcls.accel.cpu_conv`: the same function and parameters, where
    it measured faster than XLA's ops; only without BatchNorm, with ReLU
    and max pooling.
    """
    if self.batchnorm or self.activation != 'relu' or self.pooling != 'max':
      return None
    return fastpath.conv_block(
      x_shape, features, self.dtype, conv_relu_pool, wrt
    )

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act = activations.get_activation(self.activation)
    if self.pooling == 'max':
      pool = functools.partial(pool_2x2, reduce=jnp.max)
    elif self.pooling == 'avg':
      pool = functools.partial(pool_2x2, reduce=jnp.mean)
    else:
      raise ValueError(
        f"unknown pooling {self.pooling!r}; choose 'max' or 'avg'"
      )

    def norm(y):
      if not self.batchnorm:
        return y
      return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=jnp.float32,
        axis_name=self.batchnorm_axis_name,
      )(y).astype(y.dtype)

    def block(x, features, name):
      # What a train step differentiates: (x, kernel, bias), but not the
      # image; in evaluation nothing (a measured choice times what runs).
      wrt = ((1, 2) if name == 'Conv_0' else (0, 1, 2)) if train else ()
      fused = self.fused_block(x.shape, features, wrt)
      if fused is not None:
        return fused(features, name=name)(x)
      conv = kernels.Conv(
        features,
        (3, 3),
        padding='SAME',
        use_bias=not self.batchnorm,
        dtype=self.dtype,
        name=name,  # what flax names it anyway: the same parameter tree
      )
      return pool(act(norm(conv(x))))

    x = x.astype(self.dtype)
    x = block(x, 16, 'Conv_0')
    x = block(x, 32, 'Conv_1')
    x = x.reshape((x.shape[0], -1))
    x = act(nn.Dense(128, dtype=self.dtype)(x))
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    # Logits in float32 so the loss is computed at full precision.
    return x.astype(jnp.float32)


def build_cnn(config, num_classes: int) -> CNN:
  """``models.MODELS['cnn']``: the article's CNN from the config."""
  return CNN(
    num_classes=num_classes,
    activation=config.activation,
    pooling=config.pooling,
    dropout_rate=config.dropout_rate,
    dtype=jnp.dtype(config.compute_dtype),
    batchnorm=config.batchnorm,
    batchnorm_axis_name=resnet.batchnorm_axis_name(config),
  )
