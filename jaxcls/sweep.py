"""Hyperparameter sweeps as vmapped populations of models.

``train.train_step`` is a pure function of ``(state, batch, rng)``, so
``jax.vmap`` over a leading *member* axis of ``state`` and ``rng`` trains K
models in one compiled step, all reading the same batch. The pieces:

* a sweep config is a normal config plus ``sweep_<field>`` strings of
  comma-separated values (``sweep_learning_rate = '1e-4,1e-3'``); the grid is
  their product, or ``sweep_samples`` members drawn from it;
* **traced** fields (``TRACED_FIELDS``: seed, learning rate, weight decay)
  are per-member array values inside one population. The learning rate and
  weight decay live in the optimizer state through
  ``optax.inject_hyperparams``, so ``opt_state`` carries them as arrays that
  vmap like the parameters do (one ``tx``, a static field of the TrainState,
  serves every member). The seed gives each member its init key and its
  step key (dropout, augmentation), split exactly as in
  ``train.train_and_evaluate``; the order of examples is shared by the
  population (from the sweep's ``config.seed``), so a member equals a single
  run when its seed is the sweep's seed;
* every other swept field (dropout rate, l1/l2, model, activation, batch
  size, ...) is a **grouping key**: it changes shapes or Python control flow
  (``nn.Dropout`` branches on ``rate == 0``, ``train_step`` on ``if l1:``),
  so each distinct value gets its own population and its own compilation;
* a population larger than ``population_chunk`` is run in chunks of that
  size (the last chunk padded with repeats, so there is one compilation);
* early stopping: a member whose validation accuracy has not improved for
  ``patience`` epochs is frozen (its updates are masked out with
  ``jnp.where``) and a chunk ends when all its members are frozen; each
  member's best-validation parameters are kept as a separate snapshot;
* selection uses the validation split only; the caller scores just the
  selected member on test (``save_best_member`` in ``experiments/sweep.py``).

Speed: on an accelerator one wide step keeps the device busy where one
small CNN cannot. On XLA:CPU, vmap turns a per-member kernel applied to
per-member activations into a grouped convolution, which runs far slower
than K plain ones, so there the population trains slower than K sequential
runs (``benchmarks/sweep_speed.py`` measures it) and evaluation maps over
members instead of vectorising.
"""

import dataclasses
import functools
import itertools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxcls import config as config_lib, data, models, optim, train

TRACED_FIELDS = ('seed', 'learning_rate', 'weight_decay')
SWEEP_PREFIX = 'sweep_'
# Fields of a sweep config that are not single-run config fields.
SWEEP_CONTROL_FIELDS = ('sweep_samples', 'sweep_sample_seed',
                        'population_chunk')
# All members read the same data, so these cannot differ between members.
UNSWEEPABLE_FIELDS = ('dataset', 'data_dir', 'validation_percent',
                      'train_examples', 'eval_batch_size', 'parallel')


def parse_values(name: str, text, default):
  """``'1e-3,3e-3'`` (or a tuple) -> values of ``default``'s type."""
  items = text if isinstance(text, (tuple, list)) else str(text).split(',')
  items = [i.strip() if isinstance(i, str) else i for i in items]
  items = [i for i in items if i != '']
  kind = type(default) if default is not None else str
  try:
    if kind is bool:
      return [str(i).lower() in ('1', 'true', 'yes') for i in items]
    if kind is int:
      return [int(float(i)) for i in items]
    return [kind(i) for i in items]
  except ValueError:
    raise ValueError(f'{SWEEP_PREFIX}{name}={text!r}: expected comma-separated '
                     f'{kind.__name__} values, e.g. --config.{SWEEP_PREFIX}'
                     f'{name}=1,2') from None


def swept_values(config) -> dict:
  """``{field: [values]}`` for every non-empty ``sweep_<field>`` of config."""
  swept = {}
  for key in config.keys():
    if not key.startswith(SWEEP_PREFIX) or key in SWEEP_CONTROL_FIELDS:
      continue
    field = key[len(SWEEP_PREFIX):]
    if field not in config:
      raise ValueError(f'{key} sweeps an unknown config field {field!r}')
    if field in UNSWEEPABLE_FIELDS:
      raise ValueError(f'{key}: {field} cannot be swept (all members share the '
                       'same data); run one sweep per value instead')
    values = parse_values(field, config[key], config[field])
    if values:
      if len(set(values)) != len(values):
        raise ValueError(f'{key}={config[key]!r} repeats a value')
      swept[field] = values
  return swept


def member_grid(swept: dict, samples: int = 0, sample_seed: int = 0) -> list:
  """The product of the swept values, or ``samples`` of it drawn at random."""
  names = sorted(swept)
  grid = [dict(zip(names, combo))
          for combo in itertools.product(*(swept[n] for n in names))]
  if 0 < samples < len(grid):
    rows = np.random.default_rng(sample_seed).choice(
        len(grid), samples, replace=False)
    grid = [grid[i] for i in sorted(rows)]
  return grid


