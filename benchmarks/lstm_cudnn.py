"""cuDNN's LSTM against jaxcls's fused scan: agreement, then train-step time.

  python -m benchmarks.lstm_cudnn                    # batches 64 and 1024
  python -m benchmarks.lstm_cudnn --batches=64,256,1024,4096

On an NVIDIA GPU: first the largest difference between
``jaxcls.accel.cudnn_lstm.lstm_sequence`` and the fused scan
(``jaxcls.models.recurrent.lstm_sequence``) on random inputs that reach cuDNN
through a transpose, at the highest matmul precision. Then a table of the LSTM
classifier's jitted train step (hidden 128, 28 rows of 28, Adam), the scan timed
before and after cuDNN in one process. Elsewhere cuDNN does not run and only the
scan is timed. Results: benchmarks/NOTES.md, round 6.
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxcls  # noqa: F401  (registers the recurrent models)
from jaxcls import accel, models, optim
from jaxcls import config as config_lib
from jaxcls.accel import cudnn_lstm
from jaxcls.models import recurrent
from jaxcls.ops import fastpath
from jaxcls.training import run as train


def agreement(steps=7, batch=3, features=5, hidden=6) -> float:
  """Max |cuDNN - fused scan| over outputs and the final state."""
  keys = jax.random.split(jax.random.key(0), 6)
  xs = jax.random.normal(keys[0], (steps, batch, features))
  w_i = 0.5 * jax.random.normal(keys[1], (features, 4 * hidden))
  w_h = 0.5 * jax.random.normal(keys[2], (hidden, 4 * hidden))
  b = jax.random.normal(keys[3], (4 * hidden,))
  carry = tuple(jax.random.normal(k, (batch, hidden)) for k in keys[4:])
  scan = functools.partial(recurrent.lstm_sequence, jnp.float32)
  with jax.default_matmul_precision('highest'):
    got = jax.jit(cudnn_lstm.lstm_sequence)(xs, w_i, w_h, b, carry)
    want = jax.jit(scan)(xs, w_i, w_h, b, carry)
  return max(
    float(jnp.abs(g - w).max())
    for g, w in zip(
      jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)
    )
  )


def compiled_step(kind: str, batch: int):
  """``(step, state, batch, rng, compile seconds)``: the ``kind`` classifier's
  jitted train step (hidden 128, 28 rows of 28, Adam), traced and compiled
  here, so the settings in force now (``jaxcls.accel.using``) are the ones
  it uses."""
  config = config_lib.get_config()
  config.model = kind
  model = models.create_model(config, 10)
  tx = optim.create_optimizer(config, 1)
  state = train.create_train_state(jax.random.key(0), model, tx, (28, 28, 1))
  images = jax.random.randint(
    jax.random.key(1), (batch, 28, 28, 1), 0, 256
  ).astype(jnp.uint8)
  labels = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
  batch_ = {'image': images, 'label': labels}
  rng = jax.random.key(3)
  start = time.perf_counter()
  step = (
    fastpath.jit(
      functools.partial(train.train_step, augment=False), donate_argnums=0
    )
    .lower(state, batch_, rng)
    .compile()
  )
  return step, state, batch_, rng, time.perf_counter() - start


def step_ms(batch: int, use_cudnn: bool, rounds=5, calls=20):
  """(median ms per train step, compile seconds) for the LSTM classifier."""
  # On a CPU, too, "scan" is the fused scan: no kernel of jaxcls's own.
  with accel.using(kernels='off', cudnn_lstm=use_cudnn):
    step, state, batch_, rng, compile_seconds = compiled_step('lstm', batch)
  for _ in range(3):
    state, _ = step(state, batch_, rng)
  jax.block_until_ready(state)
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    for _ in range(calls):
      state, _ = step(state, batch_, rng)
    jax.block_until_ready(state)
    times.append((time.perf_counter() - start) / calls * 1e3)
  return float(np.median(times)), compile_seconds


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batches', default='64,1024')
  args = p.parse_args(argv)
  on_gpu = jax.default_backend() == 'gpu'
  print('devices:', jax.devices())
  if on_gpu:
    print(f'max |cuDNN - scan| (highest precision): {agreement():.2e}')
  print(
    '| batch | scan ms/step (before, after) | cuDNN ms/step '
    '| cuDNN/scan time | compile s scan, cuDNN |'
  )
  print('|---:|---:|---:|---:|---:|')
  for batch in [int(b) for b in args.batches.split(',')]:
    scan, scan_compile = step_ms(batch, False)
    if on_gpu:
      cudnn, cudnn_compile = step_ms(batch, True)
      again, _ = step_ms(batch, False)
      best = min(scan, again)
      print(
        f'| {batch} | {scan:.3f}, {again:.3f} | {cudnn:.3f} | '
        f'{cudnn / best:.2f}x | {scan_compile:.1f}, {cudnn_compile:.1f} |'
      )
    else:
      print(f'| {batch} | {scan:.3f} | - | - | {scan_compile:.1f}, - |')


if __name__ == '__main__':
  main()
