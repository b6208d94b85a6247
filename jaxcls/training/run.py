"""The training loop, and evaluation over whole splits.

``train_and_evaluate(config, workdir)`` is one flat loop over calls of ``n``
steps (jaxcls.training.feed): it loads data, resumes from the workdir if it
holds a checkpoint, evaluates on the validation split every epoch, keeps the
best model, and scores that model once on the test split. The pure steps live in
jaxcls.training.steps and are re-exported here (``train.train_step``).
"""

import dataclasses
import functools
import hashlib
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcls import config as config_lib
from jaxcls import data, models, optim
from jaxcls.ops import fastpath
from jaxcls.training import checkpoint, epochs, guards, parallel, profiling
from jaxcls.training import feed as feed_lib
from jaxcls.training import metrics as metrics_lib
from jaxcls.training import workdir as workdir_lib
from jaxcls.training.steps import (
  TrainState,
  check_batch,
  create_train_state,
  cross_entropy,
  eval_options,
  eval_step,
  model_variables,
  step_options,
  train_step,
)

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


def _to_host(tree):
  """numpy copies of (replicated) arrays, also when other processes hold
  parts of them: each process reads its own first shard."""

  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)

  return jax.tree_util.tree_map(get, tree)


def params_sha256(params) -> str:
  """sha256 over the parameters' bytes, in a fixed (path-sorted) order."""
  leaves = jax.tree_util.tree_flatten_with_path(_to_host(params))[0]
  h = hashlib.sha256()
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def evaluate(
  eval_fn, state, split: data.Split, batch_size: int, put_batch
) -> dict:
  """Accuracy and mean loss over every example of ``split``, exactly once.

  ``put_batch`` turns this process's numpy rows into the device batch
  ``eval_fn`` takes: a ``Mesh`` (rows sharded over it) or a function.
  """
  if isinstance(put_batch, jax.sharding.Mesh):
    put_batch = functools.partial(parallel.put_batch, mesh=put_batch)
  totals = None
  for batch in data.eval_batches(
    split, batch_size, jax.process_index(), jax.process_count()
  ):
    sums = eval_fn(state, put_batch(batch))
    totals = (
      sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
    )
  totals = jax.device_get(totals)
  return {
    'accuracy': float(totals['correct'] / totals['count']),
    'loss': float(totals['loss'] / totals['count']),
    'count': int(totals['count']),
  }


def configured_steps(config, spec: data.DatasetSpec):
  """``(train_step, eval_step)`` with every option ``config`` sets: the
  regularisers and augmentation (:func:`step_options`) and flip TTA."""
  return (
    functools.partial(train_step, **step_options(config, spec)),
    functools.partial(eval_step, **eval_options(config)),
  )


def make_steps(config, mesh, spec: data.DatasetSpec) -> parallel.Steps:
  """The train/eval steps for ``config``, compiled for ``config.parallel``."""
  step, evaluate = configured_steps(config, spec)
  if config.parallel == 'pmap':
    return parallel.pmap_steps(step, evaluate)
  return parallel.jit_steps(step, evaluate, mesh)


def _log(*args):
  if jax.process_index() == 0:
    print(*args, flush=True)


def itstime(step: int, every: int, steps_done: int = 1) -> bool:
  """Whether the call that just ended at ``step`` (after ``steps_done``
  steps) crossed a multiple of ``every`` (big_vision's ``itstime``)."""
  return every > 0 and step // every > (step - steps_done) // every


@dataclasses.dataclass
class Progress:
  """What a resumed run needs besides the TrainState; saved in checkpoints."""

  best_val_accuracy: float = -1.0
  best_epoch: int = 0
  train_seconds: float = 0.0  # summed over every session of the run
  input_seconds: float = 0.0
  images_trained: int = 0


@dataclasses.dataclass
class Run:
  """Everything one run sets up before its loop: data, state, steps."""

  config: ml_collections.ConfigDict
  workdir: str
  ds: data.Data
  state: TrainState
  steps: parallel.Steps
  latest: object  # orbax CheckpointManager
  best: object
  fingerprint: str
  shard_ids: tuple[int, ...]  # this process's shards of the training split
  per_shard: int  # examples per shard in a global batch
  steps_per_epoch: int
  results: dict

  def score(self, placed_state, split) -> dict:
    return evaluate(
      self.steps.evaluate,
      placed_state,
      split,
      self.config.eval_batch_size,
      self.steps.put_batch,
    )

  def save(
    self, manager, state, epoch: int, progress: Progress, weights: str = 'live'
  ) -> None:
    if jax.process_index() == 0:  # The path that made this checkpoint.
      workdir_lib.write_kernels(self.workdir, fastpath.path())
    checkpoint.save(
      manager,
      self.steps.unplace(state),
      {
        'epoch': epoch,
        **dataclasses.asdict(progress),
        'weights': weights,
        'fingerprint': self.fingerprint,
        'config': self.config.to_json(),
      },
    )


