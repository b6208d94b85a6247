"""A ``jax.profiler`` trace of chosen train steps: ``profile_steps``.

``--config.profile_steps=START:END`` traces steps START to END (counted from
0 over the whole run, as ``metrics.jsonl``'s steps are) into
``workdir/profile``, which TensorBoard's profile plugin opens
(``tensorboard --logdir W/profile``, with ``tensorboard-plugin-profile``).
Steps run in compiled calls of ``steps_per_call``, so the trace covers the
whole calls that hold those steps: from the first call that starts at or
after START to the call that reaches END, waited for before the trace
stops. Off (``''``, the default) it costs one attribute check per call.
Only process 0 traces.
"""

import os

import jax

from jaxcls.config import parse_steps  # noqa: F401  (profiling.parse_steps)

FOLDER = 'profile'


class StepTrace:
  """Starts and stops one trace around the calls that hold the steps.

  Call :meth:`after` with each call's state and step count; :meth:`close`
  at the end of the loop (a run that stops early still ends its trace).
  """

  def __init__(self, text: str, workdir: str, step: int):
    self.steps = parse_steps(text)
    self.folder = os.path.join(workdir, FOLDER)
    self.active = self.done = False
    if jax.process_index() != 0 or self.steps is None:
      self.done = True
    else:
      self._maybe_start(step)

  def _maybe_start(self, step: int) -> None:
    start, end = self.steps
    if start <= step < end:
      jax.profiler.start_trace(self.folder)
      self.active = True
    elif step >= end:
      self.done = True  # A resume past the range: nothing to trace.

  def after(self, state, step: int) -> None:
    """After a call that left ``step`` steps done (``state`` its output)."""
    if self.done:
      return
    if not self.active:
      self._maybe_start(step)
    elif step >= self.steps[1]:
      jax.block_until_ready(state)
      self.close()

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      self.done = True
