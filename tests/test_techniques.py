"""Label smoothing, mixup/cutmix, weight EMA and flip TTA against numpy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcls.ops import techniques

K = 10


def logits_and_labels(seed, batch=16):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(batch, K)).astype(np.float32) * 3
  labels = rng.integers(0, K, size=batch)
  return jnp.asarray(logits), jnp.asarray(labels)


def log_softmax64(logits):
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def batch_of(seed, batch=8, shape=(28, 28, 1)):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(batch, *shape)).astype(np.float32)
  labels = np.eye(K, dtype=np.float32)[rng.integers(0, K, size=batch)]
  return jnp.asarray(images), jnp.asarray(labels)


# Label smoothing.


def test_smoothing_zero_is_plain_cross_entropy():
  logits, labels = logits_and_labels(0)
  plain = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  np.testing.assert_array_equal(
    techniques.cross_entropy_smoothed(logits, labels, 0.0), plain
  )
  one_hot = jax.nn.one_hot(labels, K)
  np.testing.assert_allclose(
    techniques.cross_entropy_smoothed(logits, one_hot, 0.0), plain, rtol=1e-6
  )


@pytest.mark.parametrize('smoothing', [0.1, 0.3])
def test_smoothing_against_textbook_formula(smoothing):
  """Szegedy et al. 2016: q'(k) = (1 - e) [k = y] + e / K and the loss is
  -sum_k q'(k) log p(k)."""
  logits, labels = logits_and_labels(1)
  q = np.full((len(labels), K), smoothing / K)
  q[np.arange(len(labels)), np.asarray(labels)] += 1 - smoothing
  expected = -(q * log_softmax64(logits)).sum(-1)
  np.testing.assert_allclose(
    techniques.cross_entropy_smoothed(logits, labels, smoothing),
    expected,
    rtol=1e-5,
  )
  np.testing.assert_allclose(
    techniques.smooth_labels(jax.nn.one_hot(labels, K), smoothing), q, rtol=1e-6
  )


# Mixup and cutmix.


@pytest.mark.parametrize('fn', [techniques.mixup, techniques.cutmix])
def test_alpha_zero_is_identity(fn):
  images, labels = batch_of(2)
  out_images, out_labels, weight = fn(jax.random.key(0), images, labels, 0.0)
  np.testing.assert_array_equal(out_images, images)
  np.testing.assert_array_equal(out_labels, labels)
  assert weight == 1.0
  out = techniques.mixup_or_cutmix(jax.random.key(0), images, labels, 0.0, 0.0)
  np.testing.assert_array_equal(out[0], images)


