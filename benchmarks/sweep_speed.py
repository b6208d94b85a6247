"""K models as one vmapped population vs K sequential single runs.

Run:  python -m benchmarks.sweep_speed [--members 8] [--steps 40]

Both sides train the article's CNN (adamw) on the same Fashion-MNIST batches
for the same number of steps, in this process: the population with
``jaxcls.sweep``'s vmapped ``train.train_step``, the sequential side with
``train.train_step`` jitted for each member in turn (its own learning rate
and weight decay baked into its optimizer, as K separate runs would have).
Compile time is measured ahead of time and reported apart from training
time; the ratio is sequential training time / population training time.
"""

import argparse
import json
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from experiments import sweep as sweep_exp
from jaxcls import data, models, optim, sweep, train


def member_values(k: int) -> list:
  """K (learning rate, weight decay) pairs spread over a log grid."""
  lrs = np.geomspace(3e-4, 1e-2, k)
  wds = [(0.0, 1e-2, 1e-1)[i % 3] for i in range(k)]
  return [{'learning_rate': float(lr), 'weight_decay': float(wd)}
          for lr, wd in zip(lrs, wds)]


def time_population(config, ds, values, batches) -> dict:
  """Compile and train seconds of one vmapped population over ``batches``."""
  steps = sweep.make_population_steps(config, ds)
  column = lambda name: np.asarray([v.get(name, config[name]) for v in values])
  states, rngs = steps.init(column('seed').astype(np.int32),
                            column('learning_rate').astype(np.float32),
                            column('weight_decay').astype(np.float32))
  active = np.ones(len(values), bool)
  t0 = time.perf_counter()
  step = steps.train.lower(states, batches[0], rngs, active).compile()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for batch in batches:
    states, metrics = step(states, batch, rngs, active)
  jax.block_until_ready((states, metrics))
  return {'compile_seconds': compile_s,
          'train_seconds': time.perf_counter() - t0,
          'final_loss': (metrics['loss'] / metrics['count']).tolist()}


def time_sequential(config, ds, values, batches) -> dict:
  """The same members trained one after another with the plain train step."""
  compile_s = train_s = 0.0
  losses = []
  for v in values:
    member = sweep.member_config(config, v)
    model = models.create_model(member, ds.spec.num_classes)
    tx = optim.create_optimizer(member, len(batches))
    init_rng, train_rng = jax.random.split(jax.random.key(member.seed))
    state = train.create_train_state(init_rng, model, tx, ds.spec.image_shape)
    t0 = time.perf_counter()
    step = jax.jit(train.train_step, donate_argnums=0).lower(
        state, batches[0], train_rng).compile()
    compile_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    for batch in batches:
      state, metrics = step(state, batch, train_rng)
    jax.block_until_ready((state, metrics))
    train_s += time.perf_counter() - t0
    losses.append(float(metrics['loss'] / metrics['count']))
  return {'compile_seconds': compile_s, 'train_seconds': train_s,
          'final_loss': losses}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--members', type=int, default=8)
  parser.add_argument('--steps', type=int, default=40)
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--out', default='', help='write the numbers as JSON')
  args = parser.parse_args()
  config = sweep_exp.get_config()
  config.batch_size = args.batch_size
  config = sweep.member_config(config, {})
  examples = args.steps * args.batch_size
  ds = data.load(config.dataset, train_examples=examples)
  order = data.epoch_permutation(config.seed, 0, len(ds.train))
  batches = [jax.device_put(data.train_batch(ds.train, order, i,
                                             args.batch_size))
             for i in range(args.steps)]
  values = member_values(args.members)
  # Warm-up of the shared pieces (dataset, XLA's CPU runtime) off the clock.
  time_sequential(config, ds, values[:1], batches[:2])
  population = time_population(config, ds, values, batches)
  sequential = time_sequential(config, ds, values, batches)
  ratio = sequential['train_seconds'] / population['train_seconds']
  result = {'members': args.members, 'steps': args.steps,
            'batch_size': args.batch_size,
            'device': jax.devices()[0].device_kind,
            'cpu_count': os.cpu_count(), 'population': population,
            'sequential': sequential, 'speedup': ratio}
  print(f"{args.members} members x {args.steps} steps of batch "
        f"{args.batch_size} on {result['device']} ({os.cpu_count()} CPUs)")
  for name, r in (('vmapped population', population),
                  ('sequential runs', sequential)):
    print(f"  {name:20s} train {r['train_seconds']:7.2f}s  "
          f"({args.members * args.steps * args.batch_size / r['train_seconds']:,.0f} "
          f"member-images/s)  compile {r['compile_seconds']:6.2f}s")
  print(f'  speed-up (sequential / vmapped training time): {ratio:.2f}x')
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
