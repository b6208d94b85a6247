"""The work between the loop's calls, and at the end of each epoch.

After every call the loop logs (every ``log_every_steps``), saves mid-epoch
(every ``checkpoint_every_steps``) and answers stop signals; after an epoch's
last call it validates, keeps the best model, saves the latest state and
decides on an early stop (:func:`end_of_epoch`).
"""

import time

import numpy as np

from jaxcls import optim
from jaxcls.training import guards
from jaxcls.training import metrics as metrics_lib
from jaxcls.training.session import Progress, Run, log
from jaxcls.training.steps import TrainState


def itstime(step: int, every: int, steps_done: int = 1) -> bool:
  """Whether the call that just ended at ``step`` (after ``steps_done``
  steps) crossed a multiple of ``every`` (big_vision's ``itstime``)."""
  return every > 0 and step // every > (step - steps_done) // every


def ema_as_state(state: TrainState) -> TrainState:
  """``state`` with its moving-average variables in place of the live ones."""
  return state.replace(
    params=state.ema['params'], batch_stats=state.ema.get('batch_stats')
  )


def best_by_of(config) -> str:
  """``config.best_by``: 'accuracy' (the default) or 'loss'."""
  return config.get('best_by', 'accuracy')


def beats(best_by: str, a: dict, b: dict):
  """Whether scores ``a`` beat scores ``b`` by ``best_by``.

  ``a`` and ``b`` hold ``'accuracy'`` and ``'loss'``, numbers or numpy
  arrays (compared elementwise). ``'accuracy'``: a strictly higher
  accuracy; ``'loss'``: a strictly lower loss. A non-finite loss never
  beats; any finite one beats a ``b`` loss below 0 (-1: none yet) or NaN.
  The one rule of both choices: EMA or live weights, and the best epoch.
  """
  if best_by == 'loss':
    unset = np.isnan(b['loss']) | (np.asarray(b['loss']) < 0)
    return np.isfinite(a['loss']) & (unset | (a['loss'] < b['loss']))
  return a['accuracy'] > b['accuracy']


def _ema_note(best_by: str, ema_val: dict, val: dict, kept: bool) -> str:
  """`` (EMA 0.9123[, kept])``; by loss, with the two losses."""
  shown = f'{ema_val["accuracy"]:.4f}'
  if best_by == 'loss':
    shown += f', loss {ema_val["loss"]:.4f} vs live {val["loss"]:.4f}'
  return f' (EMA {shown}, kept)' if kept else f' (EMA {shown})'


def _validate(run: Run, state) -> tuple[dict, object, str, str]:
  """``(val, candidate, weights, note)``: the epoch's validation scores and
  the state they belong to, the EMA's when it validates better (``beats``
  by ``best_by``)."""
  val = run.score(state, run.ds.val)
  candidate, weights, ema_note = state, 'live', ''
  if state.ema is not None:
    best_by = best_by_of(run.config)
    ema_state = ema_as_state(state)
    ema_val = run.score(ema_state, run.ds.val)
    kept = bool(beats(best_by, ema_val, val))
    ema_note = _ema_note(best_by, ema_val, val, kept)
    if kept:
      live_accuracy = val['accuracy']
      val, candidate, weights = ema_val, ema_state, 'ema'
      val['live_accuracy'] = live_accuracy
  return val, candidate, weights, ema_note


def _write_epoch(run: Run, epoch, step, totals, val, seconds, writer) -> None:
  """The epoch's scalars, with the learning rate of the next update."""
  learning_rate = optim.learning_rate_schedule(
    run.config, optim.optimizer_steps(run.config, run.steps_per_epoch)
  )
  next_update = step // optim.accumulate_steps(run.config)
  writer.write_scalars(
    step,
    metrics_lib.epoch_scalars(
      epoch, totals, val, seconds, learning_rate(next_update)
    ),
  )


