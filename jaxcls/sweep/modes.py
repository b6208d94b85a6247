"""The population step of each ``population_mode``, and a group's steps.

* ``'vmap'``: ``jax.vmap`` of the step over a leading member axis; one wide
  step keeps an accelerator busy where one small CNN cannot;
* ``'unrolled'``: the members as a Python loop inside one jit;
* ``'loop'``: one compiled member step (the single run's), each member run
  over the whole epoch in turn (frozen members are skipped, so early
  stopping saves their time);
* ``'auto'``: ``'loop'`` on XLA:CPU, ``'vmap'`` elsewhere.

Every mode's step takes ``(states, batch, (keys, active))`` and leaves a
frozen (inactive) member's state as it was.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls import data, models
from jaxcls.ops import fastpath
from jaxcls.sweep import member_state
from jaxcls.training import epoch_end, epochs, parallel
from jaxcls.training import feed as feed_lib
from jaxcls.training import run as train

MODES = ('auto', 'vmap', 'unrolled', 'loop')


def resolve_mode(mode: str, backend: str | None = None) -> str:
  """``mode``, with ``'auto'`` resolved.

  Args:
    mode: one of ``MODES``.
    backend: the JAX backend 'auto' is resolved for (default: JAX's).

  Returns:
    'vmap', 'unrolled' or 'loop'.

  Raises:
    ValueError: an unknown mode.
  """
  if mode not in MODES:
    raise ValueError(
      f'unknown population_mode {mode!r}; choose one of '
      f'{list(MODES)} (--config.population_mode=...)'
    )
  if mode != 'auto':
    return mode
  # Why 'loop' on CPU (benchmarks/NOTES.md, sweep_speed): XLA:CPU turns vmap
  # over per-member kernels applied to per-member activations into a grouped
  # convolution, several times slower than K plain ones; the unrolled jit
  # compiles K times the program and its independent members contend for
  # the cores and caches. K calls of one compiled step do exactly the
  # sequential runs' arithmetic with one compilation instead of K.
  return 'loop' if (backend or jax.default_backend()) == 'cpu' else 'vmap'


def _where(keep, new, old):
  """``new`` where ``keep`` (one bool per leading member) else ``old``."""

  def pick(n, o):
    shape = keep.shape + (1,) * (n.ndim - keep.ndim)
    return jnp.where(jnp.reshape(keep, shape), n, o)

  return jax.tree_util.tree_map(pick, new, old)


def vmapped(step):
  """The population step of mode 'vmap': ``(states, batch, (keys, active))``
  with a leading member axis; frozen members keep their state."""

  def run(states, batch, keys_active):
    keys, active = keys_active
    new, metrics = jax.vmap(step, in_axes=(0, None, 0))(states, batch, keys)
    return _where(active, new, states), metrics

  return run


def unrolled(step):
  """The population step of mode 'unrolled': a tuple of member states, the
  members as a Python loop inside the one compiled call."""

  def run(states, batch, keys_active):
    keys, active = keys_active
    out, metrics = [], []
    for i, state in enumerate(states):
      new, m = step(state, batch, keys[i])
      out.append(_where(active[i], new, state))
      metrics.append(m)
    return tuple(out), jax.tree_util.tree_map(lambda *m: jnp.stack(m), *metrics)

  return run


@jax.jit
def _stack_members(metrics):
  return jax.tree_util.tree_map(lambda *m: jnp.stack(m, -1), *metrics)


@jax.jit
def _concat_calls(metrics):
  return jax.tree_util.tree_map(lambda *m: jnp.concatenate(m), *metrics)


class MemberFeed:
  """Mode 'loop': ``feed`` of the one-member step (``member_n`` steps per
  call, as the single run), run for each active member in turn over all the
  rows it is given. Rows of a whole epoch keep one member's weights hot in
  the caches for the epoch; the members' order does not change their
  arithmetic. Metrics ``(steps, K)``, frozen members 0."""

  def __init__(self, feed, member_n: int):
    self._feed, self._n = feed, member_n

  @property
  def input_seconds(self) -> float:
    return self._feed.input_seconds

  def compile(self, states, keys_active, n: int, batch_size: int):
    for calls in epochs.call_sizes(self._n, n):
      self._feed.compile(states[0], keys_active[0][0], calls, batch_size)

  def run(self, states, rows: np.ndarray, keys_active):
    keys, active = keys_active
    states, metrics = list(states), [None] * len(states)
    for i in np.flatnonzero(active):
      calls = []
      for start in range(0, len(rows), self._n):
        states[i], m = self._feed.run(
          states[i], rows[start : start + self._n], keys[i]
        )
        calls.append(m)
      metrics[i] = _concat_calls(calls)
    zeros = jax.tree_util.tree_map(
      jnp.zeros_like, next(m for m in metrics if m is not None)
    )
    return tuple(states), _stack_members(
      [zeros if m is None else m for m in metrics]
    )


class SequenceFeed:
  """Sequences: the single run's ``feed.HostFeed`` of ``step`` (each batch
  gathered on the host, cut to the bucket of its longest, with its lengths;
  one program per bucket, jitted as ``parallel.jit_steps`` jits it), any
  ``n`` steps per call, metrics stacked ``(n, ...)`` as a device feed's."""

  def __init__(self, step, eval_step, ds: data.Data, mesh):
    steps = parallel.jit_steps(step, eval_step, mesh)  # Its eval: unused.
    self._feed = feed_lib.HostFeed(steps, ds.train, ds.buckets)
    self._compiled = False

  @property
  def input_seconds(self) -> float:
    return self._feed.input_seconds

  def compile(self, state, aux, n: int, batch_size: int):
    """Compiles one step per bucket, once: a call of any ``n`` runs them."""
    if not self._compiled:
      self._feed.compile(state, aux, n, batch_size)
      self._compiled = True

  def run(self, state, rows: np.ndarray, aux):
    metrics = []
    for row in rows:
      state, m = self._feed.run(state, row[None], aux)
      metrics.append(m)
    return state, jax.tree_util.tree_map(lambda *m: jnp.stack(m), *metrics)


