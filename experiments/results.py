"""The measured results: one source for the README's table and ``--help``.

Each row is one real run of its command on the machine ``MACHINE`` names.
The README's table is :func:`table` and every experiment's ``--help`` ends
with its rows (:func:`measured`, via ``jaxcls.commands.cli.run``), so the two
cannot drift apart: ``tests/test_docs.py`` fails when the README's table is not
``python -c 'from experiments import results; print(results.table())'``.
"""

MACHINE = 'a 2-core AMD EPYC with no GPU, jax 0.10.2'

# experiment, model, epochs, test accuracy, best (bold), train s (wall),
# examples/s (images or sequences), flags after
# `python -m experiments.<experiment>`.
ROWS = (
  (
    'fashion_mnist',
    'article CNN, Adam 1e-3 warmup+cosine, batch 64',
    15,
    '91.93%',
    True,
    '57 (1 min 13 s)',
    '14,188',
    '',
  ),
  (
    'fashion_mnist',
    "article CNN, Adam 1e-3 constant (the article's)",
    15,
    '91.42%',
    False,
    '59 (1 min 14 s)',
    '13,679',
    '--config.lr_schedule=constant',
  ),
  (
    'fashion_mnist',
    'article CNN in bfloat16 compute (measured on an Intel Xeon, where '
    'float32 gave 91.93% in 73 s at 11,118 images/s)',
    15,
    '91.88%',
    False,
    '225',
    '3,595',
    '--config.compute_dtype=bfloat16',
  ),
  (
    'fashion_mnist_fast',
    'article CNN, time-to-accuracy recipe (batch 128, one-cycle, smoothing, '
    'flips, flip TTA)',
    3,
    '91.65%',
    True,
    '10.3 + 0.8 compile (27 s)',
    '15,641',
    '',
  ),
  (
    'fashion_mnist_fast',
    'the same recipe at batch 256, 8 epochs',
    8,
    '93.05%',
    True,
    '27 + 0.9 compile (45 s)',
    '16,072',
    '--config.num_epochs=8 --config.batch_size=256 --config.warmup_epochs=2',
  ),
  (
    'fashion_mnist_resnet',
    'ResNet-8 at width 2 with a pooled stem, BatchNorm, Nesterov SGD, '
    'crop+flip, smoothing, EMA, flip TTA',
    24,
    '93.68%',
    True,
    '1,084 (21 min 22 s)',
    '1,193',
    '',
  ),
  (
    'sequential_mnist',
    'LSTM 128 over rows (28 steps x 28)',
    8,
    '89.56%',
    True,
    '62 (1 min 38 s)',
    '6,959',
    '',
  ),
  (
    'sequential_mnist',
    'GRU 128 over rows',
    8,
    '90.14%',
    True,
    '50 (1 min 16 s)',
    '8,563',
    '--config.model=gru',
  ),
  (
    'spam',
    'BiLSTM 64 over words (Subject and body, 256 words), AdamW, EMA '
    '(SpamAssassin, 1,212 test emails; `python -m benchmarks.spam_baseline '
    '[--no_headers]`, TF-IDF + logistic regression: 99.59% whole text, '
    '99.34% Subject and body; timed while other jobs shared the cores)',
    10,
    '98.84%',
    False,
    '183 + 22 compile (4 min 42 s)',
    '238',
    '',
  ),
  (
    'spam',
    'the same BiLSTM over 1,024 words, 6 buckets (timed while other jobs '
    'shared the cores)',
    10,
    '99.17%',
    True,
    '608 + 164 compile (19 min 32 s)',
    '72',
    '--config.max_len=1024 --config.num_buckets=6',
  ),
  (
    'japanese_vowels',
    'BiLSTM 64 over 12 channels, mean readout, best epoch by validation '
    'loss (JapaneseVowels, 370 test utterances; timed while other jobs '
    'shared the cores)',
    30,
    '97.57%',
    True,
    '5.6 + 37.7 compile (1 min 35 s)',
    '1,285',
    '',
  ),
  (
    'sweep',
    '8-member sweep (learning rate x weight decay), best member',
    3,
    '83.52%',
    False,
    '6.6 (22 s)',
    '-',
    '',
  ),
)


def command(experiment: str, flags: str) -> str:
  """The row's command line."""
  return f'python -m experiments.{experiment} {flags}'.strip()


def table() -> str:
  """The README's results table (markdown)."""
  lines = [
    '| model | epochs | test acc. | train s (wall) | examples/s | command |',
    '|---|---:|---:|---:|---:|---|',
  ]
  for name, model, epochs, acc, bold, seconds, speed, flags in ROWS:
    acc = f'**{acc}**' if bold else acc
    lines.append(
      f'| {model} | {epochs} | {acc} | {seconds} | {speed} | '
      f'`{command(name, flags)}` |'
    )
  return '\n'.join(lines)


def measured(experiment: str) -> str:
  """The rows of ``experiment`` as the end of its ``--help``; '' if none."""
  rows = [r for r in ROWS if r[0] == experiment]
  if not rows:
    return ''
  lines = [f"Measured on {MACHINE} (the README's results table):"]
  for name, model, epochs, acc, _, seconds, speed, flags in rows:
    lines.append(
      f'  {command(name, flags)}\n    {model}: {acc} test after {epochs} '
      f'epochs; train s (wall) {seconds}; {speed} examples/s'
    )
  return '\n'.join(lines)
