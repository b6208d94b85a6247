"""A whole sweep: its grid trained as populations, the best member saved.

* The members are grouped by ``grid.group_key``, one population per group.
* A population larger than ``population_chunk`` (0: as many as fit in half
  the free memory, ``memory.auto_chunk_size``) runs in chunks of that size,
  the last one padded with repeats so that there is one compilation.
* Members are ranked on the validation split by ``best_by``, the single
  run's rule for its best epoch (``records.member_order``: the highest best
  validation accuracy, or the lowest best validation loss). Only the best
  is scored on test, written as a normal run (``save``), so
  ``--eval_only``, report and predict work on it. ``sweep.json`` holds
  every member.
"""

import dataclasses
import json
import os

import jax

from jaxcls import config as config_lib
from jaxcls import data
from jaxcls.sweep import memory, population
from jaxcls.sweep.grid import (
  TRACED_FIELDS,
  chunks,
  group_key,
  member_config,
  member_grid,
  swept_values,
)
from jaxcls.sweep.records import eval_overrides, format_table, member_records
from jaxcls.sweep.save import save_best_member
from jaxcls.sweep.workdir import check_workdir, shared_fields
from jaxcls.training import workdir as workdir_lib


@dataclasses.dataclass
class _Plan:
  """What a sweep config asks for, validated before anything is loaded."""

  swept: dict  # swept_values
  mode: str  # the resolved population_mode
  grid: list  # the members' values
  configs: list  # the members' single-run configs
  groups: dict  # group_key -> the indices of its members


@dataclasses.dataclass
class _Trained:
  """The sweep's populations, as trained."""

  populations: list  # (chunk indices, PopulationResult)
  chunk_sizes: list  # one per group
  compile_seconds: float
  train_seconds: float


def _plan(config) -> _Plan:
  """The sweep's members and groups; ValueError for a sweep that cannot
  run (nothing swept, a member's invalid config, weight decay without
  adamw)."""
  config_lib.validate(config)
  swept = swept_values(config)
  if not swept:
    raise ValueError(
      'nothing to sweep: set e.g. --config.sweep_learning_rate=1e-3,3e-3'
    )
  mode = population.resolve_mode(config.population_mode)
  grid = member_grid(swept, config.sweep_samples, config.sweep_sample_seed)
  configs = [member_config(config, v) for v in grid]
  for c in configs:
    config_lib.validate(c)
  if 'weight_decay' in swept and config.optimizer != 'adamw':
    raise ValueError('weight_decay only acts with --config.optimizer=adamw')
  groups = {}
  for index, c in enumerate(configs):
    groups.setdefault(group_key(c), []).append(index)
  return _Plan(swept, mode, grid, configs, groups)


def _train_groups(config, plan: _Plan, ds: data.Data, log) -> _Trained:
  """Trains every group, chunk by chunk, each group's steps compiled once."""
  trained = _Trained([], [], 0.0, 0.0)
  for indices in plan.groups.values():
    group_cfg = plan.configs[indices[0]]
    size = config.population_chunk or memory.auto_chunk_size(
      group_cfg, ds, len(indices), plan.mode
    )
    trained.chunk_sizes.append(size)
    steps = population.make_population_steps(group_cfg, ds, plan.mode)
    for chunk in chunks(indices, size):
      log(f'Population of {len(chunk)} (members {sorted(set(chunk))}):')
      result = population.train_population(
        group_cfg,
        [
          {f: plan.grid[i][f] for f in TRACED_FIELDS if f in plan.grid[i]}
          for i in chunk
        ],
        ds,
        log=log,
        steps=steps,
      )
      trained.compile_seconds += result.compile_seconds
      trained.train_seconds += result.train_seconds
      trained.populations.append((chunk, result))
  return trained


