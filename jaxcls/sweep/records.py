"""A sweep's members as records: ``sweep.json``'s rows, their ranking by
``best_by`` (``member_order``, ``best_member``: the single run's rule for
its best epoch), the ranked table, and the flags that re-score the best
member as a single run."""

import numpy as np

from jaxcls import config as config_lib


def _loss_key(best_val_loss) -> np.ndarray:
  """Losses to sort by: a member without one (-1, None, NaN, inf) last."""
  loss = np.asarray(
    [np.nan if v is None else v for v in best_val_loss], float
  ).reshape(-1)
  return np.where(np.isfinite(loss) & (loss >= 0), loss, np.inf)


def member_order(
  best_val_accuracy, best_val_loss=None, best_by: str = 'accuracy'
) -> np.ndarray:
  """The members' indices, best first, by ``best_by`` as a single run picks
  its best epoch: the lowest best validation loss (``'loss'``; members
  without a finite one last), or the highest best validation accuracy;
  ties keep the members' order."""
  if best_by == 'loss':
    key = _loss_key(best_val_loss)
  else:
    key = -np.asarray(best_val_accuracy, float).reshape(-1)
  return np.argsort(key, kind='stable')


def best_member(
  best_val_accuracy, best_val_loss=None, best_by: str = 'accuracy'
) -> int:
  """The selected member: the first of ``member_order`` (first on ties).

  Args:
    best_val_accuracy: each member's best validation accuracy.
    best_val_loss: each member's best epoch's validation loss (needed for
      ``best_by='loss'``; -1 or None: none).
    best_by: the sweep's ``config.best_by``.

  Returns:
    The index of the member.
  """
  return int(member_order(best_val_accuracy, best_val_loss, best_by)[0])


def eval_overrides(member_cfg, base_config) -> list:
  """``--config.x=v`` flags that turn ``base_config`` into the member's.

  Args:
    member_cfg: the member's single-run config.
    base_config: the single-run experiment's config.

  Returns:
    One flag per field that defines what is trained (not RUN_ONLY_FIELDS)
    and differs, sorted by field.
  """
  base = base_config.to_dict()
  return [
    f'--config.{key}={value}'
    for key, value in sorted(member_cfg.to_dict().items())
    if key not in config_lib.RUN_ONLY_FIELDS
    and base.get(key, object()) != value
  ]


def _row(rank: int, m: dict, swept: list) -> list:
  """One member's cells of ``format_table``."""
  return [
    str(rank),
    str(m['member']),
    *(
      f'{m["values"][f]:g}'
      if isinstance(m['values'][f], float)
      else str(m['values'][f])
      for f in swept
    ),
    f'{m["best_val_accuracy"]:.4f}',
    '-' if m.get('best_val_loss') is None else f'{m["best_val_loss"]:.4f}',
    m.get('best_weights', 'live'),
    str(m['best_epoch']),
    str(m['epochs_trained']),
    m['status'],
  ]


def format_table(members: list, swept: list, best_by='accuracy') -> str:
  """Members ranked by ``best_by`` (``member_order``), best first, as
  aligned text.

  Args:
    members: ``member_records``' dicts.
    swept: the swept fields, one column each.
    best_by: the sweep's ``config.best_by``.

  Returns:
    A Markdown-style table, one line per member.
  """
  head = [
    'rank',
    'member',
    *swept,
    'best val acc',
    'best val loss',
    'weights',
    'best epoch',
    'epochs',
    'status',
  ]
  order = member_order(
    [m['best_val_accuracy'] for m in members],
    [m.get('best_val_loss') for m in members],
    best_by,
  )
  ranked = [members[i] for i in order]
  rows = [_row(rank, m, swept) for rank, m in enumerate(ranked, 1)]
  widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
  line = lambda r: (
    '| ' + ' | '.join(c.ljust(w) for c, w in zip(r, widths)) + ' |'
  )
  rule = '|' + '|'.join('-' * (w + 2) for w in widths) + '|'
  return '\n'.join([line(head), rule, *map(line, rows)])


def _status(result, row: int) -> str:
  """'diverged', 'stopped early' (before the last epoch) or 'ok'."""
  if result.diverged[row]:
    return 'diverged'
  stopped = result.epochs_trained[row] < result.val_accuracy.shape[1]
  return 'stopped early' if stopped else 'ok'


def _loss_or_none(loss) -> float | None:
  """A best validation loss, None for none (-1, never improved)."""
  loss = float(loss)
  return loss if np.isfinite(loss) and loss >= 0 else None


def member_records(grid: list, populations: list) -> list:
  """One JSON-able dict per member of the sweep.

  Args:
    grid: the members' values (``member_grid``).
    populations: ``(indices, PopulationResult)`` pairs, a chunk's indices
      into ``grid`` (a repeated index is a padding copy, skipped).

  Returns:
    The records, in grid order: values, best validation accuracy, loss
    (None: none) and epoch, the weights it kept ('live' or 'ema'), epochs
    trained, status, and the per-epoch curves (NaN as None).
  """
  records = [None] * len(grid)
  as_list = lambda xs: [None if v != v else float(v) for v in xs]
  for indices, result in populations:
    for row, index in enumerate(indices):
      if records[index] is not None:
        continue  # A padding copy at the end of a chunk.
      records[index] = {
        'member': index,
        'values': grid[index],
        'best_val_accuracy': float(result.best_val_accuracy[row]),
        'best_val_loss': _loss_or_none(result.best_val_loss[row]),
        'best_weights': str(result.best_weights[row]),
        'best_epoch': int(result.best_epoch[row]),
        'epochs_trained': int(result.epochs_trained[row]),
        'status': _status(result, row),
        'val_accuracy': as_list(result.val_accuracy[row]),
        'val_loss': as_list(result.val_loss[row]),
        'train_loss': as_list(result.train_loss[row]),
      }
  return records
