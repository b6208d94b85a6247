"""One tiny trained workdir, made once per test session and shared.

The report, predict, metrics and REPL tests all need a workdir written by
``train_and_evaluate`` (checkpoints, results.json, metrics.jsonl); training
it once keeps them fast.
"""

import atexit
import functools
import shutil
import tempfile

from jaxcls import config as config_lib

NUM_EPOCHS = 2
TRAIN_EXAMPLES = 512
BATCH_SIZE = 64
LOG_EVERY_STEPS = 3


def tiny_config():
  """Fashion-MNIST CNN, 512 examples, 2 epochs of 8 steps."""
  c = config_lib.get_config()
  c.dataset = 'fashion_mnist'
  c.train_examples = TRAIN_EXAMPLES
  c.num_epochs = NUM_EPOCHS
  c.batch_size = BATCH_SIZE
  c.eval_batch_size = 1000
  c.log_every_steps = LOG_EVERY_STEPS
  return c


@functools.cache
def trained_workdir() -> tuple[str, dict]:
  """``(workdir, results)`` of the shared tiny run (trained on first use)."""
  from jaxcls.training import run as train

  workdir = tempfile.mkdtemp(prefix='jaxcls_trained_')
  atexit.register(shutil.rmtree, workdir, ignore_errors=True)
  results = train.train_and_evaluate(tiny_config(), workdir)
  return workdir, results
