"""The train state and the pure train and eval steps.

``train_step`` and ``eval_step`` are pure functions of arrays, jittable on
their own: ``jax.jit(train_step)(state, batch, rng)``. Everything a step
needs beyond the state and batch is a keyword argument that the loop fixes
with ``functools.partial`` from the config (:func:`step_options`).

The state carries, besides the parameters and optimizer state:

* ``batch_stats``: BatchNorm's running statistics (None for models without
  BatchNorm). Training applies the model with ``mutable=['batch_stats']``
  and keeps the updated statistics; evaluation uses them as they are.
* ``ema``: an exponential moving average of the variables (params and
  batch_stats), when ``ema_decay > 0`` (jaxcls.ops.techniques.ema_update).
"""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from jaxcls import data, optim
from jaxcls.ops import fastpath, techniques


class TrainState(train_state.TrainState):
  """flax's TrainState plus BatchNorm statistics and the weights' EMA."""

  batch_stats: Any = None
  ema: Any = None


def create_train_state(
  rng: jax.Array,
  model: nn.Module,
  tx: optax.GradientTransformation,
  image_shape: tuple[int, ...],
  ema: bool = False,
  input_dtype='float32',
) -> TrainState:
  """Initialises the variables for ``image_shape`` inputs and the optimizer.

  ``ema`` starts the moving average as a copy of the initial variables;
  ``input_dtype`` is the dummy input's ('int32' for token ids).
  """
  # On XLA's ops: every path holds the same parameters, and a batch-1
  # dummy should neither run a kernel nor time one.
  with fastpath.disabled():
    variables = model.init(rng, jnp.zeros((1, *image_shape), input_dtype))
  batch_stats = variables.get('batch_stats')
  state = TrainState.create(
    apply_fn=model.apply,
    params=variables['params'],
    tx=tx,
    batch_stats=batch_stats,
  )
  if ema:  # A copy: donating the state must not donate one buffer twice.
    state = state.replace(ema=jax.tree.map(jnp.copy, model_variables(state)))
  return state


def model_variables(state: TrainState, params=None) -> dict:
  """The variables ``apply_fn`` takes: params, and batch_stats if any."""
  variables = {'params': state.params if params is None else params}
  if state.batch_stats is not None:
    variables['batch_stats'] = state.batch_stats
  return variables


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _check_pixels(images) -> None:
  if getattr(images, 'ndim', None) != 4:
    raise ValueError(
      'images must be (batch, height, width, channels); got '
      f'shape {getattr(images, "shape", None)}'
    )
  if images.dtype != jnp.uint8:
    raise ValueError(
      'images must be uint8 pixels in 0..255 (the step '
      f'normalises them itself); got {images.dtype}'
    )


def _check_sequences(x, lengths) -> None:
  ndim, dtype = getattr(x, 'ndim', None), getattr(x, 'dtype', None)
  ids = ndim == 2 and jnp.issubdtype(dtype, jnp.integer)
  if not (ids or (ndim == 3 and jnp.issubdtype(dtype, jnp.floating))):
    raise ValueError(
      'sequences must be (batch, steps) int token ids or (batch, steps, '
      f'channels) floats; got {dtype} of shape {getattr(x, "shape", None)}'
    )
  shape = getattr(lengths, 'shape', None)
  if shape != x.shape[:1] or not jnp.issubdtype(lengths.dtype, jnp.integer):
    raise ValueError(
      f'lengths must be integers of shape {x.shape[:1]}; got {shape}'
    )


def model_inputs(batch: dict) -> tuple[jax.Array, dict]:
  """The model's input and keyword arguments for ``batch``: pixels
  normalised to [-1, 1] (:func:`data.normalize`); sequences as they are,
  with ``lengths`` (so that padding is skipped)."""
  if 'length' in batch:
    return batch['image'], {'lengths': batch['length']}
  return data.normalize(batch['image']), {}


