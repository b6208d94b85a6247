"""jaxcls vs the article's PyTorch loop, trained side by side in one process.

Run (torch from benchmarks/requirements-torch.txt, e.g. in .venv-bench):

  .venv-bench/bin/python -m benchmarks.train_speed            # CNN, LSTM, GRU
  .venv-bench/bin/python -m benchmarks.train_speed --models=cnn --max_epochs=15
  python -m benchmarks.train_speed --data_npz=fm.npz --target=0.99  # no TFDS

Each model is trained by every runner (jaxcls's fast path, optionally the
plain per-step jit loop, and the PyTorch reference) with the same example
order, one epoch each in turn, so machine load hits all of them alike; test
accuracy is evaluated after every epoch (not timed). Reported per runner:
images/s (median over epochs; compilation excluded), compile seconds, the
training seconds until test accuracy first reaches ``--target`` (excluding
evaluation and compilation), and peak memory. Ratios jaxcls / PyTorch follow.
The table is printed and written as JSON to ``--out``.
"""

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time

import numpy as np


def _parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--models', default='cnn,lstm,gru',
                 help='comma-separated: cnn, lstm, gru')
  p.add_argument('--runners', default='jaxcls,torch',
                 help='comma-separated: jaxcls (fast path), jaxcls_step '
                 '(plain per-step jit fed from host numpy), torch (default '
                 'threads), torch_1thread (torch.set_num_threads(1) during '
                 'its epochs: on a loaded machine, torch\'s default threads '
                 'can be 6x slower)')
  p.add_argument('--dataset', default='fashion_mnist')
  p.add_argument('--data_npz', default=None,
                 help='arrays from benchmarks.export_arrays (no TFDS needed)')
  p.add_argument('--target', type=float, default=0.91,
                 help='test accuracy for the time-to-target column')
  p.add_argument('--max_epochs', type=int, default=8,
                 help='CNN: train until --target or this many epochs')
  p.add_argument('--rnn_epochs', type=int, default=3,
                 help='LSTM/GRU: epochs trained (speed only by default)')
  p.add_argument('--min_epochs', type=int, default=3,
                 help='epochs trained at least, for the images/s median')
  p.add_argument('--train_examples', type=int, default=-1,
                 help='cap on training examples (-1: all)')
  p.add_argument('--batch_size', type=int, default=64)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--steps_per_call', type=int, default=0,
                 help='jaxcls fast path: steps per compiled call (0: per '
                 'backend, jaxcls.fast.steps_per_call)')
  p.add_argument('--scan', choices=('auto', 'yes', 'no'), default='auto',
                 help='jaxcls fast path: lax.scan the steps of a call, or '
                 'unroll them (auto: per backend)')
  p.add_argument('--compilation_cache', default=None,
                 help='directory for JAX\'s persistent compilation cache')
  p.add_argument('--out', default='benchmarks/results/train_speed.json')
  return p.parse_args(argv)


def load_arrays(args) -> dict:
  """train/test uint8 images and int32 labels, from an npz file or TFDS."""
  if args.data_npz:
    with np.load(args.data_npz) as f:
      arrays = {k: f[k] for k in ('train_images', 'train_labels',
                                  'test_images', 'test_labels')}
    source = args.data_npz
  else:
    from jaxcls import data
    ds = data.load(args.dataset)
    arrays = {'train_images': ds.train.images, 'train_labels': ds.train.labels,
              'test_images': ds.test.images, 'test_labels': ds.test.labels}
    source = ds.source
  if args.train_examples > 0:
    for k in ('train_images', 'train_labels'):
      arrays[k] = arrays[k][:args.train_examples]
  arrays['source'] = source
  return arrays


