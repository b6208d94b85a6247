"""Marks for the few tests that hold on XLA:CPU only.

Seen on an H100 (round 8): GPU reductions are not deterministic unless XLA
is told to be (with ``--xla_gpu_deterministic_ops=true`` the device-feed
tests passed there bit for bit), and XLA:CPU's own options and kernels have
no meaning on a GPU. Not in conftest: the processes that tests start import
conftest before ``jax.distributed.initialize``, which must come before any
backend is touched.
"""

import os

import jax
import pytest

CPU_ONLY = pytest.mark.skipif(
  jax.default_backend() != 'cpu',
  reason='tests an XLA:CPU-only path (its kernels or compiler options)',
)
BIT_EXACT = pytest.mark.skipif(
  jax.default_backend() == 'gpu'
  and '--xla_gpu_deterministic_ops=true' not in os.environ.get('XLA_FLAGS', ''),
  reason='bit for bit on a GPU: XLA_FLAGS=--xla_gpu_deterministic_ops=true',
)
