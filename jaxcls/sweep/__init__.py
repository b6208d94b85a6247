"""Hyperparameter sweeps: a grid of configs trained as populations, K models
of one shape that share their batches.
"""

from jaxcls.sweep import grid, memory, population
from jaxcls.sweep.grid import (
  SWEEP_CONTROL_FIELDS,
  SWEEP_PREFIX,
  TRACED_FIELDS,
  UNSWEEPABLE_FIELDS,
  chunks,
  group_key,
  member_config,
  member_grid,
  parse_values,
  swept_values,
)
from jaxcls.sweep.memory import auto_chunk_size, free_device_bytes, member_bytes
from jaxcls.sweep.population import PopulationResult, train_population
from jaxcls.sweep.records import eval_overrides, format_table, member_records
from jaxcls.sweep.run import run_sweep
from jaxcls.sweep.save import save_best_member, single_run_state
from jaxcls.sweep.workdir import check_workdir, shared_fields

__all__ = [
  'SWEEP_CONTROL_FIELDS',
  'SWEEP_PREFIX',
  'TRACED_FIELDS',
  'UNSWEEPABLE_FIELDS',
  'PopulationResult',
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
  'memory',
  'parse_values',
  'population',
  'run_sweep',
  'save_best_member',
  'shared_fields',
  'single_run_state',
  'swept_values',
  'train_population',
]
