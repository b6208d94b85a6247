"""The CPU LSTM and GRU kernels (jaxcls.accel.cpu_rnn) against the fused scans.

The fused scans (``recurrent.lstm_sequence``, ``recurrent.gru_recurrence``)
are themselves tested against the textbook equations and autodiff of the
step path (test_recurrent.py); here the kernels must give their values and
gradients to float32 rounding, on shapes
that exercise every code path of the C++ (row blocks of 8 and a remainder,
32- and 16-wide column panels, one step), and keep each row's result
independent of how the batch was split across threads.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from backends import CPU_ONLY
from jaxcls import config as config_lib
from jaxcls import export, models, optim
from jaxcls.accel import cpu_rnn
from jaxcls.models import recurrent
from jaxcls.training import steps

pytestmark = CPU_ONLY


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


def _random_gru(steps, batch, features, hidden, seed=0, scale=0.3):
  """(projected inputs x_t W_i + b_i, w_h, b_h, h0); ``features`` unused."""
  del features
  keys = jax.random.split(jax.random.key(seed), 4)
  return (
    jax.random.normal(keys[0], (steps, batch, 3 * hidden)),
    scale * jax.random.normal(keys[1], (hidden, 3 * hidden)),
    jax.random.normal(keys[2], (3 * hidden,)),
    jax.random.normal(keys[3], (batch, hidden)),
  )


# kind: (random arguments, kernel, fused scan, batched argument positions)
KINDS = {
  'lstm': (
    _random_lstm,
    cpu_rnn.lstm_sequence,
    functools.partial(recurrent.lstm_sequence, jnp.float32),
    (0, 4),  # xs (T, B, D) and the (c, h) carry
  ),
  'gru': (
    _random_gru,
    cpu_rnn.gru_recurrence,
    functools.partial(recurrent.gru_recurrence, jnp.float32),
    (0, 3),  # projected (T, B, 3H) and h0
  ),
}


def _value_and_grads(sequence, args):
  def loss(*args):
    hs, last = sequence(*args)
    steps, _, hidden = hs.shape
    weights = jnp.sin(jnp.arange(steps * hidden)).reshape(steps, 1, hidden)
    # Every output path carries a cotangent: hs, and each final state.
    return (hs * weights).sum() + sum(
      (s**2 + 0.3 * s).sum() for s in jax.tree.leaves(last)
    )

  argnums = tuple(range(len(args)))
  return jax.jit(jax.value_and_grad(loss, argnums=argnums))(*args)


def test_the_kernels_build_on_this_machine():
  assert cpu_rnn.available(), cpu_rnn.unavailable_reason()


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
@pytest.mark.parametrize('kind', ['lstm', 'gru'])
@pytest.mark.parametrize(
  'steps,batch,features,hidden',
  [
    (28, 64, 28, 128),  # the article's layer: two row blocks of 32
    (5, 37, 7, 16),  # 8-row micro-blocks and 5 rows left; one 16-wide panel
    (3, 5, 4, 48),  # fewer rows than a micro-block; 32 + 16 column panels
    (1, 9, 3, 32),  # a single step
  ],
)
def test_values_and_gradients_match_the_fused_scan(
  kind, steps, batch, features, hidden
):
  make, kernel, scan, _ = KINDS[kind]
  args = make(steps, batch, features, hidden)
  got = _value_and_grads(kernel, args)
  want = _value_and_grads(scan, args)
  flat_got, flat_want = jax.tree.leaves(got), jax.tree.leaves(want)
  # The loss, then every input's gradient (LSTM: 4 arrays and c0, h0).
  assert len(flat_got) == len(flat_want) == {'lstm': 7, 'gru': 5}[kind]
  for g, w in zip(flat_got, flat_want):
    scale = float(jnp.abs(w).max())
    assert scale > 0
    np.testing.assert_allclose(g, w, rtol=0, atol=2e-5 * scale)


def _rows(tree, rows, time_major):
  return jax.tree.map(lambda a: a[:, rows] if time_major else a[rows], tree)


@pytest.mark.parametrize('kind', ['lstm', 'gru'])
def test_a_row_does_not_depend_on_how_the_batch_is_split(kind):
  """64 rows run as row blocks on the pool's threads; 8 of them alone run as
  one block: the same bits, forward and back (the tolerance above is for the
  fused scan's other order of sums, not for this). The input gradient is
  XLA's matmul outside the kernel, (T*B, 4H) @ W_i^T, whose order of sums
  may follow its M (it does on an AMD EPYC 7003): close, not equal."""
  make, kernel, _, (seq_at, state_at) = KINDS[kind]
  args = make(6, 64, 5, 32, seed=1)
  rows = slice(40, 48)

  def run(seq, state):
    def f(seq, state):
      call = list(args)
      call[seq_at], call[state_at] = seq, state
      return kernel(*call)

    (hs, last), pullback = jax.vjp(f, seq, state)
    return hs, last, pullback((jnp.cos(hs), last))

  whole = jax.jit(run)(args[seq_at], args[state_at])
  part = jax.jit(run)(
    _rows(args[seq_at], rows, True), _rows(args[state_at], rows, False)
  )
  hs, last, (d_seq, d_state) = whole
  want = (
    _rows(hs, rows, True),
    _rows(last, rows, False),
    _rows(d_state, rows, False),
  )
  got_hs, got_last, (got_d_seq, got_d_state) = part
  got_leaves = jax.tree.leaves((got_hs, got_last, got_d_state))
  want_leaves = jax.tree.leaves(want)
  assert len(got_leaves) == len(want_leaves)
  for got, expected in zip(got_leaves, want_leaves):
    np.testing.assert_array_equal(got, expected)
  expected = _rows(d_seq, rows, True)
  scale = float(jnp.abs(expected).max())
  np.testing.assert_allclose(got_d_seq, expected, rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize('kind', ['lstm', 'gru'])
def test_saturated_gates_and_nan_rows(kind):
  """Pre-activations in the hundreds saturate the gates without inf or NaN;
  a NaN in one row's input stays in that row (the training guards see it)."""
  make, kernel, scan, _ = KINDS[kind]
  args = list(make(4, 16, 3, 16, seed=2, scale=60.0))
  args[0] = 10.0 * args[0]
  hs, last = jax.jit(kernel)(*args)
  assert all(np.isfinite(a).all() for a in jax.tree.leaves((hs, last)))
  np.testing.assert_allclose(hs, jax.jit(scan)(*args)[0], rtol=0, atol=1e-5)
  args[0] = args[0].at[1, 3, 0].set(jnp.nan)
  bad = ~np.isfinite(np.asarray(jax.jit(kernel)(*args)[0]))
  assert bad[1, 3].any() and bad[2:, 3].all() and not bad[0].any()
  assert not np.delete(bad, 3, axis=1).any()


def test_vmap_runs_each_member_on_its_own():
  """vmap (the population's 'vmap' mode) over stacked weights."""
  args = _random_lstm(3, 8, 4, 16, seed=3)
  xs, w_i, w_h, b, carry = args
  stacked = jnp.stack([w_h, -w_h, 0.5 * w_h])
  hs = jax.jit(
    jax.vmap(lambda w: cpu_rnn.lstm_sequence(xs, w_i, w, b, carry)[0])
  )(stacked)
  for member, w in zip(hs, stacked):
    # Tight, not exact: XLA may fuse the input projection another way.
    np.testing.assert_allclose(
      member,
      jax.jit(cpu_rnn.lstm_sequence)(xs, w_i, w, b, carry)[0],
      rtol=0,
      atol=1e-6,
    )


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
@pytest.mark.parametrize('kind', ['lstm', 'gru'])
def test_layer_on_the_kernel_matches_the_step_path(kind):
  """A bidirectional layer (both directions on the kernel) against the
  step path (``unroll=2`` scans the cells), values and parameter gradients."""
  xs = jax.random.normal(jax.random.key(4), (6, 12, 5))
  kernel = recurrent.Bidirectional(kind, 16)
  stepped = recurrent.Bidirectional(kind, 16, unroll=2)
  params = jax.jit(kernel.init)(jax.random.key(0), xs)['params']
  params = jax.tree.map(  # random biases too, so that every term counts
    lambda p: p + 0.3 * jax.random.normal(jax.random.key(5), p.shape), params
  )

  def loss(layer, params):
    outputs, last = layer.apply({'params': params}, xs)
    return (outputs * jnp.cos(outputs)).sum() + (last**2).sum()

  text = jax.jit(functools.partial(loss, kernel)).lower(params).as_text()
  assert f'jaxcls_{kind}_forward' in text
  assert f'jaxcls_{kind}_forward' not in (
    jax.jit(functools.partial(loss, stepped)).lower(params).as_text()
  )
  got = jax.jit(jax.value_and_grad(functools.partial(loss, kernel)))(params)
  want = jax.jit(jax.value_and_grad(functools.partial(loss, stepped)))(params)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-4 * float(abs(w).max()))


