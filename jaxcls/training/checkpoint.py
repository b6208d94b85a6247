"""Orbax checkpoints: the latest state (to resume) and the best model.

A workdir holds two Orbax CheckpointManagers:

* ``checkpoints/latest``: the whole TrainState (params, optimizer state, step)
  saved at epoch ends, every ``checkpoint_every_steps`` and on SIGTERM/SIGINT;
* ``checkpoints/best``: the state with the best validation accuracy so far
  (the article's ``best_mnist_cnn``), used for the test score.

Each checkpoint's JSON metadata (epoch, best validation accuracy, config
fingerprint) lets a workdir of another model or config be refused. Orbax
renames a checkpoint into place once complete: one interrupted mid-save is
never loaded. Only the holder of the workdir's lock (``workdir.lock``) writes
and deletes unfinished saves; readers (``read_only=True``) change nothing.
"""

import os

import jax
import orbax.checkpoint as ocp

from jaxcls import config as config_lib

# The TrainState fields that are saved; the optional ones only when set, so a
# model without BatchNorm or EMA has the layout of earlier jaxcls versions.
_FIELDS = ('step', 'params', 'opt_state', 'batch_stats', 'ema')


def _saved_fields(state):
  """A TrainState as the dict of its array fields that hold something."""
  if not all(hasattr(state, f) for f in _FIELDS[:3]):
    return state  # Any other pytree is saved as it is.
  return {
    f: getattr(state, f) for f in _FIELDS if getattr(state, f, None) is not None
  }


class CheckpointError(RuntimeError):
  """A checkpoint cannot be used: corrupt, or from a different config."""


def make_manager(
  workdir: str, name: str, read_only: bool = False
) -> ocp.CheckpointManager:
  """The manager of ``workdir/checkpoints/<name>``, keeping the newest one.

  ``read_only=True`` is for readers of a workdir that another process may be
  training in: such a manager sees only finished checkpoints and never
  touches the writer's files (the writer's manager deletes the unfinished
  ``*.orbax-checkpoint-tmp`` folders of a crashed run when it starts).
  """
  path = os.path.join(os.path.abspath(workdir), 'checkpoints', name)
  if read_only:
    return ocp.CheckpointManager(
      path,
      options=ocp.CheckpointManagerOptions(
        read_only=True, create=False, save_interval_steps=0
      ),
      item_names=('state', 'meta'),
    )
  options = ocp.CheckpointManagerOptions(
    max_to_keep=1,
    create=True,
    cleanup_tmp_directories=True,
    # 'latest' and 'best' may save the same step; with several processes
    # their barriers need distinct names.
    multiprocessing_options=ocp.options.MultiprocessingOptions(
      barrier_sync_key_prefix=name
    ),
  )
  return ocp.CheckpointManager(
    path, options=options, item_names=('state', 'meta')
  )


def save(manager: ocp.CheckpointManager, state, meta: dict) -> None:
  """Saves ``state`` (any pytree) at step ``int(state.step)`` with ``meta``."""
  step = int(jax.device_get(state.step))
  if manager.latest_step() == step:
    return  # This very state is saved already (e.g. a signal right after).
  try:
    manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(_saved_fields(state)),
        meta=ocp.args.JsonSave(meta),
      ),
      force=True,
    )
  except Exception as e:  # Includes the failure of the previous async save.
    raise _save_error(manager, e) from None


def wait(manager: ocp.CheckpointManager) -> None:
  """Waits for the manager's pending save; a failed one is one clear line."""
  try:
    manager.wait_until_finished()
  except Exception as e:
    raise _save_error(manager, e) from None


def _save_error(manager, error: Exception) -> CheckpointError:
  first_line = (str(error).strip().splitlines() or [''])[0][:200]
  return CheckpointError(
    f'could not save a checkpoint in {manager.directory} '
    f'({type(error).__name__}: {first_line}); free disk space or fix the '
    "folder's permissions, then run the same command to resume from the "
    'last saved checkpoint'
  )


def _refusal(folder: str, meta: dict, fingerprint: str, config) -> str:
  """The line refusing a checkpoint of another config: what differs, and
  the flags that would take the saved values."""
  differ = []
  if config is not None:
    differ = config_lib.differences(config, meta.get('config'))
  if not differ:
    return (
      f'{folder} was saved by a different model or config (fingerprint '
      f'{meta.get("fingerprint")} != {fingerprint}); use another --workdir '
      'or the same config'
    )
  changes = ', '.join(f'{k}: {a} -> {b}' for k, a, b in differ)
  saved = ' '.join(f'--config.{k}={a}' for k, a, _ in differ)
  return (
    f'{folder} was saved by a different model or config ({changes}); use '
    f'another --workdir, or the saved values ({saved})'
  )


def restore(
  manager: ocp.CheckpointManager,
  target,
  fingerprint: str,
  step: int | None = None,
  config=None,
):
  """Restores ``(state, meta)`` from ``step`` (default: the newest).

  ``target`` is a state of the right structure, shapes and shardings (a
  freshly initialised one); the restored arrays get its shardings, so a
  checkpoint saved on N devices restores onto M. With ``config``, a
  checkpoint of an older jaxcls whose config lacked newer fields is accepted
  when they are at their defaults (``config.matches``). Raises CheckpointError,
  naming the folder, if the checkpoint is unreadable or from another config.
  """
  step = manager.latest_step() if step is None else step
  folder = os.path.join(str(manager.directory), str(step))
  try:
    meta = manager.restore(
      step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
    )['meta']
  except Exception as e:  # Orbax raises many types for a damaged folder.
    raise CheckpointError(
      f'checkpoint {folder} is unreadable ({type(e).__name__}); delete it '
      'or use another --workdir'
    ) from None
  if meta.get('fingerprint') != fingerprint and not (
    config is not None and config_lib.matches(config, meta)
  ):
    raise CheckpointError(_refusal(folder, meta, fingerprint, config))
  abstract = jax.tree_util.tree_map(
    ocp.utils.to_shape_dtype_struct, _saved_fields(target)
  )
  try:
    state = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
    )['state']
    state = target.replace(**state) if hasattr(target, 'replace') else state
  except Exception as e:
    raise CheckpointError(
      f'checkpoint {folder} is corrupt or truncated ({type(e).__name__}: '
      f'{str(e).splitlines()[0][:200] if str(e) else ""}); delete it or use '
      'another --workdir'
    ) from None
  return state, meta
