"""The CPU LSTM/GRU kernels against the fused scans: agreement, step time.

  python -m benchmarks.rnn_cpu               # LSTM and GRU, batches 64, 256
  python -m benchmarks.rnn_cpu --models=lstm --batches=16,64,256 --rounds=9

On a CPU: first the largest difference between the kernels
(``jaxcls.accel.cpu_rnn``) and the fused scans
(``jaxcls.models.recurrent.lstm_sequence``, ``gru_recurrence``), value and every
gradient, relative to the largest. Then
a table of the classifier's jitted train step (hidden 128, 28 rows of 28,
Adam), both programs compiled first and then timed in alternating rounds in
one process, so that a shared machine's drift hits both alike; the ratio is
what to read. Results: benchmarks/NOTES.md, round 7.
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxcls  # noqa: F401  (registers the recurrent models)
from benchmarks import lstm_cudnn
from jaxcls import accel
from jaxcls.accel import cpu_rnn
from jaxcls.models import recurrent


def agreement(kind, steps=28, batch=64, features=28, hidden=128) -> float:
  """Max |kernel - fused scan| / max |fused scan| over value and gradients."""
  keys = jax.random.split(jax.random.key(0), 6)
  if kind == 'lstm':
    args = (
      jax.random.normal(keys[0], (steps, batch, features)),
      0.3 * jax.random.normal(keys[1], (features, 4 * hidden)),
      0.3 * jax.random.normal(keys[2], (hidden, 4 * hidden)),
      jax.random.normal(keys[3], (4 * hidden,)),
      tuple(jax.random.normal(k, (batch, hidden)) for k in keys[4:]),
    )
    kernel, scan = cpu_rnn.lstm_sequence, recurrent.lstm_sequence
  else:
    args = (
      jax.random.normal(keys[0], (steps, batch, 3 * hidden)),
      0.3 * jax.random.normal(keys[1], (hidden, 3 * hidden)),
      jax.random.normal(keys[2], (3 * hidden,)),
      jax.random.normal(keys[3], (batch, hidden)),
    )
    kernel, scan = cpu_rnn.gru_recurrence, recurrent.gru_recurrence

  def value_and_grads(sequence):
    def loss(*args):
      hs, last = sequence(*args)
      return (hs * jnp.cos(hs)).sum() + sum(
        (s**2).sum() for s in jax.tree.leaves(last)
      )

    argnums = tuple(range(len(args)))
    return jax.jit(jax.value_and_grad(loss, argnums=argnums))(*args)

  got = value_and_grads(kernel)
  want = value_and_grads(functools.partial(scan, jnp.float32))
  return max(
    float(jnp.abs(g - w).max() / jnp.abs(w).max())
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want))
  )


def compiled_step(kind: str, batch: int, use_kernel: bool):
  """``(step, state, batch, rng, compile seconds)`` for the classifier, on
  the CPU kernels or (``use_kernel=False``) the fused scans."""
  with accel.using(kernels='on' if use_kernel else 'off'):
    return lstm_cudnn.compiled_step(kind, batch)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--models', default='lstm,gru')
  p.add_argument('--batches', default='64,256')
  p.add_argument('--rounds', type=int, default=7)
  p.add_argument('--calls', type=int, default=30)
  args = p.parse_args(argv)
  print('devices:', jax.devices())
  if not cpu_rnn.available():
    print('the CPU RNN kernels are unavailable:', cpu_rnn.unavailable_reason())
    return
  kinds = args.models.split(',')
  for kind in kinds:
    print(f'{kind}: max |kernel - scan| / max |scan|: {agreement(kind):.1e}')
  print(
    '| model | batch | scan ms/step | kernel ms/step | scan/kernel time '
    '| compile s scan, kernel |'
  )
  print('|---|---:|---:|---:|---:|---:|')
  for kind, batch in [
    (k, int(b)) for k in kinds for b in args.batches.split(',')
  ]:
    runs = {
      n: compiled_step(kind, batch, n == 'kernel') for n in ('scan', 'kernel')
    }
    states = {name: run[1] for name, run in runs.items()}
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
      for name, (step, _, batch_, rng, _) in runs.items():
        state = states[name]
        for _ in range(3):  # warm up after the other program ran
          state, _ = step(state, batch_, rng)
        jax.block_until_ready(state)
        start = time.perf_counter()
        for _ in range(args.calls):
          state, _ = step(state, batch_, rng)
        jax.block_until_ready(state)
        times[name].append((time.perf_counter() - start) / args.calls * 1e3)
        states[name] = state
    scan, kernel = (float(np.median(times[n])) for n in ('scan', 'kernel'))
    print(
      f'| {kind} | {batch} | {scan:.2f} | {kernel:.2f} | '
      f'{scan / kernel:.2f}x | '
      f'{runs["scan"][4]:.1f}, {runs["kernel"][4]:.1f} |'
    )


if __name__ == '__main__':
  main()