class JaxRunner:
  """jaxcls's model and ``train.train_step``, on the fast path or per step."""

  def __init__(self, model_name, image_shape, arrays, batch_size, seed,
               fast=True, steps_per_call=0, scan='auto'):
    import jax
    import jaxcls  # Registers the recurrent models, when they exist.
    from jaxcls import config as config_lib, data, fast as fast_lib
    from jaxcls import models, optim, train
    del jaxcls
    self.jax, self.data, self.fast_lib, self.train = jax, data, fast_lib, train
    config = config_lib.get_config()
    config.model = model_name
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
    if fast:
      k, use_scan = fast_lib.steps_per_call()
      self.k = steps_per_call or k
      self.scan = use_scan if scan == 'auto' else scan == 'yes'
      self.device_data = fast_lib.put_split(self.images, self.labels)
      rows = fast_lib.epoch_rows(order, batch_size, self.k)
      self.step_fn = fast_lib.jit_multi_step(step, self.k, self.scan).lower(
          self.state, self.device_data, rows[0], self.rng).compile()
    else:
      self.k, self.scan = 1, False
      batch = data.train_batch(data.Split(self.images, self.labels), order, 0,
                               batch_size)
      self.step_fn = jax.jit(step, donate_argnums=0).lower(
          self.state, batch, self.rng).compile()
    self.compile_seconds = time.perf_counter() - start
    self.eval_fn = jax.jit(train.eval_step)

  def train_epoch(self, order):
    jax = self.jax
    start = time.perf_counter()
    if self.fast:
      rows = self.fast_lib.epoch_rows(order, self.batch_size, self.k)
      self.state, totals = self.fast_lib.train_epoch(
          self.step_fn, self.state, self.device_data, rows, self.rng)
    else:
      split, totals = self.data.Split(self.images, self.labels), []
      for i in range(len(order) // self.batch_size):
        batch = self.data.train_batch(split, order, i, self.batch_size)
        self.state, metrics = self.step_fn(self.state, batch, self.rng)
        totals.append(metrics)
      totals = jax.tree_util.tree_map(lambda *m: sum(m), *totals)
    totals = jax.device_get(totals)  # The one host sync of the epoch.
    seconds = time.perf_counter() - start
    return {'seconds': seconds, 'images': int(totals['count']),
            'accuracy': float(totals['correct'] / totals['count'])}

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

  def __init__(self, model_name, image_shape, arrays, batch_size, seed,
               threads=0):
    from benchmarks import torch_reference
    import torch
    self.torch, self.threads = torch, threads
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    self.trainer = torch_reference.Trainer(model_name, image_shape, seed,
                                           device)
    self.arrays, self.batch_size = arrays, batch_size
    self.compile_seconds = None  # Eager: nothing is compiled.

  def train_epoch(self, order):
    default = self.torch.get_num_threads()
    if self.threads:
      self.torch.set_num_threads(self.threads)
    try:
      return self.trainer.train_epoch(self.arrays['train_images'],
                                      self.arrays['train_labels'], order,
                                      self.batch_size)
    finally:
      self.torch.set_num_threads(default)

  def accuracy(self):
    return self.trainer.accuracy(self.arrays['test_images'],
                                 self.arrays['test_labels'])

  def peak_memory_bytes(self):
    return self.trainer.peak_memory_bytes()


def _rss_bytes(field: str) -> int:
  """VmRSS or VmHWM (peak) of this process, from /proc (Linux)."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith(field + ':'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


def _reset_peak_rss() -> None:
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')  # Resets VmHWM to the current RSS.
  except OSError:
    pass


def benchmark_model(model_name, runner_names, arrays, args):
  """Trains ``model_name`` with every runner, an epoch each in turn."""
  image_shape = arrays['train_images'].shape[1:]
  max_epochs = args.max_epochs if model_name == 'cnn' else args.rnn_epochs
  runners = {}
  for name in runner_names:
    if name.startswith('torch'):
      runners[name] = TorchRunner(model_name, image_shape, arrays,
                                  args.batch_size, args.seed,
                                  threads=1 if name == 'torch_1thread' else 0)
    else:
      runners[name] = JaxRunner(
          model_name, image_shape, arrays, args.batch_size, args.seed,
          fast=name == 'jaxcls', steps_per_call=args.steps_per_call,
          scan=args.scan)
  logs = {name: {'epochs': [], 'train_seconds': 0.0, 'target_seconds': None,
                 'target_epoch': None, 'peak_rss_extra': 0}
          for name in runners}
  for epoch in range(max_epochs):
    order = np.random.default_rng([args.seed, epoch]).permutation(
        len(arrays['train_labels']))
    names = list(runners)
    if epoch % 2:  # Alternate who goes first, so neither always warms caches.
      names.reverse()
    for name in names:
      log = logs[name]
      if log['target_seconds'] is not None and len(log['epochs']) >= max(
          args.min_epochs, 1):
        continue
      _reset_peak_rss()
      rss0 = _rss_bytes('VmRSS')
      result = runners[name].train_epoch(order)
      log['peak_rss_extra'] = max(log['peak_rss_extra'],
                                  _rss_bytes('VmHWM') - rss0)
      result['test_accuracy'] = runners[name].accuracy()
      log['train_seconds'] += result['seconds']
      if (log['target_seconds'] is None
          and result['test_accuracy'] >= args.target):
        log['target_seconds'], log['target_epoch'] = (log['train_seconds'],
                                                      epoch + 1)
      log['epochs'].append(result)
      print(f'  {model_name} {name:11s} epoch {epoch + 1}: '
            f"{result['images'] / result['seconds']:8,.0f} images/s  "
            f"test accuracy {result['test_accuracy']:.4f}", flush=True)
    if all(log['target_seconds'] is not None
           and len(log['epochs']) >= args.min_epochs for log in logs.values()):
      break
  rows = []
  for name, runner in runners.items():
    log = logs[name]
    speeds = [e['images'] / e['seconds'] for e in log['epochs']]
    device_peak = runner.peak_memory_bytes()
    rows.append({
        'model': model_name, 'runner': name,
        'images_per_second': statistics.median(speeds),
        'epoch_images_per_second': speeds,
        'compile_seconds': runner.compile_seconds,
        'target': args.target, 'target_seconds': log['target_seconds'],
        'target_epoch': log['target_epoch'], 'epochs': len(log['epochs']),
        'final_test_accuracy': log['epochs'][-1]['test_accuracy'],
        'peak_memory_bytes': device_peak,
        'peak_memory_kind': ('device allocator peak' if device_peak else
                             'process RSS growth during an epoch'),
        'peak_rss_extra_bytes': log['peak_rss_extra'],
        'steps_per_call': getattr(runner, 'k', None),
        'scan': getattr(runner, 'scan', None)})
  return rows


def machine_info() -> dict:
  import jax
  info = {'platform': platform.platform(), 'python': platform.python_version(),
          'cpu_count': os.cpu_count(), 'jax': jax.__version__,
          'jax_backend': jax.default_backend(),
          'jax_devices': [str(d) for d in jax.devices()],
          'load_average': os.getloadavg(), 'command': ' '.join(sys.argv)}
  try:
    from benchmarks import torch_reference
    import torch
    info.update(torch=torch.__version__, torch_threads=torch_reference.threads(),
                torch_cuda=torch.cuda.is_available())
  except ImportError:
    info['torch'] = None
  return info


def _fmt(value, spec):
  return '-' if value is None else format(value, spec)


def format_table(rows, target) -> str:
  """A markdown table of the rows, then the jaxcls / torch ratios."""
  lines = [f'| model | runner | images/s | compile s | s to {target:.0%} test '
           '(epoch) | final test acc | peak memory MiB |',
           '|---|---|---:|---:|---:|---:|---:|']
  for r in rows:
    reached = (f"{r['target_seconds']:.1f} ({r['target_epoch']})"
               if r['target_seconds'] is not None else
               f"not reached in {r['epochs']}")
    memory = r['peak_memory_bytes'] or r['peak_rss_extra_bytes']
    lines.append(f"| {r['model']} | {r['runner']} | "
                 f"{r['images_per_second']:,.0f} | "
                 f"{_fmt(r['compile_seconds'], '.2f')} | {reached} | "
                 f"{r['final_test_accuracy']:.4f} | {memory / 2**20:,.0f} |")
  lines.append('')
  for r in rows:
    for ref in rows:
      if (ref['model'] != r['model'] or r['runner'].startswith('torch')
          or not ref['runner'].startswith('torch')):
        continue
      line = (f"{r['model']} {r['runner']}/{ref['runner']}: images/s "
              f"{r['images_per_second'] / ref['images_per_second']:.2f}x")
      if r['target_seconds'] and ref['target_seconds']:
        line += (f", time to {target:.0%} "
                 f"{r['target_seconds'] / ref['target_seconds']:.2f}x")
      lines.append(line)
  return '\n'.join(lines)


def main(argv=None):
  args = _parse_args(argv)
  import jaxcls
  from jaxcls import fast, models
  if args.compilation_cache:
    fast.enable_compilation_cache(args.compilation_cache)
  runner_names = [r for r in args.runners.split(',') if r]
  if any(r.startswith('torch') for r in runner_names):
    try:
      import torch  # noqa: F401
    except ImportError:
      print('torch is not installed: skipping the PyTorch reference '
            '(pip install -r benchmarks/requirements-torch.txt)')
      runner_names = [r for r in runner_names if not r.startswith('torch')]
  arrays = load_arrays(args)
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
  table = format_table(rows, args.target)
  print(table)
  os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump({'machine': info, 'args': vars(args), 'rows': rows,
               'table': table}, f, indent=2)
  print(f'wrote {args.out}')
  del jaxcls


if __name__ == '__main__':
  main()