@pytest.mark.parametrize('seed', range(4))
def test_mixup_is_a_convex_combination_with_the_drawn_lambda(seed):
  images, labels = batch_of(3)
  rng = jax.random.key(seed)
  mixup = jax.jit(techniques.mixup, static_argnums=3)
  out_images, out_labels, lam = mixup(rng, images, labels, 0.4)
  lam = float(lam)
  assert 0.5 <= lam <= 1.0
  # The partner of example i is example i-1 (the batch rolled by one).
  partner = np.roll(np.arange(len(images)), 1)
  x, y = np.asarray(images), np.asarray(labels)
  np.testing.assert_allclose(
    out_images, lam * x + (1 - lam) * x[partner], rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(
    out_labels, lam * y + (1 - lam) * y[partner], rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(np.sum(out_labels, -1), 1.0, rtol=1e-6)
  # A function of the key: the same key gives the same batch (exact resume).
  again = mixup(rng, images, labels, 0.4)
  np.testing.assert_array_equal(again[0], out_images)


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
def test_mixup_lambda_follows_folded_beta():
  images, labels = batch_of(4, batch=2, shape=(2, 2, 1))
  keys = jax.random.split(jax.random.key(0), 400)
  lams = np.asarray(
    jax.vmap(lambda k: techniques.mixup(k, images, labels, 1.0)[2])(keys)
  )
  # Beta(1, 1) is uniform on [0, 1]; max(lam, 1 - lam) is uniform on [0.5, 1].
  assert lams.min() >= 0.5 and lams.max() <= 1.0
  assert abs(lams.mean() - 0.75) < 0.03
  assert abs(np.median(lams) - 0.75) < 0.04


@pytest.mark.parametrize('seed', range(6))
def test_cutmix_label_weight_is_the_area_kept(seed):
  batch, h, w = 4, 28, 24
  # Example i is constant i + 1, so every pixel says where it came from.
  images = jnp.broadcast_to(
    jnp.arange(1.0, batch + 1)[:, None, None, None], (batch, h, w, 1)
  )
  labels = jnp.eye(K)[jnp.arange(batch)]
  out_images, out_labels, kept = jax.jit(techniques.cutmix, static_argnums=3)(
    jax.random.key(seed), images, labels, 1.0
  )
  out = np.asarray(out_images)[..., 0]
  for i in range(batch):
    partner = (i - 1) % batch
    pasted = out[i] == partner + 1
    assert np.all(pasted | (out[i] == i + 1))
    # The pasted pixels form one rectangle, the same in every image.
    rows, cols = np.nonzero(pasted)
    if rows.size:
      assert pasted.sum() == (
        (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
      )
    np.testing.assert_array_equal(pasted, out[0] == batch)
    np.testing.assert_allclose(float(kept), 1 - pasted.mean(), rtol=1e-6)
    expected = np.zeros(K)
    expected[i] += float(kept)
    expected[partner] += 1 - float(kept)
    np.testing.assert_allclose(out_labels[i], expected, rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
def test_mixup_or_cutmix_picks_one_per_batch():
  images, labels = batch_of(5)
  seen = set()
  for seed in range(12):
    rng = jax.random.key(seed)
    out = techniques.mixup_or_cutmix(rng, images, labels, 0.4, 1.0)
    _, mixup_rng, cutmix_rng = jax.random.split(rng, 3)
    a = techniques.mixup(mixup_rng, images, labels, 0.4)
    b = techniques.cutmix(cutmix_rng, images, labels, 1.0)
    if np.array_equal(out[0], a[0]):
      seen.add('mixup')
      np.testing.assert_array_equal(out[1], a[1])
    else:
      np.testing.assert_array_equal(out[0], b[0])
      np.testing.assert_array_equal(out[1], b[1])
      seen.add('cutmix')
  assert seen == {'mixup', 'cutmix'}


# EMA of the weights.


def test_ema_of_a_constant_is_that_constant():
  params = {
    'w': jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)), jnp.float32),
    'b': jnp.float32(0.1),
  }
  ema = params
  for step in range(50):
    ema = techniques.ema_update(ema, params, techniques.ema_decay(step, 0.999))
  jax.tree.map(np.testing.assert_array_equal, ema, params)


@pytest.mark.parametrize('warmup', [True, False])
def test_ema_against_numpy_loop(warmup):
  rng = np.random.default_rng(1)
  trajectory = rng.normal(size=(200, 4)).cumsum(0).astype(np.float32)
  decay = 0.98
  expected = trajectory[0].astype(np.float64)
  ema = {'w': jnp.asarray(trajectory[0])}
  update = jax.jit(techniques.ema_update)
  for step, p in enumerate(trajectory[1:]):
    d = min(decay, (1 + step) / (10 + step)) if warmup else decay
    expected = d * expected + (1 - d) * p
    ema = update(
      ema, {'w': jnp.asarray(p)}, techniques.ema_decay(step, decay, warmup)
    )
  np.testing.assert_allclose(ema['w'], expected, rtol=1e-5, atol=1e-5)


def test_ema_decay_warms_up_as_tensorflow():
  assert float(techniques.ema_decay(0, 0.999)) == pytest.approx(0.1)
  assert float(techniques.ema_decay(90, 0.999)) == pytest.approx(0.91)
  assert float(techniques.ema_decay(10**6, 0.999)) == pytest.approx(0.999)
  assert float(techniques.ema_decay(0, 0.999, warmup=False)) == pytest.approx(
    0.999
  )


# Flip test-time augmentation.


class TinyBatchNormNet(nn.Module):
  """conv -> BatchNorm -> relu -> dense: small, and not mirror-symmetric."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    return nn.Dense(K)(x.reshape((x.shape[0], -1)))


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
def test_flip_tta_is_the_average_of_the_two_softmaxes():
  model = TinyBatchNormNet()
  apply = model.apply
  images, _ = batch_of(6, batch=4, shape=(8, 8, 1))
  variables = model.init(jax.random.key(0), images)
  _, updated = apply(
    variables, images * 2 + 1, train=True, mutable=['batch_stats']
  )
  variables = {**variables, **updated}
  plain = jax.nn.softmax(apply(variables, images))
  flipped = jax.nn.softmax(apply(variables, images[:, :, ::-1, :]))
  expected = np.log((np.asarray(plain, np.float64) + flipped) / 2)
  got = techniques.flip_tta_logits(apply, variables, images)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  assert not np.allclose(got, np.log(plain), atol=1e-3)  # the flip mattered
  # Log-probabilities: cross-entropy on them is -log of the averaged p.
  np.testing.assert_allclose(jax.nn.logsumexp(got, -1), 0.0, atol=1e-6)