def check_batch(batch: dict, image_shape=None, num_classes=None) -> None:
  """Raises ValueError, in one line, for a batch the steps cannot take.

  Shapes and dtypes are checked always (they are static, also under jit).
  Label values are checked only when they are concrete arrays: inside a
  jitted function they are traced, so call this on the host beforehand.
  """
  if (
    not isinstance(batch, dict) or 'image' not in batch or 'label' not in batch
  ):
    raise ValueError("a batch is a dict with 'image' and 'label' arrays")
  images, labels = batch['image'], batch['label']
  if 'length' in batch:
    _check_sequences(images, batch['length'])
  else:
    _check_pixels(images)
  if image_shape is not None and tuple(images.shape[1:]) != tuple(image_shape):
    raise ValueError(
      f'images have shape {tuple(images.shape[1:])}, the '
      f'model expects {tuple(image_shape)}'
    )
  if getattr(labels, 'shape', None) != images.shape[:1] or not jnp.issubdtype(
    labels.dtype, jnp.integer
  ):
    raise ValueError(
      f'labels must be integers of shape {images.shape[:1]}; '
      f'got {getattr(labels, "dtype", type(labels))} '
      f'{getattr(labels, "shape", "")}'
    )
  if num_classes is not None and not isinstance(labels, jax.core.Tracer):
    low, high = int(np.min(labels)), int(np.max(labels))
    if low < 0 or high >= num_classes:
      raise ValueError(
        f'labels must be in 0..{num_classes - 1}; got values '
        f'from {low} to {high}'
      )


def _apply(state, variables, images, **kwargs):
  """``state.apply_fn`` with a one-line error for a wrong input shape."""
  try:
    return state.apply_fn(variables, images, **kwargs)
  except flax.errors.ScopeParamShapeError:
    raise ValueError(
      f'images of shape {tuple(images.shape[1:])} do not fit '
      'this model, whose parameters were made for another '
      'input shape'
    ) from None


def augment_images(
  rng: jax.Array, images: jax.Array, augment, padding: int = 4
) -> jax.Array:
  """'crop_flip' (or True): random crop after padding, and h-flip; 'flip':
  h-flip only; 'none' (or False): unchanged. uint8 in, uint8 out."""
  if augment is True or augment == 'crop_flip':
    return data.random_crop_flip(rng, images, padding)
  if augment == 'flip':
    flip = jax.random.bernoulli(
      jax.random.split(rng)[1], 0.5, (images.shape[0], 1, 1, 1)
    )
    return jnp.where(flip, images[:, :, ::-1, :], images)
  return images


def _step_inputs(
  state,
  batch,
  rng,
  augment,
  axis_name,
  crop_padding,
  mixup_alpha,
  cutmix_alpha,
  num_classes,
):
  """``(images, labels, targets, dropout_rng)`` for one step: the augmented,
  normalised (and perhaps mixed) images, and the targets of the loss."""
  # Keys are functions of (seed, step): a resumed run repeats its
  # augmentation, mixing and dropout exactly.
  step_rng = jax.random.fold_in(rng, state.step)
  if axis_name is not None:  # Distinct randomness per pmap device.
    step_rng = jax.random.fold_in(step_rng, jax.lax.axis_index(axis_name))
  augment_rng, dropout_rng = jax.random.split(step_rng)
  if 'length' in batch:  # Sequences: no normalisation, no augmentation.
    images = batch['image']
  else:
    images = data.normalize(
      augment_images(augment_rng, batch['image'], augment, crop_padding)
    )
  labels = targets = batch['label']
  if mixup_alpha > 0 or cutmix_alpha > 0:
    # Its own stream (not a third split), so runs without mixing keep theirs.
    images, targets, _ = techniques.mixup_or_cutmix(
      jax.random.fold_in(step_rng, 2),
      images,
      jax.nn.one_hot(labels, num_classes),
      mixup_alpha,
      cutmix_alpha,
    )
  return images, labels, targets, dropout_rng


