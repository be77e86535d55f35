"""Clustering of per-image features (DeepCluster, ODC, InterCLR), in JAX: over the mesh between epochs, or inside a
jit'd step.

The features are a global [N, D] array (any row order; padding rows carry valid=False). Given a mesh, its rows are
split over all devices (`row_sharding`) and every pass runs per device on its own rows (`jax.shard_map`) in chunks,
so the [N, K] distances never exist at once (ImageNet: 1.28M x 10,000), and the per-cluster sums and counts are
all-reduced (`psum`) over the mesh: 8 devices compute what 1 device does, up to the order of float additions.
Without a mesh (inside a train step, on a bank in method_state) the same chunked passes run on the global array,
partitioned by XLA as it is sharded.

- `pca_whiten`: faiss' PCAMatrix(eigen_power=-0.5) as DeepCluster's `preprocess_features` uses it: centre, project
  on the top `dim` eigenvectors of the covariance, scale each by eigenvalue^-1/2, then L2-normalize the rows.
- `kmeans`: the one k-means, Lloyd iterations from given centroids; an empty cluster is re-seeded by splitting a
  large one (faiss: copy its centroid, perturb the two copies by (1 +- 1/1024) in alternating coordinates), the
  largest clusters first. Two assignment rules (`nearest`): metric='l2', squared Euclidean (faiss' `Clustering`
  with an L2 index, scikit-learn's `KMeans(algorithm='lloyd')`: DeepCluster, ODC's initial clustering and its
  2-means splits), and metric='dot', the largest dot product (InterCLR's re-clustering of its bank: the rule by
  which the bank's online labels follow the centroids, MMSelfSup's `argmax(centroids . feature)`, so that labels
  from k-means and from the online updates agree).
- `balanced_indices`: DeepCluster's uniform sampling over pseudo-classes (MMSelfSup's DeepClusterSampler).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

# Clustering in full float32: XLA:GPU would otherwise run these products in TF32 (10-bit mantissas), which moves
# covariances, near-tie assignments and centroids; the cost is small next to an epoch of training.
_dot = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)

SPLIT_EPS = 1. / 1024  # faiss' perturbation when an empty cluster takes half of a large one
METRICS = ('l2', 'dot')


def row_sharding(mesh):
  """Rows split over every device of the mesh, columns whole."""
  return NamedSharding(mesh, P(mesh.axis_names, None))


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


def nearest(x, centroids, metric: str = 'l2'):
  """(label [n] int32 of the nearest centroid, distance to it [n]) for rows x [n, D]: 'l2' the squared Euclidean
  distance (argmin |c|^2 - 2 x.c, |x|^2 being common to a row), 'dot' the largest dot product (distance -x.c)."""
  if metric == 'dot':
    sims = _dot(x, centroids.T)
    return jnp.argmax(sims, axis=1).astype(jnp.int32), -jnp.max(sims, axis=1)
  scores = jnp.sum(centroids * centroids, axis=1)[None, :] - 2. * _dot(x, centroids.T)
  labels = jnp.argmin(scores, axis=1).astype(jnp.int32)
  dist = jnp.take_along_axis(scores, labels[:, None], axis=1)[:, 0] + jnp.sum(x * x, axis=1)
  return labels, dist


def assign(x, valid, centroids, mesh=None, chunk: int = 16384, metric: str = 'l2'):
  """(labels [N] int32, distance to the centroid [N]) of the rows of x; invalid rows get label -1."""
  def local(x, valid, centroids):
    labels, dist = jax.lax.map(lambda xc: nearest(xc, centroids, metric), _chunks(x, valid, chunk)[0])
    labels, dist = labels.reshape(-1)[:x.shape[0]], dist.reshape(-1)[:x.shape[0]]
    return jnp.where(valid, labels, -1), jnp.where(valid, dist, 0.)
  if mesh is None:
    return local(x, valid, centroids)
  rows = mesh.axis_names
  return jax.shard_map(local, mesh=mesh, in_specs=(P(rows, None), P(rows), P()), out_specs=(P(rows), P(rows)))(
      x, valid, centroids)


def cluster_means(sums, counts, old):
  """Each cluster's mean from its feature sums [K, D] and sizes [K]; an empty cluster keeps its `old` centroid."""
  return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None].astype(sums.dtype), old)


def _cluster_stats(x, valid, centroids, mesh, chunk, metric):
  """Per-cluster sums [K, D], counts [K] and the k-means objective, all-reduced over the mesh."""
  k = centroids.shape[0]

  def local(x, valid, centroids):
    def body(carry, xs):
      sums, counts, obj = carry
      xc, vc = xs
      labels, dist = nearest(xc, centroids, metric)
      w = vc.astype(xc.dtype)
      sums = sums + jax.ops.segment_sum(xc * w[:, None], labels, num_segments=k)
      counts = counts + jax.ops.segment_sum(vc.astype(jnp.int32), labels, num_segments=k)
      return (sums, counts, obj + jnp.sum(dist * w)), None
    init = (jnp.zeros(centroids.shape, x.dtype), jnp.zeros((k,), jnp.int32), jnp.zeros((), x.dtype))
    if mesh is not None:  # the accumulators differ per device until the psum
      init = jax.lax.pcast(init, mesh.axis_names, to='varying')
    (sums, counts, obj), _ = jax.lax.scan(body, init, _chunks(x, valid, chunk))
    return (sums, counts, obj) if mesh is None else jax.lax.psum((sums, counts, obj), mesh.axis_names)
  if mesh is None:
    return local(x, valid, centroids)
  rows = mesh.axis_names
  return jax.shard_map(local, mesh=mesh, in_specs=(P(rows, None), P(rows), P()), out_specs=P())(x, valid, centroids)


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


@functools.partial(jax.jit, static_argnames=('iterations', 'mesh', 'chunk', 'metric'))
def kmeans(x, valid, centroids, iterations: int, mesh=None, chunk: int = 16384, metric: str = 'l2'):
  """Lloyd's k-means from `centroids` on the valid rows of x (row-sharded over `mesh`, or any global array
  without one). Each iteration assigns every valid row to its nearest centroid by `metric` ('l2' or 'dot'),
  moves each centroid to the mean of its rows and re-seeds empty clusters by splitting (`split_empty`).
  Returns (labels [N] of the final centroids, -1 on invalid rows; centroids [K, D]; objective of the last
  assignment: the sum of the distances, for 'dot' of the negated dot products)."""
  if metric not in METRICS:
    raise ValueError(f"kmeans: unknown metric '{metric}'; valid: {', '.join(METRICS)}")

  def body(_, cents):
    sums, counts, _ = _cluster_stats(x, valid, cents, mesh, chunk, metric)
    return split_empty(cluster_means(sums, counts, cents), counts)
  centroids = jax.lax.fori_loop(0, iterations, body, centroids)
  labels, dist = assign(x, valid, centroids, mesh, chunk, metric)
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
