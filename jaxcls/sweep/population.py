"""Populations: K models of one shape trained together on the same batches.

``train.train_step`` is a pure function of ``(state, batch, rng)``, so K
members differ only in their state and key. The learning rate and weight
decay live in the optimizer state (``optax.inject_hyperparams``), so one
``tx``, and one compilation, serves every member, and a member's seed gives
its init key and step key split exactly as ``train.train_loop`` does. A
member whose seed is the population's ``config.seed`` therefore trains the
same model as the single run of its config.

The population trains with the single run's machinery: the epoch's rows from
``feed.epoch_rows``, the training split on the device and ``n`` steps per
compiled call (``feed.DeviceFeed``), ``train.itstime`` for the periodic log
line, ``guards`` for the metrics and the non-finite policy (per member: a
member that diverges is frozen, the others go on). Only the step differs,
chosen by ``config.population_mode``:

* ``'vmap'``: ``jax.vmap`` of the step over a leading member axis; one wide
  step keeps an accelerator busy where one small CNN cannot;
* ``'unrolled'``: the members as a Python loop inside one jit;
* ``'loop'``: one compiled member step (the single run's), each member run
  over the whole epoch in turn (frozen members are skipped, so early
  stopping saves their time);
* ``'auto'``: ``'loop'`` on XLA:CPU, ``'vmap'`` elsewhere.

Why ``'loop'`` on CPU (benchmarks/NOTES.md, sweep_speed): XLA:CPU turns vmap
over per-member kernels applied to per-member activations into a grouped
convolution, several times slower than K plain ones; the unrolled jit
compiles K times the program and, on a 2-core machine, ran about 1.5x the
CPU time of K calls of the one-member step (XLA runs the independent members
concurrently and they contend for the cores and caches). K calls of one
compiled step do exactly the sequential runs' arithmetic with one
compilation instead of K.

Early stopping: a member whose validation accuracy has not improved for
``patience`` epochs is frozen (``jnp.where`` in one jit, skipped in
``'loop'``); a population ends when all its members are frozen. Each
member's best-validation parameters are kept.
"""

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxcls import data, models, optim
from jaxcls.ops import fastpath
from jaxcls.training import epochs, guards, parallel
from jaxcls.training import feed as feed_lib
from jaxcls.training import run as train

MODES = ('auto', 'vmap', 'unrolled', 'loop')


def resolve_mode(mode: str, backend: str | None = None) -> str:
  """``mode``, with ``'auto'`` resolved for ``backend`` (default: JAX's)."""
  if mode not in MODES:
    raise ValueError(
      f'unknown population_mode {mode!r}; choose one of '
      f'{list(MODES)} (--config.population_mode=...)'
    )
  if mode != 'auto':
    return mode
  return 'loop' if (backend or jax.default_backend()) == 'cpu' else 'vmap'


def population_optimizer(
  config, steps_per_epoch: int
) -> optax.GradientTransformation:
  """``optim.create_optimizer``'s chain with lr / weight decay as state.

  ``optim.base_optimizer(inject=True)`` moves the optimizer's numbers into
  ``opt_state.hyperparams``, where :func:`set_member_hyperparams` overwrites
  them per member. A schedule is applied as a unit-peak multiplier after the
  update, which is what optax does with a scheduled learning rate (decoupled
  decay included).
  """
  opt = optim.base_optimizer(config, 1.0, inject=True)
  if config.lr_schedule != 'constant':
    unit = ml_collections.ConfigDict(config.to_dict())
    unit.learning_rate = 1.0
    opt = optax.chain(
      opt,
      optax.scale_by_schedule(
        optim.learning_rate_schedule(
          unit, optim.optimizer_steps(config, steps_per_epoch)
        )
      ),
    )
  return optim.guard(opt, config)


def set_member_hyperparams(opt_state, learning_rate, weight_decay):
  """Writes one member's lr (and weight decay, if the optimizer has one)."""
  values = {'learning_rate': learning_rate}
  if optax.tree_utils.tree_get(opt_state, 'weight_decay') is not None:
    values['weight_decay'] = weight_decay
  return optax.tree_utils.tree_set(opt_state, **values)


def init_member(
  seed,
  learning_rate,
  weight_decay,
  *,
  model,
  tx,
  image_shape,
  ema: bool = False,
):
  """``(state, train_rng)`` of one member, its keys split from ``key(seed)``
  as ``train.train_loop`` splits them."""
  init_rng, train_rng = jax.random.split(jax.random.key(seed))
  state = train.create_train_state(init_rng, model, tx, image_shape, ema)
  state = state.replace(
    opt_state=set_member_hyperparams(
      state.opt_state, learning_rate, weight_decay
    )
  )
  return state, train_rng


def take_member(tree, index: int):
  """Member ``index`` of a pytree with a leading member axis."""
  return jax.tree_util.tree_map(lambda x: x[index], tree)


def members(states) -> list:
  """The members' states as a list: a tuple as is, a stacked tree split."""
  if isinstance(states, (list, tuple)):
    return list(states)
  return [take_member(states, i) for i in range(len(states.step))]


