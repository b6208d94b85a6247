"""The training loop: ``train_and_evaluate(config, workdir)``.

One flat loop over calls of ``n`` steps (jaxcls.training.feed): it loads
data, resumes from the workdir if it holds a checkpoint, evaluates on the
validation split every epoch, keeps the best model, and scores that model
once on the test split. Its pieces live beside it: the setup in
jaxcls.training.session, the work between calls in jaxcls.training.epoch_end,
the end in jaxcls.training.results, evaluation in jaxcls.training.evaluation
and the pure steps in jaxcls.training.steps. What callers use as ``train.X``
(``from jaxcls.training import run as train``) is re-exported here; an
import ``as`` its own name is such a re-export.
"""

import functools
import os
import sys

import jax
import numpy as np

from jaxcls import config as config_lib
from jaxcls.ops import fastpath
from jaxcls.training import (
  checkpoint,
  epochs,
  evaluation,
  guards,
  parallel,
  profiling,
)
from jaxcls.training import feed as feed_lib
from jaxcls.training import metrics as metrics_lib
from jaxcls.training import workdir as workdir_lib
from jaxcls.training.epoch_end import after_call, itstime, stop_if_asked
from jaxcls.training.epoch_end import ema_as_state as ema_as_state
from jaxcls.training.epoch_end import end_of_epoch as end_of_epoch
from jaxcls.training.evaluation import evaluate, params_sha256
from jaxcls.training.results import evaluate_best, finish
from jaxcls.training.session import Progress as Progress
from jaxcls.training.session import (
  Run,
  configured_steps,
  log,
  resume,
  setup,
)
from jaxcls.training.session import make_steps as make_steps
from jaxcls.training.steps import (
  TrainState,
  check_batch,
  create_train_state,
  cross_entropy,
  eval_step,
  model_variables,
  train_step,
)
from jaxcls.training.steps import eval_options as eval_options
from jaxcls.training.steps import step_options as step_options

__all__ = [
  'TrainState',
  'check_batch',
  'create_train_state',
  'cross_entropy',
  'eval_step',
  'model_variables',
  'train_step',
  'evaluate',
  'params_sha256',
  'train_and_evaluate',
]

NonFiniteLossError = guards.NonFiniteLossError
_to_host = evaluation.to_host  # tests/run_tiny.py reads train._to_host


def make_feed(run: Run, rng):
  """The device or host feed for ``run`` (see jaxcls.training.feed)."""
  step, _ = configured_steps(run.config, run.ds.spec)
  if feed_lib.use_device_data(run.config):
    return feed_lib.DeviceFeed(step, run.ds.train, run.steps.mesh)
  return feed_lib.HostFeed(run.steps, run.ds.train, run.ds.buckets)


def train_and_evaluate(config, workdir: str, eval_only: bool = False) -> dict:
  """Trains ``config.model`` on ``config.dataset``; returns the results dict.

  Resumes from ``workdir`` when it holds a checkpoint of the same config.
  The workdir is locked for the whole run (jaxcls.training.workdir).

  Args:
    config: the run's config (jaxcls.config.get_config's fields); it is
      validated first.
    workdir: where checkpoints, logs and results.json are kept.
    eval_only: restore the best checkpoint and score it on test, only.

  Returns:
    The results dict, also written to ``workdir/results.json``.
  """
  config_lib.validate(config)
  parallel.initialize_distributed(config)
  with workdir_lib.lock(workdir, take=jax.process_index() == 0):
    workdir_lib.read_results(workdir)  # A corrupt file fails now, not later.
    # A resumed run takes the recorded kernel path again: bit for bit.
    with fastpath.following(workdir_lib.read_kernels(workdir)):
      run = setup(config, workdir)
      results = evaluate_best(run) if eval_only else train_loop(run)
    if jax.process_index() == 0:
      workdir_lib.write_results(workdir, results)
      log(
        f'Results: {workdir_lib.results_path(workdir)}; checkpoints: '
        f'{os.path.join(workdir, "checkpoints")}; logs: '
        f'{os.path.join(workdir, "metrics.jsonl")} and '
        f'{os.path.join(workdir, "tb")} (tensorboard --logdir '
        f'{os.path.join(workdir, "tb")})'
      )
    return results


