"""Recurrent classifiers: RNN, LSTM and GRU layers, scanned over image rows.

An image ``(B, H, W, C)`` is read as a sequence of its rows: ``H`` steps of
``W * C`` features (28 x 28 for MNIST, 32 x 96 for CIFAR-10). A stack of
recurrent layers (each one direction or both) runs over it, time-major
``(T, B, F)``, and the last hidden state or the mean over time feeds a dense
head. The cells live in :mod:`jaxcls.models.rnn_cells` and the fused LSTM and
GRU kernels in :mod:`jaxcls.models.fused_rnn`; both are re-exported here.

Gate layouts follow PyTorch's ``nn.LSTM`` (i, f, g, o) and ``nn.GRU``
(r, z, n), so a PyTorch model with the same weights computes the same thing.
The tutorial article's LSTM cell formula is wrong (the input never enters the
cell state) and its RNN has gates; jaxcls uses the standard math
(:class:`LSTMCell`, :class:`SimpleRNNCell` say where the article differs).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcls.models.fused_rnn import Carry, gru_recurrence, lstm_sequence
from jaxcls.models.rnn_cells import (
  CELLS,
  GRUCell,
  LSTMCell,
  SimpleRNNCell,
  _Cell,
  make_cell,
)


def _recur(cell: _Cell, carry: Carry, projected: jax.Array):
  return cell.recur(carry, projected)


def _fused_scan(cell: _Cell, xs: jax.Array, reverse: bool):
  """``(outputs, last)`` from the cell's fused sequence kernel."""
  rev = (lambda a: jnp.flip(a, 0)) if reverse else (lambda a: a)
  carry, outputs = cell.sequence(cell.zero_carry(xs.shape[1]), rev(xs))
  return rev(outputs), cell.hidden(carry)


def _step_scan(cell: _Cell, xs: jax.Array, reverse: bool, unroll: int):
  """``(outputs, last)`` from ``nn.scan`` over the cell's one-step math."""
  projected = cell.project_inputs(xs)  # All time steps in one matmul.
  scan = nn.scan(
    _recur,
    variable_broadcast='params',
    split_rngs={'params': False},
    reverse=reverse,
    unroll=unroll,
  )
  carry, outputs = scan(cell, cell.zero_carry(xs.shape[1]), projected)
  # ``last`` from the carry, not ``outputs``: when only ``last`` is used
  # (readout 'last'), XLA then drops the stacked outputs altogether.
  return outputs, cell.hidden(carry)


def reverse_within(xs: jax.Array, lengths: jax.Array) -> jax.Array:
  """Each sequence of time-major ``xs`` reversed within its own length.

  ``out[t, b] = xs[lengths[b] - 1 - t, b]`` for ``t < lengths[b]``; padding
  stays where it is. Applied twice it is the identity.
  """
  t = jnp.arange(xs.shape[0])[:, None]
  n = lengths[None, :]
  index = jnp.where(t < n, n - 1 - t, t)
  return jnp.take_along_axis(
    xs, index.reshape(index.shape + (1,) * (xs.ndim - 2)), axis=0
  )


def _scan_lengths(scan, xs, lengths, reverse: bool):
  """``(outputs, last)`` of a forward ``scan`` over sequences of ``lengths``.

  A forward scan is causal, so padding after a sequence's end never reaches
  its outputs: ``last`` is read at step ``length - 1``. The reverse direction
  reads each sequence reversed within its length (so it starts at the
  sequence's own end), and its outputs are put back in input order. Outputs
  at padding are zero; a sequence of length 0 gets a zero ``last``.
  """
  if reverse:
    xs = reverse_within(xs, lengths)
  outputs, _ = scan(xs)
  end = jnp.maximum(lengths - 1, 0)
  # take_along_axis, not outputs[end, arange(B)]: the same gather, without
  # an arange of the batch, which jax2onnx cannot give a symbolic size.
  last = jnp.take_along_axis(outputs, end[None, :, None], axis=0)[0]
  last = jnp.where((lengths > 0)[:, None], last, 0)
  if reverse:
    outputs = reverse_within(outputs, lengths)
  valid = jnp.arange(outputs.shape[0])[:, None] < lengths[None, :]
  return jnp.where(valid[..., None], outputs, 0), last