def member(states, index: int):
  """Member ``index``'s state, in either layout."""
  if isinstance(states, (list, tuple)):
    return states[index]
  return take_member(states, index)


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
  """Mode 'loop': ``feed.DeviceFeed`` of the one-member step (``member_n``
  steps per compiled call, as the single run), run for each active member
  in turn over all the rows it is given. Rows of a whole epoch keep one
  member's weights hot in the caches for the epoch; the members' order does
  not change their arithmetic. Metrics ``(steps, K)``, frozen members 0."""

  def __init__(self, step, train_split: data.Split, mesh, member_n: int):
    self._feed = feed_lib.DeviceFeed(step, train_split, mesh)
    self._n = member_n

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


@dataclasses.dataclass
class PopulationSteps:
  """A group's model, optimizer and compiled pieces, shared by its chunks."""

  mode: str
  init: object  # (seeds, lrs, wds) -> (states, keys) in the mode's layout
  make_feed: object  # () -> a feed of the population step
  evaluate: object  # (states, batch) -> per-member sums, (K,)
  steps_per_epoch: int
  feeds: dict = dataclasses.field(default_factory=dict)  # K -> feed


def make_population_steps(
  config, ds: data.Data, mode: str = 'auto'
) -> PopulationSteps:
  """Builds the model, the optimizer and the steps of one group, once."""
  mode = resolve_mode(mode)
  steps_per_epoch = len(ds.train) // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(
      f'batch_size={config.batch_size} is larger than the '
      f'{len(ds.train)} training examples; lower '
      '--config.batch_size'
    )
  model = models.create_model(config, ds.spec.num_classes)
  tx = population_optimizer(config, steps_per_epoch)
  one = functools.partial(
    init_member,
    model=model,
    tx=tx,
    image_shape=ds.spec.image_shape,
    ema=config.ema_decay > 0,
  )
  step, eval_step = train.configured_steps(config, ds.spec)
  mesh = parallel.make_mesh()
  if mode == 'vmap':
    init = jax.jit(jax.vmap(one))
    make_feed = lambda: feed_lib.DeviceFeed(vmapped(step), ds.train, mesh)
    evaluate = fastpath.jit(jax.vmap(eval_step, in_axes=(0, None)))
  else:
    init_one = jax.jit(one)

    def init(seeds, lrs, wds):
      pairs = [init_one(*v) for v in zip(seeds, lrs, wds)]
      return tuple(s for s, _ in pairs), [k for _, k in pairs]

    eval_one = fastpath.jit(eval_step)
    if mode == 'unrolled':
      make_feed = lambda: feed_lib.DeviceFeed(unrolled(step), ds.train, mesh)
      evaluate = fastpath.jit(
        lambda states, batch: _stack_members(
          [eval_step(s, batch) for s in states]
        )
      )
    else:
      make_feed = lambda: MemberFeed(
        step, ds.train, mesh, feed_lib.steps_per_call(config)
      )
      evaluate = lambda states, batch: _stack_members(
        [eval_one(s, batch) for s in states]
      )
  return PopulationSteps(mode, init, make_feed, evaluate, steps_per_epoch)


def population_evaluate(
  evaluate, states, split: data.Split, batch_size: int
) -> np.ndarray:
  """Per-member accuracy (K,) over every example of ``split`` once."""
  totals = None
  for batch in data.eval_batches(split, batch_size):
    sums = evaluate(states, batch)
    totals = (
      sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
    )
  totals = jax.device_get(totals)
  return totals['correct'] / totals['count']


@dataclasses.dataclass
class PopulationResult:
  """Per-member outcomes of one population (arrays have its length K)."""

  val_accuracy: np.ndarray  # (K, epochs): NaN after a member stopped
  train_loss: np.ndarray  # (K, epochs)
  best_val_accuracy: np.ndarray  # (K,)
  best_epoch: np.ndarray  # (K,), 0 if never evaluated finite
  epochs_trained: np.ndarray  # (K,)
  diverged: np.ndarray  # (K,) bool: the training loss became non-finite
  best_states: list  # K TrainStates, each the member's best epoch's
  final_states: list  # K TrainStates
  best_step: np.ndarray  # (K,) optimizer step of the best snapshot
  compile_seconds: float = 0.0
  train_seconds: float = 0.0

  @classmethod
  def start(cls, k: int, epochs: int, states) -> 'PopulationResult':
    copy = lambda tree: jax.tree_util.tree_map(jnp.copy, tree)
    return cls(
      np.full((k, epochs), np.nan),
      np.full((k, epochs), np.nan),
      np.full(k, -1.0),
      np.zeros(k, int),
      np.zeros(k, int),
      np.zeros(k, bool),
      [copy(m) for m in members(states)],
      [],
      np.zeros(k, int),
    )


class _Unsaved:
  """``guards``' view of a member's checkpoints: none is written mid-run."""

  @staticmethod
  def latest_step():
    return None


