"""Recurrent classifiers: RNN, LSTM and GRU cells, scanned over image rows.

An image ``(B, H, W, C)`` is read as a sequence of its rows: ``H`` steps of
``W * C`` features (28 x 28 for MNIST, 32 x 96 for CIFAR-10). A stack of
recurrent layers (each one direction or both) runs over it, and the last hidden
state or the mean over time feeds a dense head.

Speed: LSTM and GRU layers run as fused sequence kernels
(:func:`lstm_sequence`, :func:`gru_recurrence`) with hand-written backward
passes: the forward scan keeps the gate activations, the backward scan runs
only the recurrence, and each weight gradient is one matmul over all time
steps after the loop, instead of a small matmul and an add per step as
autodiff of a scan does. The LSTM multiplies ``[x_t, h]`` by the stacked
``[W_i; W_h]`` in one matmul per step; the GRU projects all inputs before the
scan, since its reset gate multiplies only the hidden part. The step path
(``nn.scan`` over :meth:`_Cell.recur`, with the input projection hoisted) is
kept for the RNN cell, for ``unroll > 1``, for ``Recurrent(fused=False)``, and
for initialisation, so both paths hold the same parameters. On a CPU, float32
LSTM and GRU layers (hidden size a multiple of 16) run their recurrence on
C++ kernels of jaxcls's own where they measured faster
(:mod:`jaxcls.accel.cpu_rnn`; same math and parameters); on an NVIDIA GPU a
float32 LSTM layer can run on cuDNN (:mod:`jaxcls.accel.cudnn_lstm`,
opt-in), from the same parameters. Everything runs
time-major, ``(T, B, F)``. Gate math and the carried state stay float32 when
``dtype`` is bfloat16; only the matmuls use ``dtype``.

Gate layouts follow PyTorch's ``nn.LSTM`` (i, f, g, o) and ``nn.GRU``
(r, z, n), so a PyTorch model with the same weights computes the same thing.
"""

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcls.ops import fastpath

Carry = Any  # h (B, H) for RNN and GRU; (c, h) for LSTM.


