"""jaxcls's accelerators, behind one small interface.

Nothing outside this folder imports it but :mod:`jaxcls.ops.fastpath`, and
deleting the folder leaves a working library on XLA's ops. :mod:`.build`
compiles and loads the C++ kernels (``csrc/*.cc``); :mod:`.cpu_conv` and
:mod:`.cpu_rnn` run the CNN block and the LSTM/GRU recurrences as XLA:CPU
custom calls; :mod:`.cudnn_lstm` runs the LSTM on cuDNN (NVIDIA GPUs,
opt-in); :mod:`.xla_options` holds the XLA:CPU compiler options.

A C++ kernel runs only where it measured faster than XLA's ops on this
machine (:mod:`.choice`); ``JAXCLS_KERNELS=auto|on|off`` or
:func:`configure` forces the choice. A choice is read when a function is
traced, and ``jax.jit`` keeps the path of its first trace: :func:`jit` keys
its cache on :func:`settings` too, so what it wraps follows :func:`using`,
:func:`disabled` and :func:`configure` call by call.
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
