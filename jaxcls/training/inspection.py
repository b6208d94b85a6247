"""Looking at a trained model: restore it, summarise it, run it on images.

``load_best(workdir)`` rebuilds the model and restores its best checkpoint
from the workdir alone (the checkpoint's metadata holds the config).
``model_summary`` is Flax's ``nn.tabulate`` table (layers, shapes, parameter
counts, FLOPs per layer); ``flops_per_example`` asks XLA's cost analysis of
the compiled forward pass. ``predict_probs`` is the jittable softmax of the
model on uint8 images, normalised exactly as in training.
"""

import functools
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxcls import config as config_lib
from jaxcls import data, models, optim
from jaxcls.ops import fastpath, techniques
from jaxcls.training import checkpoint, steps


def _best_meta(workdir: str) -> tuple[ocp.CheckpointManager, dict]:
  """A read-only manager of ``workdir``'s best checkpoints, and the newest
  one's metadata. Safe while another process trains in ``workdir``."""
  folder = os.path.join(workdir, 'checkpoints', 'best')
  if not os.path.isdir(folder):
    raise checkpoint.CheckpointError(
      f'no best checkpoint in {folder}; train first, e.g. '
      f'python -m experiments.fashion_mnist --workdir={workdir}'
    )
  manager = checkpoint.make_manager(workdir, 'best', read_only=True)
  step = manager.latest_step()
  if step is None:
    raise checkpoint.CheckpointError(
      f'no best checkpoint in {folder}; train first (or wait for the '
      'first epoch to end)'
    )
  try:
    meta = manager.restore(
      step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
    )['meta']
  except Exception as e:  # Orbax raises many types for a damaged folder.
    error = checkpoint.CheckpointError(
      f'checkpoint {folder}/{step} is unreadable ({type(e).__name__}); '
      'train again or use another --workdir'
    )
    error.step = step  # For load_best: a writer may be replacing it.
    raise error from None
  if 'config' not in meta:
    raise checkpoint.CheckpointError(
      f'checkpoint {folder}/{step} has no config in its metadata (saved by '
      'an older jaxcls); train again to use it here'
    )
  return manager, meta


def best_config(workdir: str) -> ml_collections.ConfigDict:
  """The config stored with the best checkpoint of ``workdir`` (no arrays)."""
  return config_lib.from_stored(_best_meta(workdir)[1]['config'])


def best_meta(workdir: str) -> dict:
  """The metadata saved with the best checkpoint of ``workdir`` (epoch,
  best_val_accuracy, the fingerprint as training computed it, config JSON)."""
  return dict(_best_meta(workdir)[1])


def _replaced(workdir: str, step: int) -> bool:
  """Whether best checkpoint ``step`` is gone or no longer the newest: a
  run in ``workdir`` replaced it (it keeps only the newest best)."""
  time.sleep(0.5)  # Let a writer finish replacing it.
  folder = os.path.join(workdir, 'checkpoints', 'best')
  if not os.path.isdir(os.path.join(folder, str(step))):
    return True
  manager = checkpoint.make_manager(workdir, 'best', read_only=True)
  return manager.latest_step() != step


def load_best(
  workdir: str, attempts: int = 3
) -> tuple[ml_collections.ConfigDict, steps.TrainState]:
  """``(config, state)`` of the best checkpoint in ``workdir``.

  The model and optimizer are rebuilt from the config stored with the
  checkpoint, so nothing but the workdir is needed. Raises CheckpointError
  with one clear line when there is no usable checkpoint. A run training in
  ``workdir`` may replace the best checkpoint while it is read (it keeps only
  the newest), its metadata or its arrays; then the read is retried on the
  new one.
  """
  for attempt in range(attempts):
    step = None
    try:
      manager, meta = _best_meta(workdir)
      step = manager.latest_step()
      config = config_lib.from_stored(meta['config'])
      spec = data.dataset_spec(config)
      model = models.create_model(config, spec.num_classes)
      # The optimizer state's structure does not depend on steps_per_epoch.
      target = steps.create_train_state(
        jax.random.key(0),
        model,
        optim.create_optimizer(config, 1),
        spec.image_shape,
        ema=config.ema_decay > 0,
      )
      state, _ = checkpoint.restore(
        manager, target, config_lib.fingerprint(config), step, config=config
      )
      return config, state
    except checkpoint.CheckpointError as e:
      step = getattr(e, 'step', step)
      if step is None or attempt + 1 == attempts:
        raise
      if not _replaced(workdir, step):
        raise  # Not a race with a writer: the checkpoint is damaged.
  raise AssertionError('unreachable')