def _early_stop(run: Run, epoch: int, progress: Progress) -> bool:
  """True (and says why) after ``patience`` epochs without a better val."""
  patience = run.config.patience
  if patience and epoch - progress.best_epoch >= patience:
    by_loss = best_by_of(run.config) == 'loss'
    log(
      f'Early stop: no better validation {"loss" if by_loss else "accuracy"} '
      f'for {patience} epochs (best '
      f'{progress.best_val_loss if by_loss else progress.best_val_accuracy:.4f}'
      f' at epoch {progress.best_epoch}).'
    )
    return True
  return False


def _better(config, val: dict, progress: Progress) -> bool:
  """Whether this epoch's validation beats the best so far (``beats``): a
  higher accuracy (``best_by='accuracy'``), or a lower finite loss
  (``'loss'``: for a validation set so small that its accuracy saturates
  early)."""
  best = {
    'accuracy': progress.best_val_accuracy,
    'loss': progress.best_val_loss,
  }
  return bool(beats(best_by_of(config), val, best))


def end_of_epoch(
  run: Run,
  state,
  epoch: int,
  step: int,
  totals: dict,
  seconds: float,
  progress: Progress,
  writer,
) -> bool:
  """Validates, keeps the best model, saves, logs; True to stop early.

  With an EMA of the weights, both are validated and the better one is the
  epoch's candidate; a best checkpoint of EMA weights holds them as its
  params (meta ``weights: ema``), so everything that reads it uses them.
  """
  val, candidate, weights, ema_note = _validate(run, state)
  if _better(run.config, val, progress):
    progress.best_val_accuracy, progress.best_epoch = val['accuracy'], epoch
    progress.best_val_loss = val['loss']
    run.save(run.best, candidate, epoch, progress, weights=weights)
  run.save(run.latest, state, epoch, progress)
  unit = 'sequences' if run.ds.spec.is_sequence else 'images'
  log(
    f'[epoch {epoch}] training accuracy: '
    f'{totals["correct"] / totals["count"]:.3f}  '
    f'loss {totals["loss"] / totals["count"]:.4f}  '
    f'val accuracy {val.get("live_accuracy", val["accuracy"]):.4f}'
    f'{ema_note}  '
    f'time {seconds:.1f}s  {totals["count"] / seconds:,.0f} {unit}/s'
  )
  _write_epoch(run, epoch, step, totals, val, seconds, writer)
  return _early_stop(run, epoch, progress)


def stop_if_asked(run: Run, stop, due: bool, state, step, progress) -> None:
  """Saves ``step`` and exits if any process was asked to stop."""
  received = guards.agreed_stop(stop, due)
  if received:
    run.save(run.latest, state, step // run.steps_per_epoch, progress)
    guards.exit_on_signal(received, step, run.workdir, run.latest, run.best)


def after_call(run: Run, call, progress: Progress, writer, feed) -> bool:
  """Logs, checkpoints mid-epoch, and ends the epoch; True: stop early."""
  config, spe, step = run.config, run.steps_per_epoch, call.step
  policy = (config.nonfinite_policy, config.max_nonfinite_steps)
  if itstime(step, config.log_every_steps, call.n):
    window = {
      k: v[-config.log_every_steps :]
      for k, v in guards.per_step(
        call.metrics[-config.log_every_steps :]  # calls >= steps: enough
      ).items()
    }
    writer.write_scalars(step, metrics_lib.window_scalars(window, step / spe))
  if not call.epoch_done:
    if itstime(step, config.checkpoint_every_steps, call.n):
      # Mid-epoch only: an epoch's end is saved after its validation.
      guards.check_finite(call.metrics, call.first_step, run.latest, *policy)
      run.save(run.latest, call.state, call.epoch, progress)
    return False
  totals = guards.epoch_totals(
    call.metrics, call.first_step, run.latest, *policy
  )
  seconds = time.perf_counter() - call.started
  progress.train_seconds += seconds
  progress.input_seconds += call.input_seconds
  progress.images_trained += int(totals['count'])
  return end_of_epoch(
    run, call.state, call.epoch + 1, step, totals, seconds, progress, writer
  )
