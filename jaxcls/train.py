"""Pure train and eval steps, and the training loop.

``train_step`` and ``eval_step`` are pure functions of arrays, jittable on
their own. ``train_and_evaluate(config, workdir)`` is a plain for-loop over
steps: it loads data, resumes from the workdir if it holds a checkpoint,
evaluates on the validation split every epoch, keeps the best model, and
scores that model once on the test split.
"""

import functools
import hashlib
import json
import os
import sys
import time

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from jaxcls import checkpoint, config as config_lib, data, guards, models
from jaxcls import metrics as metrics_lib, optim, parallel

NonFiniteLossError = guards.NonFiniteLossError

TrainState = train_state.TrainState


def create_train_state(rng: jax.Array, model: nn.Module,
                       tx: optax.GradientTransformation,
                       image_shape: tuple[int, int, int]) -> TrainState:
  """Initialises parameters for ``image_shape`` inputs and the optimizer."""
  variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32))
  return TrainState.create(apply_fn=model.apply, params=variables['params'],
                           tx=tx)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def check_batch(batch: dict, image_shape=None, num_classes=None) -> None:
  """Raises ValueError, in one line, for a batch the steps cannot take.

  Shapes and dtypes are checked always (they are static, also under jit).
  Label values are checked only when they are concrete arrays: inside a
  jitted function they are traced, so call this on the host beforehand.
  """
  if not isinstance(batch, dict) or 'image' not in batch or 'label' not in batch:
    raise ValueError("a batch is a dict with 'image' and 'label' arrays")
  images, labels = batch['image'], batch['label']
  if getattr(images, 'ndim', None) != 4:
    raise ValueError('images must be (batch, height, width, channels); got '
                     f'shape {getattr(images, "shape", None)}')
  if images.dtype != jnp.uint8:
    raise ValueError('images must be uint8 pixels in 0..255 (the step '
                     f'normalises them itself); got {images.dtype}')
  if image_shape is not None and tuple(images.shape[1:]) != tuple(image_shape):
    raise ValueError(f'images have shape {tuple(images.shape[1:])}, the '
                     f'model expects {tuple(image_shape)}')
  if (getattr(labels, 'shape', None) != images.shape[:1]
      or not jnp.issubdtype(labels.dtype, jnp.integer)):
    raise ValueError(f'labels must be integers of shape {images.shape[:1]}; '
                     f'got {getattr(labels, "dtype", type(labels))} '
                     f'{getattr(labels, "shape", "")}')
  if num_classes is not None and not isinstance(labels, jax.core.Tracer):
    low, high = int(np.min(labels)), int(np.max(labels))
    if low < 0 or high >= num_classes:
      raise ValueError(f'labels must be in 0..{num_classes - 1}; got values '
                       f'from {low} to {high}')


def _apply(state, params, images, **kwargs):
  """``state.apply_fn`` with a one-line error for a wrong input shape."""
  try:
    return state.apply_fn({'params': params}, images, **kwargs)
  except flax.errors.ScopeParamShapeError:
    raise ValueError(f'images of shape {tuple(images.shape[1:])} do not fit '
                     'this model, whose parameters were made for another '
                     'input shape') from None


