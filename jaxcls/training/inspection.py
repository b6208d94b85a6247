"""Looking at a trained model: restore it, summarise it, run it on inputs.

``load_best(workdir)`` rebuilds the model and restores its best checkpoint
from the workdir alone (the checkpoint's metadata holds the config; a
sequence run's ``inputs.json`` its input shape). ``model_summary`` is Flax's
``nn.tabulate`` table (layers, shapes, parameter counts, FLOPs per layer);
``flops_per_example`` asks XLA's cost analysis of the compiled forward pass.
``predict_probs`` is the jittable softmax of the model on uint8 images,
normalised exactly as in training, or on padded sequences with lengths;
``encode_texts`` turns new texts into ids as a text run encoded its own.
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
from jaxcls.data import tokens
from jaxcls.ops import fastpath, techniques
from jaxcls.training import checkpoint, steps
from jaxcls.training import workdir as workdir_lib


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
      spec = run_spec(config, workdir)
      model = models.create_model(config, spec.num_classes)
      # The optimizer state's structure does not depend on steps_per_epoch.
      target = steps.create_train_state(
        jax.random.key(0),
        model,
        optim.create_optimizer(config, 1),
        spec.image_shape,
        ema=config.ema_decay > 0,
        input_dtype=model_dtype(spec.input_dtype),
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


def model_dtype(input_dtype: str) -> str:
  """The dtype a model is given for inputs of ``input_dtype``: int32 token
  ids as they are, float32 otherwise (pixels reach it normalised)."""
  return 'int32' if input_dtype == 'int32' else 'float32'


def spec_from_inputs(inputs: dict, where: str = 'inputs.json'):
  """The :class:`data.DatasetSpec` of a sequence run's ``inputs.json``:
  ``(max_len,)`` int32 ids for text, ``(max_len, C)`` float32 for series."""
  try:
    names = tuple(inputs['class_names'])
    if inputs['kind'] == 'text':
      shape, dtype = (int(inputs['max_len']),), 'int32'
    else:
      shape, dtype = (int(inputs['max_len']), len(inputs['mean'])), 'float32'
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(
      f'{where} is damaged ({type(e).__name__}: {e}); train again'
    ) from None
  return data.DatasetSpec(shape, len(names), False, names, dtype)


def run_spec(config, workdir: str | None = None) -> data.DatasetSpec:
  """The spec the model of ``config`` was built for: a sequence run's from
  ``workdir``'s ``inputs.json`` (no data read), else (or without one)
  ``data.dataset_spec(config)``, which loads a sequence dataset."""
  if workdir and data.is_sequence(config.dataset):
    inputs = workdir_lib.read_inputs(workdir)
    if inputs:
      return spec_from_inputs(inputs, workdir_lib.inputs_path(workdir))
  return data.dataset_spec(config)


def class_names(config, workdir: str | None = None) -> list[str]:
  """The label names of ``config.dataset``: the fixed table's, an image
  folder's folder names (from its prepared TFDS dataset), or a sequence
  run's (from ``workdir``'s ``inputs.json`` when given)."""
  spec = run_spec(config, workdir)
  return list(spec.class_names or (str(i) for i in range(spec.num_classes)))


def encode_texts(inputs: dict, texts: list[str]) -> tokens.Padded:
  """``texts`` as padded int32 ids (:class:`.tokens.Padded`, with lengths
  and what was cut), encoded as the run of ``inputs`` (its ``inputs.json``)
  encoded its own: its word list, or UTF-8 bytes; its ``max_len``."""
  if inputs.get('kind') != 'text':
    raise ValueError(f'a {inputs.get("kind")!r} run reads no texts')
  if inputs.get('email_headers') is False:
    texts = [tokens.without_headers(t) for t in texts]
  if inputs['tokens'] == 'bytes':
    return tokens.byte_ids(texts, inputs['max_len'])
  vocab = tokens.WordVocab(tuple(inputs['words']))
  return vocab.encode(texts, inputs['max_len'])


def text_inputs(workdir: str) -> dict:
  """A text run's ``inputs.json``: how it encoded its texts (ValueError
  naming the file when it is missing or a time series run's)."""
  path = workdir_lib.inputs_path(workdir)
  inputs = workdir_lib.read_inputs(workdir)
  if inputs is None:
    raise ValueError(f'{path} is missing; train again to write it')
  if inputs.get('kind') != 'text':
    raise ValueError(
      f'{path}: a {inputs.get("kind")!r} run, not a text run; predict reads '
      'texts and images (score its test split with experiments.report)'
    )
  return inputs


