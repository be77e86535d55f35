"""Offline clustering of the whole training set (DeepCluster, ODC's initial labels), in JAX over the Mesh.

The features are a global [N, D] array whose rows are split over all devices of the mesh (any row order; padding
rows carry valid=False). Every pass over the rows runs per device on its own rows (`jax.shard_map`) in chunks, so
the [N, K] distances never exist at once (ImageNet: 1.28M x 10,000), and the per-cluster sums and counts are
all-reduced (`psum`) over the mesh: 8 devices compute what 1 device does, up to the order of float additions.

- `pca_whiten`: faiss' PCAMatrix(eigen_power=-0.5) as DeepCluster's `preprocess_features` uses it: centre, project
  on the top `dim` eigenvectors of the covariance, scale each by eigenvalue^-1/2, then L2-normalize the rows.
- `kmeans`: Lloyd iterations with squared Euclidean distance (faiss' `Clustering` with an L2 index, scikit-learn's
  `KMeans(algorithm='lloyd')`), initial centroids drawn from the rows; an empty cluster is re-seeded by splitting a
  large one (faiss: copy its centroid, perturb the two copies by (1 +- 1/1024) in alternating coordinates), the
  largest clusters first.
- `balanced_indices`: DeepCluster's uniform sampling over pseudo-classes (MMSelfSup's DeepClusterSampler).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jssl.train.sharding import BATCH_AXES

# Clustering in full float32: XLA:GPU would otherwise run these products in TF32 (10-bit mantissas), which moves
# covariances, near-tie assignments and centroids; the cost is small next to an epoch of training.
_dot = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)

SPLIT_EPS = 1. / 1024  # faiss' perturbation when an empty cluster takes half of a large one


def row_sharding(mesh):
  return NamedSharding(mesh, P(BATCH_AXES, None))


def _rows(mesh, fn, in_specs, out_specs):
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs)


def _chunks(x, valid, chunk):
  """A device's rows [n, D] -> [n / c, c, D] chunks (c = min(chunk, n)), padded locally with invalid rows."""
  n = x.shape[0]
  c = min(chunk, n)
  pad = -n % c
  x, valid = jnp.pad(x, ((0, pad), (0, 0))), jnp.pad(valid, (0, pad))
  return x.reshape(-1, c, x.shape[1]), valid.reshape(-1, c)


def pad_rows(x, valid, num_devices):
  """Pads the rows to a multiple of the device count (padding rows are invalid)."""
  pad = -x.shape[0] % num_devices
  return jnp.pad(x, ((0, pad), (0, 0))), jnp.pad(valid, (0, pad))


@functools.partial(jax.jit, static_argnames=('dim',))
def pca_whiten(x, valid, dim: int):
  """DeepCluster's preprocessing: PCA to `dim` with whitening (eigenvalue^-1/2), then row L2 normalization.
  Invalid rows come out as 0. Sign of each principal axis is arbitrary (as in faiss); Euclidean k-means does not
  depend on it."""
  w = valid.astype(x.dtype)[:, None]
  n = jnp.sum(w)
  mean = jnp.sum(x * w, axis=0) / n
  xc = (x - mean) * w
  cov = _dot(xc.T, xc) / n
  eigenvalues, eigenvectors = jnp.linalg.eigh(cov)  # ascending
  top = eigenvectors[:, ::-1][:, :dim]
  scale = jnp.maximum(eigenvalues[::-1][:dim], jnp.finfo(x.dtype).tiny) ** -0.5
  y = _dot(xc, top) * scale
  return y / (jnp.linalg.norm(y, axis=1, keepdims=True) + 1e-10) * w


def _assign_chunk(x, centroids):
  """Nearest centroid by squared Euclidean distance: argmin |c|^2 - 2 x.c (|x|^2 is common to a row)."""
  scores = jnp.sum(centroids * centroids, axis=1)[None, :] - 2. * _dot(x, centroids.T)
  labels = jnp.argmin(scores, axis=1).astype(jnp.int32)
  dist = jnp.take_along_axis(scores, labels[:, None], axis=1)[:, 0] + jnp.sum(x * x, axis=1)
  return labels, dist


def assign(x, valid, centroids, mesh, chunk: int = 16384):
  """(labels [N] int32, squared distance to the centroid [N]) for row-sharded x; invalid rows get label -1."""
  def local(x, valid, centroids):
    labels, dist = jax.lax.map(lambda xc: _assign_chunk(xc, centroids), _chunks(x, valid, chunk)[0])
    labels, dist = labels.reshape(-1)[:x.shape[0]], dist.reshape(-1)[:x.shape[0]]
    return jnp.where(valid, labels, -1), jnp.where(valid, dist, 0.)
  return _rows(mesh, local, (P(BATCH_AXES, None), P(BATCH_AXES), P()), (P(BATCH_AXES), P(BATCH_AXES)))(
      x, valid, centroids)


