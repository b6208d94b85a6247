"""Guards that keep a run's work: signals, and non-finite losses.

A SIGTERM (preemption) or SIGINT (Ctrl-C) is only recorded when it arrives;
the training loop finishes its step, saves a checkpoint and then exits
through :func:`exit_on_signal`. With several processes a signal often
reaches one host first, so before each call they agree on it
(:func:`agreed_stop`): all of them save the same step and exit alike.
Non-finite losses are checked on the host at
log and epoch boundaries (never per step, to keep the device pipeline full).
"""

import signal
import sys

import jax
import numpy as np


class NonFiniteLossError(RuntimeError):
  """The training loss became NaN or infinite."""


class StopSignal:
  """Records SIGTERM/SIGINT so the loop can checkpoint and exit cleanly."""

  def __init__(self):
    self.received = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


# With several processes, they agree on a signal every this many steps (and
# at each epoch's start): one all-gather, ~1 ms over gloo on one machine.
STOP_CHECK_STEPS = 32


def agreed_stop(stop: StopSignal, due: bool = True) -> str | None:
  """The signal any process received: the same answer on every process.

  One process: its own record, at every call. Several: when ``due`` (the
  same on every process), one all-gather of an int per process, so that a
  signal that reached one host stops every host at the same step.
  """
  if jax.process_count() == 1:
    return stop.received
  if not due:
    return None
  from jax.experimental import multihost_utils

  mine = 0 if stop.received is None else signal.Signals[stop.received].value
  everyone = multihost_utils.process_allgather(np.int32(mine))
  received = [int(s) for s in np.ravel(everyone) if s]
  return signal.Signals(received[0]).name if received else None


def check_finite(
  metrics: list,
  first_step: int,
  latest,
  policy: str = 'stop',
  max_in_a_row: int = 0,
) -> int:
  """Raises NonFiniteLossError as ``policy`` says; returns the skipped count.

  'stop': any non-finite loss stops the run. 'skip': the optimizer dropped
  those steps (optax.apply_if_finite); only more than ``max_in_a_row`` in a
  row stops it.
  """
  return _check_losses(
    per_step(metrics)['loss'], first_step, latest, policy, max_in_a_row
  )


def _check_losses(
  losses: np.ndarray, first_step: int, latest, policy: str, max_in_a_row: int
) -> int:
  """:func:`check_finite` on the per-step losses, already on the host."""
  bad = ~np.isfinite(losses)
  if not bad.any():
    return 0
  first_bad = first_step + int(np.flatnonzero(bad)[0]) + 1
  last = latest.latest_step()
  kept = (
    f'The last good checkpoint (step {last}) is kept; '
    if last is not None
    else 'No checkpoint had been saved yet; '
  ) + 'lower --config.learning_rate or set --config.grad_clip_norm'
  if policy != 'skip':
    raise NonFiniteLossError(
      f'the training loss became non-finite at step {first_bad}; stopped. '
      + kept
    )
  run = longest = 0
  for b in bad:
    run = run + 1 if b else 0
    longest = max(longest, run)
  if longest > max_in_a_row:
    raise NonFiniteLossError(
      f'more than {max_in_a_row} non-finite steps in a row (first at step '
      f'{first_bad}); stopped. ' + kept
    )
  return int(bad.sum())


def exit_on_signal(name: str, step: int, workdir: str, *managers) -> None:
  """After the checkpoint at ``step`` is saved: say so, exit 128 + signal.

  Waits for every manager's pending save first (the latest one, and a best
  model saved at the same epoch's end): an exit with a save in flight loses
  it, and with several processes leaves the others waiting at its barrier.
  """
  from jaxcls.training import checkpoint

  for manager in managers:
    checkpoint.wait(manager)
  if jax.process_index() == 0:
    print(
      f'{name}: saved a checkpoint at step {step} in {workdir}; run the '
      'same command to resume.',
      flush=True,
    )
  sys.exit(128 + signal.Signals[name].value)


def per_step(metrics: list) -> dict:
  """The calls' metrics (scalars, or ``(n,)`` for ``n`` steps per call) as
  host arrays with one entry per step. Fetching them is a host sync."""
  fetched = jax.device_get(metrics)
  return {
    k: np.concatenate([np.atleast_1d(m[k]) for m in fetched])
    for k in fetched[0]
  }


def epoch_totals(
  metrics: list,
  first_step: int,
  latest,
  policy: str = 'stop',
  max_in_a_row: int = 0,
) -> dict:
  """The epoch's summed metrics over the steps that were applied.

  Raises NonFiniteLossError as :func:`check_finite` does. With the 'skip'
  policy, steps with a non-finite loss left the parameters unchanged, so they
  are left out of the sums too, and a line says how many there were.
  """
  steps = per_step(metrics)  # One host fetch for the check and the sums.
  skipped = _check_losses(
    steps['loss'], first_step, latest, policy, max_in_a_row
  )
  kept = np.isfinite(steps['loss'])
  if skipped:
    print(
      f'Skipped {skipped} steps with a non-finite loss this epoch.', flush=True
    )
    if not kept.any():
      kept[:1] = True
  return {k: v[kept].sum() for k, v in steps.items()}