def member_config(sweep_config, values: dict) -> ml_collections.ConfigDict:
  """The single-run config of one member: no sweep fields, its values set.

  Its fingerprint is what a normal run with these overrides would have, so
  the member's checkpoint can be read by ``--eval_only`` and the tools.
  """
  c = ml_collections.ConfigDict(sweep_config.to_dict())
  base = config_lib.get_config()
  for key in list(c.keys()):
    # ``patience`` is dropped only while the base config lacks it, so that
    # the member's fingerprint matches a plain run's.
    if (key.startswith(SWEEP_PREFIX) or key in SWEEP_CONTROL_FIELDS or
        (key == 'patience' and key not in base)):
      del c[key]
  for name, value in values.items():
    c[name] = value
  return c


def group_key(config) -> str:
  """Members with equal keys share shapes and control flow: one population."""
  c = ml_collections.ConfigDict(config.to_dict())
  for name in TRACED_FIELDS:
    c[name] = type(c[name])(0)
  return config_lib.fingerprint(c)


def chunks(indices: list, size: int) -> list:
  """Splits ``indices`` into lists of ``size``; pads the last with repeats.

  Equal sizes mean one compiled step per population; padding members are
  copies of real ones and are dropped from the results.
  """
  size = len(indices) if size <= 0 else min(size, len(indices))
  out = [list(indices[i:i + size]) for i in range(0, len(indices), size)]
  out[-1] += [out[-1][-1]] * (size - len(out[-1]))
  return out


def population_optimizer(config, steps_per_epoch: int
                         ) -> optax.GradientTransformation:
  """``optim.create_optimizer``'s chain with lr / weight decay as state.

  ``inject_hyperparams`` moves the numeric arguments of the optax factory into
  ``opt_state.hyperparams``, where :func:`set_member_hyperparams` overwrites
  them per member. One ``tx`` (a static field of TrainState) then serves
  every member, and vmap batches the hyperparameters with the parameters.
  A schedule is applied as a unit-peak multiplier after the update, which is
  what optax does with a scheduled learning rate (decoupled decay included).
  """
  name = config.optimizer
  if name == 'sgd':
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)
  elif name == 'momentum':
    opt = optax.inject_hyperparams(optax.sgd, static_args=('nesterov',))(
        learning_rate=1.0, momentum=config.momentum, nesterov=False)
  elif name == 'adam':
    opt = optax.inject_hyperparams(optax.adam)(
        learning_rate=1.0, b1=config.b1, b2=config.b2)
  elif name == 'adamw':
    opt = optax.inject_hyperparams(optax.adamw, static_args=('mask',))(
        learning_rate=1.0, b1=config.b1, b2=config.b2,
        weight_decay=config.weight_decay, mask=optim.decay_mask)
  else:
    raise ValueError(f'unknown optimizer {name!r}; choose one of '
                     f'{optim.OPTIMIZERS}')
  if config.lr_schedule != 'constant':
    unit = ml_collections.ConfigDict(config.to_dict())
    unit.learning_rate = 1.0
    opt = optax.chain(opt, optax.scale_by_schedule(
        optim.learning_rate_schedule(unit, steps_per_epoch)))
  if config.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)
  if config.get('nonfinite_policy', 'stop') == 'skip':  # As optim does.
    opt = optax.apply_if_finite(opt, config.max_nonfinite_steps)
  return opt


def set_member_hyperparams(opt_state, learning_rate, weight_decay):
  """Writes one member's lr (and weight decay, if the optimizer has one)."""
  values = {'learning_rate': learning_rate}
  if optax.tree_utils.tree_get(opt_state, 'weight_decay') is not None:
    values['weight_decay'] = weight_decay
  return optax.tree_utils.tree_set(opt_state, **values)


def init_member(seed, learning_rate, weight_decay, *, model, tx, image_shape):
  """``(state, train_rng)`` of one member; vmap it over the three arrays.

  The keys are split from ``key(seed)`` as ``train_and_evaluate`` does, so a
  member is the same model a single run with that seed would train.
  """
  init_rng, train_rng = jax.random.split(jax.random.key(seed))
  state = train.create_train_state(init_rng, model, tx, image_shape)
  state = state.replace(opt_state=set_member_hyperparams(
      state.opt_state, learning_rate, weight_decay))
  return state, train_rng


