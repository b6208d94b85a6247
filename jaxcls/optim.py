"""The optimizer: one optax chain built from the config, and penalty terms.

The chain is ``[clip] -> {sgd | momentum | nesterov | adam | adamw} ->
schedule``, built from optax's own transforms. ``adamw`` decays weights
directly (decoupled, as Loshchilov & Hutter); ``nesterov`` adds the decay to
the gradient before momentum (the ResNet recipe). Both are masked so that
biases and BatchNorm scales are never decayed.

The article's L1 and L2 regularization are *loss terms* (``l1_penalty``,
``l2_penalty``): added to the cross-entropy, they flow through the gradient
and, under Adam, through its normalisation. That is different from decoupled
weight decay, which is why both exist.
"""

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ('sgd', 'momentum', 'nesterov', 'adam', 'adamw')
SCHEDULES = ('constant', 'warmup_cosine', 'onecycle')


def decay_mask(params):
  """True for the leaves that weight decay applies to: kernels, not biases
  and not BatchNorm's scales."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: getattr(path[-1], 'key', None) not in ('bias', 'scale'),
    params,
  )


def learning_rate_schedule(config, steps_per_epoch: float) -> optax.Schedule:
  """A constant rate, or linear warmup then cosine decay to zero.

  ``steps_per_epoch`` counts optimizer steps (:func:`optimizer_steps`).
  """
  if config.lr_schedule == 'constant':
    return optax.constant_schedule(config.learning_rate)
  if config.lr_schedule == 'onecycle':
    # Smith & Topin 2019 (as fast MNIST/CIFAR recipes use): cosine up from
    # lr/25 over the warmup, then cosine down to lr/1e5.
    total = max(1, round(config.num_epochs * steps_per_epoch))
    return optax.cosine_onecycle_schedule(
      transition_steps=total,
      peak_value=config.learning_rate,
      pct_start=min(0.95, max(0.01, config.warmup_epochs / config.num_epochs)),
    )
  if config.lr_schedule == 'warmup_cosine':
    total = max(1, round(config.num_epochs * steps_per_epoch))
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)
    return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=config.learning_rate,
      warmup_steps=warmup,
      decay_steps=total,
      end_value=0.0,
    )
  raise ValueError(
    f'unknown lr_schedule {config.lr_schedule!r}; choose one of {SCHEDULES}'
  )


def _nesterov(learning_rate, weight_decay, momentum):
  """The ResNet recipe (He et al. 2016; PyTorch's SGD(weight_decay=...)):
  the decay is added to the gradient before momentum, kernels only."""
  return optax.chain(
    optax.add_decayed_weights(weight_decay, mask=decay_mask),
    optax.sgd(learning_rate, momentum=momentum, nesterov=True),
  )


def base_optimizer(
  config, learning_rate, inject: bool = False
) -> optax.GradientTransformation:
  """The optimizer ``config.optimizer`` names, the one place that knows them.

  Args:
    config: reads ``optimizer``, ``momentum``, ``b1``, ``b2`` and
      ``weight_decay``.
    learning_rate: a number or an optax schedule.
    inject: wrap the optax factory in ``optax.inject_hyperparams``, so its
      numbers (learning rate, weight decay, ...) live in the optimizer state
      where a population sets them per member.

  Returns:
    The optax transformation, without clipping or the non-finite guard.
  """
  name = config.optimizer
  if name == 'sgd':
    fn, kwargs, static = optax.sgd, {}, ()
  elif name == 'momentum':
    fn, static = optax.sgd, ('nesterov',)
    kwargs = {'momentum': config.momentum, 'nesterov': False}
  elif name == 'nesterov':
    fn, static = _nesterov, ('momentum',)
    kwargs = {'weight_decay': config.weight_decay, 'momentum': config.momentum}
  elif name == 'adam':
    fn, kwargs, static = optax.adam, {'b1': config.b1, 'b2': config.b2}, ()
  elif name == 'adamw':
    fn, static = optax.adamw, ('mask',)
    kwargs = {
      'b1': config.b1,
      'b2': config.b2,
      'weight_decay': config.weight_decay,
      'mask': decay_mask,
    }
  else:
    raise ValueError(f'unknown optimizer {name!r}; choose one of {OPTIMIZERS}')
  if inject:
    fn = optax.inject_hyperparams(fn, static_args=static)
  return fn(learning_rate, **kwargs)


def accumulate_steps(config) -> int:
  """Micro-batches per optimizer step (``config.accumulate_steps``, else 1)."""
  return int(config.get('accumulate_steps', 1))


def guard(opt, config) -> optax.GradientTransformation:
  """``opt`` after clipping and accumulation, inside the non-finite guard.

  With ``accumulate_steps=k > 1``, ``optax.MultiSteps`` averages the
  gradients of k micro-batches and applies ``opt`` (clipping included) to
  the mean once every k steps: an effective batch of k x ``batch_size`` on
  the memory of one. With ``nonfinite_policy='skip'``, a step whose
  gradients hold a NaN/inf leaves params and optimizer state unchanged (a
  micro-batch is then not accumulated); the loop stops after
  ``max_nonfinite_steps`` of them in a row.
  """
  if config.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)
  k = accumulate_steps(config)
  if k > 1:
    opt = optax.MultiSteps(opt, every_k_schedule=k)
  if config.nonfinite_policy == 'skip':
    opt = optax.apply_if_finite(opt, config.max_nonfinite_steps)
  return opt


def create_optimizer(
  config, steps_per_epoch: int
) -> optax.GradientTransformation:
  """The optax chain of a run: ``[clip] -> optimizer(schedule) [-> guard]``.

  Args:
    config: a jaxcls config (optimizer, schedule, clipping fields).
    steps_per_epoch: train steps (batches) per epoch. With
      ``accumulate_steps=k`` the schedule counts optimizer steps, k batches
      each.

  Returns:
    The ``optax.GradientTransformation``.
  """
  lr = learning_rate_schedule(config, optimizer_steps(config, steps_per_epoch))
  return guard(base_optimizer(config, lr), config)


def optimizer_steps(config, steps_per_epoch: int) -> float:
  """Optimizer steps per epoch: batches per epoch over ``accumulate_steps``.

  A float where k does not divide the epoch (accumulation runs across epoch
  ends); exactly ``steps_per_epoch`` without accumulation.
  """
  k = accumulate_steps(config)
  return steps_per_epoch if k == 1 else steps_per_epoch / k


def l1_penalty(params) -> jax.Array:
  """Sum of absolute values of the decayable (non-bias) parameters."""
  leaves = jax.tree_util.tree_leaves(
    jax.tree_util.tree_map(
      lambda p, m: jnp.sum(jnp.abs(p)) if m else 0.0, params, decay_mask(params)
    )
  )
  return sum(leaves, jnp.float32(0))


def l2_penalty(params) -> jax.Array:
  """Half the sum of squares of the decayable (non-bias) parameters."""
  leaves = jax.tree_util.tree_leaves(
    jax.tree_util.tree_map(
      lambda p, m: 0.5 * jnp.sum(p * p) if m else 0.0,
      params,
      decay_mask(params),
    )
  )
  return sum(leaves, jnp.float32(0))
