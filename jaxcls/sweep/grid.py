"""Hyperparameter sweeps: a grid of configs, trained as populations.

* A sweep config is a normal config plus ``sweep_<field>`` strings of
  comma-separated values (``sweep_learning_rate = '1e-4,1e-3'``); the grid is
  their product, or ``sweep_samples`` members drawn from it.
* **Traced** fields (``TRACED_FIELDS``: seed, learning rate, weight decay)
  are per-member values inside one population (``jaxcls.sweep.population``).
  Every other swept field (dropout rate, l1/l2, model, ...) changes shapes or
  Python control flow, so each of its values gets its own population.
* A population larger than ``population_chunk`` (0: as many as fit in half
  the free memory) runs in chunks of that size, the last one padded with
  repeats so that there is one compilation.
* Members are ranked on the validation split. Only the best is scored on
  test, written as a normal run through the single run's own
  ``train.setup``/``Run.save``/``train.finish``: ``checkpoints/{best,latest}``
  and ``results.json``, so ``--eval_only``, report and predict work on it.
  ``sweep.json`` holds every member.
"""

import functools
import itertools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxcls import config as config_lib
from jaxcls import data, models
from jaxcls.ops import fastpath
from jaxcls.sweep import population
from jaxcls.training import checkpoint
from jaxcls.training import run as train
from jaxcls.training import workdir as workdir_lib

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
)


def parse_values(name: str, text, default):
  """``'1e-3,3e-3'`` (or a tuple) -> values of ``default``'s type."""
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
  """``{field: [values]}`` for every non-empty ``sweep_<field>`` of config."""
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
        'same data); run one sweep per value instead'
      )
    values = parse_values(field, config[key], config[field])
    if values:
      if len(set(values)) != len(values):
        raise ValueError(f'{key}={config[key]!r} repeats a value')
      swept[field] = values
  return swept


def member_grid(swept: dict, samples: int = 0, sample_seed: int = 0) -> list:
  """The product of the swept values, or ``samples`` of it drawn at random."""
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
  """
  c = ml_collections.ConfigDict(sweep_config.to_dict())
  for key in list(c.keys()):
    if key.startswith(SWEEP_PREFIX) or key in SWEEP_CONTROL_FIELDS:
      del c[key]
  for name, value in values.items():
    c[name] = value
  return c


def group_key(config) -> str:
  """Members with equal keys share shapes and control flow: one population."""
  c = ml_collections.ConfigDict(config.to_dict())
  for name in TRACED_FIELDS:
    c[name] = type(c[name])(0)
  return config_lib.fingerprint(c)


def chunks(indices: list, size: int) -> list:
  """Splits ``indices`` into lists of ``size``; pads the last with repeats.

  Equal sizes mean one compiled step per population; padding members are
  copies of real ones and are dropped from the results.
  """
  size = len(indices) if size <= 0 else min(size, len(indices))
  out = [list(indices[i : i + size]) for i in range(0, len(indices), size)]
  out[-1] += [out[-1][-1]] * (size - len(out[-1]))
  return out


def free_device_bytes() -> int:
  """Memory the population may use: free accelerator memory, else free RAM."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return int(stats['bytes_limit'] - stats.get('bytes_in_use', 0))
  return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')


def member_bytes(config, ds: data.Data, mode: str = 'auto') -> int:
  """Memory one more member needs.

  In one jit ('vmap', 'unrolled'): XLA's estimate of a one-member vmapped
  step (arguments + temporaries + outputs), which over-counts (the batch is
  shared), so chunks sized from it are safe. In 'loop' the members share
  the one step's temporaries: four times a member's state.
  """
  model = models.create_model(config, ds.spec.num_classes)
  init = jax.vmap(
    functools.partial(
      population.init_member,
      model=model,
      tx=population.population_optimizer(config, 1),
      image_shape=ds.spec.image_shape,
    )
  )
  states, keys = jax.eval_shape(
    init, jnp.zeros(1, jnp.int32), jnp.zeros(1), jnp.zeros(1)
  )
  state_bytes = 4 * sum(
    x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(states)
  )
  if population.resolve_mode(mode) == 'loop':
    return state_bytes
  batch = {
    'image': jax.ShapeDtypeStruct(
      (config.batch_size, *ds.spec.image_shape), jnp.uint8
    ),
    'label': jax.ShapeDtypeStruct((config.batch_size,), jnp.int32),
  }
  step, _ = train.configured_steps(config, ds.spec)
  stats = (
    fastpath.jit(population.vmapped(step))
    .lower(states, batch, (keys, jnp.ones(1, bool)))
    .compile()
    .memory_analysis()
  )
  if stats is None:  # Some backends do not report; count the state instead.
    return state_bytes
  return int(
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    + stats.temp_size_in_bytes
  )