def _where_members(mask, new, old):
  """Per member: ``new`` where ``mask`` else ``old``, over whole pytrees."""
  def pick(n, o):
    return jnp.where(mask.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
  return jax.tree_util.tree_map(pick, new, old)


def population_train_step(states, batch, rngs, active, augment=False,
                          l1=0.0, l2=0.0):
  """``train.train_step`` vmapped over members; inactive members are frozen.

  ``states`` and ``rngs`` have a leading member axis, ``batch`` is shared,
  ``active`` is a bool (K,). Metrics are per-member sums, shape (K,).
  """
  step = functools.partial(train.train_step, augment=augment, l1=l1, l2=l2)
  new, metrics = jax.vmap(step, in_axes=(0, None, 0))(states, batch, rngs)
  return _where_members(active, new, states), metrics


def population_eval_step(states, batch, vectorize: bool = True) -> dict:
  """``train.eval_step`` over members: per-member sums, (K,).

  ``vectorize=False`` maps over members one after another inside the same
  compiled call. XLA:CPU runs the grouped convolution that vmap makes of a
  per-member kernel applied to per-member activations many times slower
  than K plain convolutions, so on CPU evaluation maps instead.
  """
  if vectorize:
    return jax.vmap(train.eval_step, in_axes=(0, None))(states, batch)
  return jax.lax.map(lambda member: train.eval_step(member, batch), states)


def population_evaluate(eval_fn, states, split: data.Split,
                        batch_size: int) -> np.ndarray:
  """Per-member accuracy (K,) over every example of ``split`` once."""
  totals = None
  for batch in data.eval_batches(split, batch_size):
    sums = eval_fn(states, batch)
    totals = sums if totals is None else jax.tree_util.tree_map(
        jnp.add, totals, sums)
  totals = jax.device_get(totals)
  return totals['correct'] / totals['count']


@dataclasses.dataclass
class PopulationResult:
  """Per-member outcomes of one chunk (arrays have the chunk's length)."""
  val_accuracy: np.ndarray  # (K, epochs): NaN after a member stopped
  train_loss: np.ndarray  # (K, epochs)
  best_val_accuracy: np.ndarray  # (K,)
  best_epoch: np.ndarray  # (K,), 0 if never evaluated finite
  epochs_trained: np.ndarray  # (K,)
  diverged: np.ndarray  # (K,) bool: the training loss became non-finite
  best_params: object  # pytree with a leading member axis
  final_state: object  # TrainState with a leading member axis
  best_step: np.ndarray  # (K,) optimizer step of the best snapshot
  compile_seconds: float
  train_seconds: float


@dataclasses.dataclass
class PopulationSteps:
  """The jitted init / train / eval of one group, shared by its chunks."""
  init: object  # (seeds, lrs, wds) -> (states, train_rngs), vmapped
  train: object  # jitted population_train_step
  eval: object  # jitted population_eval_step
  compiled: dict = dataclasses.field(default_factory=dict)  # K -> train


def make_population_steps(config, ds: data.Data) -> PopulationSteps:
  """Builds the model, the optimizer and the jitted steps of a group once."""
  steps_per_epoch = len(ds.train) // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'batch_size={config.batch_size} is larger than the '
                     f'{len(ds.train)} training examples')
  model = models.create_model(config, ds.spec.num_classes)
  tx = population_optimizer(config, steps_per_epoch)
  init = jax.jit(jax.vmap(functools.partial(
      init_member, model=model, tx=tx, image_shape=ds.spec.image_shape)))
  train_fn = jax.jit(functools.partial(
      population_train_step, augment=ds.spec.augment, l1=config.l1,
      l2=config.l2), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(
      population_eval_step, vectorize=jax.default_backend() != 'cpu'))
  return PopulationSteps(init, train_fn, eval_fn)