def end_of_epoch(
  result: PopulationResult,
  states,
  epoch: int,
  step: int,
  epoch_metrics: list,
  was_active: np.ndarray,
  val: np.ndarray,
  config,
  log,
) -> np.ndarray:
  """Records epoch ``epoch`` (from 1) of every member that ran it, keeps
  the improved members' parameters; returns who keeps training."""
  steps = guards.per_step(epoch_metrics)  # (steps, K) each
  first = step - len(steps['loss'])
  for i in np.flatnonzero(was_active):
    try:
      totals = guards.epoch_totals(
        [{k: v[:, i] for k, v in steps.items()}],
        first,
        _Unsaved,
        config.nonfinite_policy,
        config.max_nonfinite_steps,
      )
    except guards.NonFiniteLossError as e:
      result.diverged[i] = True
      log(f'  member {i}: {e}')
      continue
    result.train_loss[i, epoch - 1] = totals['loss'] / totals['count']
  running = was_active & ~result.diverged
  result.val_accuracy[running, epoch - 1] = val[running]
  result.epochs_trained[was_active] += 1
  improved = running & (val > result.best_val_accuracy)
  result.best_val_accuracy[improved] = val[improved]
  result.best_epoch[improved] = epoch
  result.best_step[improved] = step
  for i in np.flatnonzero(improved):  # Copies: the next call donates states.
    result.best_states[i] = jax.tree_util.tree_map(jnp.copy, member(states, i))
  still = running.copy()
  if config.patience:
    still &= (epoch - result.best_epoch) < config.patience
  return still


def train_population(
  config,
  values: list,
  ds: data.Data,
  *,
  mode: str = 'auto',
  log=print,
  steps: PopulationSteps | None = None,
) -> PopulationResult:
  """Trains the members ``values`` (dicts of traced fields) of one group.

  ``config`` is the group's single-run config (its seed, learning rate and
  weight decay are overridden per member). All members read the batches of
  ``config.seed``'s epoch order; ``config.patience`` > 0 freezes a member
  after that many epochs without a better validation accuracy. Pass the
  group's ``steps`` (whose mode then applies) to share its compilation
  across populations of the same size.
  """
  steps = steps or make_population_steps(config, ds, mode)
  k, spe = len(values), steps.steps_per_epoch
  column = lambda name, dtype: np.asarray(
    [v.get(name, config[name]) for v in values], dtype
  )
  states, keys = steps.init(
    column('seed', np.int32),
    column('learning_rate', np.float32),
    column('weight_decay', np.float32),
  )
  result = PopulationResult.start(k, config.num_epochs, states)
  if k not in steps.feeds:
    steps.feeds[k] = steps.make_feed()
  shard_ids = tuple(range(len(ds.train_shards)))
  walk = epochs.Epochs(
    steps.feeds[k],
    lambda epoch: feed_lib.epoch_rows(
      config.seed,
      epoch,
      ds.train_shards,
      shard_ids,
      config.batch_size // len(shard_ids),
    ),
    spe,
    # A call of 'loop' runs every member over a whole epoch (MemberFeed).
    spe if steps.mode == 'loop' else feed_lib.steps_per_call(config),
    0,
    config.num_epochs * spe,
    aux=(keys, np.ones(k, bool)),
  )
  result.compile_seconds = walk.compile(states, config.batch_size)
  for call in walk.calls(states):
    states, active = call.state, walk.aux[1]
    if call.opens_epoch:
      was_active = active.copy()
    if not call.epoch_done:
      if train.itstime(call.step, config.log_every_steps, call.n):
        _log_loss(call, active, config, log)
      continue
    jax.block_until_ready(states)
    seconds = time.perf_counter() - call.started
    result.train_seconds += seconds
    val = population_evaluate(
      steps.evaluate, states, ds.val, config.eval_batch_size
    )
    active = end_of_epoch(
      result,
      states,
      call.epoch + 1,
      call.step,
      call.metrics,
      was_active,
      val,
      config,
      log,
    )
    walk.aux = (keys, active)
    ran = val[was_active & ~result.diverged]
    log(
      f'  [epoch {call.epoch + 1}] val accuracy: best '
      f'{ran.max() if ran.size else np.nan:.4f} mean '
      f'{ran.mean() if ran.size else np.nan:.4f}  '
      f'active {int(active.sum())}/{k}  time {seconds:.1f}s'
    )
    if not active.any():
      break
  result.final_states = members(states)
  return result


def _log_loss(call, active: np.ndarray, config, log) -> None:
  """The recent loss, mean over the training members."""
  recent = guards.per_step(call.metrics)['loss'][-config.log_every_steps :]
  log(
    f'  [step {call.step}] recent loss, mean over the '
    f'{int(active.sum())} training members: '
    f'{np.nanmean(recent[:, active]) / config.batch_size:.4f}'
  )


def best_member(best_val_accuracy) -> int:
  """The selected member: argmax of validation accuracy (first on ties)."""
  return int(np.argmax(np.asarray(best_val_accuracy)))