def _cluster_stats(x, valid, centroids, mesh, chunk):
  """Per-cluster sums [K, D], counts [K] and the k-means objective, all-reduced over the mesh."""
  k = centroids.shape[0]

  def local(x, valid, centroids):
    def body(carry, xs):
      sums, counts, obj = carry
      xc, vc = xs
      labels, dist = _assign_chunk(xc, centroids)
      w = vc.astype(xc.dtype)
      sums = sums + jax.ops.segment_sum(xc * w[:, None], labels, num_segments=k)
      counts = counts + jax.ops.segment_sum(vc.astype(jnp.int32), labels, num_segments=k)
      return (sums, counts, obj + jnp.sum(dist * w)), None
    init = (jnp.zeros(centroids.shape, x.dtype), jnp.zeros((k,), jnp.int32), jnp.zeros((), x.dtype))
    init = jax.lax.pcast(init, BATCH_AXES, to='varying')  # the accumulators differ per device until the psum
    (sums, counts, obj), _ = jax.lax.scan(body, init, _chunks(x, valid, chunk))
    return jax.lax.psum((sums, counts, obj), BATCH_AXES)
  return _rows(mesh, local, (P(BATCH_AXES, None), P(BATCH_AXES), P()), P())(x, valid, centroids)


def split_empty(centroids, counts):
  """Re-seeds every empty cluster by splitting a large one (faiss' rule, made deterministic): the e-th empty
  cluster (by index) takes the e-th largest cluster; the two copies of its centroid are scaled by (1 + eps) and
  (1 - eps) in alternating coordinates. Assumes fewer empty clusters than non-empty ones."""
  k, d = centroids.shape
  empty = counts == 0
  rank = jnp.cumsum(empty) - 1                                  # e for the e-th empty cluster
  largest = jnp.argsort(-counts, stable=True)                   # donors, largest first
  donor = largest[jnp.clip(rank, 0, k - 1)]
  sign = jnp.where(jnp.arange(d) % 2 == 0, 1., -1.).astype(centroids.dtype)
  reseeded = jnp.where(empty[:, None], centroids[donor] * (1 + SPLIT_EPS * sign), centroids)
  # each donor's own copy moves the other way
  donor_of = jnp.full((k,), -1, jnp.int32).at[jnp.where(empty, donor, k)].set(jnp.arange(k, dtype=jnp.int32),
                                                                               mode='drop')
  return jnp.where((donor_of >= 0)[:, None], reseeded * (1 - SPLIT_EPS * sign), reseeded)


@functools.partial(jax.jit, static_argnames=('k',))
def init_centroids(rng, x, valid, k: int):
  """k distinct valid rows drawn uniformly (faiss samples its initial centroids from the data)."""
  scores = jnp.where(valid, jax.random.uniform(rng, valid.shape), -1.)
  _, idx = jax.lax.top_k(scores, k)
  return x[idx]


@functools.partial(jax.jit, static_argnames=('iterations', 'mesh', 'chunk'))
def kmeans(x, valid, centroids, iterations: int, mesh, chunk: int = 16384):
  """Lloyd's k-means from `centroids` on row-sharded x. Each iteration assigns every valid row to its nearest
  centroid, moves each centroid to the mean of its rows and re-seeds empty clusters by splitting (`split_empty`).
  Returns (labels [N] of the final centroids, -1 on invalid rows; centroids [K, D]; objective of the last
  assignment: the sum of squared distances)."""
  def body(_, cents):
    sums, counts, _ = _cluster_stats(x, valid, cents, mesh, chunk)
    new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None].astype(x.dtype), cents)
    return split_empty(new, counts)
  centroids = jax.lax.fori_loop(0, iterations, body, centroids)
  labels, dist = assign(x, valid, centroids, mesh, chunk)
  return labels, centroids, jnp.sum(dist)


def check_num_clusters(method: str, num_clusters: int, num_records: int):
  """A clustering method's config against its training set: one line naming the field at fault."""
  if num_records <= 0:
    raise ValueError(f'{method} needs the training set size (num_records > 0), got {num_records}')
  if num_clusters > num_records:
    raise ValueError(f'config.model.num_clusters ({num_clusters}) exceeds the {num_records} training images')


def to_records(row_values, index, num_records: int):
  """Per-row values (rows in any order, padding rows with index -1) -> an [num_records, ...] array by record."""
  rows = jnp.where(index >= 0, index, num_records)
  out = jnp.zeros((num_records,) + row_values.shape[1:], row_values.dtype)
  return out.at[rows].set(row_values, mode='drop')


def loss_weights(labels, num_clusters: int, power: float):
  """DeepCluster's / ODC's loss re-weighting: (1 / (cluster size + 1e-10))^power, normalized to sum 1."""
  sizes = jnp.zeros((num_clusters,), jnp.float32).at[labels].add(1.)
  inv = (1. / (sizes + 1e-10)) ** power
  return inv / jnp.sum(inv)


def balanced_indices(labels, num_clusters: int, total: int, rng: np.random.Generator, replace: bool = True):
  """DeepCluster's uniform sampling over pseudo-classes (its UnifLabelSampler, MMSelfSup's DeepClusterSampler):
  every non-empty cluster contributes total // (non-empty clusters) + 1 draws (with replacement, or without it
  where the cluster is large enough and replace=False), shuffled and cut to `total`. Host-side NumPy: it decides
  the order in which the loader reads records."""
  labels = np.asarray(labels)
  order = np.argsort(labels, kind='stable')
  bounds = np.searchsorted(labels[order], np.arange(num_clusters + 1))
  members = [order[bounds[c]:bounds[c + 1]] for c in range(num_clusters)]
  members = [m for m in members if m.size]
  per_cluster = total // len(members) + 1
  indices = np.concatenate([rng.choice(m, per_cluster, replace=replace or m.size < per_cluster) for m in members])
  rng.shuffle(indices)
  return indices[:total].astype(np.int64)
