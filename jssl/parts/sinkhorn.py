"""Sinkhorn-Knopp: the equipartitioned soft assignment of samples to prototypes (SwAV's codes; the same iteration
centres DINOv2's teacher). Over global arrays, so the sums are the all-reduces of the paper's distributed version."""
import jax
import jax.numpy as jnp


def sinkhorn_knopp(scores, num_iters=3, epsilon=0.05):
  """SwAV's codes: the equipartitioned soft assignment of N samples to K prototypes, [N, K] rows summing to 1.

  Q = exp(scores / epsilon)^T [K, N], normalized to sum 1, then `num_iters` rounds of: rows to sum 1/K, columns to
  sum 1/N; finally scaled by N. The sums run over the whole (global) array: under jit over global arrays that is
  the all-reduce of the paper's `distributed_sinkhorn`. As the reference, 1e-12 is added to Q when a row sum
  underflows to zero. Computed in float32, without gradient.
  """
  q = jnp.exp(jax.lax.stop_gradient(scores).astype(jnp.float32) / epsilon).T
  num_prototypes, num_samples = q.shape
  q = q / jnp.sum(q)
  for _ in range(num_iters):
    q = jnp.where(jnp.any(jnp.sum(q, axis=1) == 0), q + 1e-12, q)
    q = q / jnp.sum(q, axis=1, keepdims=True) / num_prototypes
    q = q / jnp.sum(q, axis=0, keepdims=True) / num_samples
  return (q * num_samples).T
