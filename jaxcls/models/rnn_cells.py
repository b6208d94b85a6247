"""The RNN (tanh), LSTM and GRU cells: one step's math and their parameters.

Each cell has two fused projections, ``input_projection`` and
``hidden_projection``, whose gate blocks follow PyTorch's ``nn.LSTM``
(i, f, g, o) and ``nn.GRU`` (r, z, n), so a PyTorch model with the same
weights computes the same thing. :meth:`_Cell.recur` is one step, for the
step path; LSTM and GRU cells also run a whole sequence at once
(:meth:`_Cell.sequence`) on the fused kernels of
:mod:`jaxcls.models.fused_rnn`, or on an accelerator where
:mod:`jaxcls.ops.fastpath` offers one, from the same parameters.

The tutorial article's RNN and LSTM formulas are wrong; the cells use the
standard math, and their docstrings say where the article differs.
"""

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcls.models.fused_rnn import Carry, gru_recurrence, lstm_sequence
from jaxcls.ops import fastpath


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
    already exist (:class:`jaxcls.models.recurrent.Recurrent` initialises
    through the step path).
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
      c' = f * c + i * g;   h' = o * tanh(c')

  Gates are fused in PyTorch's order i, f, g, o, with one bias (PyTorch's
  ``b_ih + b_hh``); ``forget_bias`` initialises ``b_f`` (Keras's default).

  The article's ``C_t = i_t * c_{t-1}``, ``c_t = f_t * c_{t-1} + C_t`` is
  wrong: the input never enters the cell state (there is no candidate ``g``)
  and ``h_t = o_t * tanh(c_t)`` is missing. These are the standard equations.
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
    # cuDNN or the CPU kernel where one runs here, from the same parameters.
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
    # The reset gate multiplies only the hidden part, so every step's input
    # part is projected ahead of the scan, in one matmul.
    args = (self.project_inputs(xs), hidden['kernel'], hidden['bias'], carry)
    xla = functools.partial(gru_recurrence, self.dtype)
    # The CPU kernel where it runs here, from the same parameters.
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
  """The cell named ``kind``.

  Args:
    kind: 'rnn', 'lstm' or 'gru' (a key of :data:`CELLS`).
    hidden_size: H.
    forget_bias: the LSTM's initial forget-gate bias (ignored otherwise).
    dtype: the matmul dtype; gates and state stay float32.
    name: the Flax module name.

  Returns:
    An unbound cell module.

  Raises:
    ValueError: ``kind`` is not a known cell.
  """
  if kind not in CELLS:
    raise ValueError(f'unknown cell {kind!r}; choose one of {sorted(CELLS)}')
  if kind == 'lstm':
    return LSTMCell(
      hidden_size, dtype=dtype, forget_bias=forget_bias, name=name
    )
  return CELLS[kind](hidden_size, dtype=dtype, name=name)
