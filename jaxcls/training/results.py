"""The end of a run: the best checkpoint scored on test, and the results.

:func:`finish` ends a training run and :func:`evaluate_best` an
``--eval_only`` one; both fill the results dict that
``train_and_evaluate`` returns and writes to ``workdir/results.json``.
"""

from jaxcls.ops import fastpath
from jaxcls.training import checkpoint, evaluation, inspection, scores
from jaxcls.training import feed as feed_lib
from jaxcls.training.session import Progress, Run, log


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
  log(
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
  final_hash = evaluation.params_sha256(state.params)
  best_state, best_meta = checkpoint.restore(
    run.best, state, run.fingerprint, config=run.config
  )
  test = run.score(run.steps.place(best_state), run.ds.test)
  log(
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
    kernels=kernel_summary(),
    test_scores=test_scores(run, best_state),
  )
  return run.results


def test_scores(run: Run, state) -> dict:
  """Per-class precision, recall and F1, their macro and weighted means, the
  top confusions and the calibration (ECE, reliability bins) of ``state``
  (on the host) on the test split, scored as the run scored it."""
  test, spec = run.ds.test, run.ds.spec
  probs = inspection.predict_all(
    state,
    test.images,
    run.config.eval_batch_size,
    run.config.flip_tta,
    lengths=test.lengths,
  )
  matrix = inspection.confusion_matrix(
    test.labels, probs.argmax(-1), spec.num_classes
  )
  names = list(spec.class_names or map(str, range(spec.num_classes)))
  return scores.summary(matrix, names, probs, test.labels, k=5)


def kernel_summary() -> str:
  """E.g. ``'auto: 3 kernel, 1 xla'``: where this run's ops ran."""
  path = fastpath.path()
  taken = [v['path'] for v in path['choices'].values()]
  counts = ', '.join(f'{taken.count(p)} {p}' for p in ('kernel', 'xla'))
  return f'{path["kernels"]}: {counts}'
