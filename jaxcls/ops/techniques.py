"""Training techniques beyond the article, each a pure function.

* :func:`smooth_labels`, :func:`cross_entropy_smoothed`: label smoothing
  (Szegedy et al. 2016, "Rethinking the Inception Architecture", section 7).
* :func:`mixup` (Zhang et al. 2018), :func:`cutmix` (Yun et al. 2019) and
  :func:`mixup_or_cutmix`, as big_vision and timm implement them.
* :func:`ema_decay`, :func:`ema_update`: an exponential moving average of the
  weights (Polyak and Juditsky 1992; TF's ``ExponentialMovingAverage``).
* :func:`flip_tta_logits`, :func:`eval_logits`: test-time augmentation with
  a horizontal flip.

The random ones take an explicit key (in the train step, the step's key), so
a resumed run draws the same lambdas and boxes. Images are the normalised
float images ``(B, H, W, C)`` of the jitted step; labels for mixing are
one-hot (or already soft) ``(B, K)``.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax


def smooth_labels(labels_onehot: jax.Array, smoothing: float) -> jax.Array:
  """``(1 - smoothing) * y + smoothing / K`` (Szegedy et al. 2016).

  The uniform part goes to all ``K`` classes, the true one included, as in
  the paper and in ``optax.smooth_labels`` (which this calls), PyTorch's
  ``CrossEntropyLoss(label_smoothing=...)`` and timm.
  """
  return optax.smooth_labels(labels_onehot, smoothing)


def cross_entropy_smoothed(
  logits: jax.Array, labels: jax.Array, smoothing: float = 0.0
) -> jax.Array:
  """Per-example cross-entropy against smoothed targets.

  ``labels`` are integer class ids ``(B,)`` or target distributions
  ``(B, K)`` (e.g. from :func:`mixup`). With ``smoothing == 0`` and integer
  labels this is ``optax.softmax_cross_entropy_with_integer_labels`` itself,
  so the default path computes exactly what it did before.
  """
  if labels.ndim == logits.ndim - 1:
    if not smoothing:
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    labels = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  if smoothing:
    labels = smooth_labels(labels, smoothing)
  return optax.softmax_cross_entropy(logits, labels)


def _mix_weight(rng: jax.Array, alpha: float) -> jax.Array:
  """lambda ~ Beta(alpha, alpha), folded to ``max(lambda, 1 - lambda)``.

  The fold is big_vision's: each example keeps the larger share of itself.
  With the rolled partner the pair (i, i-1) sees the same distribution of
  mixtures either way; the fold only makes "the image at index i" the
  dominant one, which keeps the accuracy of the mixed batch meaningful.
  """
  lam = jax.random.beta(rng, alpha, alpha)
  return jnp.maximum(lam, 1.0 - lam)


def _partner(x: jax.Array) -> jax.Array:
  """The batch rolled by one (big_vision): example i is mixed with i-1.

  Unlike timm's flip, no example is paired with itself when the batch size
  is odd. Batches are shuffled each epoch, so the pairs are random.
  """
  return jnp.roll(x, shift=1, axis=0)


def mixup(
  rng: jax.Array, images: jax.Array, labels_onehot: jax.Array, alpha: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization").

  One ``lambda ~ Beta(alpha, alpha)`` for the whole batch, as big_vision's
  ``get_mixup`` and timm's default ``mode='batch'`` draw it; images and labels
  become ``lambda * x + (1 - lambda) * partner``, the partner being the batch
  rolled by one. Returns ``(images, labels, lambda)``.

  ``alpha`` is a Python float (a config field, static under jit); ``alpha ==
  0`` turns mixup off and returns the inputs unchanged with ``lambda = 1``.
  """
  if alpha <= 0:
    return images, labels_onehot, jnp.float32(1.0)
  lam = _mix_weight(rng, alpha)

  def mix(x):
    return (lam * x + (1.0 - lam) * _partner(x)).astype(x.dtype)

  return mix(images), mix(labels_onehot), lam


