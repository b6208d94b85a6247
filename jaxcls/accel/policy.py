"""Which path each accelerated op takes: the settings, measured decisions
and the record of the paths taken (:func:`path`).
"""

import contextlib
import dataclasses
import functools
import logging
import os
from collections.abc import Callable

import jax
import jaxlib

from jaxcls.accel import choice
from jaxcls.accel.xla_options import compiler_options

MODES = ('auto', 'on', 'off')


@dataclasses.dataclass(frozen=True)
class Settings:
  """What decides the accelerated paths; part of :func:`jit`'s cache key.

  Attributes:
    kernels: 'auto' (measure), 'on' (kernel wherever it applies) or 'off'.
    cudnn_lstm: run float32 LSTM layers on cuDNN on NVIDIA GPUs.
    follow: ``((key, 'kernel' | 'xla'), ...)``: a recorded path to take
      again (a resumed run), ahead of 'auto'.
    record: whether traces add to :func:`path` (not under :func:`disabled`).
  """

  kernels: str = 'auto'
  cudnn_lstm: bool = False
  follow: tuple[tuple[str, str], ...] = ()
  record: bool = True

  def __post_init__(self):
    if self.kernels not in MODES:
      raise ValueError(
        f'JAXCLS_KERNELS={self.kernels!r} is not one of auto, on, off; '
        'set one of those (or unset it: auto)'
      )


_settings: Settings | None = None
_taken: dict[str, dict] = {}  # key -> the path a trace in this process took
_warned: set[str] = set()
_log = logging.getLogger('jaxcls')


def settings() -> Settings:
  """The settings in force (``JAXCLS_KERNELS`` read on first call)."""
  global _settings
  if _settings is None:
    mode = os.environ.get('JAXCLS_KERNELS', '').strip().lower()
    _settings = Settings(kernels=mode or 'auto')
  return _settings


def configure(**changes) -> Settings:
  """Changes the settings for the rest of the process; returns the new ones.

  Args:
    **changes: fields of :class:`Settings`, e.g. ``kernels='off'``.
  """
  global _settings
  _settings = dataclasses.replace(settings(), **changes)
  return _settings


@contextlib.contextmanager
def using(**changes):
  """Traces inside the block use these :class:`Settings` fields."""
  global _settings
  previous = settings()
  configure(**changes)
  try:
    yield _settings
  finally:
    _settings = previous


def disabled():
  """Traces inside use none of jaxcls's accelerators, only XLA's own ops.

  For programs that must run without jaxcls (exports), that XLA must see
  through (FLOP counts, Flax's summary table), and A/B benchmarks.
  """
  return using(kernels='off', cudnn_lstm=False, record=False)


def jit(fn: Callable, **jit_kwargs) -> Callable:
  """``jax.jit(fn, **jit_kwargs)`` with the compiler options, per settings.

  One jitted function per :func:`settings` value, so a trace follows the
  settings in force at the call (plain ``jax.jit`` would keep the first).
  The result has ``.lower`` like a jitted function.
  """
  jit_kwargs.setdefault('compiler_options', compiler_options())

  @functools.cache
  def compiled(current: Settings):
    def traced(*args, **kwargs):
      with using(**dataclasses.asdict(current)):
        return fn(*args, **kwargs)

    return jax.jit(functools.wraps(fn)(traced), **jit_kwargs)

  @functools.wraps(fn)
  def call(*args, **kwargs):
    return compiled(settings())(*args, **kwargs)

  call.lower = lambda *a, **k: compiled(settings()).lower(*a, **k)
  return call


def _warn_once(key: str, message: str) -> None:
  if key not in _warned:
    _warned.add(key)
    _log.warning('jaxcls: %s', message)


def decide(key: str, kernel_fn, xla_fn, example_args, wrt=None) -> bool:
  """Whether the kernel runs for ``key``; records the path taken.

  Args:
    key: the kernel and its shape signature, e.g. ``conv_block(64,28,28,1,16)``.
    kernel_fn: the kernel's function of ``example_args``.
    xla_fn: the same function on XLA's ops.
    example_args: arrays of the shapes traced now (for a measurement).
    wrt: the arguments a train step differentiates (default: all).

  Returns:
    True where the kernel runs: forced 'on', recorded by the run being
    resumed, or measured faster than ``xla_fn`` here (cached on disk).
  """
  s = settings()
  follow = dict(s.follow)
  if s.kernels in ('on', 'off'):
    use, source = s.kernels == 'on', 'forced'
    if key in follow and (follow[key] == 'kernel') != use:
      _warn_once(
        key,
        f'JAXCLS_KERNELS={s.kernels} overrides the path this run took for '
        f'{key} ({follow[key]}); it will not repeat bit for bit',
      )
  elif key in follow:
    use, source = follow[key] == 'kernel', 'recorded'
  else:
    found = choice.decision(key, kernel_fn, xla_fn, example_args, wrt)
    use, source = found['path'] == 'kernel', found['source']
  if s.record:
    _taken[key] = {'path': 'kernel' if use else 'xla', 'source': source}
  return use


def ineligible(key: str, reason: str) -> None:
  """Records that ``key`` runs on XLA because no kernel applies here."""
  follow = dict(settings().follow)
  if follow.get(key) == 'kernel':
    _warn_once(
      key,
      f"this run took jaxcls's kernel for {key} but it cannot run here "
      f"({reason}); it continues on XLA's ops, not bit for bit",
    )
  if settings().record:
    _taken[key] = {'path': 'xla', 'source': reason}


def path() -> dict:
  """What this process traced: ``{'cpu', 'jaxlib', 'kernels', 'choices'}``."""
  return {
    'cpu': choice.cpu_model(),
    'jaxlib': jaxlib.__version__,
    'kernels': settings().kernels,
    'choices': {k: dict(v) for k, v in sorted(_taken.items())},
  }


def following(recorded: dict):
  """Traces inside take a recorded :func:`path` again (a resumed run).

  Ahead of 'auto'; an explicit ``JAXCLS_KERNELS=on|off`` still wins, and
  each recorded choice that cannot be taken here says so in one line.
  """
  choices = recorded.get('choices', {})
  return using(follow=tuple(sorted((k, v['path']) for k, v in choices.items())))


# The kernels and their eligibility: the rest of jaxcls calls these.