def setup(config, workdir: str, ds: data.Data | None = None) -> Run:
  """Validates, loads the data (unless given ``ds``, already loaded for this
  process's shards) and builds the initial state and steps."""
  mesh = parallel.make_mesh()
  for name in ('batch_size', 'eval_batch_size'):
    parallel.check_batch_size(name, config[name], mesh)
  num_shards, shard_ids = parallel.process_shards(
    config.num_data_shards, config.batch_size
  )
  if ds is None:
    ds = data.load(
      config.dataset,
      config.data_dir,
      config.validation_percent,
      config.train_examples,
      num_shards,
      shard_ids,
      **data.source_args(config),
    )
  per_shard = config.batch_size // num_shards
  steps_per_epoch = len(ds.train_shards[0]) // per_shard
  if steps_per_epoch == 0:
    raise ValueError(
      f'batch_size={config.batch_size} is larger than the '
      f'{len(ds.train)} training examples; lower '
      '--config.batch_size'
    )
  model = models.create_model(config, ds.spec.num_classes)
  tx = optim.create_optimizer(config, steps_per_epoch)
  state = create_train_state(
    jax.random.split(jax.random.key(config.seed))[0],
    model,
    tx,
    ds.spec.image_shape,
    ema=config.ema_decay > 0,
  )
  results = {
    'dataset': config.dataset,
    'data_source': ds.source,
    'model': config.model,
    'config_fingerprint': config_lib.fingerprint(config),
    'devices': jax.device_count(),
    'processes': jax.process_count(),
    'parallel': config.parallel,
  }
  return Run(
    config,
    workdir,
    ds,
    state,
    make_steps(config, mesh, ds.spec),
    checkpoint.make_manager(workdir, 'latest'),
    checkpoint.make_manager(workdir, 'best'),
    results['config_fingerprint'],
    shard_ids,
    per_shard,
    steps_per_epoch,
    results,
  )


def evaluate_best(run: Run) -> dict:
  """``--eval_only``: scores the best checkpoint on test, once."""
  if run.best.latest_step() is None:
    raise checkpoint.CheckpointError(
      f'no best checkpoint in {run.workdir}/checkpoints/best; train first'
    )
  state, meta = checkpoint.restore(
    run.best, run.state, run.fingerprint, config=run.config
  )
  test = run.score(run.steps.place(state), run.ds.test)
  _log(
    f'Test accuracy on {run.config.dataset} (best checkpoint, epoch '
    f'{meta["epoch"]}): {test["accuracy"]:.4f}'
  )
  run.results.update(
    test_accuracy=test['accuracy'],
    test_loss=test['loss'],
    best_epoch=meta['epoch'],
    best_val_accuracy=meta['best_val_accuracy'],
  )
  return run.results


def resume(run: Run) -> tuple[TrainState, Progress]:
  """The state and progress to start from: the latest checkpoint, or new."""
  progress = Progress()
  if run.latest.latest_step() is None:
    return run.state, progress
  state, meta = checkpoint.restore(
    run.latest, run.state, run.fingerprint, config=run.config
  )
  _check_extension(run, meta, int(state.step))
  if jax.process_count() > 1:
    # Restored arrays sit committed on this host's device, and placing
    # them on the global mesh would be a cross-host transfer, which CPUs
    # refuse; host copies are placed as a fresh state is.
    state = jax.device_get(state)
  progress = Progress(
    **{
      f.name: meta.get(f.name, f.default) for f in dataclasses.fields(Progress)
    }
  )
  if run.best.latest_step() is None:
    _log(
      f'warning: {run.workdir}/checkpoints/best is missing; the best model '
      'is chosen again from the epochs still to run (or, if none are '
      'left, the final one is taken)'
    )
    progress.best_val_accuracy, progress.best_epoch = -1.0, 0
  _log(f'Resuming from step {int(state.step)} in {run.workdir}')
  return state, progress


