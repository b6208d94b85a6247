"""The grid of a sweep: its swept values, its members and their populations.

A sweep config is a normal config plus ``sweep_<field>`` strings of
comma-separated values (``sweep_learning_rate = '1e-4,1e-3'``); the grid is
their product, or ``sweep_samples`` members drawn from it. **Traced** fields
(``TRACED_FIELDS``: seed, learning rate, weight decay) are per-member values
inside one population (``jaxcls.sweep.population``). Every other swept field
(dropout rate, l1/l2, model, ...) changes shapes or Python control flow, so
each of its values gets its own population (``group_key``).
"""

import itertools

import ml_collections
import numpy as np

from jaxcls import config as config_lib

TRACED_FIELDS = ('seed', 'learning_rate', 'weight_decay')
SWEEP_PREFIX = 'sweep_'
# Fields of a sweep config that are not single-run config fields.
SWEEP_CONTROL_FIELDS = (
  'sweep_samples',
  'sweep_sample_seed',
  'population_chunk',
  'population_mode',
)
# All members read the same data, so these cannot differ between members.
UNSWEEPABLE_FIELDS = (
  'dataset',
  'data_dir',
  'validation_percent',
  'train_examples',
  'eval_batch_size',
  'parallel',
  # How a sequence dataset becomes arrays (data.sequence_args).
  'max_len',
  'tokenizer',
  'vocab_size',
  'num_buckets',
  'email_headers',
  # Members are ranked against each other by one rule.
  'best_by',
)


def parse_values(name: str, text, default):
  """The values a ``sweep_<name>`` field lists.

  Args:
    name: the swept config field, for the error message.
    text: ``'1e-3,3e-3'`` (empty items are skipped), or a tuple or list.
    default: the field's own value; its type is the values' (None: str).

  Returns:
    The list of values, of ``default``'s type.

  Raises:
    ValueError: an item is not of that type.
  """
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
    raise ValueError(
      f'{SWEEP_PREFIX}{name}={text!r}: expected comma-separated '
      f'{kind.__name__} values, e.g. --config.{SWEEP_PREFIX}'
      f'{name}=1,2'
    ) from None


def swept_values(config) -> dict:
  """What a sweep config sweeps.

  Args:
    config: a sweep config.

  Returns:
    ``{field: [values]}`` for every non-empty ``sweep_<field>`` of config.

  Raises:
    ValueError: a ``sweep_<field>`` names an unknown or unsweepable field,
      lists a value of the wrong type, or repeats a value.
  """
  swept = {}
  for key in config.keys():  # noqa: SIM118 (a ConfigDict)
    if not key.startswith(SWEEP_PREFIX) or key in SWEEP_CONTROL_FIELDS:
      continue
    field = key[len(SWEEP_PREFIX) :]
    if field not in config:
      raise ValueError(f'{key} sweeps an unknown config field {field!r}')
    if field in UNSWEEPABLE_FIELDS:
      raise ValueError(
        f'{key}: {field} cannot be swept (all members share the '
        'same data, and one best_by ranks them); run one sweep per value '
        'instead'
      )
    values = parse_values(field, config[key], config[field])
    if values:
      if len(set(values)) != len(values):
        raise ValueError(f'{key}={config[key]!r} repeats a value')
      swept[field] = values
  return swept


def member_grid(swept: dict, samples: int = 0, sample_seed: int = 0) -> list:
  """The members of a sweep, each a ``{field: value}`` dict.

  Args:
    swept: ``swept_values``' dict.
    samples: if between 0 and the grid's size, draw that many members.
    sample_seed: the seed of that draw.

  Returns:
    The product of the swept values (fields in sorted order), or ``samples``
    of it drawn at random without replacement, in grid order.
  """
  names = sorted(swept)
  grid = [
    dict(zip(names, combo))
    for combo in itertools.product(*(swept[n] for n in names))
  ]
  if 0 < samples < len(grid):
    rows = np.random.default_rng(sample_seed).choice(
      len(grid), samples, replace=False
    )
    grid = [grid[i] for i in sorted(rows)]
  return grid


def member_config(sweep_config, values: dict) -> ml_collections.ConfigDict:
  """The single-run config of one member: no sweep fields, its values set.

  Its fingerprint is what a normal run with these overrides would have, so
  the member's checkpoint can be read by ``--eval_only`` and the tools.

  Args:
    sweep_config: the sweep config (left unchanged).
    values: the member's ``{field: value}``.

  Returns:
    A new ConfigDict.
  """
  c = ml_collections.ConfigDict(sweep_config.to_dict())
  for key in list(c.keys()):
    if key.startswith(SWEEP_PREFIX) or key in SWEEP_CONTROL_FIELDS:
      del c[key]
  for name, value in values.items():
    c[name] = value
  return c


def group_key(config) -> str:
  """Members with equal keys share shapes and control flow: one population.

  Args:
    config: a member's single-run config.

  Returns:
    The fingerprint of ``config`` with its traced fields zeroed.
  """
  c = ml_collections.ConfigDict(config.to_dict())
  for name in TRACED_FIELDS:
    c[name] = type(c[name])(0)
  return config_lib.fingerprint(c)


def chunks(indices: list, size: int) -> list:
  """Splits ``indices`` into lists of ``size``; pads the last with repeats.

  Equal sizes mean one compiled step per population; padding members are
  copies of real ones and are dropped from the results.

  Args:
    indices: the members of one population.
    size: the chunk size; 0 or less: one chunk of all.

  Returns:
    The chunks, each a list of ``min(size, len(indices))`` indices.
  """
  size = len(indices) if size <= 0 else min(size, len(indices))
  out = [list(indices[i : i + size]) for i in range(0, len(indices), size)]
  out[-1] += [out[-1][-1]] * (size - len(out[-1]))
  return out
