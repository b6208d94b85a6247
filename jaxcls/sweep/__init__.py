"""Hyperparameter sweeps: a grid of configs trained as populations, K models
of one shape that share their batches.
"""

from jaxcls.sweep import grid, population
from jaxcls.sweep.grid import (
  SWEEP_CONTROL_FIELDS,
  SWEEP_PREFIX,
  TRACED_FIELDS,
  UNSWEEPABLE_FIELDS,
  auto_chunk_size,
  check_workdir,
  chunks,
  eval_overrides,
  format_table,
  free_device_bytes,
  group_key,
  member_bytes,
  member_config,
  member_grid,
  member_records,
  parse_values,
  run_sweep,
  save_best_member,
  shared_fields,
  single_run_state,
  swept_values,
)

__all__ = [
  'SWEEP_CONTROL_FIELDS',
  'SWEEP_PREFIX',
  'TRACED_FIELDS',
  'UNSWEEPABLE_FIELDS',
  'auto_chunk_size',
  'check_workdir',
  'chunks',
  'eval_overrides',
  'format_table',
  'free_device_bytes',
  'grid',
  'group_key',
  'member_bytes',
  'member_config',
  'member_grid',
  'member_records',
  'parse_values',
  'population',
  'run_sweep',
  'save_best_member',
  'shared_fields',
  'single_run_state',
  'swept_values',
]
