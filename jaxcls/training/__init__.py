"""Training: the pure steps, the loop around them, and what it reads and writes.

Modules: ``steps`` (TrainState, train/eval steps), ``run`` (the loop,
``train_and_evaluate``), ``session`` (a run's setup and resume),
``epoch_end`` (the work between calls), ``results``, ``evaluation``,
``epochs`` and ``feed`` (the calls and their batches), ``parallel``,
``guards`` (NaN and signals), ``checkpoint``, ``workdir``, ``metrics``,
``profiling``, ``scores`` and ``inspection`` (reading a trained workdir).

The public API below is imported on first use, so importing one module of
the package does not load the others.
"""

import importlib

# Public name -> the module that defines it.
_API = {
  'TrainState': 'steps',
  'create_train_state': 'steps',
  'train_step': 'steps',
  'eval_step': 'steps',
  'cross_entropy': 'steps',
  'check_batch': 'steps',
  'model_variables': 'steps',
  'params_sha256': 'evaluation',
  'evaluate': 'evaluation',
  'train_and_evaluate': 'run',
}

__all__ = list(_API)


def __getattr__(name: str):
  if name not in _API:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  value = getattr(importlib.import_module(f'{__name__}.{_API[name]}'), name)
  globals()[name] = value  # Looked up once.
  return value


def __dir__():
  return sorted(set(globals()) | set(_API))
