"""jaxcls vs PyTorch, trained side by side in one process, plus the user path.

Run (torch from benchmarks/requirements-torch.txt, e.g. in .venv-bench):

  .venv-bench/bin/python -m benchmarks.train_speed            # CNN, LSTM, GRU
  .venv-bench/bin/python -m benchmarks.train_speed --models=cnn --max_epochs=15
  python -m benchmarks.train_speed --data_npz=fm.npz --target=0.99  # no TFDS

Runners (``--runners``):

* ``jaxcls``: jaxcls's device-resident fast path; ``jaxcls_bf16``: the same
  with ``compute_dtype=bfloat16``; ``jaxcls_step``: plain per-step jit fed
  from host numpy; ``jaxcls_cudnn``: ``jaxcls`` with cuDNN's LSTM switched
  on (``jaxcls.accel.using(cudnn_lstm=True)``; only the LSTM on a GPU).
  ``jaxcls`` takes the default path, jaxcls's CPU kernels where they
  measured faster here (``JAXCLS_KERNELS=auto``); ``jaxcls_kernels``: every
  kernel wherever it applies (``on``); ``jaxcls_xla``: none of them
  (``off``), XLA's ops alone. The three are an A/B/C inside one run.
* ``torch``: the article's eager loop (per-batch normalisation, a
  ``loss.item()`` sync every step); ``torch_lean``: the lean loop (the split
  as one normalised tensor, no per-step sync); the same model, optimizer and
  batches. ``torch_1thread`` / ``torch_lean_1thread``: with
  ``torch.set_num_threads(1)`` during their epochs (on a loaded machine
  torch's default threads can be 6x slower).
* ``user``: what users run, ``python -m experiments.fashion_mnist`` (CNN) or
  ``experiments.sequential_mnist`` (LSTM, GRU) in a subprocess, capped to the
  same epochs; its ``results.json`` gives images/s, compile seconds and test
  accuracy. It runs after the interleaved runners, alone; its config is the
  experiment's default (``--user_flags`` adds flags). ``user_fast``: the
  CNN's time-to-accuracy preset, ``python -m experiments.fashion_mnist_fast``
  with its own epochs; its time to the target is ``train_seconds +
  compile_seconds`` (one test score, at the end).

The interleaved runners train each model with the same example order, one
epoch each in turn, so machine load hits all of them alike; test accuracy is
evaluated after every epoch (not timed). Reported per runner: images/s
(median over epochs; compilation excluded), compile seconds, the training
seconds until test accuracy first reaches ``--target`` (excluding evaluation
and compilation), and peak memory: the peak RSS of a separate process that
loads the same data, builds the runner and trains ``--rss_steps`` steps (so
runners do not share one process's peak). Ratios of every jaxcls row to every
PyTorch row follow. The table is printed and written as JSON to ``--out``.
"""

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def _parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument(
    '--models', default='cnn,lstm,gru', help='comma-separated: cnn, lstm, gru'
  )
  p.add_argument(
    '--runners',
    default='jaxcls,jaxcls_step,torch,torch_lean',
    help='comma-separated: jaxcls, jaxcls_bf16, jaxcls_step, jaxcls_cudnn, '
    'jaxcls_kernels, jaxcls_xla, '
    'torch, torch_lean, torch_1thread, torch_lean_1thread, user, '
    'user_fast '
    '(see the module docstring)',
  )
  p.add_argument(
    '--user_flags',
    default='',
    help="extra flags for the user runner's experiment",
  )
  p.add_argument(
    '--rss_steps',
    type=int,
    default=100,
    help='steps trained by each peak-RSS process (0: skip)',
  )
  p.add_argument('--rss_child', default=None, help=argparse.SUPPRESS)
  p.add_argument('--dataset', default='fashion_mnist')
  p.add_argument(
    '--data_npz',
    default=None,
    help='arrays from benchmarks.export_arrays (no TFDS needed)',
  )
  p.add_argument(
    '--target',
    type=float,
    default=0.91,
    help='test accuracy for the time-to-target column',
  )
  p.add_argument(
    '--max_epochs',
    type=int,
    default=8,
    help='CNN: train until --target or this many epochs',
  )
  p.add_argument(
    '--rnn_epochs',
    type=int,
    default=3,
    help='LSTM/GRU: epochs trained (speed only by default)',
  )
  p.add_argument(
    '--min_epochs',
    type=int,
    default=3,
    help='epochs trained at least, for the images/s median',
  )
  p.add_argument(
    '--train_examples',
    type=int,
    default=-1,
    help='cap on training examples (-1: all)',
  )
  p.add_argument('--batch_size', type=int, default=64)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument(
    '--steps_per_call',
    type=int,
    default=0,
    help='jaxcls fast path: steps per compiled call (0: per '
    'backend, jaxcls.training.feed.default_steps_per_call)',
  )
  p.add_argument(
    '--compilation_cache',
    default=None,
    help="directory for JAX's persistent compilation cache",
  )
  p.add_argument('--out', default='benchmarks/results/train_speed.json')
  return p.parse_args(argv)


