"""Which path a kernel takes on this machine, decided by measurement.

At the first trace of a (kernel, shape) on a CPU, :func:`decision` times the
kernel and XLA's own ops on arrays of that shape (:func:`measure`, forward
and backward); the kernel runs only if it was faster. The decision goes to
``choices-<key>.json`` in the kernel cache, keyed by the CPU's model and
flags, jaxlib, the kernels' sources and ``XLA_FLAGS``, so that later
processes on this machine take the same path without measuring, and a new
CPU, jaxlib or kernel measures again.

A measurement runs eagerly in the middle of a trace
(``jax.ensure_compile_time_eval``) and costs well under a second per shape.
One taken while other processes used more than :data:`BUSY_SHARE` of the
CPUs decides for this process only: a busy machine's timings are not kept.
"""

import hashlib
import json
import logging
import os
import platform
import time
from importlib import resources

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from jaxcls.accel import build
from jaxcls.accel.xla_options import compiler_options

REPEATS = 7  # timed samples per path after one to warm up, the fastest kept
SAMPLE_SECONDS = 0.02  # a sample is as many back-to-back calls as fill this
BUSY_SHARE = 0.2  # of all CPUs, used by other processes while measuring
_memo: dict[str, dict] = {}  # key -> decision, this process


def cpu_model() -> str:
  """``lscpu``'s model name (``/proc/cpuinfo``), else the platform's."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _file() -> str:
  """This machine's decisions file, in the (checked) kernel cache."""
  parts = [cpu_model(), build._cpu_signature(), jaxlib.__version__]
  parts.append(os.environ.get('XLA_FLAGS', ''))
  for stem in ('conv_cpu', 'rnn_cpu'):
    source = resources.files('jaxcls.accel').joinpath(f'csrc/{stem}.cc')
    parts.append(hashlib.sha256(source.read_bytes()).hexdigest())
  key = hashlib.sha256('\0'.join(parts).encode()).hexdigest()[:16]
  return os.path.join(build.private_dir(), f'choices-{key}.json')


def _read(path: str) -> dict:
  try:
    with open(path) as f:
      found = json.load(f)
    return found if isinstance(found, dict) else {}
  except (OSError, ValueError):
    return {}  # Absent or damaged: measure again, and rewrite it.


def _store(path: str, key: str, entry: dict) -> None:
  """Merges one decision into ``path``, atomically."""
  merged = _read(path)
  merged[key] = entry
  tmp = f'{path}.{os.getpid()}.tmp'
  with open(tmp, 'w') as f:
    json.dump(merged, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def _example(shapes, seed: int = 0):
  """Random float32 arrays (or the pytree of them) of ``shapes``."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32) * 0.5),
    shapes,
  )


def _step(fn, cotangents, wrt):
  """``fn``'s forward pass, and its backward pass for ``wrt`` (if any)."""

  def loss(*args):
    outs = jax.tree.leaves(fn(*args))
    return sum(jnp.vdot(o, c) for o, c in zip(outs, cotangents, strict=True))

  timed = jax.grad(loss, argnums=wrt) if wrt else loss
  return jax.jit(timed, compiler_options=compiler_options())


def measure(kernel_fn, xla_fn, shapes, wrt=None) -> dict:
  """Seconds per forward+backward call of each path: ``{'kernel', 'xla'}``.

  Both jitted with the same compiler options; after a warm-up, the fastest
  of :data:`REPEATS` interleaved samples of back-to-back calls each.

  Args:
    kernel_fn, xla_fn: the same function of arrays of ``shapes``.
    shapes: a tuple of ``jax.ShapeDtypeStruct`` pytrees, the arguments.
    wrt: the argument numbers a train step differentiates (default all;
      a first layer's input, the image, needs no gradient); ``()`` times
      the forward pass alone (evaluation).
  """
  wrt = tuple(range(len(shapes))) if wrt is None else tuple(wrt)
  with jax.ensure_compile_time_eval():
    args = _example(shapes)
    out = jax.eval_shape(xla_fn, *shapes)
    cotangents = jax.tree.leaves(_example(out, seed=1))
    steps = {
      'kernel': _step(kernel_fn, cotangents, wrt),
      'xla': _step(xla_fn, cotangents, wrt),
    }
    calls = {}
    for name, step in steps.items():  # Compile, warm up, size a sample.
      jax.block_until_ready(step(*args))
      t0 = time.perf_counter()
      jax.block_until_ready(step(*args))
      calls[name] = max(1, int(SAMPLE_SECONDS / (time.perf_counter() - t0)))
    best = {name: float('inf') for name in steps}
    for sample in range(1 + REPEATS):  # Interleaved: drift hits both alike.
      for name, step in steps.items():
        t0 = time.perf_counter()
        for _ in range(calls[name]):  # Back to back, as a train loop runs.
          out = step(*args)
        jax.block_until_ready(out)
        seconds = (time.perf_counter() - t0) / calls[name]
        if sample:  # The first is a warm-up.
          best[name] = min(best[name], seconds)
  return best


def _cpu_seconds() -> tuple[float, float] | None:
  """(busy CPU seconds of the whole machine, of this process), or None."""
  try:
    with open('/proc/stat') as f:
      fields = [int(v) for v in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
  ticks = os.sysconf('SC_CLK_TCK')
  t = os.times()
  return (sum(fields[:8]) - idle) / ticks, t.user + t.system


def others_share(fn):
  """``(fn(), share of all CPUs other processes used meanwhile)``."""
  before, start = _cpu_seconds(), time.perf_counter()
  result = fn()
  after, wall = _cpu_seconds(), time.perf_counter() - start
  if before is None or after is None or wall <= 0:
    return result, 0.0
  others = (after[0] - before[0]) - (after[1] - before[1])
  return result, max(0.0, others / (wall * (os.cpu_count() or 1)))


def decision(key: str, kernel_fn, xla_fn, example_args, wrt=None) -> dict:
  """``{'path': 'kernel' | 'xla', 'source', 'kernel_ms', 'xla_ms'}`` for key.

  From this process's memo, else the machine's decisions file, else
  measured now (and stored). A cache that cannot be used is measured anyway
  and the decision kept for this process only.
  """
  if key in _memo:
    return _memo[key]
  try:
    path = _file()
  except (OSError, build.UnsafeCacheError) as e:
    logging.getLogger('jaxcls').warning(
      'jaxcls: kernel decisions not cached (%s)', e
    )
    path = None
  stored = _read(path).get(key) if path else None
  if isinstance(stored, dict) and stored.get('path') in ('kernel', 'xla'):
    entry = dict(stored, source='cached')
  else:
    shapes = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32), example_args
    )
    t, busy = others_share(lambda: measure(kernel_fn, xla_fn, shapes, wrt))
    entry = {
      'path': 'kernel' if t['kernel'] < t['xla'] else 'xla',
      'kernel_ms': round(t['kernel'] * 1e3, 4),
      'xla_ms': round(t['xla'] * 1e3, 4),
      'cpu': cpu_model(),
      'source': 'measured' if busy <= BUSY_SHARE else 'measured, machine busy',
    }
    if path and busy <= BUSY_SHARE:
      _store(path, key, {k: v for k, v in entry.items() if k != 'source'})
  _memo[key] = entry
  return entry
