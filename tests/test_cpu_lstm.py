"""The CPU LSTM kernel (jaxcls.cpu_lstm) against the fused scan.

The fused scan (``recurrent.lstm_sequence``) is itself tested against the
textbook equations and autodiff of the step path (test_recurrent.py); here
the kernel must give its values and gradients to float32 rounding, on shapes
that exercise every code path of the C++ (row blocks of 8 and a remainder,
32- and 16-wide column panels, one step), and keep each row's result
independent of how the batch was split across threads.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcls import config as config_lib
from jaxcls import cpu_lstm, export, models, optim, recurrent, steps


def _random_lstm(steps, batch, features, hidden, seed=0, scale=0.3):
  keys = jax.random.split(jax.random.key(seed), 6)
  return (
    jax.random.normal(keys[0], (steps, batch, features)),
    scale * jax.random.normal(keys[1], (features, 4 * hidden)),
    scale * jax.random.normal(keys[2], (hidden, 4 * hidden)),
    jax.random.normal(keys[3], (4 * hidden,)),
    (
      jax.random.normal(keys[4], (batch, hidden)),
      0.5 * jax.random.normal(keys[5], (batch, hidden)),
    ),
  )


def _value_and_grads(sequence, args):
  xs, w_i, w_h, b, carry = args
  weights = jnp.sin(jnp.arange(xs.shape[0] * w_h.shape[0])).reshape(
    xs.shape[0], 1, -1
  )

  def loss(xs, w_i, w_h, b, carry):
    hs, (c, h) = sequence(xs, w_i, w_h, b, carry)
    # Every output path carries a cotangent: hs, and both final states.
    return (hs * weights).sum() + (h**2).sum() + (0.3 * c).sum()

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))(*args)


def _fused_scan(*args):
  return recurrent.lstm_sequence(jnp.float32, *args)


def test_the_kernel_builds_on_this_machine():
  assert cpu_lstm.available(), cpu_lstm.unavailable_reason()


@pytest.mark.parametrize(
  'steps,batch,features,hidden',
  [
    (28, 64, 28, 128),  # the article's LSTM: two row blocks of 32
    (5, 37, 7, 16),  # 8-row micro-blocks and 5 rows left; one 16-wide panel
    (3, 5, 4, 48),  # fewer rows than a micro-block; 32 + 16 column panels
    (1, 9, 3, 32),  # a single step
  ],
)
def test_values_and_gradients_match_the_fused_scan(
  steps, batch, features, hidden
):
  args = _random_lstm(steps, batch, features, hidden)
  got = _value_and_grads(cpu_lstm.lstm_sequence, args)
  want = _value_and_grads(_fused_scan, args)
  flat_got, flat_want = jax.tree.leaves(got), jax.tree.leaves(want)
  assert len(flat_got) == len(flat_want) == 7  # loss, 4 arrays, c0, h0
  for g, w in zip(flat_got, flat_want):
    scale = float(jnp.abs(w).max())
    assert scale > 0
    np.testing.assert_allclose(g, w, rtol=0, atol=2e-5 * scale)


def test_a_row_does_not_depend_on_how_the_batch_is_split():
  """64 rows run as row blocks on the pool's threads; 8 of them alone run as
  one block: the same bits, forward and back (the tests' tolerance above is
  for the other order of sums in the fused scan, not for this)."""
  xs, w_i, w_h, b, (c0, h0) = _random_lstm(6, 64, 5, 32, seed=1)
  rows = slice(40, 48)

  def run(xs, c0, h0):
    (hs, carry), pullback = jax.vjp(
      lambda xs, c0, h0: cpu_lstm.lstm_sequence(xs, w_i, w_h, b, (c0, h0)),
      xs,
      c0,
      h0,
    )
    return hs, carry, pullback((jnp.cos(hs), (carry[0], carry[1])))

  whole = jax.jit(run)(xs, c0, h0)
  part = jax.jit(run)(xs[:, rows], c0[rows], h0[rows])
  hs, (c, h), (d_xs, d_c0, d_h0) = whole
  want = (hs[:, rows], c[rows], h[rows], d_xs[:, rows], d_c0[rows], d_h0[rows])
  for got, expected in zip(jax.tree.leaves(part), want):
    np.testing.assert_array_equal(got, expected)


def test_saturated_gates_and_nan_rows():
  """Pre-activations of +-200 saturate the gates without inf or NaN; a NaN
  in one row's input stays in that row (the training guards see it)."""
  xs, w_i, w_h, b, carry = _random_lstm(4, 16, 3, 16, seed=2, scale=60.0)
  hs, (c, h) = jax.jit(cpu_lstm.lstm_sequence)(xs, w_i, w_h, b, carry)
  assert np.isfinite(hs).all() and np.isfinite(c).all()
  want_hs, _ = jax.jit(_fused_scan)(xs, w_i, w_h, b, carry)
  np.testing.assert_allclose(hs, want_hs, rtol=0, atol=1e-5)
  hs, _ = jax.jit(cpu_lstm.lstm_sequence)(
    xs.at[1, 3, 0].set(jnp.nan), w_i, w_h, b, carry
  )
  bad = ~np.isfinite(np.asarray(hs))
  assert bad[1:, 3].all() and not bad[0].any()
  assert not np.delete(bad, 3, axis=1).any()


