"""The sequence classifier: padding never changes a result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcls.models import sequence

LENGTHS = np.array([6, 2, 9, 1], np.int32)
T = 9


def padded_ids(seed=0):
  ids = np.random.default_rng(seed).integers(2, 50, (len(LENGTHS), T))
  ids[np.arange(T)[None, :] >= LENGTHS[:, None]] = 0
  return jnp.asarray(ids, jnp.int32)


def padded_series(seed=0):
  x = np.random.default_rng(seed).normal(size=(len(LENGTHS), T, 3))
  x[np.arange(T)[None, :] >= LENGTHS[:, None]] = 9.0  # junk, not zeros
  return jnp.asarray(x, jnp.float32)


# One case in the fast tier; the other eleven in the full one.
CASES = [
  (r, c, t)
  if (r, c, t) == ('mean', 'lstm', True)
  else pytest.param(r, c, t, marks=pytest.mark.slow)
  for r in sequence.READOUTS
  for c in ('lstm', 'gru')
  for t in (True, False)
]


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
@pytest.mark.parametrize('readout,cell,text', CASES)
def test_each_sequence_classified_as_when_alone(readout, cell, text):
  model = sequence.SequenceClassifier(
    num_classes=3,
    vocab_size=50 if text else 0,
    embed_size=8,
    cell=cell,
    hidden_size=16,
    num_layers=2,
    readout=readout,
  )
  x = padded_ids() if text else padded_series()
  variables = model.init(jax.random.key(0), x, lengths=LENGTHS)
  batch = model.apply(variables, x, lengths=LENGTHS)
  for b, n in enumerate(LENGTHS):
    alone = model.apply(variables, x[b : b + 1, :n])
    np.testing.assert_allclose(batch[b], alone[0], atol=3e-6)


def test_mean_and_max_readouts_skip_padding():
  outputs = jnp.asarray(
    np.random.default_rng(1).normal(size=(5, 2, 4)), jnp.float32
  )
  lengths = jnp.array([3, 5])
  outputs = outputs.at[3:, 0].set(0.0)  # layers zero their padding
  mean = sequence.masked_readout(outputs, None, lengths, 'mean')
  np.testing.assert_allclose(mean[0], outputs[:3, 0].mean(0), rtol=1e-6)
  np.testing.assert_allclose(mean[1], outputs[:, 1].mean(0), rtol=1e-6)
  high = sequence.masked_readout(outputs, None, lengths, 'max')
  np.testing.assert_allclose(high[0], outputs[:3, 0].max(0))


def test_unknown_readout_is_one_line():
  model = sequence.SequenceClassifier(num_classes=2, readout='first')
  with pytest.raises(ValueError, match="unknown readout 'first'"):
    model.init(jax.random.key(0), jnp.zeros((1, 3, 2)))