def class_names(config) -> list[str]:
  """The label names of ``config.dataset``: the fixed table's, or an image
  folder's folder names (from its prepared TFDS dataset)."""
  spec = data.dataset_spec(config)
  return list(spec.class_names or (str(i) for i in range(spec.num_classes)))


def predict_probs(
  state: steps.TrainState, images: jax.Array, flip_tta: bool = False
) -> jax.Array:
  """Class probabilities (B, num_classes) for uint8 images (B, H, W, C).

  ``flip_tta`` averages each image's probabilities with its mirror image's,
  as a run with ``config.flip_tta`` was validated and tested.
  """
  logits = techniques.eval_logits(
    state.apply_fn,
    steps.model_variables(state),
    data.normalize(images),
    flip_tta,
  )
  return jax.nn.softmax(logits, axis=-1)


def predict_all(
  state: steps.TrainState,
  images: np.ndarray,
  batch_size: int = 1000,
  flip_tta: bool = False,
) -> np.ndarray:
  """``predict_probs`` over many images, in fixed-size (padded) batches."""
  fn = fastpath.jit(functools.partial(predict_probs, flip_tta=flip_tta))
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start : start + batch_size]
    pad = batch_size - len(chunk)  # One shape, one compilation.
    padded = (
      np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
      if pad
      else chunk
    )
    out.append(np.asarray(fn(state, padded))[: len(chunk)])
  return np.concatenate(out)


def confusion_matrix(
  labels: np.ndarray, predictions: np.ndarray, num_classes: int
) -> np.ndarray:
  """``m[true, predicted]`` = number of examples; rows are true classes."""
  m = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(m, (labels, predictions), 1)
  return m


def model_summary(model: nn.Module, image_shape: tuple[int, int, int]) -> str:
  """Flax's table of layers, input/output shapes, FLOPs and parameters.

  With jaxcls's CPU kernels off: the table shows the architecture's layers
  (a CNN block's convolution, not its fused kernel op), whose FLOPs Flax can
  count.
  """
  table = nn.tabulate(
    model,
    jax.random.key(0),
    compute_flops=True,
    console_kwargs={'width': 120, 'force_terminal': False, 'no_color': True},
  )
  with fastpath.disabled():
    return table(jnp.zeros((1, *image_shape), jnp.float32))


def flops_per_example(
  state: steps.TrainState,
  image_shape: tuple[int, int, int],
  batch_size: int = 8,
) -> float:
  """Forward-pass FLOPs per example, from XLA's cost analysis.

  The forward pass is lowered and compiled for ``batch_size`` uint8 images;
  XLA counts the floating-point operations of the compiled program, traced
  with jaxcls's CPU kernels off (XLA cannot see inside a custom call).
  """
  images = jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.uint8)
  with fastpath.disabled():
    # A fresh function: a cached trace of predict_probs may hold the kernels.
    forward = jax.jit(lambda state, images: predict_probs(state, images))
    compiled = forward.lower(state, images).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per program.
    cost = cost[0]
  return float(cost['flops']) / batch_size


def parameter_count(params) -> int:
  return sum(int(np.size(p)) for p in jax.tree_util.tree_leaves(params))