def _per_gate(
  init: nn.initializers.Initializer, num_gates: int
) -> nn.initializers.Initializer:
  """Applies ``init`` to each gate's ``(in, H)`` block of a fused kernel.

  An orthogonal recurrent kernel should be orthogonal per gate (as flax's own
  LSTM cells do it), not over the whole ``(H, num_gates * H)`` matrix.
  """

  def fused(key, shape, dtype=jnp.float32):
    keys = jax.random.split(key, num_gates)
    block = (shape[0], shape[1] // num_gates)
    return jnp.concatenate([init(k, block, dtype) for k in keys], axis=-1)

  return fused


def _dot(a: jax.Array, b: jax.Array, dtype) -> jax.Array:
  """``a @ b`` in ``dtype`` (the matmul dtype), returned as float32."""
  return jnp.dot(a.astype(dtype), b.astype(dtype)).astype(jnp.float32)


def _shifted_back(first: jax.Array, stacked: jax.Array) -> jax.Array:
  """``[first, stacked[0], ..., stacked[T-2]]``: the state before each step."""
  return jnp.concatenate([first[None], stacked[:-1]], axis=0)


# Fused sequence kernels with hand-written backward passes.
#
# Autodiff of a scan accumulates each weight gradient inside the backward
# loop: one small (H x B) @ (B x G*H) matmul and an add per time step. These
# kernels store the gate activations in the forward scan, run only the
# recurrence backwards (the gate gradients and ``dh @ W_h^T``), and then form
# the weight gradients after the loop as one (T*B)-deep matmul each. The math
# is the cells' own (tests/test_recurrent.py checks values and gradients
# against the step-by-step cells); only the order of the float sums differs.


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def lstm_sequence(
  dtype,
  xs: jax.Array,
  w_i: jax.Array,
  w_h: jax.Array,
  b: jax.Array,
  carry: Carry,
) -> tuple[jax.Array, Carry]:
  """:class:`LSTMCell` over ``xs`` ``(T, B, D)``: ``(hs (T, B, H), (c, h))``.

  Each step is one matmul of ``[x_t, h]`` with the stacked kernel
  ``[W_i; W_h]`` (``(D + H, 4H)``, gates i, f, g, o). On XLA:CPU that beat
  projecting every input ahead of the scan (benchmarks/NOTES.md): the
  ``(T, B, 4H)`` projected array no longer streams through memory.
  """
  return _lstm_forward(dtype, xs, w_i, w_h, b, carry)[0]


def _lstm_forward(dtype, xs, w_i, w_h, b, carry):
  w = jnp.concatenate([w_i, w_h], axis=0)

  def step(carry, x):
    c, h = carry
    gates = _dot(jnp.concatenate([x.astype(h.dtype), h], -1), w, dtype) + b
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    i, f, g, o = (
      jax.nn.sigmoid(i),
      jax.nn.sigmoid(f),
      jnp.tanh(g),
      jax.nn.sigmoid(o),
    )
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return (c, h), (h, c, jnp.concatenate([i, f, g, o], -1))

  last, (hs, cs, acts) = jax.lax.scan(step, carry, xs)
  return (hs, last), (xs, w_i, w_h, carry, hs, cs, acts)


def _lstm_backward(dtype, residuals, cotangents):
  xs, w_i, w_h, (c0, h0), hs, cs, acts = residuals
  d_hs, (d_c, d_h) = cotangents
  w_h_t = w_h.T

  def step(carry, inputs):
    d_c, d_h = carry
    d_h_out, a, c_prev, c = inputs
    d_h = d_h + d_h_out
    i, f, g, o = jnp.split(a, 4, axis=-1)
    tanh_c = jnp.tanh(c)
    d_c = d_c + d_h * o * (1.0 - tanh_c * tanh_c)
    d_gates = jnp.concatenate(
      [
        d_c * g * i * (1.0 - i),
        d_c * c_prev * f * (1.0 - f),
        d_c * i * (1.0 - g * g),
        d_h * tanh_c * o * (1.0 - o),
      ],
      -1,
    )
    return (d_c * f, _dot(d_gates, w_h_t, dtype)), d_gates

  (d_c0, d_h0), d_gates = jax.lax.scan(
    step, (d_c, d_h), (d_hs, acts, _shifted_back(c0, cs), cs), reverse=True
  )
  flat = d_gates.reshape(-1, d_gates.shape[-1])
  d_w_i = _dot(xs.reshape(-1, xs.shape[-1]).T, flat, dtype)
  d_w_h = _dot(_shifted_back(h0, hs).reshape(-1, w_h.shape[0]).T, flat, dtype)
  d_xs = _dot(flat, w_i.T, dtype).reshape(xs.shape).astype(xs.dtype)
  return d_xs, d_w_i, d_w_h, flat.sum(0), (d_c0, d_h0)


lstm_sequence.defvjp(
  lambda dtype, *args: _lstm_forward(dtype, *args), _lstm_backward
)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def gru_recurrence(
  dtype, projected: jax.Array, w_h: jax.Array, b_h: jax.Array, h: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """:class:`GRUCell`'s recurrence over already projected inputs.

  ``projected`` is ``x_t @ W_i + b_i`` for every step, ``(T, B, 3H)`` float32
  (gates r, z, n); returns ``(hs (T, B, H), h)``.
  """
  return _gru_forward(dtype, projected, w_h, b_h, h)[0]


def _gru_forward(dtype, projected, w_h, b_h, h0):

  def step(h, x):
    x_r, x_z, x_n = jnp.split(x, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(_dot(h, w_h, dtype) + b_h, 3, axis=-1)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    h = (1.0 - z) * n + z * h
    return h, (h, jnp.concatenate([r, z, n, h_n], -1))

  last, (hs, acts) = jax.lax.scan(step, h0, projected)
  return (hs, last), (w_h, h0, hs, acts)


def _gru_backward(dtype, residuals, cotangents):
  w_h, h0, hs, acts = residuals
  d_hs, d_h = cotangents
  w_h_t = w_h.T

  def step(d_h, inputs):
    d_h_out, a, h_prev = inputs
    d_h = d_h + d_h_out
    r, z, n, h_n = jnp.split(a, 4, axis=-1)
    d_n = d_h * (1.0 - z) * (1.0 - n * n)
    d_r = d_n * h_n * r * (1.0 - r)
    d_z = d_h * (h_prev - n) * z * (1.0 - z)
    d_x = jnp.concatenate([d_r, d_z, d_n], -1)
    d_hidden = jnp.concatenate([d_r, d_z, d_n * r], -1)
    return d_h * z + _dot(d_hidden, w_h_t, dtype), (d_x, d_hidden)

  d_h0, (d_projected, d_hidden) = jax.lax.scan(
    step, d_h, (d_hs, acts, _shifted_back(h0, hs)), reverse=True
  )
  flat = d_hidden.reshape(-1, d_hidden.shape[-1])
  d_w_h = _dot(_shifted_back(h0, hs).reshape(-1, w_h.shape[0]).T, flat, dtype)
  return d_projected, d_w_h, flat.sum(0), d_h0


gru_recurrence.defvjp(
  lambda dtype, *args: _gru_forward(dtype, *args), _gru_backward
)


class _Cell(nn.Module):
  """A recurrent cell with fused gate projections; subclasses add the math.

  Parameters: ``input_projection`` (kernel ``(D, G*H)``, bias ``(G*H,)``) and
  ``hidden_projection`` (kernel ``(H, G*H)``, orthogonal per gate; a bias only
  where the math needs one), with ``G = NUM_GATES`` gate blocks in order.
  """

  hidden_size: int
  dtype: Any = jnp.float32  # matmul dtype; gates and state stay float32

  NUM_GATES: ClassVar[int] = 1
  HIDDEN_BIAS: ClassVar[bool] = False

  def _input_bias_init(self) -> nn.initializers.Initializer:
    return nn.initializers.zeros_init()

  def setup(self):
    width = self.NUM_GATES * self.hidden_size
    self.input_projection = nn.Dense(
      width, dtype=self.dtype, bias_init=self._input_bias_init()
    )
    self.hidden_projection = nn.Dense(
      width,
      use_bias=self.HIDDEN_BIAS,
      dtype=self.dtype,
      kernel_init=_per_gate(nn.initializers.orthogonal(), self.NUM_GATES),
    )

  def project_inputs(self, xs: jax.Array) -> jax.Array:
    """``x @ W_i + b_i`` for inputs of any leading shape, e.g. ``(T, B, D)``."""
    return self.input_projection(xs).astype(jnp.float32)

  def _project_hidden(self, h: jax.Array) -> jax.Array:
    return self.hidden_projection(h).astype(jnp.float32)

  def recur(
    self, carry: Carry, projected: jax.Array
  ) -> tuple[Carry, jax.Array]:
    """One step from an already projected input; returns ``(carry, h)``."""
    raise NotImplementedError

  def zero_carry(self, batch_size: int) -> Carry:
    """The initial state: zeros, float32."""
    return jnp.zeros((batch_size, self.hidden_size), jnp.float32)

  def hidden(self, carry: Carry) -> jax.Array:
    """The hidden state ``h`` held in ``carry``."""
    return carry

  def __call__(self, carry: Carry, x: jax.Array) -> tuple[Carry, jax.Array]:
    """One whole step ``(carry, x_t) -> (carry, h_t)``."""
    return self.recur(carry, self.project_inputs(x))

  HAS_SEQUENCE: ClassVar[bool] = False

  def sequence(self, carry: Carry, xs: jax.Array) -> tuple[Carry, jax.Array]:
    """The whole time-major sequence ``(T, B, D)`` in one fused kernel.

    Only cells with ``HAS_SEQUENCE`` implement it; their parameters must
    already exist (:class:`Recurrent` initialises through the step path).
    """
    raise NotImplementedError

  def _params(self, name: str) -> dict:
    return getattr(self, name).variables['params']


class SimpleRNNCell(_Cell):
  """Elman RNN cell (PyTorch ``nn.RNN``, tanh):

      h' = tanh(W_i x + b + W_h h)

  The article's "RNN" section gives ``c_t = Gamma_t * h_{t-1} + beta_t *
  x_t`` with forget and update gates; that describes no simple RNN (a plain RNN
  has no gates); this is the standard one.
  """

  def recur(self, carry, projected):
    h = jnp.tanh(projected + self._project_hidden(carry))
    return h, h


class LSTMCell(_Cell):
  """LSTM cell with a forget gate, as PyTorch ``nn.LSTM`` and Keras:

      i = sigmoid(W_ii x + W_hi h + b_i)      input gate
      f = sigmoid(W_if x + W_hf h + b_f)      forget gate
      g = tanh(W_ig x + W_hg h + b_g)         candidate cell
      o = sigmoid(W_io x + W_ho h + b_o)      output gate
      c' = f * c + i * g
      h' = o * tanh(c')

  Gate blocks are fused in PyTorch's order i, f, g, o. PyTorch has two bias
  vectors (``b_ih + b_hh``); their sum is one bias here. ``forget_bias``
  initialises ``b_f`` (Keras's ``unit_forget_bias``: 1.0 lets gradients flow
  through ``c`` early in training); the other biases start at zero.

  Where the article differs: it writes the candidate state as
  ``C_t = i_t * c_{t-1}`` and ``c_t = f_t * c_{t-1} + C_t``, which has no
  candidate ``g`` from the input at all (the new input never enters the cell
  state), and it never says ``h_t = o_t * tanh(c_t)``. The equations above are
  the standard ones.
  """

  forget_bias: float = 1.0

  NUM_GATES: ClassVar[int] = 4

  def _input_bias_init(self):
    hidden, forget_bias = self.hidden_size, self.forget_bias

    def init(key, shape, dtype=jnp.float32):
      del key
      return jnp.zeros(shape, dtype).at[hidden : 2 * hidden].set(forget_bias)

    return init

  def zero_carry(self, batch_size):
    zeros = jnp.zeros((batch_size, self.hidden_size), jnp.float32)
    return zeros, zeros

  def hidden(self, carry):
    return carry[1]

  def recur(self, carry, projected):
    c, h = carry
    gates = projected + self._project_hidden(h)
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), h

  HAS_SEQUENCE: ClassVar[bool] = True

  def sequence(self, carry, xs):
    inputs, hidden = (
      self._params('input_projection'),
      self._params('hidden_projection'),
    )
    args = (xs, inputs['kernel'], hidden['kernel'], inputs['bias'], carry)
    xla = functools.partial(lstm_sequence, self.dtype)
    fast = fastpath.lstm_sequence(self.dtype, self.hidden_size, args, xla)
    hs, carry = (fast or xla)(*args)
    return carry, hs


class GRUCell(_Cell):
  """GRU cell, as PyTorch ``nn.GRU`` (reset gate on the hidden projection):

      r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)      reset gate
      z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)      update gate
      n = tanh(W_in x + b_in + r * (W_hn h + b_hn))   candidate
      h' = (1 - z) * n + z * h

  Gate blocks are fused in PyTorch's order r, z, n; both projections have a
  bias, as in PyTorch (``b_hn`` must sit inside ``r * (...)``).
  """

  NUM_GATES: ClassVar[int] = 3
  HIDDEN_BIAS: ClassVar[bool] = True

  def recur(self, carry, projected):
    h = carry
    x_r, x_z, x_n = jnp.split(projected, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(self._project_hidden(h), 3, axis=-1)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    h = (1.0 - z) * n + z * h
    return h, h

  HAS_SEQUENCE: ClassVar[bool] = True

  def sequence(self, carry, xs):
    hidden = self._params('hidden_projection')
    args = (self.project_inputs(xs), hidden['kernel'], hidden['bias'], carry)
    xla = functools.partial(gru_recurrence, self.dtype)
    fast = fastpath.gru_recurrence(self.dtype, self.hidden_size, args, xla)
    hs, carry = (fast or xla)(*args)
    return carry, hs


CELLS = {'rnn': SimpleRNNCell, 'lstm': LSTMCell, 'gru': GRUCell}


def make_cell(
  kind: str,
  hidden_size: int,
  forget_bias: float = 1.0,
  dtype=jnp.float32,
  name: str | None = None,
) -> _Cell:
  """The cell named ``kind`` ('rnn', 'lstm' or 'gru')."""
  if kind not in CELLS:
    raise ValueError(f'unknown cell {kind!r}; choose one of {sorted(CELLS)}')
  if kind == 'lstm':
    return LSTMCell(
      hidden_size, dtype=dtype, forget_bias=forget_bias, name=name
    )
  return CELLS[kind](hidden_size, dtype=dtype, name=name)


def _recur(cell: _Cell, carry: Carry, projected: jax.Array):
  return cell.recur(carry, projected)


class Recurrent(nn.Module):
  """One cell scanned over a time-major sequence, in one direction.

  ``(T, B, D) -> (outputs (T, B, H), last (B, H))``. With ``reverse`` the scan
  reads ``t = T-1 .. 0`` but outputs stay in input order, so ``last`` (the
  state after the whole sequence) equals ``outputs[0]``.
  """

  cell: str = 'lstm'
  hidden_size: int = 128
  forget_bias: float = 1.0
  reverse: bool = False
  unroll: int = 1
  dtype: Any = jnp.float32
  fused: bool = True  # the cell's fused sequence kernel, where it has one

  @nn.compact
  def __call__(self, xs: jax.Array) -> tuple[jax.Array, jax.Array]:
    cell = make_cell(
      self.cell, self.hidden_size, self.forget_bias, self.dtype, name='cell'
    )
    if (
      self.fused
      and cell.HAS_SEQUENCE
      and self.unroll == 1
      and not self.is_initializing()
    ):
      # Initialisation always goes through the step path below, so the
      # parameters are the same whichever path runs.
      rev = (lambda a: jnp.flip(a, 0)) if self.reverse else (lambda a: a)
      carry, outputs = cell.sequence(cell.zero_carry(xs.shape[1]), rev(xs))
      return rev(outputs), cell.hidden(carry)
    projected = cell.project_inputs(xs)  # All time steps in one matmul.
    scan = nn.scan(
      _recur,
      variable_broadcast='params',
      split_rngs={'params': False},
      reverse=self.reverse,
      unroll=self.unroll,
    )
    carry, outputs = scan(cell, cell.zero_carry(xs.shape[1]), projected)
    # ``last`` from the carry, not ``outputs``: when only ``last`` is used
    # (readout 'last'), XLA then drops the stacked outputs altogether.
    return outputs, cell.hidden(carry)


class Bidirectional(nn.Module):
  """A forward and a backward :class:`Recurrent`, features concatenated.

  ``(T, B, D) -> (outputs (T, B, 2H), last (B, 2H))``: ``outputs[t]`` is
  ``[forward h_t, backward h_t]`` and ``last`` is both directions' states
  after reading the whole sequence (PyTorch's ``h_n``): forward at ``T-1``,
  backward at ``0``.
  """

  cell: str = 'lstm'
  hidden_size: int = 128
  forget_bias: float = 1.0
  unroll: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, xs: jax.Array) -> tuple[jax.Array, jax.Array]:
    def direction(reverse, name):
      return Recurrent(
        self.cell,
        self.hidden_size,
        self.forget_bias,
        reverse=reverse,
        unroll=self.unroll,
        dtype=self.dtype,
        name=name,
      )(xs)

    fwd, fwd_last = direction(False, 'forward')
    bwd, bwd_last = direction(True, 'backward')
    return (
      jnp.concatenate([fwd, bwd], -1),
      jnp.concatenate([fwd_last, bwd_last], -1),
    )


class RecurrentStack(nn.Module):
  """``num_layers`` recurrent layers, with dropout between (not after) them.

  ``(T, B, D) -> (outputs (T, B, F), last (B, F))`` of the top layer, where
  ``F`` is ``hidden_size``, doubled when ``bidirectional``.
  """

  cell: str = 'lstm'
  hidden_size: int = 128
  num_layers: int = 1
  bidirectional: bool = False
  dropout_rate: float = 0.0
  forget_bias: float = 1.0
  unroll: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, xs: jax.Array, train: bool = False):
    last = None
    for index in range(self.num_layers):
      if index and self.dropout_rate > 0:
        xs = nn.Dropout(self.dropout_rate, deterministic=not train)(xs)
      kwargs = dict(
        cell=self.cell,
        hidden_size=self.hidden_size,
        forget_bias=self.forget_bias,
        unroll=self.unroll,
        dtype=self.dtype,
        name=f'layer_{index}',
      )
      layer = (
        Bidirectional(**kwargs) if self.bidirectional else Recurrent(**kwargs)
      )
      xs, last = layer(xs)
    return xs, last


class RecurrentClassifier(nn.Module):
  """Reads an image row by row and classifies it.

  ``(B, H, W, C)`` images become ``H`` steps of ``W * C`` features; the
  :class:`RecurrentStack`'s ``readout`` ('last': the state after the whole
  sequence, both directions if bidirectional; 'mean': the mean of the top
  layer's outputs over time) feeds a dense layer to ``num_classes`` logits
  (float32).
  """

  cell: str = 'lstm'
  num_classes: int = 10
  hidden_size: int = 128
  num_layers: int = 1
  bidirectional: bool = False
  readout: str = 'last'
  dropout_rate: float = 0.0
  forget_bias: float = 1.0
  unroll: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.readout not in ('last', 'mean'):
      raise ValueError(
        f"unknown readout {self.readout!r}; choose 'last' or 'mean'"
      )
    b, h, w, c = x.shape
    rows = jnp.transpose(x.reshape(b, h, w * c), (1, 0, 2))  # (T, B, D)
    outputs, last = RecurrentStack(
      self.cell,
      self.hidden_size,
      self.num_layers,
      self.bidirectional,
      self.dropout_rate,
      self.forget_bias,
      self.unroll,
      self.dtype,
      name='rnn',
    )(rows.astype(self.dtype), train=train)
    features = last if self.readout == 'last' else outputs.mean(axis=0)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(features)
    return logits.astype(jnp.float32)


def build_classifier(config, num_classes: int) -> RecurrentClassifier:
  """``models.MODELS`` builder: the cell is ``config.model``, the rest
  comes from the base config's recurrent fields (``hidden_size``, ...)."""
  return RecurrentClassifier(
    cell=config.model,
    num_classes=num_classes,
    hidden_size=config.hidden_size,
    num_layers=config.num_layers,
    bidirectional=config.bidirectional,
    readout=config.readout,
    dropout_rate=config.dropout_rate,
    forget_bias=config.forget_bias,
    dtype=jnp.dtype(config.compute_dtype),
  )