def auto_chunk_size(
  config,
  ds: data.Data,
  members: int,
  mode: str = 'auto',
  memory_fraction: float = 0.5,
) -> int:
  """How many members fit in ``memory_fraction`` of the free memory."""
  fit = int(
    memory_fraction * free_device_bytes() // member_bytes(config, ds, mode)
  )
  if fit < 1:
    raise ValueError(
      'one member does not fit in device memory; lower --config.batch_size'
    )
  return min(members, fit)


def eval_overrides(member_cfg, base_config) -> list:
  """``--config.x=v`` flags that turn ``base_config`` into the member's."""
  base = base_config.to_dict()
  return [
    f'--config.{key}={value}'
    for key, value in sorted(member_cfg.to_dict().items())
    if key not in config_lib.RUN_ONLY_FIELDS
    and base.get(key, object()) != value
  ]


def format_table(members: list, swept: list) -> str:
  """Members sorted by validation accuracy, best first, as aligned text."""
  head = [
    'rank',
    'member',
    *swept,
    'best val acc',
    'best epoch',
    'epochs',
    'status',
  ]
  rows = []
  ranked = sorted(members, key=lambda m: -m['best_val_accuracy'])
  for rank, m in enumerate(ranked, 1):
    rows.append(
      [
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
    )
  widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
  line = lambda r: (
    '| ' + ' | '.join(c.ljust(w) for c, w in zip(r, widths)) + ' |'
  )
  rule = '|' + '|'.join('-' * (w + 2) for w in widths) + '|'
  return '\n'.join([line(head), rule, *map(line, rows)])


def member_records(grid: list, populations: list) -> list:
  """One JSON-able dict per member, from ``(indices, PopulationResult)``s."""
  records = [None] * len(grid)
  as_list = lambda xs: [None if v != v else float(v) for v in xs]
  for indices, result in populations:
    for row, index in enumerate(indices):
      if records[index] is not None:
        continue  # A padding copy at the end of a chunk.
      stopped = result.epochs_trained[row] < result.val_accuracy.shape[1]
      records[index] = {
        'member': index,
        'values': grid[index],
        'best_val_accuracy': float(result.best_val_accuracy[row]),
        'best_epoch': int(result.best_epoch[row]),
        'epochs_trained': int(result.epochs_trained[row]),
        'status': (
          'diverged'
          if result.diverged[row]
          else 'stopped early'
          if stopped
          else 'ok'
        ),
        'val_accuracy': as_list(result.val_accuracy[row]),
        'train_loss': as_list(result.train_loss[row]),
      }
  return records


def single_run_state(
  state: train.TrainState, member: train.TrainState
) -> train.TrainState:
  """``state`` (a single run's, from ``train.setup``) holding the member's
  parameters, statistics, weight average and step.

  The population's optimizer state is laid out by ``inject_hyperparams``; it
  is carried over when, unwrapped, it has the single run's layout (e.g.
  adamw with a constant rate), so that training can resume; otherwise the
  single run's optimizer starts fresh there.
  """
  state = state.replace(
    params=member.params,
    step=jnp.asarray(member.step),
    batch_stats=member.batch_stats,
    ema=member.ema,
  )
  inner = getattr(member.opt_state, 'inner_state', None)
  if isinstance(
    member.opt_state, optax.InjectStatefulHyperparamsState
  ) and jax.tree_util.tree_structure(inner) == jax.tree_util.tree_structure(
    state.opt_state
  ):
    state = state.replace(opt_state=inner)
  return state


def save_best_member(
  workdir: str,
  member_cfg,
  ds: data.Data,
  result: population.PopulationResult,
  row: int,
) -> dict:
  """Writes member ``row`` as a normal run and scores it on test, once."""
  run = train.setup(member_cfg, workdir, ds=ds)
  final = result.final_states[row]
  epochs = int(result.epochs_trained[row])
  progress = train.Progress(
    best_val_accuracy=float(result.best_val_accuracy[row]),
    best_epoch=int(result.best_epoch[row]),
    train_seconds=result.train_seconds,  # the whole population's
    images_trained=int(final.step) * member_cfg.batch_size,
  )
  best = single_run_state(run.state, result.best_states[row])
  latest = single_run_state(run.state, final)
  run.save(run.best, best, progress.best_epoch, progress)
  run.save(run.latest, latest, epochs, progress)
  checkpoint.wait(run.best)
  checkpoint.wait(run.latest)
  stopped = epochs < member_cfg.num_epochs and not result.diverged[row]
  return train.finish(
    run, run.steps.place(latest), int(final.step), progress, stopped
  )


def shared_fields(config) -> dict:
  """What every member of a sweep shares, as ``sweep.json`` records it.

  The fields that define what is trained (not RUN_ONLY_FIELDS), less the
  sweep's own; the swept fields' values are those of the members.
  """
  return json.loads(
    json.dumps(
      {
        k: v
        for k, v in member_config(config, {}).to_dict().items()
        if k not in config_lib.RUN_ONLY_FIELDS
      },
      default=str,
    )
  )


def _listed(values) -> str:
  """Swept values as a ``sweep_<field>`` flag writes them ('' if none)."""
  if values is None:
    return "''"
  return ','.join(f'{v:g}' if isinstance(v, float) else str(v) for v in values)


def _legacy_changes(saved: dict, workdir: str, config) -> list:
  """What differs from a ``sweep.json`` of an older jaxcls, which lacks the
  shared fields: its best member's fingerprint, in ``results.json``."""
  best = (saved.get('best') or {}).get('values')
  had = workdir_lib.read_results(workdir).get('config_fingerprint')
  if best is None or had is None:
    return []
  mine = config_lib.fingerprint(member_config(config, best))
  what = "an unswept field (the best member's config fingerprint)"
  return [] if had == mine else [(what, had, mine, False)]


def _sweep_changes(saved: dict, workdir: str, config, swept, grid) -> list:
  """``(what, saved, now, flag)`` for each way the sweep ``saved`` (its
  ``sweep.json``) differs from this one; ``flag``: a config field to name."""
  now = json.loads(json.dumps(swept, default=str))
  then = saved.get('swept') or {}
  changes = [
    (f'{SWEEP_PREFIX}{f}', _listed(then.get(f)), _listed(now.get(f)), True)
    for f in sorted(set(then) | set(now))
    if then.get(f) != now.get(f)
  ]
  members = [m.get('values') for m in saved.get('members') or []]
  if not changes and members != json.loads(json.dumps(grid, default=str)):
    # The same values, other members drawn (sweep_samples, sample seed).
    changes.append(('members drawn', len(members), len(grid), False))
  old, new = saved.get('config'), shared_fields(config)
  if old is None:
    return changes or _legacy_changes(saved, workdir, config)
  return changes + [
    (k, old.get(k), new.get(k), True)
    for k in sorted(set(old) | set(new))
    if k not in then and k not in now and old.get(k) != new.get(k)
  ]


def check_workdir(workdir: str, config, swept: dict, grid: list) -> None:
  """Refuses, before anything is trained, a workdir of another sweep.

  The best member is saved as a normal run, whose checkpoints must be of
  this sweep: a workdir whose ``sweep.json`` records another grid or other
  shared fields, or that holds checkpoints without a ``sweep.json`` (a
  single run's), would be trained for nothing and then refused, or lose
  its run. Raises ValueError in one line: the workdir, what differs, the fix.
  """
  path = os.path.join(workdir, 'sweep.json')
  if not os.path.exists(path):
    folders = [
      os.path.join(workdir, 'checkpoints', n) for n in ('best', 'latest')
    ]
    if any(os.path.isdir(f) and os.listdir(f) for f in folders):
      raise ValueError(
        f'{workdir} holds checkpoints but no sweep.json (a single run, or a '
        'sweep that did not finish); a sweep would replace them: use another '
        '--workdir'
      )
    return
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(
      f'{path} is unreadable ({type(e).__name__}); use another --workdir'
    ) from None
  if not isinstance(saved, dict):
    raise ValueError(f'{path} is not a sweep summary; use another --workdir')
  changes = _sweep_changes(saved, workdir, config, swept, grid)
  if not changes:
    return
  what = ', '.join(f'{k}: {a} -> {b}' for k, a, b, _ in changes)
  flags = ' '.join(f'--config.{k}={a}' for k, a, _, flag in changes if flag)
  fix = f", or the saved sweep's values ({flags})" if flags else ''
  raise ValueError(
    f'{workdir} holds another sweep ({what}); nothing was trained: use '
    f'another --workdir{fix}'
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

  ``base_config`` and ``command`` are the single-run experiment the best
  member's ``--eval_only`` line is written for; ``plot(records, swept,
  path)`` draws ``sweep.png``. The workdir is locked for the whole sweep.
  """
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
  with workdir_lib.lock(workdir):
    workdir_lib.read_results(workdir)  # A corrupt file fails now, not later.
    check_workdir(workdir, config, swept, grid)  # Another sweep's: now too.
    ds = data.load(
      config.dataset,
      config.data_dir,
      config.validation_percent,
      config.train_examples,
      **data.source_args(config),
    )
    log(
      f'Sweep of {len(grid)} members over {sorted(swept)} in '
      f'{len(groups)} population(s) on {jax.devices()[0].platform}, '
      f'population_mode {mode}'
    )
    populations, compile_s, train_s, chunk_sizes = [], 0.0, 0.0, []
    for indices in groups.values():
      group_cfg = configs[indices[0]]
      size = config.population_chunk or auto_chunk_size(
        group_cfg, ds, len(indices), mode
      )
      chunk_sizes.append(size)
      steps = population.make_population_steps(group_cfg, ds, mode)
      for chunk in chunks(indices, size):
        log(f'Population of {len(chunk)} (members {sorted(set(chunk))}):')
        result = population.train_population(
          group_cfg,
          [
            {f: grid[i][f] for f in TRACED_FIELDS if f in grid[i]}
            for i in chunk
          ],
          ds,
          log=log,
          steps=steps,
        )
        compile_s += result.compile_seconds
        train_s += result.train_seconds
        populations.append((chunk, result))

    records = member_records(grid, populations)
    best = population.best_member([r['best_val_accuracy'] for r in records])
    log('\n' + format_table(records, sorted(swept)))
    chunk, result = next((c, r) for c, r in populations if best in c)
    test = save_best_member(
      workdir, configs[best], ds, result, chunk.index(best)
    )
    workdir_lib.write_results(workdir, test)
    rerun = [
      command,
      f'--workdir={workdir}',
      '--eval_only',
      *eval_overrides(configs[best], base_config or config),
    ]
    summary = {
      'swept': swept,
      'config': shared_fields(config),  # for check_workdir
      'members': records,
      'best_member': best,
      'best': {
        'values': grid[best],
        'test_accuracy': test['test_accuracy'],
        'best_val_accuracy': records[best]['best_val_accuracy'],
        'eval_command': ' '.join(rerun),
      },
      'populations': len(populations),
      'chunk_sizes': chunk_sizes,
      'population_mode': mode,
      'compile_seconds': compile_s,
      'train_seconds': train_s,
      'platform': jax.devices()[0].platform,
    }
    with open(os.path.join(workdir, 'sweep.json'), 'w') as f:
      json.dump(summary, f, indent=2)
    if plot is not None:
      plot(records, swept, os.path.join(workdir, 'sweep.png'))
  log(
    f'Best member {best} {grid[best]}: val accuracy '
    f'{records[best]["best_val_accuracy"]:.4f}, test accuracy '
    f'{test["test_accuracy"]:.4f} (the only member scored on test)'
  )
  log(
    f'Compile {compile_s:.1f}s, train {train_s:.1f}s. Re-score it: '
    f'{summary["best"]["eval_command"]}'
  )
  return summary
