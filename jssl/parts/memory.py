"""Memory banks: one feature row per training image, addressed by the dataset index (NPID, ODC, InterCLR).

A bank is {'features': [num_records, D] float32, L2-normalized rows} and, for the clustered banks (ODC, InterCLR),
'labels' [num_records] int32 and 'centroids' [C, D] float32: MMSelfSup's SimpleMemory / ODCMemory /
InterCLRMemory `feature_bank`, `label_bank` and `centroids`. It lives in method_state (global arrays like any
other state: replicated, or row-sharded under FSDP); `batch['index']` says which rows a batch's images own.
Everything here is pure and jit-able; randomness comes from the caller's key, so under jit the draws do not depend
on the device count.

Update rule (MMSelfSup's SimpleMemory / ODCMemory / InterCLRMemory): row <- normalize((1 - m) * row +
m * normalize(feature)), `m` being the weight of the NEW feature (m = 0.5 for NPID and ODC, m = 1 replaces the row,
InterCLR); a clustered bank then labels each updated row with the centroid of largest dot product (the
reference's argmax of centroids . feature). Centroids are the mean row of each cluster, not re-normalized, as the
reference's.

Duplicate indices in one global batch (several views of one image, or a sampler drawing with replacement): every
row is updated once, from the mean of that row's normalized features in the batch. Every duplicate then writes the
same value, so the result is deterministic and independent of the device count (the reference's scatter with
duplicate indices keeps an arbitrary one of them).
"""
import functools

import jax
import jax.numpy as jnp

from jssl.losses import l2_normalize
from jssl.parts import clustering

# full float32 products (no TF32 on GPU): memory features, centroids and assignments stay exact
_dot = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)


def init(rng, num_records: int, dim: int, num_clusters: int = 0):
  """A bank of [num_records, dim] random unit vectors (normal, normalized), as the reference's initial bank; with
  num_clusters, labels by index (index mod C) and their centroids."""
  if num_records <= 0:
    raise ValueError(f'a memory bank needs the training set size (num_records > 0), got {num_records}')
  bank = {'features': l2_normalize(jax.random.normal(rng, (num_records, dim), jnp.float32))}
  if num_clusters:
    labels = jnp.arange(num_records, dtype=jnp.int32) % num_clusters
    centroids = compute_centroids(bank['features'], labels, jnp.zeros((num_clusters, dim), jnp.float32))
    bank.update(labels=labels, centroids=centroids)
  return bank


def sample_uniform(rng, shape, num_records: int, exclude=None):
  """Indices uniform in [0, num_records) drawn with replacement (the reference's AliasMethod over equal weights).

  exclude: optional int array broadcastable to `shape` (e.g. [B, 1], each row's own index): then each draw is
  uniform over the other num_records - 1 indices (NPID's ensure_neg), exactly, without rejection loops."""
  if exclude is None:
    return jax.random.randint(rng, shape, 0, num_records, dtype=jnp.int32)
  draw = jax.random.randint(rng, shape, 0, num_records - 1, dtype=jnp.int32)
  return draw + (draw >= exclude).astype(jnp.int32)


def dedup_mean(index, features):
  """Per batch row, the mean of the rows of `features` whose index equals its own ([B, D]). Rows of a duplicated
  index get identical values."""
  same = (index[:, None] == index[None, :]).astype(features.dtype)
  return _dot(same, features) / jnp.sum(same, axis=1, keepdims=True)


def momentum_update(bank, index, features, momentum):
  """bank with rows `index` <- normalize((1 - momentum) * row + momentum * normalize(features)); duplicates of an
  index use the mean of their normalized features (see the module doc). Returns (new bank, the new rows [B, D])."""
  index = index.astype(jnp.int32)
  new = dedup_mean(index, l2_normalize(jax.lax.stop_gradient(features).astype(bank.dtype)))
  rows = l2_normalize((1. - momentum) * bank[index] + momentum * new)
  return bank.at[index].set(rows), rows


def update(bank, index, features, momentum):
  """The bank after a batch's features [B, D] (rows `index`): rows momentum-updated and, in a clustered bank,
  relabelled by their most similar centroid (MMSelfSup's update_samples_memory). Returns (bank, the fraction of
  the batch whose label changed; 0 for a bank without labels)."""
  features, rows = momentum_update(bank['features'], index, features, momentum)
  if 'labels' not in bank:
    return {**bank, 'features': features}, jnp.zeros((), jnp.float32)
  index = index.astype(jnp.int32)
  new_labels = nearest_centroid(rows, bank['centroids'])
  change_ratio = jnp.mean((new_labels != bank['labels'][index]).astype(jnp.float32))
  return {**bank, 'features': features, 'labels': bank['labels'].at[index].set(new_labels)}, change_ratio


# --- clustered banks (ODC, InterCLR): labels and centroids --------------------------------------------------------

def cluster_sizes(labels, num_clusters: int):
  return jnp.zeros((num_clusters,), jnp.int32).at[labels].add(1)