def cutmix(
  rng: jax.Array, images: jax.Array, labels_onehot: jax.Array, alpha: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """CutMix (Yun et al. 2019): paste a box of the partner image.

  As timm's ``rand_bbox`` with ``correct_lam=True``: ``lambda ~ Beta(alpha,
  alpha)``, a box of sides ``H * sqrt(1 - lambda)`` and ``W * sqrt(1 -
  lambda)`` (rounded down) centred at a uniform pixel and clipped to the
  image, the same box for the whole batch; the label weight is then
  corrected to the area actually kept, ``1 - box_area / (H * W)``. The box
  is a mask built from traced coordinates, so shapes stay static under jit.
  Returns ``(images, labels, weight_of_the_original)``; ``alpha == 0`` is the
  identity.
  """
  if alpha <= 0:
    return images, labels_onehot, jnp.float32(1.0)
  lam_rng, y_rng, x_rng = jax.random.split(rng, 3)
  lam = jax.random.beta(lam_rng, alpha, alpha)
  _, h, w, _ = images.shape
  cut = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(h * cut).astype(jnp.int32)
  cut_w = jnp.floor(w * cut).astype(jnp.int32)
  cy = jax.random.randint(y_rng, (), 0, h)
  cx = jax.random.randint(x_rng, (), 0, w)
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cy + cut_h // 2, 0, h)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, w), jnp.clip(cx + cut_w // 2, 0, w)
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  images = jnp.where(box[None, :, :, None], _partner(images), images)
  kept = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (h * w)
  labels = (
    kept * labels_onehot + (1.0 - kept) * _partner(labels_onehot)
  ).astype(labels_onehot.dtype)
  return images, labels, kept


def mixup_or_cutmix(
  rng: jax.Array,
  images: jax.Array,
  labels_onehot: jax.Array,
  mixup_alpha: float,
  cutmix_alpha: float,
  switch_prob: float = 0.5,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """timm's ``Mixup`` in ``mode='batch'``: with both alphas set, each batch
  gets cutmix with probability ``switch_prob``, else mixup; with one set,
  that one; with neither, the identity."""
  if mixup_alpha <= 0:
    return cutmix(rng, images, labels_onehot, cutmix_alpha)
  if cutmix_alpha <= 0:
    return mixup(rng, images, labels_onehot, mixup_alpha)
  switch_rng, mixup_rng, cutmix_rng = jax.random.split(rng, 3)
  use_cutmix = jax.random.bernoulli(switch_rng, switch_prob)
  a = mixup(mixup_rng, images, labels_onehot, mixup_alpha)
  b = cutmix(cutmix_rng, images, labels_onehot, cutmix_alpha)
  return jax.tree.map(lambda u, v: jnp.where(use_cutmix, v, u), a, b)


def ema_decay(
  step: jax.Array | int, decay: float, warmup: bool = True
) -> jax.Array:
  """The decay for update number ``step`` (0 for the first update).

  With ``warmup``, ``min(decay, (1 + step) / (10 + step))``: TF's
  ``ExponentialMovingAverage(decay, num_updates=step)``. The EMA starts as a
  copy of the initial weights (not zeros, so it needs no Adam-style bias
  correction), and early on, when a 0.999 average would mostly remember the
  random initialisation, the short effective horizon lets it follow the
  fast-moving weights; from step ~9000 on it is ``decay`` itself.
  """
  decay = jnp.float32(decay)
  if not warmup:
    return decay
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema_params: Any, params: Any, decay: jax.Array | float) -> Any:
  """``decay * ema + (1 - decay) * params``, leaf by leaf, for any pytree.

  Written ``ema - (1 - decay) * (ema - params)`` (as
  ``tf.train.ExponentialMovingAverage`` does): the same value, but a
  parameter that no longer changes gives back exactly its EMA (0 difference),
  where ``optax.incremental_update``'s two-product form can drift by an
  ulp. Pass ``{'params': ..., 'batch_stats': ...}`` to average the BatchNorm
  statistics too, as timm's ``ModelEmaV2`` does with a model's buffers.
  """
  decay = jnp.asarray(decay, jnp.float32)

  def update(ema, p):
    return (ema - (1.0 - decay) * (ema - p)).astype(ema.dtype)

  return jax.tree.map(update, ema_params, params)


def flip_tta_logits(
  apply_fn: Callable[..., jax.Array],
  variables: Any,
  images: jax.Array,
  **kwargs,
) -> jax.Array:
  """Log of the mean softmax of the images and their horizontal flips.

  Averaging probabilities (not logits) is the ensemble of the two
  predictive distributions, as torchvision's and timm's TTA do. The result is
  returned as log-probabilities so it drops into everything that takes
  logits: ``argmax`` is the averaged prediction, and the cross-entropy of it
  is ``-log`` of the averaged probability of the true class (a log-softmax
  is its own log-softmax). Both views go through ``apply_fn`` as one batch
  of ``2B``; with BatchNorm the model must run in eval mode (``train=False``,
  the default here, also passed on in ``kwargs``) so the two halves do not
  share batch statistics. Only for data whose classes survive a mirror
  (CIFAR-10, Fashion-MNIST), not digits.
  """
  kwargs.setdefault('train', False)
  both = jnp.concatenate([images, jnp.flip(images, axis=2)], axis=0)
  log_probs = jax.nn.log_softmax(apply_fn(variables, both, **kwargs), axis=-1)
  plain, flipped = jnp.split(log_probs, 2, axis=0)
  return jnp.logaddexp(plain, flipped) - jnp.log(2.0)


def eval_logits(
  apply_fn: Callable[..., jax.Array],
  variables: Any,
  images: jax.Array,
  flip_tta: bool = False,
) -> jax.Array:
  """The model's logits in eval mode, as a run validates and tests: with
  :func:`flip_tta_logits` when ``flip_tta`` (``config.flip_tta``), else
  ``apply_fn(variables, images, train=False)``. The loop's evaluation,
  ``report``/``predict`` and the exported model all score through this."""
  if flip_tta:
    return flip_tta_logits(apply_fn, variables, images)
  return apply_fn(variables, images, train=False)