def _epochs(run: Run, train_rng, start: int) -> epochs.Epochs:
  """The walk over this run's calls, from step ``start`` to the last."""
  config, spe = run.config, run.steps_per_epoch
  return epochs.Epochs(
    make_feed(run, train_rng),
    functools.partial(_epoch_rows, run),
    spe,
    feed_lib.steps_per_call(config),
    start,
    config.num_epochs * spe,
    aux=train_rng,
  )


def _epoch_rows(run: Run, epoch: int) -> np.ndarray:
  """The epoch's batch rows: by length for one shard of sequences."""
  return feed_lib.data_rows(
    run.config.seed, epoch, run.ds, run.shard_ids, run.per_shard
  )


def _report_buckets(run: Run, walk) -> None:
  """Sequences: the compiled programs, and the padding share of epoch 1."""
  from jaxcls import data

  rows = walk.rows_for(0)
  share = data.buckets.padding_share(run.ds.train.lengths, rows, run.ds.buckets)
  programs = getattr(walk.feed, 'compiled_programs', 0)
  run.results.update(
    padded_lengths=list(run.ds.buckets),
    compiled_programs=programs,
    padding_share=share,
  )
  if jax.process_index() == 0:
    print(
      f'Compiled {programs} training programs (padded lengths '
      f'{list(run.ds.buckets)}) in {run.results["compile_seconds"]:.1f} s; '
      f'padding is {share:.1%} of the steps of an epoch.',
      flush=True,
    )


def train_loop(run: Run) -> dict:
  """The one training loop: :class:`.epochs.Epochs`' calls, flat."""
  config = run.config
  train_rng = jax.random.split(jax.random.key(config.seed))[1]
  state, progress = resume(run)
  start = int(state.step)
  state = run.steps.place(state)
  walk = _epochs(run, train_rng, start)
  local_batch = run.per_shard * len(run.shard_ids)
  run.results['compile_seconds'] = walk.compile(state, local_batch)
  if run.ds.buckets:
    _report_buckets(run, walk)
  writer = metrics_lib.MetricWriter(run.workdir, config)
  trace = profiling.StepTrace(
    config.get('profile_steps', ''), run.workdir, start
  )
  with guards.StopSignal() as stop:
    state, step, stopped_early = _calls(
      run, walk, state, start, progress, writer, trace, stop
    )
    trace.close()
    checkpoint.wait(run.latest)
    checkpoint.wait(run.best)
    writer.close()
    received = guards.agreed_stop(stop)
    if received and step < walk.total_steps and not stopped_early:
      guards.exit_on_signal(received, step, run.workdir, run.latest, run.best)
    return finish(run, state, step, progress, stopped_early)


def _calls(run: Run, walk, state, step, progress, writer, trace, stop):
  """Runs ``walk``'s calls from ``step``: ``(state, step, stopped_early)``."""
  spe = run.steps_per_epoch
  # Several XLA:CPU devices share one small thread pool: with many steps in
  # flight their all-reduce rendezvous can starve and abort the process, so
  # there the loop waits for each call. Real accelerators keep the pipeline.
  one_in_flight = (
    jax.default_backend() == 'cpu' and jax.local_device_count() > 1
  )
  stopped_early, bar = False, None
  # Checked before every call (several processes: every few, and at each
  # epoch's start); all get the same answer, and all save this step.
  if step < walk.total_steps:
    stop_if_asked(run, stop, True, state, step, progress)
  for call in walk.calls(state):
    state, step = call.state, call.step
    if one_in_flight:
      jax.block_until_ready(call.metrics[-1])
    if call.opens_epoch:
      bar = _progress(spe, call.first_step - call.epoch * spe, call.epoch)
    if bar is not None:
      bar.update(call.n)
    trace.after(state, step)
    stopped_early = after_call(run, call, progress, writer, feed=walk.feed)
    if call.epoch_done and bar is not None:
      bar = bar.close()
    if stopped_early:
      break
    if step < walk.total_steps:
      due = step % spe == 0 or itstime(step, guards.STOP_CHECK_STEPS, call.n)
      stop_if_asked(run, stop, due, state, step, progress)
  return state, step, stopped_early


def _progress(total: int, done: int, epoch: int):
  """A tqdm bar inside the epoch, only when output is a terminal."""
  if not sys.stdout.isatty() or jax.process_index() != 0:
    return None
  from tqdm import tqdm

  return tqdm(
    total=total,
    initial=done,
    desc=f'epoch {epoch + 1}',
    leave=False,
    dynamic_ncols=True,
  )