def load_arrays(args) -> dict:
  """train/test uint8 images and int32 labels, from an npz file or TFDS."""
  if args.data_npz:
    with np.load(args.data_npz) as f:
      arrays = {
        k: f[k]
        for k in ('train_images', 'train_labels', 'test_images', 'test_labels')
      }
    source = args.data_npz
  else:
    from jaxcls import data

    ds = data.load(args.dataset)
    arrays = {
      'train_images': ds.train.images,
      'train_labels': ds.train.labels,
      'test_images': ds.test.images,
      'test_labels': ds.test.labels,
    }
    source = ds.source
  if args.train_examples > 0:
    for k in ('train_images', 'train_labels'):
      arrays[k] = arrays[k][: args.train_examples]
  arrays['source'] = source
  return arrays


class JaxRunner:
  """jaxcls's model and ``train.train_step``, on the fast path or per step."""

  def __init__(
    self,
    model_name,
    image_shape,
    arrays,
    batch_size,
    seed,
    fast=True,
    steps_per_call=0,
    dtype='float32',
  ):
    import jax

    import jaxcls  # Registers the recurrent models, when they exist.
    from jaxcls import config as config_lib
    from jaxcls import data, models, optim
    from jaxcls.ops import fastpath
    from jaxcls.training import feed, parallel
    from jaxcls.training import run as train

    del jaxcls
    self.jax, self.data, self.train = jax, data, train
    config = config_lib.get_config()
    config.model = model_name
    config.compute_dtype = dtype
    model = models.create_model(config, 10)
    tx = optim.create_optimizer(config, 1)  # Adam, lr 1e-3, as torch's.
    init_rng, self.rng = jax.random.split(jax.random.key(seed))
    self.state = train.create_train_state(init_rng, model, tx, image_shape)
    self.batch_size, self.fast = batch_size, fast
    self.images, self.labels = arrays['train_images'], arrays['train_labels']
    self.test = data.Split(arrays['test_images'], arrays['test_labels'])
    step = functools.partial(train.train_step, augment=False)
    order = np.arange(len(self.labels))
    start = time.perf_counter()
    if fast:  # What the training loop runs: jaxcls.training.feed.DeviceFeed.
      self.k = steps_per_call or feed.default_steps_per_call()
      self.feed = feed.DeviceFeed(
        step,
        data.Split(self.images, self.labels),
        parallel.make_mesh(jax.devices()[:1]),
      )
      steps = len(order) // batch_size
      for n in {min(self.k, steps), steps % self.k or min(self.k, steps)}:
        self.feed.compile(self.state, self.rng, n, batch_size)
    else:
      self.k = 1
      batch = data.train_batch(
        data.Split(self.images, self.labels), order, 0, batch_size
      )
      self.step_fn = (
        fastpath.jit(step, donate_argnums=0)
        .lower(self.state, batch, self.rng)
        .compile()
      )
    self.compile_seconds = time.perf_counter() - start
    # Compiled now, under the settings this runner was made with.
    batch = next(iter(data.eval_batches(self.test, 1000)))
    self.eval_fn = (
      fastpath.jit(train.eval_step).lower(self.state, batch).compile()
    )

  def train_epoch(self, order):
    jax = self.jax
    start = time.perf_counter()
    if self.fast:
      steps = len(order) // self.batch_size
      rows = np.asarray(order[: steps * self.batch_size], np.int32).reshape(
        steps, self.batch_size
      )
      totals = []
      for i in range(0, steps, self.k):
        self.state, metrics = self.feed.run(
          self.state, rows[i : i + self.k], self.rng
        )
        totals.append(metrics)
      totals = jax.tree_util.tree_map(
        lambda *m: sum(x.sum() for x in m), *totals
      )
    else:
      split, totals = self.data.Split(self.images, self.labels), []
      for i in range(len(order) // self.batch_size):
        batch = self.data.train_batch(split, order, i, self.batch_size)
        self.state, metrics = self.step_fn(self.state, batch, self.rng)
        totals.append(metrics)
      totals = jax.tree_util.tree_map(lambda *m: sum(m), *totals)
    totals = jax.device_get(totals)  # The one host sync of the epoch.
    seconds = time.perf_counter() - start
    return {
      'seconds': seconds,
      'images': int(totals['count']),
      'accuracy': float(totals['correct'] / totals['count']),
    }

  def accuracy(self):
    correct = count = 0.0
    for batch in self.data.eval_batches(self.test, 1000):
      sums = self.jax.device_get(self.eval_fn(self.state, batch))
      correct, count = correct + sums['correct'], count + sums['count']
    return float(correct / count)

  def peak_memory_bytes(self):
    stats = self.jax.devices()[0].memory_stats() or {}
    return stats.get('peak_bytes_in_use')


class TorchRunner:
  """The article's PyTorch loop (benchmarks/torch_reference.py)."""

  def __init__(
    self,
    model_name,
    image_shape,
    arrays,
    batch_size,
    seed,
    threads=0,
    lean=False,
  ):
    import torch

    from benchmarks import torch_reference

    self.torch, self.threads = torch, threads
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    trainer = torch_reference.LeanTrainer if lean else torch_reference.Trainer
    self.trainer = trainer(model_name, image_shape, seed, device)
    self.arrays, self.batch_size = arrays, batch_size
    self.compile_seconds = None  # Eager: nothing is compiled.
    if lean:  # The one-time normalised copy of the split, not timed.
      self.trainer._split(arrays['train_images'], arrays['train_labels'])

  def train_epoch(self, order):
    default = self.torch.get_num_threads()
    if self.threads:
      self.torch.set_num_threads(self.threads)
    try:
      return self.trainer.train_epoch(
        self.arrays['train_images'],
        self.arrays['train_labels'],
        order,
        self.batch_size,
      )
    finally:
      self.torch.set_num_threads(default)

  def accuracy(self):
    return self.trainer.accuracy(
      self.arrays['test_images'], self.arrays['test_labels']
    )

  def peak_memory_bytes(self):
    return self.trainer.peak_memory_bytes()


def make_runner(name, model_name, arrays, args):
  """The interleaved runner called ``name`` for ``model_name``."""
  image_shape = arrays['train_images'].shape[1:]
  if name.startswith('torch'):
    return TorchRunner(
      model_name,
      image_shape,
      arrays,
      args.batch_size,
      args.seed,
      threads=1 if name.endswith('_1thread') else 0,
      lean=name.startswith('torch_lean'),
    )
  # The settings are read when a program is traced, which JaxRunner does
  # (and compiles) right here, for training and evaluation.
  settings = {
    'jaxcls_cudnn': {'cudnn_lstm': True},  # cuDNN's LSTM on a GPU.
    'jaxcls_kernels': {'kernels': 'on'},  # Every CPU kernel that applies.
    'jaxcls_xla': {'kernels': 'off'},  # XLA's own ops alone.
  }
  if name in settings:
    from jaxcls import accel

    with accel.using(**settings[name]):
      return make_runner('jaxcls', model_name, arrays, args)
  if name in ('jaxcls', 'jaxcls_bf16', 'jaxcls_step'):
    return JaxRunner(
      model_name,
      image_shape,
      arrays,
      args.batch_size,
      args.seed,
      fast=name != 'jaxcls_step',
      steps_per_call=args.steps_per_call,
      dtype='bfloat16' if name == 'jaxcls_bf16' else 'float32',
    )
  raise ValueError(f'unknown runner {name!r}')


def child_peak_rss(model_name, runner_name, args) -> int | None:
  """Peak RSS (bytes) of a fresh process that trains ``args.rss_steps``.

  The process loads the same arrays (from ``args.rss_npz``, so TensorFlow is
  never imported), builds the runner (compiling it) and trains that many
  steps of batch ``args.batch_size``: what a run of that runner holds at its
  peak, without the other runners' memory.
  """
  argv = [
    sys.executable,
    '-m',
    'benchmarks.train_speed',
    '--rss_child',
    runner_name,
    '--models',
    model_name,
    '--dataset',
    args.dataset,
    '--batch_size',
    str(args.batch_size),
    '--rss_steps',
    str(args.rss_steps),
    '--data_npz',
    args.rss_npz,
  ]
  done = subprocess.run(argv, capture_output=True, text=True, check=False)
  for line in done.stdout.splitlines()[::-1]:
    if line.startswith('{"peak_rss_bytes"'):
      return json.loads(line)['peak_rss_bytes']
  print(f'  peak RSS of {runner_name} failed: {done.stderr[-500:]}')
  return None


def _rss_child(args):
  """The process :func:`child_peak_rss` starts."""
  arrays = load_arrays(args)
  runner = make_runner(args.rss_child, args.models, arrays, args)
  n = args.rss_steps * args.batch_size
  order = np.random.default_rng(0).permutation(len(arrays['train_labels']))
  runner.train_epoch(order[:n])
  print(json.dumps({'peak_rss_bytes': _vm_hwm()}))


def _vm_hwm(pid='self') -> int | None:
  """Peak RSS (VmHWM) of a live process, from /proc (Linux).

  Not ``getrusage``'s ``ru_maxrss``: Linux carries that across ``execve``,
  so a child started from this (large) process would report our peak.
  """
  try:
    with open(f'/proc/{pid}/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def _run_watching_rss(argv) -> tuple[subprocess.CompletedProcess, int | None]:
  """Runs ``argv``, reading its VmHWM every 0.2 s; returns (result, peak)."""
  with subprocess.Popen(
    argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  ) as proc:
    peak = None
    while True:
      try:
        out, err = proc.communicate(timeout=0.2)
        break
      except subprocess.TimeoutExpired:
        peak = max(peak or 0, _vm_hwm(proc.pid) or 0) or None
  return subprocess.CompletedProcess(argv, proc.returncode, out, err), peak


USER_EXPERIMENTS = {
  'cnn': ('fashion_mnist', []),
  'lstm': ('sequential_mnist', ['--config.model=lstm']),
  'gru': ('sequential_mnist', ['--config.model=gru']),
}


def user_path(model_name, epochs, args, runner='user') -> dict:
  """Times ``python -m experiments.<name>`` as a user runs it.

  ``epochs`` epochs (``None``: the experiment's own) with the experiment's
  own defaults (plus ``--user_flags``), in a subprocess, into a temporary
  workdir; the row comes from its ``results.json``. Peak memory is the
  child's peak RSS. ``runner='user_fast'`` runs the CNN's time-to-accuracy
  preset, ``experiments.fashion_mnist_fast``; its time to ``--target`` is
  ``train_seconds + compile_seconds`` when its (single) test score reaches
  the target.
  """
  experiment, flags = USER_EXPERIMENTS[model_name]
  if runner == 'user_fast':
    experiment, flags = 'fashion_mnist_fast', []
  epoch_flags = [] if epochs is None else [f'--config.num_epochs={epochs}']
  with tempfile.TemporaryDirectory() as workdir:
    argv = [
      sys.executable,
      '-m',
      f'experiments.{experiment}',
      f'--workdir={workdir}',
      *epoch_flags,
      *flags,
      *args.user_flags.split(),
    ]
    if args.train_examples > 0:
      argv.append(f'--config.train_examples={args.train_examples}')
    start = time.perf_counter()
    done, peak = _run_watching_rss(argv)
    wall = time.perf_counter() - start
    if done.returncode != 0:
      raise RuntimeError(f'{" ".join(argv)} failed:\n{done.stderr[-2000:]}')
    with open(os.path.join(workdir, 'results.json')) as f:
      results = json.load(f)
  epochs = results.get('epochs', epochs)
  reached = None
  if runner == 'user_fast' and results['test_accuracy'] >= args.target:
    reached = results['train_seconds'] + (results.get('compile_seconds') or 0)
  print(
    f'  {model_name} {runner:11s} {epochs} epochs: '
    f'{results["train_images_per_second"]:8,.0f} images/s  '
    f'test accuracy {results["test_accuracy"]:.4f}  ({wall:.0f} s wall)',
    flush=True,
  )
  return {
    'model': model_name,
    'runner': runner,
    'command': ' '.join(
      ['python', '-m', f'experiments.{experiment}', *argv[4:]]
    ),
    'images_per_second': results['train_images_per_second'],
    'epoch_images_per_second': None,
    'compile_seconds': results.get('compile_seconds'),
    'target': args.target,
    'target_seconds': reached,
    'target_epoch': epochs if reached else None,
    'epochs': epochs,
    'final_test_accuracy': results['test_accuracy'],
    'peak_memory_bytes': peak,
    'peak_memory_kind': 'process peak RSS (VmHWM)',
    'wall_seconds': wall,
    'steps_per_call': None,
  }


def benchmark_model(model_name, runner_names, arrays, args):
  """Trains ``model_name`` with every runner, an epoch each in turn."""
  max_epochs = args.max_epochs if model_name == 'cnn' else args.rnn_epochs
  runners = {
    name: make_runner(name, model_name, arrays, args)
    for name in runner_names
    if not name.startswith('user')
  }
  logs = {
    name: {
      'epochs': [],
      'train_seconds': 0.0,
      'target_seconds': None,
      'target_epoch': None,
    }
    for name in runners
  }
  for epoch in range(max_epochs):
    order = np.random.default_rng([args.seed, epoch]).permutation(
      len(arrays['train_labels'])
    )
    names = list(runners)
    if epoch % 2:  # Alternate who goes first, so neither always warms caches.
      names.reverse()
    for name in names:
      log = logs[name]
      if log['target_seconds'] is not None and len(log['epochs']) >= max(
        args.min_epochs, 1
      ):
        continue
      result = runners[name].train_epoch(order)
      result['test_accuracy'] = runners[name].accuracy()
      log['train_seconds'] += result['seconds']
      if (
        log['target_seconds'] is None and result['test_accuracy'] >= args.target
      ):
        log['target_seconds'], log['target_epoch'] = (
          log['train_seconds'],
          epoch + 1,
        )
      log['epochs'].append(result)
      print(
        f'  {model_name} {name:11s} epoch {epoch + 1}: '
        f'{result["images"] / result["seconds"]:8,.0f} images/s  '
        f'test accuracy {result["test_accuracy"]:.4f}',
        flush=True,
      )
    if all(
      log['target_seconds'] is not None
      and len(log['epochs']) >= args.min_epochs
      for log in logs.values()
    ):
      break
  rows = []
  for name, runner in runners.items():
    log = logs[name]
    speeds = [e['images'] / e['seconds'] for e in log['epochs']]
    device_peak = runner.peak_memory_bytes()
    rss = None
    if device_peak is None and args.rss_steps > 0:
      rss = child_peak_rss(model_name, name, args)
    rows.append(
      {
        'model': model_name,
        'runner': name,
        'images_per_second': statistics.median(speeds),
        'epoch_images_per_second': speeds,
        'compile_seconds': runner.compile_seconds,
        'target': args.target,
        'target_seconds': log['target_seconds'],
        'target_epoch': log['target_epoch'],
        'epochs': len(log['epochs']),
        'final_test_accuracy': log['epochs'][-1]['test_accuracy'],
        'peak_memory_bytes': device_peak or rss,
        'peak_memory_kind': (
          'device allocator peak'
          if device_peak
          else f'peak RSS of a process training {args.rss_steps} steps'
        ),
        'steps_per_call': getattr(runner, 'k', None),
      }
    )
  del runners  # Free their memory before the user path runs.
  if 'user' in runner_names:
    epochs = (
      max(len(log['epochs']) for log in logs.values()) if logs else (max_epochs)
    )
    rows.append(user_path(model_name, epochs, args))
  if 'user_fast' in runner_names and model_name == 'cnn':
    rows.append(user_path(model_name, None, args, runner='user_fast'))
  return rows


def machine_info() -> dict:
  import jax

  from jaxcls.ops import fastpath

  info = {
    'cpu_model': fastpath.cpu_model(),  # lscpu's model name
    'platform': platform.platform(),
    'python': platform.python_version(),
    'cpu_count': os.cpu_count(),
    'jax': jax.__version__,
    'jax_backend': jax.default_backend(),
    'jax_devices': [str(d) for d in jax.devices()],
    'load_average': os.getloadavg(),
    'command': ' '.join(sys.argv),
  }
  try:
    import torch

    from benchmarks import torch_reference

    info.update(
      torch=torch.__version__,
      torch_threads=torch_reference.threads(),
      torch_cuda=torch.cuda.is_available(),
    )
  except ImportError:
    info['torch'] = None
  return info


def _fmt(value, spec):
  return '-' if value is None else format(value, spec)


def format_table(rows, target) -> str:
  """A markdown table of the rows, then every jaxcls / torch ratio."""
  lines = [
    f'| model | runner | images/s | compile s | s to {target:.0%} test '
    '(epoch) | final test acc | peak RSS MiB |',
    '|---|---|---:|---:|---:|---:|---:|',
  ]
  for r in rows:
    if r['target_seconds'] is not None:
      reached = f'{r["target_seconds"]:.1f} ({r["target_epoch"]})'
    elif r['runner'] == 'user':
      reached = '-'
    elif r['runner'] == 'user_fast':
      reached = f'test {r["final_test_accuracy"]:.4f} after {r["epochs"]}'
    else:
      reached = f'not reached in {r["epochs"]}'
    memory = r['peak_memory_bytes']
    lines.append(
      f'| {r["model"]} | {r["runner"]} | '
      f'{r["images_per_second"]:,.0f} | '
      f'{_fmt(r["compile_seconds"], ".2f")} | {reached} | '
      f'{r["final_test_accuracy"]:.4f} | '
      f'{_fmt(memory and memory / 2**20, ",.0f")} |'
    )
  lines.append('')
  for r in rows:
    for ref in rows:
      if (
        ref['model'] != r['model']
        or r['runner'].startswith('torch')
        or not ref['runner'].startswith('torch')
      ):
        continue
      line = (
        f'{r["model"]} {r["runner"]}/{ref["runner"]}: images/s '
        f'{r["images_per_second"] / ref["images_per_second"]:.2f}x'
      )
      if r['target_seconds'] and ref['target_seconds']:
        line += (
          f', time to {target:.0%} '
          f'{r["target_seconds"] / ref["target_seconds"]:.2f}x'
        )
      lines.append(line)
  return '\n'.join(lines)


def main(argv=None):
  args = _parse_args(argv)
  if args.rss_child:
    return _rss_child(args)
  import jax

  import jaxcls
  from jaxcls import models

  if args.compilation_cache:  # Persisted programs: a rerun skips compiling.
    jax.config.update('jax_compilation_cache_dir', args.compilation_cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  runner_names = [r for r in args.runners.split(',') if r]
  if any(r.startswith('torch') for r in runner_names):
    try:
      import torch  # noqa: F401
    except ImportError:
      print(
        'torch is not installed: skipping the PyTorch reference '
        '(pip install -r benchmarks/requirements-torch.txt)'
      )
      runner_names = [r for r in runner_names if not r.startswith('torch')]
  arrays = load_arrays(args)
  rss_dir = tempfile.TemporaryDirectory()
  args.rss_npz = os.path.join(rss_dir.name, 'arrays.npz')
  if args.rss_steps > 0:  # The arrays as loaded, for the peak-RSS processes.
    np.savez(args.rss_npz, **{k: v for k, v in arrays.items() if k != 'source'})
  info = machine_info()
  info['data'] = arrays['source']
  info['train_examples'] = len(arrays['train_labels'])
  print(json.dumps(info), flush=True)
  rows = []
  for model_name in [m for m in args.models.split(',') if m]:
    if model_name not in models.MODELS:
      print(f'note: jaxcls has no model {model_name!r} yet; skipping its row')
      continue
    rows += benchmark_model(model_name, runner_names, arrays, args)
  info['load_average_end'] = os.getloadavg()
  from jaxcls.ops import fastpath

  info['kernel_path'] = fastpath.path()  # What 'auto' chose, per shape.
  table = format_table(rows, args.target)
  print(f'CPU: {info["cpu_model"]}')
  print(table)
  print(
    f'load average: {info["load_average"]} at the start, '
    f'{info["load_average_end"]} at the end'
  )
  os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(
      {'machine': info, 'args': vars(args), 'rows': rows, 'table': table},
      f,
      indent=2,
    )
  print(f'wrote {args.out}')
  rss_dir.cleanup()
  del jaxcls


if __name__ == '__main__':
  main()
