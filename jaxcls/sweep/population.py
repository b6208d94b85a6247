"""Populations: K models of one shape trained together on the same batches.

``train.train_step`` is a pure function of ``(state, batch, rng)``, so K
members differ only in their state and key (``member_state``); a member
whose seed is ``config.seed`` trains the same model as its config's single
run. The population trains with the single run's machinery (the epoch's
rows from ``feed.epoch_rows``, or ``feed.sequence_rows`` for sequences;
``feed.DeviceFeed``, or the host batches of ``feed.HostFeed`` cut to their
buckets; ``train.itstime``, ``guards``' metrics and non-finite policy);
only the step differs, chosen by ``config.population_mode`` (``modes``).

A member is frozen, the others going on, when its loss diverges or its
validation accuracy has not improved for ``patience`` epochs; a population
ends when all its members are frozen. Each member's best parameters are kept.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls import data
from jaxcls.sweep.member_state import (
  init_member,
  member,
  members,
  population_optimizer,
  set_member_hyperparams,
  take_member,
)
from jaxcls.sweep.modes import (
  MODES,
  MemberFeed,
  PopulationSteps,
  make_population_steps,
  resolve_mode,
  unrolled,
  vmapped,
)
from jaxcls.training import epochs, guards
from jaxcls.training import feed as feed_lib
from jaxcls.training import run as train

__all__ = [
  'MODES',
  'MemberFeed',
  'PopulationResult',
  'PopulationSteps',
  'best_member',
  'end_of_epoch',
  'epoch_rows',
  'init_member',
  'make_population_steps',
  'member',
  'members',
  'population_evaluate',
  'population_optimizer',
  'resolve_mode',
  'set_member_hyperparams',
  'take_member',
  'train_population',
  'unrolled',
  'vmapped',
]


def population_evaluate(
  evaluate, states, split: data.Split, batch_size: int, buckets=()
) -> np.ndarray:
  """Per-member accuracy over every example of ``split`` once.

  Args:
    evaluate: ``PopulationSteps.evaluate``.
    states: the members' states, in the mode's layout.
    split: the examples.
    batch_size: the evaluation batch size.
    buckets: sequences: the padded lengths of the batches (``Data.buckets``).

  Returns:
    The accuracies, shape (K,).
  """
  totals = None
  for batch in data.eval_batches(split, batch_size, buckets=buckets):
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
  """Records epoch ``epoch`` of every member that ran it.

  Args:
    result: the population's record, updated in place (the improved
      members' parameters copied into its ``best_states``).
    states: the members' states after the epoch.
    epoch, step: the epoch (from 1) and the optimizer step it ended at.
    epoch_metrics: the epoch's calls' metrics, ``(steps, K)`` each.
    was_active: who trained this epoch; val: their validation accuracy.
    config, log: the group's config (policy, patience) and the log.

  Returns:
    Who keeps training: bools (K,), those that ran the epoch, did not
    diverge and (``patience`` > 0) improved within ``patience`` epochs.
  """
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


def _member_columns(config, values: list) -> tuple:
  """The members' seeds, learning rates and weight decays, as arrays; a
  field a member does not set is the config's."""
  column = lambda name, dtype: np.asarray(
    [v.get(name, config[name]) for v in values], dtype
  )
  return (
    column('seed', np.int32),
    column('learning_rate', np.float32),
    column('weight_decay', np.float32),
  )


def epoch_rows(config, ds: data.Data, epoch: int) -> np.ndarray:
  """The epoch's batch rows of ``config.seed``, as the single run's
  (``feed.data_rows``): by length for one shard of sequences."""
  shard_ids = tuple(range(len(ds.train_shards)))
  per_shard = config.batch_size // len(shard_ids)
  return feed_lib.data_rows(config.seed, epoch, ds, shard_ids, per_shard)


def _epoch_walk(config, ds: data.Data, steps: PopulationSteps, aux):
  """The ``epochs.Epochs`` walk of a population of ``len(aux[1])``: every
  member reads the batches of ``config.seed``'s epoch order."""
  feed, spe = steps.feeds[len(aux[1])], steps.steps_per_epoch
  return epochs.Epochs(
    feed,
    lambda epoch: epoch_rows(config, ds, epoch),
    spe,
    # A call of 'loop' runs every member over a whole epoch (MemberFeed).
    spe if steps.mode == 'loop' else feed_lib.steps_per_call(config),
    0,
    config.num_epochs * spe,
    aux=aux,
  )


def _close_epoch(result, steps, call, was_active, ds, config, log):
  """Evaluates and records the epoch ``call`` ends, logs its line; returns
  who keeps training."""
  jax.block_until_ready(call.state)
  seconds = time.perf_counter() - call.started
  result.train_seconds += seconds
  val = population_evaluate(
    steps.evaluate, call.state, ds.val, config.eval_batch_size, ds.buckets
  )
  active = end_of_epoch(
    result,
    call.state,
    call.epoch + 1,
    call.step,
    call.metrics,
    was_active,
    val,
    config,
    log,
  )
  ran = val[was_active & ~result.diverged]
  log(
    f'  [epoch {call.epoch + 1}] val accuracy: best '
    f'{ran.max() if ran.size else np.nan:.4f} mean '
    f'{ran.mean() if ran.size else np.nan:.4f}  '
    f'active {int(active.sum())}/{len(active)}  time {seconds:.1f}s'
  )
  return active


def train_population(
  config,
  values: list,
  ds: data.Data,
  *,
  mode: str = 'auto',
  log=print,
  steps: PopulationSteps | None = None,
) -> PopulationResult:
  """Trains the members ``values`` of one group on the same batches.

  Args:
    config: the group's single-run config (seed, learning rate and weight
      decay set per member); ``patience`` > 0 freezes a member after that
      many epochs without a better validation accuracy.
    values: one dict of traced fields per member.
    ds, log: the data, and what prints the progress lines.
    mode: the population mode, when ``steps`` is not given.
    steps: the group's ``make_population_steps`` (its mode then applies),
      to share its compilation across populations of the same size.

  Returns:
    The members' ``PopulationResult``.
  """
  steps = steps or make_population_steps(config, ds, mode)
  k = len(values)
  states, keys = steps.init(*_member_columns(config, values))
  result = PopulationResult.start(k, config.num_epochs, states)
  if k not in steps.feeds:
    steps.feeds[k] = steps.make_feed()
  walk = _epoch_walk(config, ds, steps, (keys, np.ones(k, bool)))
  result.compile_seconds = walk.compile(states, config.batch_size)
  for call in walk.calls(states):
    states, active = call.state, walk.aux[1]
    if call.opens_epoch:
      was_active = active.copy()
    if not call.epoch_done:
      if train.itstime(call.step, config.log_every_steps, call.n):
        _log_loss(call, active, config, log)
      continue
    active = _close_epoch(result, steps, call, was_active, ds, config, log)
    walk.aux = (keys, active)
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
  """The selected member: argmax of validation accuracy (first on ties).

  Args:
    best_val_accuracy: each member's best validation accuracy.

  Returns:
    The index of the member.
  """
  return int(np.argmax(np.asarray(best_val_accuracy)))
