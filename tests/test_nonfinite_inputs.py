"""A NaN or infinite pixel: the CNN kernel, XLA's ops and numpy agree.

The article's CNN (the fashion_mnist default) with one non-finite pixel in
an image. The reference is the model's math in float64 numpy: a NaN pixel
spreads to every logit of its image, and so does an infinite one (the
first block gives +-inf, the second convolution sums inf - inf = NaN). On
XLA:CPU a jitted max pooling used to drop the NaN (XLA's YNNPACK reduction
skips NaN), so the XLA path gave finite logits where the kernel gave NaN.
Both paths, jitted, must now give the reference's NaNs, and the other
images their finite logits.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from backends import CPU_ONLY
from experiments import fashion_mnist
from jaxcls import accel, models
from jaxcls.accel import cpu_conv
from jaxcls.ops import fastpath

pytestmark = CPU_ONLY

# (image, row, column) of the non-finite pixels: one inside, one at an edge.
PIXELS = ((0, 5, 5), (2, 0, 27))


def _conv_same(x, kernel):
  """3x3 'SAME' convolution, NHWC x HWIO, as sums of shifted products."""
  h, w = x.shape[1:3]
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = 0
  for dy in range(3):
    for dx in range(3):
      taps = padded[:, dy : dy + h, dx : dx + w, :, None]
      out = out + (taps * kernel[dy, dx]).sum(axis=3)
  return out


def _reference_logits(params, x):
  """The CNN's logits in float64 numpy (np.maximum and np.max keep NaN)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  y = x.astype(np.float64)
  with np.errstate(invalid='ignore'):  # inf - inf: NaN, as in float32.
    for name in ('Conv_0', 'Conv_1'):
      z = np.maximum(_conv_same(y, p[name]['kernel']) + p[name]['bias'], 0)
      b, h, w, c = z.shape
      y = z.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    y = y.reshape(len(y), -1) @ p['Dense_0']['kernel'] + p['Dense_0']['bias']
    y = np.maximum(y, 0)
    return y @ p['Dense_1']['kernel'] + p['Dense_1']['bias']


def _images(value):
  x = np.random.default_rng(0).random((4, 28, 28, 1), np.float32)
  for i, r, c in PIXELS:
    x[i, r, c, 0] = value
  return x


def _logits(model, variables, x, kernel: bool):
  """Jitted evaluation logits, on the kernel or on XLA's ops only."""
  apply = fastpath.jit(lambda v, x: model.apply(v, x))
  with accel.using(kernels='on') if kernel else accel.disabled():
    text = apply.lower(variables, x).as_text()
    assert ('jaxcls_conv_block_infer' in text) == kernel
    return np.asarray(apply(variables, x))


def _loss(model, variables, x, kernel: bool):
  """A jitted train-mode loss and its gradient (the train step's path)."""

  def loss(params):
    logits = model.apply({'params': params}, x, train=True)
    return jnp.mean(logits**2)

  step = fastpath.jit(jax.value_and_grad(loss))
  with accel.using(kernels='on') if kernel else accel.disabled():
    value, grads = step(variables['params'])
  return float(value), grads


@pytest.mark.parametrize('value', [np.nan, np.inf, -np.inf], ids=str)
def test_kernel_and_xla_give_the_reference_nans(value):
  if not cpu_conv.available():
    pytest.skip(f'no CPU conv kernel: {cpu_conv.unavailable_reason()}')
  model = models.create_model(fashion_mnist.get_config(), 10)
  x = _images(value)
  variables = model.init(jax.random.key(0), x)
  want = _reference_logits(variables['params'], x)
  nan_rows = sorted({i for i, _, _ in PIXELS})
  assert np.isnan(want[nan_rows]).all()  # The reference's NaN out.
  assert np.isfinite(np.delete(want, nan_rows, axis=0)).all()
  for kernel in (True, False):
    path = 'kernel' if kernel else 'xla'
    got = _logits(model, variables, x, kernel)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=path)
    finite = ~np.isnan(want)
    np.testing.assert_allclose(
      got[finite], want[finite], rtol=1e-4, atol=1e-5, err_msg=path
    )
    loss, _ = _loss(model, variables, x, kernel)
    assert np.isnan(loss), path
