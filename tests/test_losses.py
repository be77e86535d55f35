import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl import losses


def numpy_nt_xent(z1, z2, t):
  """SimCLR's loss written out: for every anchor, -log softmax of its positive among the 2N - 1 others."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  n = len(z1)
  total = 0.
  for i in range(2 * n):
    pos = (i + n) % (2 * n)
    sims = np.array([z[i] @ z[j] / t for j in range(2 * n) if j != i])
    others = [j for j in range(2 * n) if j != i]
    total += -(z[i] @ z[pos] / t) + np.log(np.exp(sims).sum())
    assert pos in others
  return total / (2 * n)


def test_nt_xent_matches_numpy():
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
  for t in (0.1, 0.5):
    np.testing.assert_allclose(losses.nt_xent(z1, z2, t), numpy_nt_xent(z1, z2, t), rtol=1e-5)


def test_nt_xent_lower_for_aligned_views():
  rng = np.random.default_rng(1)
  z = rng.normal(size=(8, 16))
  assert losses.nt_xent(z, z + 0.01 * rng.normal(size=z.shape), 0.1) < losses.nt_xent(z, rng.normal(size=z.shape), 0.1)


def test_masked_mse_only_counts_masked_positions():
  rng = np.random.default_rng(2)
  pred, target = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 4, 3))
  mask = np.array([[1, 0, 0, 1], [0, 1, 0, 0]], np.float32)
  expected = np.mean([np.mean((pred[b, i] - target[b, i]) ** 2) for b, i in [(0, 0), (0, 3), (1, 1)]])
  np.testing.assert_allclose(losses.masked_mse(pred, target, mask), expected, rtol=1e-6)
  pred2 = pred.copy()
  pred2[0, 1] += 100.  # a visible position: no effect
  np.testing.assert_allclose(losses.masked_mse(pred2, target, mask), expected, rtol=1e-6)


def _log_softmax(x):
  x = x - x.max(axis=1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def test_info_nce_matches_numpy():
  rng = np.random.default_rng(0)
  q, k = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
  queue = rng.normal(size=(10, 5))
  queue /= np.linalg.norm(queue, axis=1, keepdims=True)
  qn = q / np.linalg.norm(q, axis=1, keepdims=True)
  kn = k / np.linalg.norm(k, axis=1, keepdims=True)
  logits = np.concatenate([(qn * kn).sum(1, keepdims=True), qn @ queue.T], axis=1) / 0.2
  expected = -_log_softmax(logits)[:, 0].mean()
  np.testing.assert_allclose(losses.info_nce(jnp.asarray(q), jnp.asarray(k), jnp.asarray(queue), 0.2), expected,
                             rtol=1e-5)


def test_cosine_losses_match_numpy_and_stop_the_target_gradient():
  rng = np.random.default_rng(1)
  p, z = rng.normal(size=(5, 7)).astype(np.float32), rng.normal(size=(5, 7)).astype(np.float32)
  cos = (p * z).sum(1) / np.linalg.norm(p, axis=1) / np.linalg.norm(z, axis=1)
  np.testing.assert_allclose(losses.cosine_similarity_loss(p, z), np.mean(2 - 2 * cos), rtol=1e-5)
  np.testing.assert_allclose(losses.negative_cosine_similarity(p, z), -np.mean(cos), rtol=1e-5)
  for fn in (losses.cosine_similarity_loss, losses.negative_cosine_similarity):
    assert np.all(jax.grad(lambda t: fn(jnp.asarray(p), t))(jnp.asarray(z)) == 0)


def test_weighted_cross_entropy_matches_torch():
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(1)
  logits, labels = rng.normal(size=(7, 5)).astype(np.float32), rng.integers(0, 5, 7)
  weight = rng.random(5).astype(np.float32)
  for w in (None, weight):
    ref = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels),
                                            weight=None if w is None else torch.from_numpy(w))
    got = losses.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                        None if w is None else jnp.asarray(w))
    np.testing.assert_allclose(got, ref.item(), rtol=1e-6)