def train_population(config, values: list, ds: data.Data,
                     patience: int | None = None, log=print,
                     steps: PopulationSteps | None = None
                     ) -> PopulationResult:
  """Trains the members ``values`` (dicts of traced fields) of one group.

  ``config`` is the group's single-run config (its traced fields are
  overridden per member). All members read the batches of ``config.seed``'s
  epoch order, so they differ only in their hyperparameters. ``patience``
  (default ``config.patience``, 0 = off) freezes a member after that many
  epochs without a better validation accuracy. Pass the group's ``steps``
  to reuse one compilation across chunks.
  """
  k = len(values)
  steps = steps or make_population_steps(config, ds)
  steps_per_epoch = len(ds.train) // config.batch_size
  column = lambda name, dtype: jnp.asarray(
      [v.get(name, config[name]) for v in values], dtype)
  states, rngs = steps.init(column('seed', jnp.int32),
                            column('learning_rate', jnp.float32),
                            column('weight_decay', jnp.float32))
  eval_fn = steps.eval
  active = jnp.ones((k,), bool)
  compile_seconds = 0.0
  if k not in steps.compiled:  # Ahead of time, so it is timed on its own.
    t0 = time.perf_counter()
    example = data.train_batch(ds.train, np.arange(config.batch_size), 0,
                               config.batch_size)
    steps.compiled[k] = steps.train.lower(states, example, rngs,
                                          active).compile()
    compile_seconds = time.perf_counter() - t0
  train_fn = steps.compiled[k]

  if patience is None:
    patience = config.get('patience', 0)
  epochs = config.num_epochs
  val_hist = np.full((k, epochs), np.nan)
  loss_hist = np.full((k, epochs), np.nan)
  best_val = np.full(k, -1.0)
  best_epoch = np.zeros(k, int)
  best_step = np.zeros(k, int)
  epochs_trained = np.zeros(k, int)
  diverged = np.zeros(k, bool)
  # A copy: the train step donates (reuses) the buffers of ``states``.
  best_params = jax.tree_util.tree_map(jnp.copy, states.params)
  keep_best = jax.jit(_where_members)
  train_seconds = 0.0
  for epoch in range(epochs):
    order = data.epoch_permutation(config.seed, epoch, len(ds.train))
    t_epoch = time.perf_counter()
    sums = None
    for index in range(steps_per_epoch):
      batch = data.train_batch(ds.train, order, index, config.batch_size)
      states, metrics = train_fn(states, batch, rngs, active)
      sums = metrics if sums is None else jax.tree_util.tree_map(
          jnp.add, sums, metrics)
    sums = jax.device_get(sums)
    train_seconds += time.perf_counter() - t_epoch
    was_active = np.asarray(active)
    loss = sums['loss'] / sums['count']
    diverged |= was_active & ~np.isfinite(loss)
    val = population_evaluate(eval_fn, states, ds.val, config.eval_batch_size)
    running = was_active & ~diverged
    val_hist[running, epoch] = val[running]
    loss_hist[was_active, epoch] = loss[was_active]
    epochs_trained[was_active] += 1
    improved = running & (val > best_val)
    best_val[improved] = val[improved]
    best_epoch[improved] = epoch + 1
    best_step[improved] = (epoch + 1) * steps_per_epoch
    best_params = keep_best(jnp.asarray(improved), states.params,
                            best_params)
    still = running.copy()
    if patience:
      still &= (epoch + 1 - best_epoch) < patience
    active = jnp.asarray(still)
    log(f'  [epoch {epoch + 1}] val accuracy: best {np.nanmax(val):.4f} '
        f'mean {np.nanmean(np.where(running, val, np.nan)):.4f}  '
        f'active {int(still.sum())}/{k}  '
        f'time {time.perf_counter() - t_epoch:.1f}s')
    if not still.any():
      break
  return PopulationResult(val_hist, loss_hist, best_val, best_epoch,
                          epochs_trained, diverged, best_params, states,
                          best_step, compile_seconds, train_seconds)


def take_member(tree, index: int):
  """Member ``index`` of a pytree with a leading member axis."""
  return jax.tree_util.tree_map(lambda x: x[index], tree)


def best_member(best_val_accuracy) -> int:
  """The selected member: argmax of validation accuracy (first on ties)."""
  return int(np.argmax(np.asarray(best_val_accuracy)))


def free_device_bytes() -> int:
  """Memory the population may use: free accelerator memory, else free RAM."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return int(stats['bytes_limit'] - stats.get('bytes_in_use', 0))
  return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')


def member_bytes(config, ds: data.Data) -> int:
  """XLA's memory estimate of a one-member train step (args + temps + out).

  A one-member population over-counts what one more member adds (the batch
  is shared), so chunks sized from it are safe.
  """
  model = models.create_model(config, ds.spec.num_classes)
  tx = population_optimizer(config, 1)
  init = jax.vmap(functools.partial(
      init_member, model=model, tx=tx, image_shape=ds.spec.image_shape))
  states, rngs = jax.eval_shape(init, jnp.zeros(1, jnp.int32),
                                jnp.zeros(1), jnp.zeros(1))
  example = jax.ShapeDtypeStruct(
      (config.batch_size, *ds.spec.image_shape), jnp.uint8)
  batch = {'image': example,
           'label': jax.ShapeDtypeStruct((config.batch_size,), jnp.int32)}
  compiled = jax.jit(functools.partial(
      population_train_step, l1=config.l1, l2=config.l2)).lower(
          states, batch, rngs, jnp.ones(1, bool)).compile()
  stats = compiled.memory_analysis()
  if stats is None:  # Some backends do not report; count the state instead.
    return 4 * sum(x.size * x.dtype.itemsize
                   for x in jax.tree_util.tree_leaves(states))
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes +
             stats.temp_size_in_bytes)


def auto_chunk_size(config, ds: data.Data, members: int,
                    memory_fraction: float = 0.5) -> int:
  """How many members fit in ``memory_fraction`` of the free memory."""
  fit = int(memory_fraction * free_device_bytes() // member_bytes(config, ds))
  if fit < 1:
    raise ValueError('one member does not fit in device memory; lower '
                     '--config.batch_size')
  return min(members, fit)
