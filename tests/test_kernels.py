"""The small-channel convolution path (jaxcls.ops.kernels) against lax's."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from backends import CPU_ONLY
from jaxcls import models
from jaxcls.accel import xla_options
from jaxcls.ops import kernels

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _reference(x, kernel, padding):
  return lax.conv_general_dilated(
    x, kernel, (1, 1), padding, dimension_numbers=NHWC
  )


def _inputs(shape, kernel_shape, dtype=jnp.float32, seed=0):
  kx, kk, kg = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, shape, dtype)
  kernel = jax.random.normal(kk, kernel_shape, dtype)
  return x, kernel, kg


# (input shape, kernel shape, padding); the fast tier runs the first three.
CASES = [
  ((4, 28, 28, 1), (3, 3, 1, 16), 'SAME'),  # the CNN's first convolution
  ((2, 8, 8, 4), (5, 3, 4, 6), ((2, 1), (0, 3))),  # uneven explicit pads
  ((2, 28, 28, 1), (3, 3, 1, 32), ((1, 1), (1, 1))),  # a ResNet stem
  pytest.param((3, 32, 32, 3), (3, 3, 3, 16), 'SAME', marks=pytest.mark.slow),
  pytest.param((2, 9, 7, 16), (3, 3, 16, 8), 'VALID', marks=pytest.mark.slow),
  pytest.param((5, 6, 6, 2), (1, 1, 2, 16), 'SAME', marks=pytest.mark.slow),
]


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
@CPU_ONLY  # on a GPU lax's convolution rounds through TF32
@pytest.mark.parametrize('shape,kernel_shape,padding', CASES)
def test_shifted_conv_matches_lax_values_and_both_gradients(
  shape, kernel_shape, padding
):
  x, kernel, kg = _inputs(shape, kernel_shape)
  pads = kernels._explicit_padding(padding, shape[1:3], kernel_shape[:2])
  reference = functools.partial(_reference, padding=padding)
  shifted = functools.partial(kernels.shifted_conv, pads=pads)
  want = jax.jit(reference)(x, kernel)
  # Jitted, as the models run it (and one compile instead of one per op).
  got = jax.jit(shifted)(x, kernel)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # A random cotangent, so every output position weighs differently.
  g = jax.random.normal(kg, want.shape)

  def both_gradients(conv, a, b):
    return jax.vjp(conv, a, b)[1](g)

  vjp_want = jax.jit(functools.partial(both_gradients, reference))(x, kernel)
  vjp_got = jax.jit(functools.partial(both_gradients, shifted))(x, kernel)
  for got_grad, want_grad in zip(vjp_got, vjp_want):
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-4)


def test_shifted_conv_bfloat16_close_to_float32():
  x, kernel, _ = _inputs((4, 28, 28, 1), (3, 3, 1, 16))
  pads = ((1, 1), (1, 1))
  got = kernels.shifted_conv(
    x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), pads
  )
  assert got.dtype == jnp.bfloat16
  want = _reference(x, kernel, 'SAME')
  # bf16 inputs carry 8 bits of mantissa: a few 1e-2 of the output scale.
  np.testing.assert_allclose(
    got.astype(jnp.float32),
    want,
    rtol=0,
    atol=0.05 * float(jnp.abs(want).max()),
  )
  lax_bf16 = _reference(
    x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), 'SAME'
  ).astype(jnp.float32)
  np.testing.assert_allclose(
    got.astype(jnp.float32),
    lax_bf16,
    rtol=0,
    atol=0.05 * float(jnp.abs(want).max()),
  )
  grads = jax.grad(
    lambda k: (
      kernels.shifted_conv(x.astype(jnp.bfloat16), k, pads)
      .astype(jnp.float32)
      .sum()
    )
  )(kernel.astype(jnp.bfloat16))
  want_grads = jax.grad(lambda k: _reference(x, k, 'SAME').sum())(kernel)
  assert grads.dtype == jnp.bfloat16
  np.testing.assert_allclose(
    grads.astype(jnp.float32),
    want_grads,
    rtol=0.02,
    atol=0.02 * float(jnp.abs(want_grads).max()),
  )


def test_dispatch_only_where_it_applies():
  small, big = (3, 3, 1, 16), (3, 3, 16, 32)
  shape = (8, 28, 28, 1)
  assert kernels.use_shifted(shape, small, backend='cpu')
  assert not kernels.use_shifted(shape, small, backend='gpu')
  assert not kernels.use_shifted(shape, small, backend='tpu')
  assert not kernels.use_shifted((8, 28, 28, 16), big, backend='cpu')  # YNN
  # A stem: few terms per output (3x3 on grey or RGB), however many outputs.
  assert kernels.use_shifted(shape, (3, 3, 1, 32), backend='cpu')
  assert kernels.use_shifted((8, 32, 32, 3), (3, 3, 3, 64), backend='cpu')
  assert not kernels.use_shifted((8, 28, 28, 4), (3, 3, 4, 32), backend='cpu')
  assert not kernels.use_shifted(
    shape, small, window_strides=(2, 2), backend='cpu'
  )
  assert not kernels.use_shifted(
    shape, small, rhs_dilation=(2, 2), backend='cpu'
  )
  assert not kernels.use_shifted(
    shape, small, dimension_numbers=('NCHW', 'OIHW', 'NCHW'), backend='cpu'
  )
  # Strided convolutions fall through to lax and stay exact.
  x, kernel, _ = _inputs((2, 9, 9, 1), small)
  got = kernels.conv_general_dilated(
    x, kernel, (2, 2), 'SAME', dimension_numbers=NHWC
  )
  want = lax.conv_general_dilated(
    x, kernel, (2, 2), 'SAME', dimension_numbers=NHWC
  )
  np.testing.assert_array_equal(got, want)


@pytest.mark.slow  # The CNN gradient test below covers the fast tier.
def test_conv_module_is_a_drop_in_for_nn_conv():
  x = jax.random.normal(jax.random.key(1), (2, 10, 10, 3))

  class Two(nn.Module):
    conv: type

    @nn.compact
    def __call__(self, x):
      return self.conv(4, (3, 3))(self.conv(16, (3, 3))(x))

  fast, plain = Two(kernels.Conv), Two(nn.Conv)
  variables = fast.init(jax.random.key(0), x)
  # The same names, shapes and initial values as nn.Conv's.
  jax.tree_util.tree_map(
    np.testing.assert_array_equal, variables, plain.init(jax.random.key(0), x)
  )
  np.testing.assert_allclose(
    fast.apply(variables, x), plain.apply(variables, x), rtol=1e-5, atol=1e-5
  )
  # The fast path is taken for the 3->16 and 16->4 convolutions on CPU.
  jaxpr = str(jax.make_jaxpr(fast.apply)(variables, x))
  assert jaxpr.count('custom_vjp_call') == (
    2 if jax.default_backend() == 'cpu' else 0
  )


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
def test_cnn_gradients_match_nn_conv_cnn():
  """The whole CNN's loss gradient, fast path vs lax's convolutions."""
  images = jax.random.normal(jax.random.key(2), (8, 28, 28, 1))
  labels = jnp.arange(8) % 10
  model = models.CNN()
  params = model.init(jax.random.key(0), images)['params']

  def loss(params, use_fast):
    saved = kernels.MAX_SHIFTED_CHANNELS, kernels.MAX_SHIFTED_TERMS
    if not use_fast:
      kernels.MAX_SHIFTED_CHANNELS = kernels.MAX_SHIFTED_TERMS = 0
    try:
      logits = model.apply({'params': params}, images)
    finally:
      kernels.MAX_SHIFTED_CHANNELS, kernels.MAX_SHIFTED_TERMS = saved
    return -jnp.mean(
      jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1)
    )

  fast_loss, fast = jax.value_and_grad(loss)(params, True)
  lax_loss, plain = jax.value_and_grad(loss)(params, False)
  np.testing.assert_allclose(fast_loss, lax_loss, rtol=1e-6)
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
    fast,
    plain,
  )
  # The first convolution's kernel and bias gradients are not zero.
  assert float(jnp.abs(fast['Conv_0']['kernel']).max()) > 0
  assert float(jnp.abs(fast['Conv_0']['bias']).max()) > 0


def _ynn_fused_convolutions(hlo: str) -> int:
  """How many YNNPACK fusions of a compiled module contain a convolution."""
  bodies = {}
  for block in hlo.split('\n\n'):
    header = block.lstrip().split(' ', 1)[0]
    bodies[header.lstrip('%')] = block
  count = 0
  for line in hlo.splitlines():
    if '"kind":"__ynn_fusion"' in line and 'calls=%' in line:
      called = line.split('calls=%', 1)[1].split(',', 1)[0].split(' ', 1)[0]
      count += ' convolution(' in bodies.get(called, '')
  return count


@CPU_ONLY
def test_compiler_options_send_convolutions_to_eigen_not_ynnpack():
  # A 32-channel convolution and its gradients: YNNPACK-eligible by default.
  x, kernel, _ = _inputs((8, 14, 14, 16), (3, 3, 16, 32))

  def loss(x, kernel):
    return jnp.sum(jnp.tanh(_reference(x, kernel, 'SAME')))

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  options = xla_options.compiler_options('cpu')
  lowered = grad.lower(x, kernel)
  default = lowered.compile()
  tuned = lowered.compile(compiler_options=options)
  assert _ynn_fused_convolutions(default.as_text()) > 0
  assert _ynn_fused_convolutions(tuned.as_text()) == 0
  for a, b in zip(default(x, kernel), tuned(x, kernel)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_compiler_options_per_backend_and_user_flags(monkeypatch):
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  assert xla_options.compiler_options('cpu') == {
    'xla_cpu_experimental_ynn_fusion_type': xla_options.CPU_YNN_FUSION_TYPES
  }
  assert xla_options.compiler_options('gpu') is None
  assert xla_options.compiler_options('tpu') is None
  flags = '--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE'
  monkeypatch.setenv('XLA_FLAGS', flags)
  assert xla_options.compiler_options('cpu') is None  # The user's flag wins.


def test_the_loops_train_step_compiles_with_the_options():
  from jaxcls import config as config_lib
  from jaxcls import data, optim
  from jaxcls.training import parallel
  from jaxcls.training import run as train

  config = config_lib.get_config()  # The article's CNN: conv 16 -> 32.
  spec = data.DATASETS['fashion_mnist']
  run_steps = train.make_steps(config, parallel.make_mesh(), spec)
  model = models.create_model(config, 10)
  tx = optim.create_optimizer(config, 100)
  state = run_steps.place(
    train.create_train_state(jax.random.key(0), model, tx, (28, 28, 1))
  )
  batch = run_steps.put_batch(
    {
      'image': np.zeros((64, 28, 28, 1), np.uint8),
      'label': np.zeros((64,), np.int32),
    }
  )
  hlo = run_steps.train.lower(state, batch, jax.random.key(1)).compile()
  assert _ynn_fused_convolutions(hlo.as_text()) == 0