def compute_centroids(bank, labels, old_centroids):
  """Mean feature of each cluster (not re-normalized, as the reference); empty clusters keep their old centroid."""
  num_clusters = old_centroids.shape[0]
  sums = jax.ops.segment_sum(bank, labels, num_segments=num_clusters)
  return clustering.cluster_means(sums, cluster_sizes(labels, num_clusters), old_centroids)


def update_centroids(bank):
  """A clustered bank with each cluster's centroid moved to its mean row (MMSelfSup's update_centroids_memory)."""
  return {**bank, 'centroids': compute_centroids(bank['features'], bank['labels'], bank['centroids'])}


def nearest_centroid(features, centroids):
  """Label of the centroid with the largest dot product (the reference's argmax of centroids . feature)."""
  return clustering.nearest(features, centroids, 'dot')[0]


def sample_same_cluster(rng, labels, query_labels):
  """For each query label, one index drawn uniformly among the bank rows carrying that label ([B] int32).

  Sorts the labels once (O(N log N)), then draws an offset inside each label's run. A label with no row gives an
  arbitrary index (callers keep clusters non-empty)."""
  order = jnp.argsort(labels, stable=True).astype(jnp.int32)
  sorted_labels = labels[order]
  start = jnp.searchsorted(sorted_labels, query_labels, side='left')
  end = jnp.searchsorted(sorted_labels, query_labels, side='right')
  u = jax.random.uniform(rng, query_labels.shape)
  offset = jnp.minimum(jnp.floor(u * (end - start)).astype(jnp.int32), jnp.maximum(end - start - 1, 0))
  return order[jnp.clip(start + offset, 0, labels.shape[0] - 1)]


# --- ODC's small-cluster handling (MMSelfSup's ODCMemory.deal_with_small_clusters) ---------------------------------

def member_centroid(bank, member, old):
  """Mean bank row of the rows where `member` is True (`old` if there are none)."""
  count = jnp.sum(member)
  total = jnp.sum(jnp.where(member[:, None], bank, 0.), axis=0)
  return jnp.where(count > 0, total / jnp.maximum(count, 1), old)


def two_means(bank, member, iterations: int = 20):
  """Splits the rows where `member` is True in two (Lloyd, squared Euclidean: clustering.kmeans); returns the
  mask of the second part.

  Deterministic start (the reference uses scikit-learn's KMeans(2, random_state=0)): the member farthest from the
  members' mean, and the member farthest from that one. If a part comes out empty, the members split by position:
  the second half (by index) is the second part (the reference: a random half)."""
  mean = member_centroid(bank, member, jnp.zeros(bank.shape[1], bank.dtype))
  far = lambda c: jnp.argmax(jnp.where(member, jnp.sum((bank - c) ** 2, axis=1), -1.))
  first = bank[far(mean)]
  labels, _, _ = clustering.kmeans(bank, member, jnp.stack([first, bank[far(first)]]), iterations)
  part = labels == 1
  count = jnp.sum(member)
  failed = (jnp.sum(part) == 0) | (jnp.sum(part) == count)
  halves = member & (jnp.cumsum(member) - 1 >= count // 2)
  return jnp.where(failed, halves, part)


def deal_with_small_clusters(bank, labels, centroids, min_cluster: int, chunk: int = 4096):
  """ODC's small-cluster step. Clusters with fewer than `min_cluster` rows (empty ones included) are emptied: each
  of their rows moves to the most similar (dot product) centroid among the other clusters. Then, one after the
  other in index order, each of them takes the second half of a 2-means split of the currently largest cluster,
  and the centroids of both are recomputed. Returns (labels, centroids)."""
  num_clusters = centroids.shape[0]
  small = cluster_sizes(labels, num_clusters) < min_cluster
  allowed = jnp.where(small, -jnp.inf, 0.)
  chunk = min(chunk, labels.shape[0])

  def still_small(labels):
    return jnp.any(small[labels])

  def move_some(labels):  # up to `chunk` rows of small clusters per pass (only they pay for the similarities)
    in_small = small[labels]
    _, rows = jax.lax.top_k(in_small.astype(jnp.float32), chunk)
    target = jnp.argmax(_dot(bank[rows], centroids.T) + allowed, axis=1).astype(labels.dtype)
    return labels.at[rows].set(jnp.where(in_small[rows], target, labels[rows]))
  labels = jax.lax.while_loop(still_small, move_some, labels)

  empties = jnp.nonzero(small, size=num_clusters, fill_value=-1)[0]

  def redirect(carry):
    i, labels, centroids = carry
    e = empties[i]
    largest = jnp.argmax(cluster_sizes(labels, num_clusters))
    part = two_means(bank, labels == largest)
    labels = jnp.where(part, e, labels).astype(labels.dtype)
    centroids = centroids.at[largest].set(member_centroid(bank, labels == largest, centroids[largest]))
    centroids = centroids.at[e].set(member_centroid(bank, labels == e, centroids[e]))
    return i + 1, labels, centroids
  _, labels, centroids = jax.lax.while_loop(lambda c: c[0] < jnp.sum(small), redirect, (0, labels, centroids))
  return labels, centroids
