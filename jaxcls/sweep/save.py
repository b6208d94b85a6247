"""The best member, written as a normal run.

It goes through the single run's own ``train.setup``/``Run.save``/
``train.finish``: ``checkpoints/{best,latest}`` and ``results.json``, so
``--eval_only``, report and predict work on it.
"""

import jax
import jax.numpy as jnp
import optax

from jaxcls import data
from jaxcls.sweep import population
from jaxcls.training import checkpoint
from jaxcls.training import run as train


def single_run_state(
  state: train.TrainState, member: train.TrainState
) -> train.TrainState:
  """``state`` (a single run's) holding the member's parameters, statistics,
  weight average and step.

  The population's optimizer state is laid out by ``inject_hyperparams``; it
  is carried over when, unwrapped, it has the single run's layout (e.g.
  adamw with a constant rate), so that training can resume; otherwise the
  single run's optimizer starts fresh there.

  Args:
    state: a single run's state, from ``train.setup``.
    member: one member's state, from a ``PopulationResult``.

  Returns:
    The new state.
  """
  state = state.replace(
    params=member.params,
    step=jnp.asarray(member.step),
    batch_stats=member.batch_stats,
    ema=member.ema,
  )
  inner = getattr(member.opt_state, 'inner_state', None)
  if isinstance(
    member.opt_state, optax.InjectStatefulHyperparamsState
  ) and jax.tree_util.tree_structure(inner) == jax.tree_util.tree_structure(
    state.opt_state
  ):
    state = state.replace(opt_state=inner)
  return state


def save_best_member(
  workdir: str,
  member_cfg,
  ds: data.Data,
  result: population.PopulationResult,
  row: int,
) -> dict:
  """Writes member ``row`` as a normal run and scores it on test, once.

  Args:
    workdir: the sweep's workdir, the run's.
    member_cfg: the member's single-run config.
    ds: the data.
    result: the member's population.
    row: the member's row in ``result``.

  Returns:
    ``train.finish``'s results (test accuracy included).
  """
  run = train.setup(member_cfg, workdir, ds=ds)
  final = result.final_states[row]
  epochs = int(result.epochs_trained[row])
  progress = train.Progress(
    best_val_accuracy=float(result.best_val_accuracy[row]),
    best_epoch=int(result.best_epoch[row]),
    best_val_loss=float(result.best_val_loss[row]),
    train_seconds=result.train_seconds,  # the whole population's
    images_trained=int(final.step) * member_cfg.batch_size,
  )
  best = single_run_state(run.state, result.best_states[row])
  latest = single_run_state(run.state, final)
  # As the single run's: EMA weights as the params when the EMA was kept.
  weights = str(result.best_weights[row])
  run.save(run.best, best, progress.best_epoch, progress, weights=weights)
  run.save(run.latest, latest, epochs, progress)
  checkpoint.wait(run.best)
  checkpoint.wait(run.latest)
  stopped = epochs < member_cfg.num_epochs and not result.diverged[row]
  return train.finish(
    run, run.steps.place(latest), int(final.step), progress, stopped
  )
