"""XLA:CPU compiler options: which library runs the convolutions.

In jaxlib 0.10.2, XLA:CPU's default sends convolutions with more than 16
channels to YNNPACK, which runs them on one thread here, while Eigen's
convolution uses every core of the intra-op pool: on a 2-core EPYC Eigen was
1.5-1.9x faster per convolution, and the CNN's train step 1.35x faster
(benchmarks/NOTES.md). :func:`compiler_options` keep YNNPACK for matmuls and
reductions (where it wins) and leave convolutions to Eigen. Every function
jaxcls compiles gets them through :func:`jaxcls.accel.jit`; a function you
jit yourself gets them the same way, or with
``jax.jit(f, compiler_options=jaxcls.accel.compiler_options())``.

Setting ``--xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` yourself
overrides them (then :func:`compiler_options` returns None).
"""

import os

import jax

# XLA:CPU's default YNNPACK fusion types in jaxlib 0.10.2 (REDUCE,
# INDIVIDUAL_DOT, INDIVIDUAL_CONVOLUTION: the compiled HLO is identical),
# less INDIVIDUAL_CONVOLUTION. The enum names are xla.proto's.
CPU_YNN_FUSION_TYPES = (
  'LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'
)
_YNN_OPTION = 'xla_cpu_experimental_ynn_fusion_type'


def compiler_options(backend: str | None = None) -> dict[str, str] | None:
  """XLA options for ``jax.jit(compiler_options=...)``; None off XLA:CPU.

  On XLA:CPU: convolutions go to Eigen (multithreaded), not YNNPACK (one
  thread here); the math is the same, the float summation order differs.
  None as well when ``XLA_FLAGS`` already sets the YNNPACK fusion types.
  """
  if (backend or jax.default_backend()) != 'cpu':
    return None
  if _YNN_OPTION in os.environ.get('XLA_FLAGS', ''):
    return None
  return {_YNN_OPTION: CPU_YNN_FUSION_TYPES}
