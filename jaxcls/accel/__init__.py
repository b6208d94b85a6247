"""jaxcls's accelerators, behind one small interface.

What lives here, and nothing outside imports it but :mod:`jaxcls.ops.fastpath`:

* :mod:`.build`: compiling and loading the C++ kernels (``csrc/*.cc``);
* :mod:`.cpu_conv`, :mod:`.cpu_rnn`: the CNN block and the LSTM/GRU
  recurrences as XLA:CPU custom calls;
* :mod:`.cudnn_lstm`: the LSTM on cuDNN (NVIDIA GPUs, opt-in);
* :mod:`.xla_options`: the XLA:CPU compiler options;
* :mod:`.choice`: which path a kernel takes, decided by measurement.

A C++ kernel runs only where it measured faster than XLA's own ops on this
machine: at the first trace of each (kernel, shape) the two paths are timed
for a few steps and the decision is kept beside the built library
(:func:`jaxcls.accel.build.cache_dir`), so later processes reuse it.
``JAXCLS_KERNELS=auto|on|off`` (or :func:`configure`) forces the choice.

A choice is read when a function is traced, and ``jax.jit`` caches traces:
a function jitted with plain ``jax.jit`` keeps the path of its first trace.
:func:`jit` keys its cache on :func:`settings` too, so a function it wraps
follows :func:`using`, :func:`disabled` and :func:`configure` call by call.
Deleting this folder leaves a working library on XLA's ops.
"""

from jaxcls.accel import choice, policy
from jaxcls.accel.blocks import (
  conv_block,
  gru_recurrence,
  lstm_sequence,
)
from jaxcls.accel.policy import (
  MODES,
  Settings,
  configure,
  decide,
  disabled,
  following,
  ineligible,
  jit,
  path,
  settings,
  using,
)
from jaxcls.accel.xla_options import compiler_options

__all__ = [
  'MODES',
  'Settings',
  'choice',
  'compiler_options',
  'configure',
  'conv_block',
  'decide',
  'disabled',
  'following',
  'gru_recurrence',
  'ineligible',
  'jit',
  'lstm_sequence',
  'path',
  'policy',
  'settings',
  'using',
  'xla_options',
]