def train_step(state: TrainState, batch: dict, rng: jax.Array,
               augment: bool = False, l1: float = 0.0, l2: float = 0.0,
               axis_name: str | None = None):
  """One optimizer step: ``(state, batch, rng) -> (state, metrics)``.

  ``batch`` holds uint8 ``image`` (B, H, W, C) and int ``label`` (B,);
  normalisation and (if ``augment``) random crop + flip happen here, on the
  device. ``rng`` is the run's base key: the key for this step is
  ``fold_in(rng, state.step)``, so augmentation and dropout are functions of
  (seed, step) and a resumed run repeats them exactly. ``l1``/``l2`` weight
  the article's penalty terms. ``axis_name`` is set only under ``pmap``,
  where gradients are averaged across devices explicitly.

  ``metrics`` holds sums over the batch (``loss``, ``correct``, ``count``) so
  that they add up across steps and devices.
  """
  check_batch(batch)
  step_rng = jax.random.fold_in(rng, state.step)
  if axis_name is not None:  # Distinct randomness per pmap device.
    step_rng = jax.random.fold_in(step_rng, jax.lax.axis_index(axis_name))
  augment_rng, dropout_rng = jax.random.split(step_rng)
  images = batch['image']
  if augment:
    images = data.random_crop_flip(augment_rng, images)
  images = data.normalize(images)
  labels = batch['label']

  def loss_fn(params):
    logits = _apply(state, params, images, train=True,
                    rngs={'dropout': dropout_rng})
    check_batch(batch, num_classes=logits.shape[-1])  # values, if concrete
    data_loss = cross_entropy(logits, labels).mean()
    loss = data_loss
    if l1:
      loss = loss + l1 * optim.l1_penalty(params)
    if l2:
      loss = loss + l2 * optim.l2_penalty(params)
    return loss, (data_loss, logits)

  (_, (data_loss, logits)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
  state = state.apply_gradients(grads=grads)
  count = jnp.float32(labels.shape[0])
  metrics = {'loss': data_loss * count,
             'correct': jnp.sum(jnp.argmax(logits, -1) == labels),
             'count': count}
  if axis_name is not None:
    metrics = jax.lax.psum(metrics, axis_name)
  return state, metrics


def eval_step(state: TrainState, batch: dict) -> dict:
  """Sums of loss, correct predictions and count over the unmasked examples.

  ``batch`` may hold a float ``mask`` (1 = real example, 0 = padding).
  """
  check_batch(batch)
  logits = _apply(state, state.params, data.normalize(batch['image']),
                  train=False)
  mask = batch.get('mask', jnp.ones(batch['label'].shape, jnp.float32))
  return {'loss': jnp.sum(cross_entropy(logits, batch['label']) * mask),
          'correct': jnp.sum((jnp.argmax(logits, -1) == batch['label']) * mask),
          'count': jnp.sum(mask)}


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


def evaluate(eval_fn, state, split: data.Split, batch_size: int,
             put_batch) -> dict:
  """Accuracy and mean loss over every example of ``split``, exactly once.

  ``put_batch`` turns this process's numpy rows into the device batch
  ``eval_fn`` takes: a ``Mesh`` (rows sharded over it) or a function.
  """
  if isinstance(put_batch, jax.sharding.Mesh):
    put_batch = functools.partial(parallel.put_batch, mesh=put_batch)
  totals = None
  for batch in data.eval_batches(split, batch_size, jax.process_index(),
                                 jax.process_count()):
    sums = eval_fn(state, put_batch(batch))
    totals = sums if totals is None else jax.tree_util.tree_map(
        jnp.add, totals, sums)
  totals = jax.device_get(totals)
  return {'accuracy': float(totals['correct'] / totals['count']),
          'loss': float(totals['loss'] / totals['count']),
          'count': int(totals['count'])}


def make_steps(config, mesh) -> parallel.Steps:
  """The train/eval steps for ``config``, compiled for ``config.parallel``."""
  spec = data.dataset_spec(config)
  step = functools.partial(train_step, augment=spec.augment,
                           l1=config.l1, l2=config.l2)
  if config.parallel == 'pmap':
    return parallel.pmap_steps(step, eval_step)
  return parallel.jit_steps(step, eval_step, mesh)


def _log(*args):
  if jax.process_index() == 0:
    print(*args, flush=True)


def write_results(workdir: str, results: dict) -> None:
  """Merges ``results`` into ``workdir/results.json`` (process 0 only)."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, 'results.json')
  old = {}
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
  old.update(results)
  with open(path + '.tmp', 'w') as f:
    json.dump(old, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)  # Atomic: never a half-written file.


def train_and_evaluate(config, workdir: str, eval_only: bool = False) -> dict:
  """Trains ``config.model`` on ``config.dataset``; returns the results dict.

  Resumes from ``workdir`` when it holds a checkpoint of the same config.
  With ``eval_only``, restores the best checkpoint and scores it on test.
  """
  config_lib.validate(config)
  parallel.initialize_distributed(config)
  mesh = parallel.make_mesh()
  for name in ('batch_size', 'eval_batch_size'):
    parallel.check_batch_size(name, config[name], mesh)
  num_shards = config.get('num_data_shards', 0) or jax.process_count()
  if num_shards % jax.process_count() or config.batch_size % num_shards:
    raise ValueError(
        f'num_data_shards={num_shards} must be a multiple of the '
        f'{jax.process_count()} processes and divide batch_size='
        f'{config.batch_size}')
  per_process = num_shards // jax.process_count()
  shard_ids = tuple(range(jax.process_index() * per_process,
                          (jax.process_index() + 1) * per_process))
  fingerprint = config_lib.fingerprint(config)
  ds = data.load(config.dataset, config.data_dir, config.validation_percent,
                 config.train_examples, num_shards, shard_ids,
                 **data.source_args(config))
  per_shard = config.batch_size // num_shards
  steps_per_epoch = len(ds.train_shards[0]) // per_shard
  if steps_per_epoch == 0:
    raise ValueError(f'batch_size={config.batch_size} is larger than the '
                     f'{len(ds.train)} training examples')
  total_steps = config.num_epochs * steps_per_epoch
  latest = checkpoint.make_manager(workdir, 'latest')
  best = checkpoint.make_manager(workdir, 'best')

  model = models.create_model(config, ds.spec.num_classes)
  tx = optim.create_optimizer(config, steps_per_epoch)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  state = create_train_state(init_rng, model, tx, ds.spec.image_shape)
  steps = make_steps(config, mesh)
  results = {'dataset': config.dataset, 'data_source': ds.source,
             'model': config.model, 'config_fingerprint': fingerprint,
             'devices': jax.device_count(), 'processes': jax.process_count(),
             'parallel': config.parallel}

  def score(placed_state, split):
    return evaluate(steps.evaluate, placed_state, split,
                    config.eval_batch_size, steps.put_batch)

  if eval_only:
    if best.latest_step() is None:
      raise checkpoint.CheckpointError(
          f'no best checkpoint in {workdir}/checkpoints/best; train first')
    state, meta = checkpoint.restore(best, state, fingerprint)
    test = score(steps.place(state), ds.test)
    _log(f'Test accuracy on {config.dataset} (best checkpoint, epoch '
         f"{meta['epoch']}): {test['accuracy']:.4f}")
    results.update(test_accuracy=test['accuracy'], test_loss=test['loss'],
                   best_epoch=meta['epoch'],
                   best_val_accuracy=meta['best_val_accuracy'])
    write_results(workdir, results)
    return results

  best_val, best_epoch = -1.0, 0
  if latest.latest_step() is not None:
    state, meta = checkpoint.restore(latest, state, fingerprint)
    best_val, best_epoch = meta['best_val_accuracy'], meta['best_epoch']
    _log(f'Resuming from step {int(state.step)} in {workdir}')
  step = int(state.step)
  state = steps.place(state)

  def save(manager, epoch):
    checkpoint.save(manager, steps.unplace(state), {
        'epoch': epoch, 'best_val_accuracy': best_val,
        'best_epoch': best_epoch, 'fingerprint': fingerprint,
        'config': config.to_json()})

  def local_batch(orders, index):
    return steps.put_batch(data.sharded_train_batch(
        ds.train_shards, orders, index, per_shard))

  # Compile ahead of time so that compile time is measured on its own.
  t0 = time.perf_counter()
  identity = [np.arange(len(s)) for s in ds.train_shards]
  train_fn = steps.train
  if config.parallel == 'jit':
    train_fn = train_fn.lower(state, local_batch(identity, 0),
                              train_rng).compile()
  results['compile_seconds'] = time.perf_counter() - t0
  writer = metrics_lib.MetricWriter(workdir, config)
  learning_rate = optim.learning_rate_schedule(config, steps_per_epoch)

  policy = (config.nonfinite_policy, config.max_nonfinite_steps)
  # Several XLA:CPU devices share one small thread pool: with many steps in
  # flight their all-reduce rendezvous can starve and abort the process, so
  # there the loop waits for each step. Real accelerators keep the pipeline.
  one_in_flight = (jax.default_backend() == 'cpu'
                   and jax.local_device_count() > 1)
  train_seconds = input_seconds = 0.0
  images_trained = 0
  stopped_early = False
  with guards.StopSignal() as stop:
    while step < total_steps and not stopped_early:
      epoch, index = divmod(step, steps_per_epoch)
      orders = [data.epoch_permutation(config.seed, epoch, len(s), shard)
                for s, shard in zip(ds.train_shards, shard_ids)]
      epoch_metrics, epoch_start_step = [], step
      t_epoch = time.perf_counter()
      bar = _progress(steps_per_epoch, index, epoch)
      while index < steps_per_epoch and not stop.received:
        t_in = time.perf_counter()
        batch = local_batch(orders, index)
        input_seconds += time.perf_counter() - t_in
        state, metrics = train_fn(state, batch, train_rng)
        if one_in_flight:
          jax.block_until_ready(metrics)
        epoch_metrics.append(metrics)
        step, index = step + 1, index + 1
        if config.log_every_steps and step % config.log_every_steps == 0:
          writer.write_scalars(step, metrics_lib.window_scalars(
              epoch_metrics[-config.log_every_steps:], step / steps_per_epoch))
        if bar is not None:
          bar.update(1)
        # Mid-epoch saves only: an epoch's last step is saved below, after
        # its validation, so that a resumed run never skips that.
        if config.checkpoint_every_steps and index < steps_per_epoch and (
            step % config.checkpoint_every_steps == 0):
          guards.check_finite(epoch_metrics, epoch_start_step, latest, *policy)
          save(latest, epoch)
      if bar is not None:
        bar.close()
      if not epoch_metrics:
        break
      skipped = guards.check_finite(epoch_metrics, epoch_start_step, latest,
                              *policy)
      totals = jax.device_get(jax.tree_util.tree_map(
          lambda *x: np.sum(x), *epoch_metrics))
      seconds = time.perf_counter() - t_epoch
      train_seconds += seconds
      images_trained += int(totals['count'])
      if skipped:
        totals = guards.finite_totals(jax.device_get(epoch_metrics))
        _log(f'Skipped {skipped} steps with a non-finite loss this epoch.')
      if stop.received and index < steps_per_epoch:
        save(latest, epoch)
        guards.exit_on_signal(stop.received, step, workdir, latest)
      val = score(state, ds.val)
      if val['accuracy'] > best_val:
        best_val, best_epoch = val['accuracy'], epoch + 1
        save(best, epoch + 1)
      save(latest, epoch + 1)
      _log(f"[epoch {epoch + 1}] training accuracy: "
           f"{totals['correct'] / totals['count']:.3f}  "
           f"loss {totals['loss'] / totals['count']:.4f}  "
           f"val accuracy {val['accuracy']:.4f}  "
           f"time {seconds:.1f}s  {totals['count'] / seconds:,.0f} images/s")
      writer.write_scalars(step, metrics_lib.epoch_scalars(
          epoch + 1, totals, val, seconds, learning_rate(step)))
      if stop.received:  # It came during the epoch's last step.
        guards.exit_on_signal(stop.received, step, workdir, latest)
      patience = config.get('patience', 0)
      if patience and epoch + 1 - best_epoch >= patience:
        stopped_early = True
        _log(f'Early stop: no better validation accuracy for {patience} '
             f'epochs (best {best_val:.4f} at epoch {best_epoch}).')
  latest.wait_until_finished()
  best.wait_until_finished()
  writer.close()

  state = steps.unplace(state)
  final_hash = params_sha256(state.params)
  best_state, best_meta = checkpoint.restore(best, state, fingerprint)
  test = score(steps.place(best_state), ds.test)
  _log(f"Test accuracy on {config.dataset} (best checkpoint, epoch "
       f"{best_meta['best_epoch']}): {test['accuracy']:.4f}")
  results.update(
      epochs=config.num_epochs, epochs_trained=-(-step // steps_per_epoch),
      steps=step, stopped_early=stopped_early,
      test_accuracy=test['accuracy'], test_loss=test['loss'],
      best_val_accuracy=best_val, best_epoch=best_meta['best_epoch'],
      train_seconds=train_seconds,
      train_images_per_second=(images_trained / train_seconds
                               if train_seconds else None),
      input_share=input_seconds / train_seconds if train_seconds else None,
      params_sha256=final_hash)
  write_results(workdir, results)
  return results


def _progress(total: int, done: int, epoch: int):
  """A tqdm bar inside the epoch, only when output is a terminal."""
  if not sys.stdout.isatty() or jax.process_index() != 0:
    return None
  from tqdm import tqdm
  return tqdm(total=total, initial=done, desc=f'epoch {epoch + 1}',
              leave=False, dynamic_ncols=True)