class Recurrent(nn.Module):
  """One cell scanned over a time-major sequence, in one direction.

  ``(T, B, D) -> (outputs (T, B, H), last (B, H))``. With ``reverse`` the scan
  reads ``t = T-1 .. 0`` but outputs stay in input order, so ``last`` (the
  state after the whole sequence) equals ``outputs[0]``. LSTM and GRU cells
  run their fused sequence kernel unless ``fused=False`` or ``unroll > 1``;
  the RNN cell always takes the step path (``nn.scan`` over one step).
  With ``lengths`` (B,) the sequences are right-padded to ``T``: each one's
  ``last`` is its state at its own end, and padding never changes a result
  (see :func:`_scan_lengths`); the same kernels run.
  """

  cell: str = 'lstm'
  hidden_size: int = 128
  forget_bias: float = 1.0
  reverse: bool = False
  unroll: int = 1
  dtype: Any = jnp.float32
  fused: bool = True  # the cell's fused sequence kernel, where it has one

  @nn.compact
  def __call__(
    self, xs: jax.Array, lengths: jax.Array | None = None
  ) -> tuple[jax.Array, jax.Array]:
    cell = make_cell(
      self.cell, self.hidden_size, self.forget_bias, self.dtype, name='cell'
    )
    # Initialisation always takes the step path, so the parameters are the
    # same whichever path runs.
    if (
      self.fused
      and cell.HAS_SEQUENCE
      and self.unroll == 1
      and not self.is_initializing()
    ):
      scan = lambda seq, reverse: _fused_scan(cell, seq, reverse)
    else:
      scan = lambda seq, reverse: _step_scan(cell, seq, reverse, self.unroll)
    if lengths is None:
      return scan(xs, self.reverse)
    lengths = jnp.asarray(lengths, jnp.int32)
    return _scan_lengths(
      lambda seq: scan(seq, False), xs, lengths, self.reverse
    )


class Bidirectional(nn.Module):
  """A forward and a backward :class:`Recurrent`, features concatenated.

  ``(T, B, D) -> (outputs (T, B, 2H), last (B, 2H))``: ``outputs[t]`` is
  ``[forward h_t, backward h_t]`` and ``last`` is both directions' states
  after reading the whole sequence (PyTorch's ``h_n``): forward at ``T-1``,
  backward at ``0``. With ``lengths``, the backward direction starts at each
  sequence's own end (PyTorch's packed sequences).
  """

  cell: str = 'lstm'
  hidden_size: int = 128
  forget_bias: float = 1.0
  unroll: int = 1
  dtype: Any = jnp.float32
  fused: bool = True

  @nn.compact
  def __call__(
    self, xs: jax.Array, lengths: jax.Array | None = None
  ) -> tuple[jax.Array, jax.Array]:
    def direction(reverse, name):
      return Recurrent(
        self.cell,
        self.hidden_size,
        self.forget_bias,
        reverse=reverse,
        unroll=self.unroll,
        dtype=self.dtype,
        fused=self.fused,
        name=name,
      )(xs, lengths)

    fwd, fwd_last = direction(False, 'forward')
    bwd, bwd_last = direction(True, 'backward')
    return (
      jnp.concatenate([fwd, bwd], -1),
      jnp.concatenate([fwd_last, bwd_last], -1),
    )


class RecurrentStack(nn.Module):
  """``num_layers`` recurrent layers, with dropout between (not after) them.

  ``(T, B, D) -> (outputs (T, B, F), last (B, F))`` of the top layer, where
  ``F`` is ``hidden_size``, doubled when ``bidirectional``. ``lengths``
  (B,), optional, marks right-padded sequences (see :class:`Recurrent`).
  """

  cell: str = 'lstm'
  hidden_size: int = 128
  num_layers: int = 1
  bidirectional: bool = False
  dropout_rate: float = 0.0
  forget_bias: float = 1.0
  unroll: int = 1
  dtype: Any = jnp.float32
  fused: bool = True  # each layer's fused sequence kernel, where it has one

  @nn.compact
  def __call__(
    self,
    xs: jax.Array,
    train: bool = False,
    lengths: jax.Array | None = None,
  ):
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
      if self.bidirectional:
        layer = Bidirectional(**kwargs, fused=self.fused)
      else:
        layer = Recurrent(**kwargs, fused=self.fused)
      xs, last = layer(xs, lengths)
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


__all__ = [
  'CELLS',
  'Bidirectional',
  'Carry',
  'GRUCell',
  'LSTMCell',
  'Recurrent',
  'RecurrentClassifier',
  'RecurrentStack',
  'SimpleRNNCell',
  'build_classifier',
  'gru_recurrence',
  'lstm_sequence',
  'make_cell',
]
