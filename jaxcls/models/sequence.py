"""Sequence classifiers: text as token ids, or multichannel time series.

A batch is right-padded to ``T`` steps with ``lengths`` (B,) saying where
each sequence ends. Token ids ``(B, T)`` go through an embedding (id 0 is
padding); float series ``(B, T, C)`` through a dense input projection. A
:class:`~jaxcls.models.recurrent.RecurrentStack` (a BiLSTM by default) reads
the padded batch with its lengths, and a readout that never sees padding
(``last``: each sequence's state at its own end, both directions; ``mean``
or ``max`` over its own steps) feeds a dense head. Padding never changes a
result: ``tests/test_sequence_model.py`` checks each sequence against itself
run alone.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcls.models.recurrent import RecurrentStack

READOUTS = ('last', 'mean', 'max')


def masked_readout(outputs, last, lengths, readout: str) -> jax.Array:
  """``(B, F)`` features from time-major ``outputs`` (T, B, F), ignoring
  steps at or after each sequence's length.

  Args:
    outputs: the top layer's outputs, zero at padding.
    last: each sequence's state at its own end (both directions).
    lengths: (B,) int, at least 1 for a real sequence.
    readout: one of :data:`READOUTS`.

  Returns:
    The float32 features the head reads.
  """
  if readout == 'last':
    return last
  if readout == 'mean':  # the layers' outputs are zero at padding
    total = jnp.sum(outputs.astype(jnp.float32), axis=0)
    return total / jnp.maximum(lengths, 1)[:, None].astype(jnp.float32)
  valid = jnp.arange(outputs.shape[0])[:, None] < lengths[None, :]
  masked = jnp.where(valid[..., None], outputs.astype(jnp.float32), -jnp.inf)
  return jnp.where((lengths > 0)[:, None], jnp.max(masked, axis=0), 0.0)


class SequenceClassifier(nn.Module):
  """Classifies right-padded sequences of token ids or of feature vectors.

  ``vocab_size > 0`` embeds int ids ``(B, T)`` in ``embed_size`` dimensions;
  ``vocab_size == 0`` projects float inputs ``(B, T, C)`` to ``embed_size``
  (0: feed them as they are). ``lengths=None`` means every sequence fills
  ``T``. Dropout (``dropout_rate``) acts on the embedded inputs, between
  layers and on the features; logits are float32.
  """

  num_classes: int
  vocab_size: int = 0
  embed_size: int = 64
  cell: str = 'lstm'
  hidden_size: int = 128
  num_layers: int = 1
  bidirectional: bool = True
  readout: str = 'last'
  dropout_rate: float = 0.0
  forget_bias: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, lengths=None) -> jax.Array:
    if self.readout not in READOUTS:
      raise ValueError(
        f'unknown readout {self.readout!r}; choose one of {list(READOUTS)}'
      )
    b, t = x.shape[:2]
    lengths = (
      jnp.full((b,), t, jnp.int32)
      if lengths is None
      else jnp.asarray(lengths, jnp.int32)
    )
    h = self._inputs(x)
    if self.dropout_rate > 0:
      h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    outputs, last = RecurrentStack(
      self.cell,
      self.hidden_size,
      self.num_layers,
      self.bidirectional,
      self.dropout_rate,
      self.forget_bias,
      dtype=self.dtype,
      name='rnn',
    )(jnp.transpose(h, (1, 0, 2)), train=train, lengths=lengths)
    features = masked_readout(outputs, last, lengths, self.readout)
    if self.dropout_rate > 0:
      features = nn.Dropout(self.dropout_rate, deterministic=not train)(
        features
      )
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(features)
    return logits.astype(jnp.float32)

  def _inputs(self, x) -> jax.Array:
    """``(B, T, E)`` inputs of the recurrent stack, in ``dtype``."""
    if self.vocab_size:
      embed = nn.Embed(self.vocab_size, self.embed_size, name='embed')
      return embed(x).astype(self.dtype)
    x = x.astype(jnp.float32)
    if self.embed_size:
      x = nn.Dense(self.embed_size, dtype=self.dtype, name='input')(x)
    return x.astype(self.dtype)


# Token ids of config.tokenizer 'bytes' (jaxcls.data.tokens.BYTE_VOCAB_SIZE:
# PAD, BOS and the 256 bytes); 'words' has config.vocab_size ids.
BYTE_VOCAB_SIZE = 258


def build_sequence(config, num_classes: int) -> SequenceClassifier:
  """``models.MODELS`` builder of model 'sequence': token ids for a text
  dataset (an embedding), feature vectors for a UCR one ('ucr/<Name>')."""
  text = not config.dataset.startswith('ucr/')
  vocab = BYTE_VOCAB_SIZE if config.tokenizer == 'bytes' else config.vocab_size
  return SequenceClassifier(
    num_classes=num_classes,
    vocab_size=vocab if text else 0,
    embed_size=config.embed_size,
    cell=config.cell,
    hidden_size=config.hidden_size,
    num_layers=config.num_layers,
    bidirectional=config.bidirectional,
    readout=config.readout,
    dropout_rate=config.dropout_rate,
    forget_bias=config.forget_bias,
    dtype=jnp.dtype(config.compute_dtype),
  )
