"""The CPU CNN-block kernel (jaxcls.accel.cpu_conv) against XLA's ops.

The reference is the path the CNN takes without the kernel: ``kernels.Conv``'s
convolution (itself tested against ``lax.conv_general_dilated`` in
test_kernels.py) + bias, ``activations.relu`` and ``kernels.max_pool_2x2``,
differentiated by autodiff. The kernel must give its values and all three
gradients to float32 rounding, on shapes that reach every C++ path (16- and
32-wide column panels, 16-, 8- and 1-row micro-blocks, one input channel,
input gradients from the kernel and from lax), split ties in the pooling
window as autodiff does, and keep each image's result independent of the
rest of the batch.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from backends import CPU_ONLY
from jaxcls import accel, export, models, optim
from jaxcls import config as config_lib
from jaxcls.accel import cpu_conv
from jaxcls.ops import activations, kernels
from jaxcls.training import steps

pytestmark = CPU_ONLY


def _xla_block(x, kernel, bias):
  y = kernels.conv_general_dilated(
    x, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  return kernels.max_pool_2x2(activations.relu(y + bias))


def _random(batch, height, width, c_in, c_out, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  return (
    jax.random.normal(keys[0], (batch, height, width, c_in)),
    0.3 * jax.random.normal(keys[1], (3, 3, c_in, c_out)),
    0.1 * jax.random.normal(keys[2], (c_out,)),
    jax.random.normal(keys[3], (batch, height // 2, width // 2, c_out)),
  )


def _value_and_grads(block, x, kernel, bias, g):
  y, vjp = jax.vjp(jax.jit(block), x, kernel, bias)
  return (y, *vjp(g))


def _close(got, want, what):
  got, want = np.asarray(got), np.asarray(want)
  scale = float(np.abs(want).max())
  assert scale > 0, f'{what}: the reference is all zeros, the test is void'
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * scale, err_msg=what)


# (B, H, W, C_in, C_out): the CNN's two blocks; 16-wide panels with 16-, 8-
# and 1-row micro-blocks (6 x 10 pixels: 60 rows); three input channels and
# three 16-wide panels (lax's input gradient); 2 x 2 images, 32 channels in.
SHAPES = [
  (64, 28, 28, 1, 16),
  (64, 14, 14, 16, 32),
  (5, 6, 8, 16, 16),
  (9, 4, 10, 3, 48),
  (3, 2, 2, 32, 32),
]


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'x'.join(map(str, s)))
def test_block_matches_xla_values_and_all_gradients(shape):
  x, kernel, bias, g = _random(*shape)
  got = _value_and_grads(cpu_conv.conv_relu_pool, x, kernel, bias, g)
  want = _value_and_grads(_xla_block, x, kernel, bias, g)
  for name, a, b in zip(('value', 'd_x', 'd_kernel', 'd_bias'), got, want):
    assert a.shape == b.shape and a.dtype == b.dtype, name
    _close(a, b, name)
  # Inference (no gradient) takes the target without the routing bytes.
  text = jax.jit(cpu_conv.conv_relu_pool).lower(x, kernel, bias).as_text()
  assert 'jaxcls_conv_block_infer' in text
  assert 'jaxcls_conv_block_forward' not in text
  _close(jax.jit(cpu_conv.conv_relu_pool)(x, kernel, bias), want[0], 'infer')


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
def test_input_gradient_target_depends_on_the_input_channels():
  def grads(x, kernel, bias):
    return jax.grad(lambda *a: cpu_conv.conv_relu_pool(*a).sum(), (0, 1))(
      x, kernel, bias
    )

  x, kernel, bias, _ = _random(2, 4, 4, 16, 16)
  text = jax.jit(grads).lower(x, kernel, bias).as_text()
  assert 'jaxcls_conv_block_backward' in text
  assert 'jaxcls_conv_input_grad' in text
  x, kernel, bias, _ = _random(2, 4, 4, 1, 16)
  text = jax.jit(grads).lower(x, kernel, bias).as_text()
  assert 'jaxcls_conv_block_weight_grad' in text
  assert 'jaxcls_conv_input_grad' not in text


def test_ties_split_the_gradient_and_negative_windows_get_none():
  # Only the centre tap: z = x * 0.5 + bias is constant over each image, so
  # every 2x2 window is a four-way tie; image 1 is negative (ReLU: zero).
  x = jnp.stack([jnp.ones((4, 4, 16)), -jnp.ones((4, 4, 16))])
  kernel = jnp.zeros((3, 3, 16, 16)).at[1, 1].set(0.5 * jnp.eye(16))
  bias = jnp.full((16,), 0.25)
  g = jax.random.normal(jax.random.key(1), (2, 2, 2, 16))
  _, (_, _, route) = cpu_conv._forward(x, kernel, bias)
  route = np.asarray(route)
  assert (route[0] == 4).all() and (route[1] == 0).all()
  got = _value_and_grads(cpu_conv.conv_relu_pool, x, kernel, bias, g)
  want = _value_and_grads(_xla_block, x, kernel, bias, g)
  for name, a, b in zip(('value', 'd_x', 'd_kernel', 'd_bias'), got, want):
    _close(a, b, name)
  # A quarter of each pooled gradient reaches each pixel of image 0 (through
  # the centre tap), nothing reaches image 1.
  quarter = (
    np.repeat(np.repeat(np.asarray(g[0]), 2, 0), 2, 1) / 4 @ (0.5 * np.eye(16))
  )
  np.testing.assert_allclose(got[1][0], quarter, rtol=1e-6)
  assert not np.asarray(got[1][1]).any()


def test_each_image_is_computed_alone_and_a_nan_stays_in_its_image():
  x, kernel, bias, g = _random(11, 6, 6, 16, 32, seed=3)
  x = x.at[4, 2, 3, 5].set(jnp.nan)
  y, d_x, _, _ = _value_and_grads(cpu_conv.conv_relu_pool, x, kernel, bias, g)
  assert np.isnan(y[4]).any()
  others = np.delete(np.arange(11), 4)
  assert np.isfinite(np.asarray(y)[others]).all()
  assert np.isfinite(np.asarray(d_x)[others]).all()
  for i in (0, 5, 10):  # the same bits alone as inside the batch
    y1, d_x1, _, _ = _value_and_grads(
      cpu_conv.conv_relu_pool, x[i : i + 1], kernel, bias, g[i : i + 1]
    )
    np.testing.assert_array_equal(y1[0], y[i])
    np.testing.assert_array_equal(d_x1[0], d_x[i])


def test_weight_gradient_sums_fixed_chunks_of_eight_images_in_order():
  # The kernel sums each chunk of 8 images, then the chunks in order, so its
  # bits do not depend on how many threads share the chunks: 16 images give
  # exactly chunk 1's gradient plus chunk 2's.
  x, kernel, bias, g = _random(16, 6, 6, 16, 32, seed=5)
  _, _, d_k, d_b = _value_and_grads(cpu_conv.conv_relu_pool, x, kernel, bias, g)
  halves = [
    _value_and_grads(cpu_conv.conv_relu_pool, x[s], kernel, bias, g[s])
    for s in (slice(0, 8), slice(8, 16))
  ]
  np.testing.assert_array_equal(d_k, halves[0][2] + halves[1][2])
  np.testing.assert_array_equal(d_b, halves[0][3] + halves[1][3])


def test_an_empty_batch_gives_zero_gradients():
  x, kernel, bias, g = _random(0, 4, 4, 16, 32)
  y, d_x, d_k, d_b = _value_and_grads(
    cpu_conv.conv_relu_pool, x, kernel, bias, g
  )
  assert y.shape == (0, 2, 2, 32) and d_x.shape == x.shape
  assert d_k.shape == kernel.shape and not np.asarray(d_k).any()
  assert d_b.shape == bias.shape and not np.asarray(d_b).any()


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
def test_vmap_over_members_matches_xla():
  x, kernel, bias, _ = _random(4, 6, 6, 16, 16)
  kernels_ = jnp.stack([kernel, -kernel, 2 * kernel])

  def loss(block, k):
    return (block(x, k, bias) ** 2).sum()

  got = jax.vmap(jax.grad(functools.partial(loss, cpu_conv.conv_relu_pool)))(
    kernels_
  )
  want = jax.vmap(jax.grad(functools.partial(loss, _xla_block)))(kernels_)
  _close(got, want, 'vmapped weight gradients')


def _cnn_state(**overrides):
  config = config_lib.get_config()
  for key, value in overrides.items():
    config[key] = value
  return steps.create_train_state(
    jax.random.key(0),
    models.create_model(config, 10),
    optim.create_optimizer(config, steps_per_epoch=10),
    (28, 28, 1),
  )


def _train_step_hlo(state, image_shape=(28, 28, 1)):
  batch = {
    'image': jnp.zeros((4, *image_shape), jnp.uint8),
    'label': jnp.zeros((4,), jnp.int32),
  }
  step = jax.jit(lambda s, b: steps.train_step(s, b, jax.random.key(0)))
  return step.lower(state, batch).as_text()


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
def test_which_cnn_blocks_take_the_kernel():
  assert cpu_conv.why_not((4, 28, 28, 1), 16, jnp.float32) is None
  assert cpu_conv.why_not((4, 28, 28, 1), 16, jnp.bfloat16)
  assert cpu_conv.why_not((4, 28, 28, 1), 20, jnp.float32)  # 16 | C
  assert cpu_conv.why_not((4, 15, 28, 1), 16, jnp.float32)  # odd H
  xla = models.conv_relu_pool
  with accel.using(kernels='on'):
    assert accel.conv_block((4, 28, 28, 1), 16, jnp.float32, xla)
    with accel.disabled():
      assert accel.conv_block((4, 28, 28, 1), 16, jnp.float32, xla) is None
    assert accel.conv_block((4, 28, 28, 1), 16, jnp.float32, xla)

  text = _train_step_hlo(_cnn_state())
  assert text.count('@jaxcls_conv_block_forward(') == 2
  for overrides in (
    {'batchnorm': True},
    {'activation': 'tanh'},
    {'pooling': 'avg'},
    {'compute_dtype': 'bfloat16'},
  ):
    assert 'jaxcls_conv' not in _train_step_hlo(_cnn_state(**overrides)), (
      overrides
    )
  # 30 x 30 images: the second block sees 15 x 15 (odd) and takes XLA.
  model = models.CNN()
  variables = model.init(jax.random.key(0), jnp.zeros((2, 30, 30, 1)))
  text = jax.jit(model.apply).lower(variables, jnp.zeros((2, 30, 30, 1)))
  assert text.as_text().count('@jaxcls_conv_block_infer(') == 1


def test_same_parameters_and_the_same_training_with_and_without_the_kernel():
  with accel.disabled():
    plain = _cnn_state()
  state = _cnn_state()
  assert jax.tree.structure(state.params) == jax.tree.structure(plain.params)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(plain.params)):
    np.testing.assert_array_equal(a, b)  # same names, initialisers, keys

  rng = np.random.RandomState(0)
  batches = [
    {
      'image': jnp.asarray(rng.randint(0, 256, (32, 28, 28, 1), np.uint8)),
      'label': jnp.asarray(rng.randint(0, 10, (32,), np.int32)),
    }
    for _ in range(5)
  ]

  def train(state, off):
    with accel.disabled() if off else jax.named_scope('kernel'):
      step = jax.jit(lambda s, b: steps.train_step(s, b, jax.random.key(0)))
      assert ('jaxcls_conv' in step.lower(state, batches[0]).as_text()) != off
      losses = []
      for batch in batches:
        state, metrics = step(state, batch)
        losses.append(float(metrics['loss']))
    return state, losses

  state, losses = train(state, off=False)
  plain, plain_losses = train(plain, off=True)
  np.testing.assert_allclose(losses, plain_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(plain.params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_exports_hold_no_custom_call():
  state = _cnn_state()
  assert 'jaxcls_conv' in _train_step_hlo(state)
  serve = export.serving_function(state)
  text = jax.jit(serve).lower(jnp.zeros((2, 28, 28, 1), jnp.uint8)).as_text()
  assert 'jaxcls_' not in text


def test_without_a_compiler_xla_runs(monkeypatch, tmp_path):
  """A failed build is one warning line and a fallback, never an error."""
  monkeypatch.setattr(
    cpu_conv, '_state', {'tried': False, 'library': None, 'error': None}
  )
  monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
  monkeypatch.setenv('JAXCLS_CACHE', str(tmp_path / 'cache'))
  assert not cpu_conv.available()
  reason = cpu_conv.unavailable_reason()
  assert 'no C++ compiler' in reason and 'no-such-compiler' in reason
  assert cpu_conv.why_not((4, 28, 28, 1), 16, jnp.float32)
  assert 'jaxcls_conv' not in _train_step_hlo(_cnn_state())
