"""The epoch driver that a single run and a population share.

A run is ``total_steps`` optimizer steps, ``steps_per_epoch`` to an epoch,
taken in compiled calls of at most ``n_max`` steps that never cross an
epoch's end. :class:`Epochs` walks them: at each epoch's start it asks for
the epoch's batch rows (a function of (seed, epoch), so a resume reads the
same batches), runs the feed, and yields one :class:`Call` after each call.
The caller's loop does the rest (logging, checkpoints, validation, stopping)
and may ``break``. Single runs and populations differ only in their feed,
state and ``aux`` (a key; or the members' keys and who is active).
"""

import dataclasses
import time
from collections.abc import Callable, Iterator

import numpy as np


def call_sizes(n_max: int, steps_per_epoch: int) -> set[int]:
  """The call lengths of an epoch walked from its start: ``n_max`` steps
  (at most the epoch) and the epoch's remainder, compiled ahead of time."""
  n = min(n_max, steps_per_epoch)
  return {n, steps_per_epoch % n_max or n}


@dataclasses.dataclass
class Call:
  """What one compiled call did.

  Attributes:
    state: the state after the call.
    step: steps done after the call.
    epoch: the call's epoch, from 0.
    n: steps in the call.
    metrics: every call's metrics of this epoch so far, this one last.
    first_step: the epoch's first step this session (a resume's, mid-epoch).
    epoch_done: whether the call ended its epoch.
    started: ``time.perf_counter()`` before the epoch's first call of this
      session; the caller times the epoch once it has waited for it.
    input_seconds: the feed's host input time since then.
  """

  state: object
  step: int
  epoch: int
  n: int
  metrics: list
  first_step: int
  epoch_done: bool
  started: float
  input_seconds: float

  @property
  def opens_epoch(self) -> bool:
    """Whether this is the epoch's first call of this session."""
    return self.step - self.n == self.first_step


@dataclasses.dataclass
class Epochs:
  """Walks ``[start, total_steps)`` in calls of ``feed`` (see module doc).

  Attributes:
    feed: has ``compile(state, aux, n, batch)`` and ``run(state, rows,
      aux) -> (state, metrics)``, and an ``input_seconds`` counter.
    rows_for: ``epoch -> (steps_per_epoch, batch)`` int32 batch rows.
    steps_per_epoch: optimizer steps per epoch.
    n_max: the most steps per compiled call.
    start: the first step (a resumed run's saved step).
    total_steps: where the walk ends.
    aux: the feed's last argument, read at every call, so the caller may
      change it between calls (a population's active members).
  """

  feed: object
  rows_for: Callable[[int], np.ndarray]
  steps_per_epoch: int
  n_max: int
  start: int
  total_steps: int
  aux: object = None

  def compile(self, state, batch_size: int) -> float:
    """Compiles every call length ahead of time; returns the seconds."""
    t0 = time.perf_counter()
    for n in call_sizes(self.n_max, self.steps_per_epoch):
      self.feed.compile(state, self.aux, n, batch_size)
    return time.perf_counter() - t0

  def calls(self, state) -> Iterator[Call]:
    """Runs the calls from ``start``; yields a :class:`Call` after each."""
    spe, step = self.steps_per_epoch, self.start
    while step < self.total_steps:
      epoch, index = divmod(step, spe)
      if index == 0 or step == self.start:
        rows, metrics, first = self.rows_for(epoch), [], step
        inputs, started = self.feed.input_seconds, time.perf_counter()
      n = min(self.n_max, spe - index)
      state, m = self.feed.run(state, rows[index : index + n], self.aux)
      metrics.append(m)
      step += n
      yield Call(
        state,
        step,
        epoch,
        n,
        metrics,
        first,
        step % spe == 0,
        started,
        self.feed.input_seconds - inputs,
      )