@dataclasses.dataclass
class PopulationSteps:
  """A group's model, optimizer and compiled pieces, shared by its chunks."""

  mode: str
  init: object  # (seeds, lrs, wds) -> (states, keys) in the mode's layout
  make_feed: object  # () -> a feed of the population step
  evaluate: object  # (states, batch) -> per-member sums, (K,)
  steps_per_epoch: int
  # As evaluate, of the members' EMA weights; None without an EMA.
  evaluate_ema: object = None
  feeds: dict = dataclasses.field(default_factory=dict)  # K -> feed


def _steps_per_epoch(config, ds: data.Data) -> int:
  """Full batches per epoch; ValueError if there is none."""
  steps_per_epoch = len(ds.train) // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(
      f'batch_size={config.batch_size} is larger than the '
      f'{len(ds.train)} training examples; lower '
      '--config.batch_size'
    )
  return steps_per_epoch


def _tuple_init(one):
  """'unrolled' and 'loop': ``init`` of a tuple of member states."""
  init_one = jax.jit(one)

  def init(seeds, lrs, wds):
    pairs = [init_one(*v) for v in zip(seeds, lrs, wds)]
    return tuple(s for s, _ in pairs), [k for _, k in pairs]

  return init


def _train_feed(step, eval_step, ds: data.Data, mesh):
  """The feed of a population (or member) step: the training split on the
  device for images, the single run's host batches for sequences."""
  if ds.spec.is_sequence:
    return SequenceFeed(step, eval_step, ds, mesh)
  return feed_lib.DeviceFeed(step, ds.train, mesh)


def _population_eval(mode: str, eval_step):
  """``(states, batch) -> per-member sums, (K,)`` of ``eval_step`` in
  ``mode``'s layout of the members' states."""
  if mode == 'vmap':
    return fastpath.jit(jax.vmap(eval_step, in_axes=(0, None)))
  if mode == 'unrolled':
    return fastpath.jit(
      lambda states, batch: _stack_members(
        [eval_step(s, batch) for s in states]
      )
    )
  eval_one = fastpath.jit(eval_step)
  return lambda states, batch: _stack_members(
    [eval_one(s, batch) for s in states]
  )


def _mode_pieces(mode, one, step, eval_step, make_feed, member_n) -> tuple:
  """``(init, make_feed, evaluate)`` of ``mode``; ``make_feed(step,
  eval_step)`` makes the feed of a population (or member) step."""
  evaluate = _population_eval(mode, eval_step)
  if mode == 'vmap':
    return (
      jax.jit(jax.vmap(one)),
      lambda: make_feed(vmapped(step), evaluate),
      evaluate,
    )
  if mode == 'unrolled':
    return (
      _tuple_init(one),
      lambda: make_feed(unrolled(step), evaluate),
      evaluate,
    )
  return (
    _tuple_init(one),
    lambda: MemberFeed(make_feed(step, eval_step), member_n),
    evaluate,
  )


def make_population_steps(
  config, ds: data.Data, mode: str = 'auto'
) -> PopulationSteps:
  """Builds the model, the optimizer and the steps of one group, once.

  Args:
    config: the group's single-run config.
    ds: the data; its training split goes to the feed (images: on the
      device; sequences: host batches cut to ``ds.buckets``).
    mode: one of ``MODES``.

  Returns:
    The group's ``PopulationSteps`` (its mode resolved).

  Raises:
    ValueError: an unknown mode, or a batch larger than the training split.
  """
  mode = resolve_mode(mode)
  steps_per_epoch = _steps_per_epoch(config, ds)
  model = models.create_model(config, ds.spec.num_classes)
  tx = member_state.population_optimizer(config, steps_per_epoch)
  one = functools.partial(
    member_state.init_member,
    model=model,
    tx=tx,
    image_shape=ds.spec.image_shape,
    ema=config.ema_decay > 0,
    input_dtype=member_state.input_dtype(ds.spec),
  )
  step, eval_step = train.configured_steps(config, ds.spec)
  mesh = parallel.make_mesh()
  init, make_feed, evaluate = _mode_pieces(
    mode,
    one,
    step,
    eval_step,
    lambda s, e: _train_feed(s, e, ds, mesh),
    feed_lib.steps_per_call(config),
  )
  evaluate_ema = None
  if config.ema_decay > 0:  # The single run's: eval_step of ema_as_state.
    evaluate_ema = _population_eval(
      mode, lambda s, b: eval_step(epoch_end.ema_as_state(s), b)
    )
  return PopulationSteps(
    mode, init, make_feed, evaluate, steps_per_epoch, evaluate_ema
  )
