"""Sinkhorn-Knopp (jssl/parts/sinkhorn.py) against the paper's algorithm written out in NumPy and mmpretrain's
distributed_sinkhorn."""
import jax
import jax.numpy as jnp
import numpy as np
import torch

from jssl.parts.sinkhorn import sinkhorn_knopp


def numpy_sinkhorn(scores, num_iters, epsilon):
  """The paper's Algorithm (Sinkhorn-Knopp on exp(scores / eps)), written out element by element."""
  n, k = scores.shape
  q = np.exp(scores.astype(np.float64) / epsilon).T  # [K, N]
  q /= q.sum()
  for _ in range(num_iters):
    for r in range(k):
      q[r, :] /= q[r, :].sum() * k
    for c in range(n):
      q[:, c] /= q[:, c].sum() * n
  return (q * n).T


def test_sinkhorn_matches_numpy_and_mmpretrain():
  from mmpretrain.models.losses.swav_loss import distributed_sinkhorn
  rng = np.random.default_rng(0)
  scores = np.tanh(rng.normal(size=(7, 5))).astype(np.float32)  # cosine-like scores in [-1, 1]
  got = np.asarray(sinkhorn_knopp(jnp.asarray(scores), num_iters=3, epsilon=0.05))
  np.testing.assert_allclose(got, numpy_sinkhorn(scores, 3, 0.05), rtol=1e-5, atol=1e-7)
  ref = distributed_sinkhorn(torch.from_numpy(scores), 3, 1, 0.05).numpy()
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
  # codes: each sample's row sums to 1 (the last step normalizes samples); prototypes nearer equipartition
  # than the plain softmax assignment
  np.testing.assert_allclose(got.sum(1), 1., rtol=1e-5)
  softmax = np.asarray(jax.nn.softmax(jnp.asarray(scores) / 0.05, axis=1))
  assert np.abs(got.sum(0) - 7 / 5).max() < 0.5 * np.abs(softmax.sum(0) - 7 / 5).max()
  # more iterations reach the equipartition more closely; one iteration is not the answer of three
  many = np.asarray(sinkhorn_knopp(jnp.asarray(scores), num_iters=50, epsilon=0.05))
  np.testing.assert_allclose(many.sum(0), 7 / 5, rtol=1e-3)
  assert not np.allclose(np.asarray(sinkhorn_knopp(jnp.asarray(scores), num_iters=1)), got, atol=1e-3)