def _loss_and_grads(
  state, batch, images, targets, dropout_rng, l1, l2, label_smoothing
):
  """``((data_loss, logits, batch_stats), grads)``: the loss's gradient
  w.r.t. the params, with the data loss (no penalties) and BN's updates."""
  mutable = ['batch_stats'] if state.batch_stats is not None else False

  def loss_fn(params):
    out = _apply(
      state,
      model_variables(state, params),
      images,
      train=True,
      rngs={'dropout': dropout_rng},
      mutable=mutable,
      **model_inputs(batch)[1],
    )
    logits, updates = out if mutable else (out, {})
    check_batch(batch, num_classes=logits.shape[-1])  # values, if concrete
    data_loss = techniques.cross_entropy_smoothed(
      logits, targets, label_smoothing
    ).mean()
    loss = data_loss
    if l1:
      loss = loss + l1 * optim.l1_penalty(params)
    if l2:
      loss = loss + l2 * optim.l2_penalty(params)
    return loss, (data_loss, logits, updates.get('batch_stats'))

  (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  return aux, grads


def _apply_update(state, grads, batch_stats, axis_name, ema_decay):
  """The state after the optimizer's update (and the EMA's, if any)."""
  if axis_name is not None:  # pmap (BatchNorm averages over it as well).
    grads = jax.lax.pmean(grads, axis_name)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if state.ema is not None:
    # ``state.step`` is now the number of updates so far: the decay warms up
    # from the first one (jaxcls.ops.techniques.ema_decay).
    state = state.replace(
      ema=techniques.ema_update(
        state.ema,
        model_variables(state),
        techniques.ema_decay(state.step - 1, ema_decay),
      )
    )
  return state


def _step_metrics(data_loss, logits, labels, axis_name) -> dict:
  """Sums over the batch (and the pmap devices): loss, correct, count."""
  # Sums add up across steps and devices. With mixing, ``correct`` counts
  # the dominant image's label.
  count = jnp.float32(labels.shape[0])
  metrics = {
    'loss': data_loss * count,
    'correct': jnp.sum(jnp.argmax(logits, -1) == labels),
    'count': count,
  }
  if axis_name is not None:
    metrics = jax.lax.psum(metrics, axis_name)
  return metrics


def train_step(
  state: TrainState,
  batch: dict,
  rng: jax.Array,
  augment=False,
  l1: float = 0.0,
  l2: float = 0.0,
  axis_name: str | None = None,
  crop_padding: int = 4,
  label_smoothing: float = 0.0,
  mixup_alpha: float = 0.0,
  cutmix_alpha: float = 0.0,
  ema_decay: float = 0.0,
  num_classes: int = 0,
):
  """One optimizer step: ``(state, batch, rng) -> (state, metrics)``.

  Args:
    state: the TrainState to update.
    batch: uint8 ``image`` (B, H, W, C) and int ``label`` (B,); normalised
      and augmented (:func:`augment_images`) here, on the device.
    rng: the run's key; the step's own is ``fold_in(rng, state.step)``.
    augment, l1, l2, crop_padding, label_smoothing, mixup_alpha, cutmix_alpha,
      ema_decay, num_classes: set from the config (:func:`step_options`);
      each technique is off at 0, and mixing needs ``num_classes``.
    axis_name: set under ``pmap`` only, to average the gradients over it.

  Returns:
    The new state, and the batch's sums ``loss``, ``correct`` and ``count``.
  """
  check_batch(batch)
  images, labels, targets, dropout_rng = _step_inputs(
    state,
    batch,
    rng,
    augment,
    axis_name,
    crop_padding,
    mixup_alpha,
    cutmix_alpha,
    num_classes,
  )
  (data_loss, logits, batch_stats), grads = _loss_and_grads(
    state, batch, images, targets, dropout_rng, l1, l2, label_smoothing
  )
  state = _apply_update(state, grads, batch_stats, axis_name, ema_decay)
  return state, _step_metrics(data_loss, logits, labels, axis_name)


def eval_step(
  state: TrainState, batch: dict, use_ema: bool = False, flip_tta: bool = False
) -> dict:
  """Sums of loss, correct predictions and count over the unmasked examples.

  ``batch`` may hold a float ``mask`` (1 = real example, 0 = padding).
  ``use_ema`` evaluates the moving average of the weights; ``flip_tta``
  averages the predictions for each image and its mirror image
  (jaxcls.ops.techniques.flip_tta_logits).
  """
  check_batch(batch)
  variables = state.ema if use_ema else model_variables(state)
  images, extra = model_inputs(batch)
  logits = techniques.eval_logits(
    lambda v, x, **kw: _apply(state, v, x, **extra, **kw),
    variables,
    images,
    flip_tta,
  )
  mask = batch.get('mask', jnp.ones(batch['label'].shape, jnp.float32))
  return {
    'loss': jnp.sum(cross_entropy(logits, batch['label']) * mask),
    'correct': jnp.sum((jnp.argmax(logits, -1) == batch['label']) * mask),
    'count': jnp.sum(mask),
  }


def eval_options(config) -> dict:
  """The keyword arguments of :func:`eval_step` that ``config`` sets."""
  return dict(flip_tta=config.flip_tta)


def step_options(config, spec: data.DatasetSpec) -> dict:
  """The keyword arguments of :func:`train_step` that ``config`` sets.

  ``augment='auto'`` is the dataset's own default (crop and flip for
  CIFAR-10, none for the digit-like datasets).
  """
  augment = config.augment
  if augment == 'auto':
    augment = 'crop_flip' if spec.augment else 'none'
  return dict(
    augment=augment,
    l1=config.l1,
    l2=config.l2,
    num_classes=spec.num_classes,
    crop_padding=config.crop_padding,
    label_smoothing=config.label_smoothing,
    mixup_alpha=config.mixup_alpha,
    cutmix_alpha=config.cutmix_alpha,
    ema_decay=config.ema_decay,
  )
