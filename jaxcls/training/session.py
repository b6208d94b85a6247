"""One run's setup: its data, initial state and compiled steps, and resuming.

:func:`setup` builds a :class:`Run` (everything a run needs before its loop);
:func:`resume` picks the state and :class:`Progress` to start from, the
latest checkpoint's when the workdir holds one.
"""

import dataclasses
import functools
import json

import jax
import ml_collections

from jaxcls import config as config_lib
from jaxcls import data, models, optim
from jaxcls.ops import fastpath
from jaxcls.training import checkpoint, evaluation, parallel
from jaxcls.training import workdir as workdir_lib
from jaxcls.training.steps import (
  TrainState,
  create_train_state,
  eval_options,
  eval_step,
  step_options,
  train_step,
)


def log(*args):
  """``print``, flushed, on process 0 only."""
  if jax.process_index() == 0:
    print(*args, flush=True)


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


@dataclasses.dataclass
class Progress:
  """What a resumed run needs besides the TrainState; saved in checkpoints."""

  best_val_accuracy: float = -1.0
  best_epoch: int = 0
  best_val_loss: float = -1.0  # of the best epoch; -1: none yet
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
    # Looked up on the module, so a test can wrap evaluation.evaluate.
    return evaluation.evaluate(
      self.steps.evaluate,
      placed_state,
      split,
      self.config.eval_batch_size,
      self.steps.put_batch,
      self.ds.buckets,
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


def _load_data(config, num_shards: int, shard_ids) -> data.Data:
  """The splits, with this process's shards of the training split."""
  return data.load(
    config.dataset,
    config.data_dir,
    config.validation_percent,
    config.train_examples,
    num_shards,
    shard_ids,
    **data.source_args(config),
    **data.sequence_args(config),
  )


def _init_dtype(spec: data.DatasetSpec) -> str:
  """The dummy input's dtype at init: float for pixels and features (images
  are initialised as floats, as they reach the model), int32 for ids."""
  return 'int32' if spec.input_dtype == 'int32' else 'float32'


def _initial_results(config, ds: data.Data) -> dict:
  """The entries of results.json that are known before training."""
  return {
    'dataset': config.dataset,
    'data_source': ds.source,
    'model': config.model,
    'config_fingerprint': config_lib.fingerprint(config),
    'devices': jax.device_count(),
    'processes': jax.process_count(),
    'parallel': config.parallel,
  }


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
    ds = _load_data(config, num_shards, shard_ids)
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
    input_dtype=_init_dtype(ds.spec),
  )
  results = _initial_results(config, ds)
  if ds.inputs and jax.process_index() == 0:
    workdir_lib.write_inputs(workdir, ds.inputs)
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
    log(
      f'warning: {run.workdir}/checkpoints/best is missing; the best model '
      'is chosen again from the epochs still to run (or, if none are '
      'left, the final one is taken)'
    )
    progress.best_val_accuracy, progress.best_epoch = -1.0, 0
  log(f'Resuming from step {int(state.step)} in {run.workdir}')
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