def test_vmap_runs_each_member_on_its_own():
  """vmap (the population's 'vmap' mode) over stacked weights."""
  args = _random_lstm(3, 8, 4, 16, seed=3)
  xs, w_i, w_h, b, carry = args
  stacked = jnp.stack([w_h, -w_h, 0.5 * w_h])
  hs = jax.jit(
    jax.vmap(lambda w: cpu_lstm.lstm_sequence(xs, w_i, w, b, carry)[0])
  )(stacked)
  for member, w in zip(hs, stacked):
    # Tight, not exact: XLA may fuse the input projection another way.
    np.testing.assert_allclose(
      member,
      jax.jit(cpu_lstm.lstm_sequence)(xs, w_i, w, b, carry)[0],
      rtol=0,
      atol=1e-6,
    )


def test_layer_on_the_kernel_matches_the_step_path():
  """A bidirectional layer (both directions on the kernel) against the
  step path (``unroll=2`` scans the cells), values and parameter gradients."""
  xs = jax.random.normal(jax.random.key(4), (6, 12, 5))
  kernel = recurrent.Bidirectional('lstm', 16)
  stepped = recurrent.Bidirectional('lstm', 16, unroll=2)
  params = jax.jit(kernel.init)(jax.random.key(0), xs)['params']

  def loss(layer, params):
    outputs, last = layer.apply({'params': params}, xs)
    return (outputs * jnp.cos(outputs)).sum() + (last**2).sum()

  text = jax.jit(functools.partial(loss, kernel)).lower(params).as_text()
  assert 'jaxcls_lstm_forward' in text
  got = jax.jit(jax.value_and_grad(functools.partial(loss, kernel)))(params)
  want = jax.jit(jax.value_and_grad(functools.partial(loss, stepped)))(params)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-4 * float(abs(w).max()))


def _lstm_state(hidden):
  config = config_lib.get_config()
  config.model, config.hidden_size = 'lstm', hidden
  model = models.create_model(config, 10)
  state = steps.create_train_state(
    jax.random.key(0),
    model,
    optim.create_optimizer(config, steps_per_epoch=10),
    (28, 28, 1),
  )
  return state


def test_which_layers_take_the_kernel():
  assert cpu_lstm.use_kernel(jnp.float32, 128)
  assert not cpu_lstm.use_kernel(jnp.bfloat16, 128)  # float32 only
  assert not cpu_lstm.use_kernel(jnp.float32, 20)  # H % 16 != 0
  with cpu_lstm.disabled():
    assert not cpu_lstm.use_kernel(jnp.float32, 128)
  assert cpu_lstm.use_kernel(jnp.float32, 128)  # restored afterwards

  state = _lstm_state(32)
  batch = {
    'image': jnp.zeros((4, 28, 28, 1), jnp.uint8),
    'label': jnp.zeros((4,), jnp.int32),
  }
  step = jax.jit(lambda s, b: steps.train_step(s, b, jax.random.key(0)))
  text = step.lower(state, batch).as_text()
  assert 'jaxcls_lstm_forward' in text and 'jaxcls_lstm_backward' in text
  # An export never holds the custom call: it must run without jaxcls.
  serve = export.serving_function(state)
  exported = jax.jit(serve).lower(batch['image']).as_text()
  assert 'jaxcls_lstm' not in exported


def test_without_a_compiler_the_fused_scan_runs(monkeypatch, tmp_path):
  """A failed build is one warning line and a fallback, never an error."""
  monkeypatch.setattr(
    cpu_lstm, '_state', {'tried': False, 'library': None, 'error': None}
  )
  monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
  monkeypatch.setenv('JAXCLS_CACHE', str(tmp_path / 'cache'))
  assert not cpu_lstm.available()
  reason = cpu_lstm.unavailable_reason()
  assert 'no C++ compiler' in reason and 'no-such-compiler' in reason
  assert not cpu_lstm.use_kernel(jnp.float32, 128)
  layer = recurrent.Recurrent('lstm', 16)
  xs = jnp.ones((3, 2, 4))
  params = layer.init(jax.random.key(0), xs)
  text = jax.jit(lambda p, x: layer.apply(p, x)).lower(params, xs).as_text()
  assert 'jaxcls_lstm' not in text
