"""A sweep's members as records: ``sweep.json``'s rows, the ranked table, and
the flags that re-score the best member as a single run."""

from jaxcls import config as config_lib


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
    str(m['best_epoch']),
    str(m['epochs_trained']),
    m['status'],
  ]


def format_table(members: list, swept: list) -> str:
  """Members sorted by validation accuracy, best first, as aligned text.

  Args:
    members: ``member_records``' dicts.
    swept: the swept fields, one column each.

  Returns:
    A Markdown-style table, one line per member.
  """
  head = [
    'rank',
    'member',
    *swept,
    'best val acc',
    'best epoch',
    'epochs',
    'status',
  ]
  ranked = sorted(members, key=lambda m: -m['best_val_accuracy'])
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


def member_records(grid: list, populations: list) -> list:
  """One JSON-able dict per member of the sweep.

  Args:
    grid: the members' values (``member_grid``).
    populations: ``(indices, PopulationResult)`` pairs, a chunk's indices
      into ``grid`` (a repeated index is a padding copy, skipped).

  Returns:
    The records, in grid order: values, best validation accuracy and epoch,
    epochs trained, status, and the per-epoch curves (NaN as None).
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
        'best_epoch': int(result.best_epoch[row]),
        'epochs_trained': int(result.epochs_trained[row]),
        'status': _status(result, row),
        'val_accuracy': as_list(result.val_accuracy[row]),
        'train_loss': as_list(result.train_loss[row]),
      }
  return records