def text_steps(inputs: dict, texts: list[str]) -> list[int]:
  """How many ids each text has before :func:`encode_texts` cuts it to the
  run's ``max_len``: its UTF-8 bytes, or its words."""
  if inputs.get('email_headers') is False:
    texts = [tokens.without_headers(t) for t in texts]
  if inputs['tokens'] == 'bytes':
    return [len(t.encode('utf-8', 'surrogatepass')) for t in texts]
  return [len(tokens.words(t)) for t in texts]


def predict_probs(
  state: steps.TrainState,
  images: jax.Array,
  flip_tta: bool = False,
  lengths: jax.Array | None = None,
) -> jax.Array:
  """Class probabilities (B, num_classes) for uint8 images (B, H, W, C), or
  for padded sequences with their ``lengths`` (B,).

  ``flip_tta`` averages each image's probabilities with its mirror image's,
  as a run with ``config.flip_tta`` was validated and tested.
  """
  batch = (
    {'image': images}
    if lengths is None
    else {'image': images, 'length': lengths}
  )
  x, extra = steps.model_inputs(batch)
  logits = techniques.eval_logits(
    lambda v, x, **kw: state.apply_fn(v, x, **extra, **kw),
    steps.model_variables(state),
    x,
    flip_tta,
  )
  return jax.nn.softmax(logits, axis=-1)


def _padded(chunk: np.ndarray, size: int, fill=0) -> np.ndarray:
  """``chunk`` padded with ``fill`` rows to ``size`` rows (one shape)."""
  pad = size - len(chunk)
  if not pad:
    return chunk
  extra = np.full((pad, *chunk.shape[1:]), fill, chunk.dtype)
  return np.concatenate([chunk, extra])


def predict_all(
  state: steps.TrainState,
  images: np.ndarray,
  batch_size: int = 1000,
  flip_tta: bool = False,
  lengths: np.ndarray | None = None,
) -> np.ndarray:
  """``predict_probs`` over many images (or sequences with ``lengths``), in
  fixed-size (padded) batches: one shape, one compilation."""
  fn = fastpath.jit(functools.partial(predict_probs, flip_tta=flip_tta))
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start : start + batch_size]
    size = len(chunk)
    if lengths is None:
      probs = fn(state, _padded(chunk, batch_size))
    else:
      part = _padded(lengths[start : start + batch_size], batch_size, 1)
      probs = fn(state, _padded(chunk, batch_size), lengths=part)
    out.append(np.asarray(probs)[:size])
  return np.concatenate(out)


def confusion_matrix(
  labels: np.ndarray, predictions: np.ndarray, num_classes: int
) -> np.ndarray:
  """``m[true, predicted]`` = number of examples; rows are true classes."""
  m = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(m, (labels, predictions), 1)
  return m


def model_summary(
  model: nn.Module, image_shape: tuple[int, ...], input_dtype: str = 'uint8'
) -> str:
  """Flax's table of layers, input/output shapes, FLOPs and parameters.

  For one example of ``image_shape`` and ``input_dtype`` (a spec's: a
  sequence is read at its full length). With jaxcls's CPU kernels off: the
  table shows the architecture's layers (a CNN block's convolution, not its
  fused kernel op), whose FLOPs Flax can count.
  """
  x = jnp.zeros((1, *image_shape), model_dtype(input_dtype))
  console = {'width': 120, 'force_terminal': False, 'no_color': True}
  with fastpath.disabled():
    try:
      return nn.tabulate(
        model, jax.random.key(0), compute_flops=True, console_kwargs=console
      )(x)
    except TypeError:
      # A method that returns no array (a recurrent cell's initializer):
      # Flax cannot count FLOPs through it, so the table goes without.
      table = nn.tabulate(model, jax.random.key(0), console_kwargs=console)
      return f'{table(x)}(FLOPs per layer not counted for this model)'


def flops_per_example(
  state: steps.TrainState,
  image_shape: tuple[int, ...],
  batch_size: int = 8,
  input_dtype: str = 'uint8',
) -> float:
  """Forward-pass FLOPs per example, from XLA's cost analysis.

  The forward pass is lowered and compiled for ``batch_size`` examples of
  ``input_dtype`` (uint8 images; sequences with their lengths); XLA counts
  the floating-point operations of the compiled program, traced with
  jaxcls's CPU kernels off (XLA cannot see inside a custom call).
  """
  shape = (batch_size, *image_shape)
  args = [state, jax.ShapeDtypeStruct(shape, input_dtype)]
  if input_dtype != 'uint8':
    args.append(jax.ShapeDtypeStruct((batch_size,), jnp.int32))
  with fastpath.disabled():
    # A fresh function: a cached trace of predict_probs may hold the kernels.
    forward = jax.jit(lambda state, x, *n: predict_probs(state, x, False, *n))
    compiled = forward.lower(*args).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per program.
    cost = cost[0]
  return float(cost['flops']) / batch_size


def parameter_count(params) -> int:
  return sum(int(np.size(p)) for p in jax.tree_util.tree_leaves(params))
