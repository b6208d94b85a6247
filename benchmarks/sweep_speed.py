"""K members as one population vs K sequential single runs.

Run:  python -m benchmarks.sweep_speed --members 8 --json OUT.json
      [--epochs 3 --steps 50 --batch_size 64 --mode auto]

Both sides train the sweep experiment's model (the article's CNN, adamw) on
the same Fashion-MNIST batches for the same epochs, validating after each
epoch, in this process:

* population: ``jaxcls.sweep.population.train_population``, the sweep's own
loop, in the mode ``population_mode=auto`` picks for this backend (``--mode`` to
force one);
* sequential: each member as the single run trains it: its own optimizer
  (``optim.create_optimizer``, its learning rate and weight decay baked in,
  so each run compiles its own step), ``feed.DeviceFeed`` of
  ``train.train_step`` over ``feed.epoch_rows``, ``train.evaluate`` after
  each epoch. Checkpoints and logs are left out on both sides.

``*_train_seconds`` time the training steps only (as the runs report
``train_seconds``); ``*_wall_seconds`` everything from building the states to
the last validation, compilation included. The JSON holds both, per side.
"""

import argparse
import functools
import json
import os
import time

import jax
import numpy as np

from experiments import sweep as sweep_exp
from jaxcls import data, models, optim, sweep
from jaxcls.sweep import population
from jaxcls.training import epochs, parallel
from jaxcls.training import feed as feed_lib
from jaxcls.training import run as train


def member_values(k: int) -> list:
  """K (learning rate, weight decay) pairs spread over a log grid."""
  lrs = np.geomspace(3e-4, 1e-2, k)
  wds = [(0.0, 1e-2, 1e-1)[i % 3] for i in range(k)]
  return [
    {'learning_rate': float(lr), 'weight_decay': float(wd)}
    for lr, wd in zip(lrs, wds)
  ]


def time_population(config, ds, values, mode: str) -> dict:
  """The population, as the sweep trains it."""
  t0 = time.perf_counter()
  result = population.train_population(
    config, values, ds, mode=mode, log=lambda *a: None
  )
  jax.block_until_ready(result.final_states)
  return {
    'train_seconds': result.train_seconds,
    'compile_seconds': result.compile_seconds,
    'wall_seconds': time.perf_counter() - t0,
    'final_val_accuracy': result.val_accuracy[:, -1].tolist(),
  }


def single_run(config, ds) -> dict:
  """One member as the single run trains it (no checkpoints, no logs)."""
  t0 = time.perf_counter()
  spe = len(ds.train) // config.batch_size
  model = models.create_model(config, ds.spec.num_classes)
  tx = optim.create_optimizer(config, spe)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  state = train.create_train_state(init_rng, model, tx, ds.spec.image_shape)
  mesh = parallel.make_mesh()
  step = functools.partial(
    train.train_step, **train.step_options(config, ds.spec)
  )
  walk = epochs.Epochs(
    feed_lib.DeviceFeed(step, ds.train, mesh),
    lambda epoch: feed_lib.epoch_rows(
      config.seed, epoch, ds.train_shards, (0,), config.batch_size
    ),
    spe,
    feed_lib.steps_per_call(config),
    0,
    config.num_epochs * spe,
    aux=train_rng,
  )
  compile_s, train_s = walk.compile(state, config.batch_size), 0.0
  evaluate = jax.jit(train.eval_step)
  for call in walk.calls(state):
    if call.epoch_done:
      state = call.state
      jax.block_until_ready(state)
      train_s += time.perf_counter() - call.started
      val = train.evaluate(
        evaluate, state, ds.val, config.eval_batch_size, mesh
      )
  return {
    'train_seconds': train_s,
    'compile_seconds': compile_s,
    'wall_seconds': time.perf_counter() - t0,
    'final_val_accuracy': val['accuracy'],
  }


def time_sequential(config, ds, values) -> dict:
  """The members trained one after another as single runs."""
  runs = [single_run(sweep.member_config(config, v), ds) for v in values]
  out = {
    k: sum(r[k] for r in runs)
    for k in ('train_seconds', 'compile_seconds', 'wall_seconds')
  }
  out['final_val_accuracy'] = [r['final_val_accuracy'] for r in runs]
  return out


def measure(config, ds, values, mode: str = 'auto') -> dict:
  """Both sides on ``ds``; the JSON-able result with the four totals."""
  mode = population.resolve_mode(mode)
  # Warm-up of the shared pieces (XLA's CPU runtime, the eval step) off the
  # clock, with one member and one epoch.
  warm = sweep.member_config(config, {})
  warm.num_epochs = 1
  single_run(warm, ds)
  pop = time_population(config, ds, values, mode)
  seq = time_sequential(config, ds, values)
  return {
    'members': len(values),
    'mode': mode,
    'epochs': config.num_epochs,
    'steps_per_epoch': len(ds.train) // config.batch_size,
    'batch_size': config.batch_size,
    'device': jax.devices()[0].device_kind,
    'cpu_count': os.cpu_count(),
    'load_average': os.getloadavg(),
    'population_train_seconds': pop['train_seconds'],
    'sequential_train_seconds': seq['train_seconds'],
    'population_wall_seconds': pop['wall_seconds'],
    'sequential_wall_seconds': seq['wall_seconds'],
    'train_ratio': pop['train_seconds'] / seq['train_seconds'],
    'wall_ratio': pop['wall_seconds'] / seq['wall_seconds'],
    'population': pop,
    'sequential': seq,
  }


def table(r: dict) -> str:
  """The printed summary: seconds per side and population / sequential."""
  rows = [
    ('training', 'train_seconds'),
    ('compile', 'compile_seconds'),
    ('wall (all)', 'wall_seconds'),
  ]
  head = (
    f'{r["members"]} members x {r["epochs"]} epochs x '
    f'{r["steps_per_epoch"]} steps of batch {r["batch_size"]} on '
    f'{r["device"]} ({r["cpu_count"]} CPUs, load average '
    f'{r["load_average"][0]:.1f})\n'
    f'| | population ({r["mode"]}) | {r["members"]} sequential runs '
    f'| population / sequential |\n|---|---:|---:|---:|'
  )
  lines = [
    f'| {name} | {r["population"][key]:.2f} s | '
    f'{r["sequential"][key]:.2f} s | '
    f'{r["population"][key] / r["sequential"][key]:.2f}x |'
    for name, key in rows
  ]
  return '\n'.join([head, *lines])


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--members', type=int, default=8)
  parser.add_argument('--epochs', type=int, default=3)
  parser.add_argument('--steps', type=int, default=50, help='per epoch')
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--mode', default='auto', choices=population.MODES)
  parser.add_argument('--json', default='', help='write the numbers here')
  args = parser.parse_args(argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # Before TFDS loads.
  config = sweep.member_config(sweep_exp.get_config(), {})
  config.batch_size, config.num_epochs = args.batch_size, args.epochs
  config.train_examples = args.steps * args.batch_size
  ds = data.load(
    config.dataset,
    config.data_dir,
    config.validation_percent,
    config.train_examples,
  )
  result = measure(config, ds, member_values(args.members), args.mode)
  print(table(result))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == '__main__':
  main()