def _state(kind, hidden):
  config = config_lib.get_config()
  config.model, config.hidden_size = kind, hidden
  model = models.create_model(config, 10)
  state = steps.create_train_state(
    jax.random.key(0),
    model,
    optim.create_optimizer(config, steps_per_epoch=10),
    (28, 28, 1),
  )
  return state


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
def test_which_layers_take_the_kernel():
  assert cpu_rnn.why_not(jnp.float32, 128) is None
  assert cpu_rnn.why_not(jnp.bfloat16, 128)  # float32 only
  assert cpu_rnn.why_not(jnp.float32, 20)  # H % 16 != 0

  batch = {
    'image': jnp.zeros((4, 28, 28, 1), jnp.uint8),
    'label': jnp.zeros((4,), jnp.int32),
  }
  for kind in ('lstm', 'gru'):
    state = _state(kind, 32)
    step = jax.jit(lambda s, b: steps.train_step(s, b, jax.random.key(0)))
    text = step.lower(state, batch).as_text()
    assert f'jaxcls_{kind}_forward' in text
    assert f'jaxcls_{kind}_backward' in text
    # An export never holds the custom call: it must run without jaxcls.
    serve = export.serving_function(state)
    exported = jax.jit(serve).lower(batch['image']).as_text()
    assert f'jaxcls_{kind}_forward' not in exported


def test_without_a_compiler_the_fused_scans_run(monkeypatch, tmp_path):
  """A failed build is one warning line and a fallback, never an error."""
  monkeypatch.setattr(
    cpu_rnn, '_state', {'tried': False, 'library': None, 'error': None}
  )
  monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
  monkeypatch.setenv('JAXCLS_CACHE', str(tmp_path / 'cache'))
  assert not cpu_rnn.available()
  reason = cpu_rnn.unavailable_reason()
  assert 'no C++ compiler' in reason and 'no-such-compiler' in reason
  assert cpu_rnn.why_not(jnp.float32, 128)
  for kind in ('lstm', 'gru'):
    layer = recurrent.Recurrent(kind, 16)
    xs = jnp.ones((3, 2, 4))
    params = layer.init(jax.random.key(0), xs)
    text = jax.jit(lambda p, x, f=layer.apply: f(p, x)).lower(params, xs)
    assert 'jaxcls_' not in text.as_text()