def _summary(config, plan, trained, records, best, test, command) -> dict:
  """``sweep.json``: every member, the best one and how to re-score it."""
  return {
    'swept': plan.swept,
    'config': shared_fields(config),  # for check_workdir
    'members': records,
    'best_member': best,
    'best': {
      'values': plan.grid[best],
      'test_accuracy': test['test_accuracy'],
      'best_val_accuracy': records[best]['best_val_accuracy'],
      'best_val_loss': records[best]['best_val_loss'],
      'best_weights': records[best]['best_weights'],
      'best_by': config.get('best_by', 'accuracy'),
      'eval_command': command,
    },
    'populations': len(trained.populations),
    'chunk_sizes': trained.chunk_sizes,
    'population_mode': plan.mode,
    'compile_seconds': trained.compile_seconds,
    'train_seconds': trained.train_seconds,
    'platform': jax.devices()[0].platform,
  }


def _load_and_train(config, workdir: str, plan: _Plan, log) -> tuple:
  """Loads the data and trains the populations: ``(ds, trained)``."""
  workdir_lib.read_results(workdir)  # A corrupt file fails now, not later.
  check_workdir(workdir, config, plan.swept, plan.grid)  # Another sweep's too.
  ds = data.load(
    config.dataset,
    config.data_dir,
    config.validation_percent,
    config.train_examples,
    **data.source_args(config),
    **data.sequence_args(config),  # max_len, num_buckets, ... of sequences
  )
  log(
    f'Sweep of {len(plan.grid)} members over {sorted(plan.swept)} in '
    f'{len(plan.groups)} population(s) on {jax.devices()[0].platform}, '
    f'population_mode {plan.mode}'
  )
  return ds, _train_groups(config, plan, ds, log)


def _log_best(summary: dict, record: dict, values, trained, log) -> None:
  """The best member's lines: its scores and how to re-score it."""
  loss = record['best_val_loss']
  by_loss = summary['best']['best_by'] == 'loss' and loss is not None
  log(
    f'Best member {record["member"]} {values}: val accuracy '
    f'{record["best_val_accuracy"]:.4f}'
    + (f', val loss {loss:.4f}' if by_loss else '')
    + f' ({record["best_weights"]} weights), test accuracy '
    f'{summary["best"]["test_accuracy"]:.4f} (the only member scored on test)'
  )
  log(
    f'Compile {trained.compile_seconds:.1f}s, train '
    f'{trained.train_seconds:.1f}s. Re-score it: '
    f'{summary["best"]["eval_command"]}'
  )


def run_sweep(
  config,
  workdir: str,
  *,
  base_config=None,
  command: str = 'python -m experiments.fashion_mnist',
  plot=None,
  log=print,
) -> dict:
  """Trains every member, ranks them on validation, saves the best one.

  Args:
    config: the sweep config.
    workdir: locked for the whole sweep; gets the best run and sweep.json.
    base_config, command: the experiment ``eval_command`` runs (None: config).
    plot: ``plot(records, swept, path, best_by)`` draws sweep.png, or None.
    log: prints the progress lines.

  Returns:
    The summary written to ``sweep.json``.

  Raises:
    ValueError: a sweep that cannot run, or a workdir of another sweep.
  """
  plan = _plan(config)
  with workdir_lib.lock(workdir):
    ds, trained = _load_and_train(config, workdir, plan, log)
    records = member_records(plan.grid, trained.populations)
    best_by = config.get('best_by', 'accuracy')
    best = population.best_member(
      [r['best_val_accuracy'] for r in records],
      [r['best_val_loss'] for r in records],
      best_by,
    )
    log('\n' + format_table(records, sorted(plan.swept), best_by))
    chunk, result = next((c, r) for c, r in trained.populations if best in c)
    best_cfg = plan.configs[best]
    test = save_best_member(workdir, best_cfg, ds, result, chunk.index(best))
    workdir_lib.write_results(workdir, test)
    rerun = [command, f'--workdir={workdir}', '--eval_only']
    rerun += eval_overrides(best_cfg, base_config or config)
    summary = _summary(
      config, plan, trained, records, best, test, ' '.join(rerun)
    )
    with open(os.path.join(workdir, 'sweep.json'), 'w') as f:
      json.dump(summary, f, indent=2)
    if plot is not None:
      plot(records, plan.swept, os.path.join(workdir, 'sweep.png'), best_by)
  _log_best(summary, records[best], plan.grid[best], trained, log)
  return summary
