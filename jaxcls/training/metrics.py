"""Training metrics to disk: a JSON-lines file and TensorBoard event files.

``MetricWriter(workdir, config)`` writes every record twice:

* ``workdir/metrics.jsonl``: one JSON object per line, ``{"step": s, ...}``,
  easy to read back with :func:`read_jsonl` (the report's curves come from it);
* ``workdir/tb/``: TensorBoard event files through ``tensorboardX``, so that
  ``tensorboard --logdir runs/`` shows the curves of every run, with the
  config logged as hyperparameters (the HPARAMS tab) and as text.

Only process 0 writes; on the others the writer does nothing. The JSON file is
opened in append mode and TensorBoard adds a new event file to the same
folder, so a resumed run continues the same curves.
"""

import json
import os
import time

import jax
import numpy as np

# The scalars the HPARAMS tab compares runs by.
HPARAM_METRICS = ('val_accuracy', 'val_loss')


def hparams_from_config(config) -> dict:
  """The config as a flat dict of bool/int/float/str, as TensorBoard wants."""
  flat = {}
  for key, value in config.to_dict().items():
    if isinstance(value, (bool, int, float, str)):
      flat[key] = value
    else:  # None, tuples, nested dicts: their text is still comparable.
      flat[key] = json.dumps(value, sort_keys=True, default=str)
  return flat


def window_scalars(step_metrics: dict, epoch: float) -> dict:
  """Mean train loss and accuracy over a window of steps.

  ``step_metrics`` maps ``loss``, ``correct`` and ``count`` to host arrays with
  one entry per step (``jaxcls.training.guards.per_step``): the ``train_step``
  sums. ``epoch`` is the fractional epoch (step / steps per epoch), for
  plotting.
  """
  totals = {k: float(np.sum(v)) for k, v in step_metrics.items()}
  # The window stops at the epoch start, so just after it the mean is over
  # fewer steps (noisier); ``window_steps`` says how many.
  return {
    'epoch_progress': float(epoch),
    'window_steps': len(step_metrics['loss']),
    'train_loss_recent': totals['loss'] / totals['count'],
    'train_accuracy_recent': totals['correct'] / totals['count'],
  }


def epoch_scalars(
  epoch: int,
  train_totals: dict,
  val: dict,
  seconds: float,
  learning_rate: float,
) -> dict:
  """The record written at the end of ``epoch`` (counted from 1).

  ``train_totals`` are the epoch's summed train metrics (on the host), ``val``
  the output of ``train.evaluate`` on the validation split, ``learning_rate``
  the rate the next step will use.
  """
  count = float(train_totals['count'])
  return {
    'epoch': epoch,
    'train_loss': float(train_totals['loss']) / count,
    'train_accuracy': float(train_totals['correct']) / count,
    'val_loss': val['loss'],
    'val_accuracy': val['accuracy'],
    'epoch_seconds': seconds,
    'images_per_second': count / seconds,
    'learning_rate': float(learning_rate),
  }


class MetricWriter:
  """Appends scalars to ``metrics.jsonl`` and TensorBoard; process 0 only."""

  def __init__(self, workdir: str, config=None):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.tb_dir = os.path.join(workdir, 'tb')
    self._file = self._tb = None
    if not self.enabled:
      return
    os.makedirs(self.tb_dir, exist_ok=True)
    from tensorboardX import SummaryWriter  # Lazy: keeps `import jaxcls` light.

    self._file = open(self.path, 'a')  # noqa: SIM115 (closed in close())
    # Event file names carry only whole seconds; a unique suffix keeps a run
    # restarted within the same second from overwriting the last one's file.
    suffix = f'.{os.getpid()}.{time.time_ns()}'
    self._tb = SummaryWriter(logdir=self.tb_dir, filename_suffix=suffix)
    if config is not None:
      self.write_hparams(config)

  def write_hparams(self, config) -> None:
    """Logs ``config`` as hyperparameters and as its JSON text."""
    if not self.enabled:
      return
    from tensorboardX.summary import hparams

    # Written into this run's own folder (not a sub-run, as add_hparams
    # does), so the HPARAMS tab links the config to this run's val curves.
    for summary in hparams(
      hparams_from_config(config), dict.fromkeys(HPARAM_METRICS, 0.0)
    ):
      self._tb.file_writer.add_summary(summary)
    self._tb.add_text('config', '```\n' + config.to_json(indent=2) + '\n```')

  def write_scalars(self, step: int, scalars: dict) -> None:
    """Writes ``{name: number}`` at ``step`` to both sinks, then flushes."""
    if not self.enabled:
      return
    record = {'step': int(step)}
    record.update({k: float(v) for k, v in scalars.items()})
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()  # A crashed run still leaves every written record.
    for name, value in scalars.items():
      self._tb.add_scalar(name, float(value), int(step))
    self._tb.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._tb.close()
      self._file = self._tb = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def read_jsonl(path: str) -> list[dict]:
  """The records of a ``metrics.jsonl``; skips a torn last line of a crash."""
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records


def epoch_records(records: list[dict]) -> list[dict]:
  """The per-epoch records in epoch order; a repeated epoch keeps its last."""
  by_epoch = {}
  for record in records:
    if 'val_accuracy' in record and 'epoch' in record:
      by_epoch[int(record['epoch'])] = record
  return [by_epoch[e] for e in sorted(by_epoch)]
