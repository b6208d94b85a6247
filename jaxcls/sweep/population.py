"""Populations: K models of one shape trained together on the same batches.

``train.train_step`` is a pure function of ``(state, batch, rng)``, so K
members differ only in their state and key (``member_state``); a member
whose seed is ``config.seed`` trains the same model as its config's single
run. The population trains with the single run's machinery (the epoch's
rows from ``feed.epoch_rows``, or ``feed.sequence_rows`` for sequences;
``feed.DeviceFeed``, or the host batches of ``feed.HostFeed`` cut to their
buckets; ``train.itstime``, ``guards``' metrics and non-finite policy);
only the step differs, chosen by ``config.population_mode`` (``modes``).

Epochs are validated as the single run's (``epoch_end.beats`` by ``best_by``
picks EMA or live weights, and the best epoch, whose candidate is kept). A
member is frozen when its loss diverges or stops improving (``patience``),
the others going on; a population ends when all its members are frozen.
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
from jaxcls.sweep.records import best_member, member_order
from jaxcls.training import epoch_end, epochs, guards
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
  'member_order',
  'members',
  'population_evaluate',
  'population_optimizer',
  'population_validate',
  'resolve_mode',
  'set_member_hyperparams',
  'take_member',
  'train_population',
  'unrolled',
  'vmapped',
]


def population_evaluate(
  evaluate, states, split: data.Split, batch_size: int, buckets=()
) -> dict:
  """Per-member accuracy and mean loss over every example of ``split`` once.

  Args:
    evaluate: ``PopulationSteps.evaluate`` (or ``evaluate_ema``).
    states: the members' states, in the mode's layout.
    split: the examples.
    batch_size: the evaluation batch size.
    buckets: sequences: the padded lengths of the batches (``Data.buckets``).

  Returns:
    ``{'accuracy', 'loss'}``, shape (K,) each (as ``train.evaluate``'s).
  """
  totals = None
  for batch in data.eval_batches(split, batch_size, buckets=buckets):
    sums = evaluate(states, batch)
    totals = (
      sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
    )
  totals = jax.device_get(totals)
  return {
    'accuracy': np.asarray(totals['correct'] / totals['count'], float),
    'loss': np.asarray(totals['loss'] / totals['count'], float),
  }


def population_validate(steps: PopulationSteps, states, ds, config) -> dict:
  """The members' epoch candidates, chosen as the single run chooses.

  Scores the live weights and, with an EMA (``steps.evaluate_ema``), the
  EMA's; a member's EMA is its candidate where it ``epoch_end.beats`` the
  live weights by ``best_by``.

  Returns:
    ``{'accuracy', 'loss'}`` of the candidates and ``'ema'`` (bools, True
    where the EMA was kept), shape (K,) each.
  """
  args = (ds.val, config.eval_batch_size, ds.buckets)
  val = population_evaluate(steps.evaluate, states, *args)
  kept = np.zeros(len(val['accuracy']), bool)
  if steps.evaluate_ema is not None:
    ema = population_evaluate(steps.evaluate_ema, states, *args)
    kept = np.asarray(epoch_end.beats(epoch_end.best_by_of(config), ema, val))
    val = {k: np.where(kept, ema[k], v) for k, v in val.items()}
  return {**val, 'ema': kept}


@dataclasses.dataclass
class PopulationResult:
  """Per-member outcomes of one population (arrays have its length K)."""

  val_accuracy: np.ndarray  # (K, epochs): NaN after a member stopped
  val_loss: np.ndarray  # (K, epochs): of the epoch's candidate, as accuracy
  train_loss: np.ndarray  # (K, epochs)
  best_val_accuracy: np.ndarray  # (K,), -1 if never improved
  best_val_loss: np.ndarray  # (K,) of the best epoch, -1 if never improved
  best_weights: np.ndarray  # (K,) 'live' or 'ema': the best epoch's kept
  best_epoch: np.ndarray  # (K,), 0 if never improved
  epochs_trained: np.ndarray  # (K,)
  diverged: np.ndarray  # (K,) bool: the training loss became non-finite
  best_states: list  # K TrainStates, each its best epoch's candidate
  final_states: list  # K TrainStates
  best_step: np.ndarray  # (K,) optimizer step of the best snapshot
  compile_seconds: float = 0.0
  train_seconds: float = 0.0

  @classmethod
  def start(cls, k: int, epochs: int, states) -> 'PopulationResult':
    copy = lambda tree: jax.tree_util.tree_map(jnp.copy, tree)
    return cls(
      val_accuracy=np.full((k, epochs), np.nan),
      val_loss=np.full((k, epochs), np.nan),
      train_loss=np.full((k, epochs), np.nan),
      best_val_accuracy=np.full(k, -1.0),
      best_val_loss=np.full(k, -1.0),
      best_weights=np.full(k, 'live', dtype=object),
      best_epoch=np.zeros(k, int),
      epochs_trained=np.zeros(k, int),
      diverged=np.zeros(k, bool),
      best_states=[copy(m) for m in members(states)],
      final_states=[],
      best_step=np.zeros(k, int),
    )


class _Unsaved:
  """``guards``' view of a member's checkpoints: none is written mid-run."""

  @staticmethod
  def latest_step():
    return None


def _train_losses(result, epoch, step, epoch_metrics, was_active, config, log):
  """Records the epoch's training loss of each member that ran it, or
  marks it diverged (``guards``' non-finite policy)."""
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


def end_of_epoch(
  result: PopulationResult,
  states,
  epoch: int,
  step: int,
  epoch_metrics: list,
  was_active: np.ndarray,
  val: dict,
  config,
  log,
) -> np.ndarray:
  """Records epoch ``epoch`` of every member that ran it.

  Args:
    result: the population's record, updated in place (the improved
      members' candidates copied into its ``best_states``).
    states: the members' states after the epoch.
    epoch, step: the epoch (from 1) and the optimizer step it ended at.
    epoch_metrics: the epoch's calls' metrics, ``(steps, K)`` each.
    was_active: who trained this epoch; val: ``population_validate``'s.
    config, log: the group's config (policy, patience, best_by), the log.

  Returns:
    Who keeps training: bools (K,), those that ran the epoch, did not
    diverge and (``patience`` > 0) improved within ``patience`` epochs.
  """
  _train_losses(result, epoch, step, epoch_metrics, was_active, config, log)
  running = was_active & ~result.diverged
  result.val_accuracy[running, epoch - 1] = val['accuracy'][running]
  result.val_loss[running, epoch - 1] = val['loss'][running]
  result.epochs_trained[was_active] += 1
  best = {'accuracy': result.best_val_accuracy, 'loss': result.best_val_loss}
  improved = running & epoch_end.beats(epoch_end.best_by_of(config), val, best)
  result.best_val_accuracy[improved] = val['accuracy'][improved]
  result.best_val_loss[improved] = val['loss'][improved]
  result.best_epoch[improved] = epoch
  result.best_step[improved] = step
  ema = val.get('ema', np.zeros(len(running), bool))
  for i in np.flatnonzero(improved):  # Copies: the next call donates states.
    candidate = member(states, i)
    if ema[i]:  # As the single run's best checkpoint: EMA weights as params.
      candidate = epoch_end.ema_as_state(candidate)
    result.best_weights[i] = 'ema' if ema[i] else 'live'
    result.best_states[i] = jax.tree_util.tree_map(jnp.copy, candidate)
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


def _epoch_line(epoch: int, val: dict, ran: np.ndarray, config) -> str:
  """The validation of the members that ran the epoch: accuracy, and the
  loss by ``best_by='loss'``; with an EMA, how many kept it."""
  pick = lambda key: val[key][ran] if ran.any() else np.full(1, np.nan)
  accs, losses = pick('accuracy'), pick('loss')
  line = (
    f'  [epoch {epoch}] val accuracy: best {accs.max():.4f} '
    f'mean {accs.mean():.4f}'
  )
  if epoch_end.best_by_of(config) == 'loss':
    finite = losses[np.isfinite(losses)]
    line += f'  val loss: best {finite.min() if finite.size else np.nan:.4f}'
  if config.ema_decay > 0:
    line += f'  EMA kept {int(val["ema"][ran].sum())}/{int(ran.sum())}'
  return line


def _close_epoch(result, steps, call, was_active, ds, config, log):
  """Evaluates and records the epoch ``call`` ends, logs its line; returns
  who keeps training."""
  jax.block_until_ready(call.state)
  seconds = time.perf_counter() - call.started
  result.train_seconds += seconds
  val = population_validate(steps, call.state, ds, config)
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
  line = _epoch_line(call.epoch + 1, val, was_active & ~result.diverged, config)
  log(f'{line}  active {int(active.sum())}/{len(active)}  time {seconds:.1f}s')
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
      many epochs without a better validation (by ``best_by``).
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