def _check_extension(run: Run, meta: dict, step: int) -> None:
  """Refuses a changed num_epochs that would not continue the same run."""
  config = run.config
  saved = json.loads(meta.get('config', '{}')).get(
    'num_epochs', config.num_epochs
  )
  done = -(-step // run.steps_per_epoch)
  if done > config.num_epochs:
    raise ValueError(
      f'{run.workdir} already holds {done} epochs, more than '
      f'--config.num_epochs={config.num_epochs}; set num_epochs >= {done}, '
      'use --eval_only, or use another --workdir'
    )
  if saved != config.num_epochs and config.lr_schedule != 'constant':
    raise ValueError(
      f'{run.workdir} was trained with num_epochs={saved} under '
      f'lr_schedule={config.lr_schedule}, whose length depends on '
      'num_epochs, so changing it would not continue the same run; keep '
      f'--config.num_epochs={saved} or start another --workdir'
    )


def ema_as_state(state: TrainState) -> TrainState:
  """``state`` with its moving-average variables in place of the live ones."""
  return state.replace(
    params=state.ema['params'], batch_stats=state.ema.get('batch_stats')
  )


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
  val = run.score(state, run.ds.val)
  candidate, weights, ema_note = state, 'live', ''
  if state.ema is not None:
    ema_state = ema_as_state(state)
    ema_val = run.score(ema_state, run.ds.val)
    ema_note = f' (EMA {ema_val["accuracy"]:.4f})'
    if ema_val['accuracy'] > val['accuracy']:
      ema_note = f' (EMA {ema_val["accuracy"]:.4f}, kept)'
      live_accuracy = val['accuracy']
      val, candidate, weights = ema_val, ema_state, 'ema'
      val['live_accuracy'] = live_accuracy
  if val['accuracy'] > progress.best_val_accuracy:
    progress.best_val_accuracy, progress.best_epoch = val['accuracy'], epoch
    run.save(run.best, candidate, epoch, progress, weights=weights)
  run.save(run.latest, state, epoch, progress)
  _log(
    f'[epoch {epoch}] training accuracy: '
    f'{totals["correct"] / totals["count"]:.3f}  '
    f'loss {totals["loss"] / totals["count"]:.4f}  '
    f'val accuracy {val.get("live_accuracy", val["accuracy"]):.4f}'
    f'{ema_note}  '
    f'time {seconds:.1f}s  {totals["count"] / seconds:,.0f} images/s'
  )
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
  patience = run.config.patience
  if patience and epoch - progress.best_epoch >= patience:
    _log(
      f'Early stop: no better validation accuracy for {patience} epochs '
      f'(best {progress.best_val_accuracy:.4f} at epoch '
      f'{progress.best_epoch}).'
    )
    return True
  return False


def make_feed(run: Run, rng):
  """The device or host feed for ``run`` (see jaxcls.training.feed)."""
  step, _ = configured_steps(run.config, run.ds.spec)
  if feed_lib.use_device_data(run.config):
    return feed_lib.DeviceFeed(step, run.ds.train, run.steps.mesh)
  return feed_lib.HostFeed(run.steps, run.ds.train)


def train_and_evaluate(config, workdir: str, eval_only: bool = False) -> dict:
  """Trains ``config.model`` on ``config.dataset``; returns the results dict.

  Resumes from ``workdir`` when it holds a checkpoint of the same config.
  With ``eval_only``, restores the best checkpoint and scores it on test.
  The workdir is locked for the whole run (jaxcls.training.workdir).
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
      _log(
        f'Results: {workdir_lib.results_path(workdir)}; checkpoints: '
        f'{os.path.join(workdir, "checkpoints")}; logs: '
        f'{os.path.join(workdir, "metrics.jsonl")} and '
        f'{os.path.join(workdir, "tb")} (tensorboard --logdir '
        f'{os.path.join(workdir, "tb")})'
      )
    return results


def train_loop(run: Run) -> dict:
  """The one training loop: :class:`.epochs.Epochs`' calls, flat."""
  config, spe = run.config, run.steps_per_epoch
  train_rng = jax.random.split(jax.random.key(config.seed))[1]
  state, progress = resume(run)
  start = int(state.step)
  state = run.steps.place(state)
  walk = epochs.Epochs(
    make_feed(run, train_rng),
    lambda epoch: feed_lib.epoch_rows(
      config.seed, epoch, run.ds.train_shards, run.shard_ids, run.per_shard
    ),
    spe,
    feed_lib.steps_per_call(config),
    start,
    config.num_epochs * spe,
    aux=train_rng,
  )
  local_batch = run.per_shard * len(run.shard_ids)
  run.results['compile_seconds'] = walk.compile(state, local_batch)
  writer = metrics_lib.MetricWriter(run.workdir, config)
  # Several XLA:CPU devices share one small thread pool: with many steps in
  # flight their all-reduce rendezvous can starve and abort the process, so
  # there the loop waits for each call. Real accelerators keep the pipeline.
  one_in_flight = (
    jax.default_backend() == 'cpu' and jax.local_device_count() > 1
  )
  stopped_early, step, bar = False, start, None
  trace = profiling.StepTrace(
    config.get('profile_steps', ''), run.workdir, step
  )
  with guards.StopSignal() as stop:
    # Checked before every call (several processes: every few, and at each
    # epoch's start); all get the same answer, and all save this step.
    if step < walk.total_steps:
      _stop_if_asked(run, stop, True, state, step, progress)
    for call in walk.calls(state):
      state, step = call.state, call.step
      if one_in_flight:
        jax.block_until_ready(call.metrics[-1])
      if call.opens_epoch:
        bar = _progress(spe, call.first_step - call.epoch * spe, call.epoch)
      if bar is not None:
        bar.update(call.n)
      trace.after(state, step)
      stopped_early = _after_call(run, call, progress, writer, feed=walk.feed)
      if call.epoch_done and bar is not None:
        bar = bar.close()
      if stopped_early:
        break
      if step < walk.total_steps:
        due = step % spe == 0 or itstime(step, guards.STOP_CHECK_STEPS, call.n)
        _stop_if_asked(run, stop, due, state, step, progress)
    trace.close()
    checkpoint.wait(run.latest)
    checkpoint.wait(run.best)
    writer.close()
    received = guards.agreed_stop(stop)
    if received and step < walk.total_steps and not stopped_early:
      guards.exit_on_signal(received, step, run.workdir, run.latest)
    return finish(run, state, step, progress, stopped_early)


def _stop_if_asked(run: Run, stop, due: bool, state, step, progress) -> None:
  """Saves ``step`` and exits if any process was asked to stop."""
  received = guards.agreed_stop(stop, due)
  if received:
    run.save(run.latest, state, step // run.steps_per_epoch, progress)
    guards.exit_on_signal(received, step, run.workdir, run.latest)


def _after_call(run: Run, call, progress: Progress, writer, feed) -> bool:
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


def finish(
  run: Run, state, step: int, progress: Progress, stopped_early: bool
) -> dict:
  """Scores the best checkpoint on test, once; returns the results."""
  if run.best.latest_step() is None:  # Lost, and no epoch left to re-pick.
    epoch = -(-step // run.steps_per_epoch)
    progress.best_val_accuracy = run.score(state, run.ds.val)['accuracy']
    progress.best_epoch = epoch
    run.save(run.best, state, epoch, progress)
    checkpoint.wait(run.best)
  state = run.steps.unplace(state)
  final_hash = params_sha256(state.params)
  best_state, best_meta = checkpoint.restore(
    run.best, state, run.fingerprint, config=run.config
  )
  test = run.score(run.steps.place(best_state), run.ds.test)
  _log(
    f'Test accuracy on {run.config.dataset} (best checkpoint, epoch '
    f'{best_meta["epoch"]}): {test["accuracy"]:.4f}'
  )
  seconds = progress.train_seconds
  run.results.update(
    epochs=run.config.num_epochs,
    epochs_trained=-(-step // run.steps_per_epoch),
    steps=step,
    stopped_early=stopped_early,
    test_accuracy=test['accuracy'],
    test_loss=test['loss'],
    best_val_accuracy=best_meta['best_val_accuracy'],
    best_epoch=best_meta['epoch'],
    train_seconds=seconds,
    train_images_per_second=(
      progress.images_trained / seconds if seconds else None
    ),
    input_share=progress.input_seconds / seconds if seconds else None,
    steps_per_call=feed_lib.steps_per_call(run.config),
    device_data=feed_lib.use_device_data(run.config),
    params_sha256=final_hash,
    kernels=_kernel_summary(),
  )
  return run.results


def _kernel_summary() -> str:
  """E.g. ``'auto: 3 kernel, 1 xla'``: where this run's ops ran."""
  path = fastpath.path()
  taken = [v['path'] for v in path['choices'].values()]
  counts = ', '.join(f'{taken.count(p)} {p}' for p in ('kernel', 'xla'))
  return f'{path["kernels"]}: {counts}'


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
