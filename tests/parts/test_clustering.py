"""jssl.parts.clustering against scikit-learn (k-means), NumPy (PCA whitening, splitting) and across device counts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl.parts import clustering
from jssl.train import sharding
from tests.parts.test_memory import unit


def blobs(n=600, d=8, k=6, seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.normal(0, 4, (k, d))
  x = centers[rng.integers(0, k, n)] + rng.normal(0, 1, (n, d))
  return x.astype(np.float32)


def one_device_mesh():
  return sharding.make_mesh(devices=jax.devices()[:1])


def test_kmeans_matches_scikit_learn_from_the_same_initial_centroids():
  from sklearn.cluster import KMeans
  x = blobs()
  init = x[[0, 50, 100, 150, 200, 250]]
  for iterations in (1, 3, 20):   # chunks of 128 rows do not divide 600: the local padding must not count
    ref = KMeans(n_clusters=6, init=init, n_init=1, max_iter=iterations, tol=0., algorithm='lloyd').fit(x)
    # 40 invalid rows far away (padding) must not move any centroid
    xp = jnp.asarray(np.concatenate([x, np.full((40, 8), 50., np.float32)]))
    valid = jnp.arange(640) < 600
    labels, cents, obj = clustering.kmeans(xp, valid, jnp.asarray(init), iterations, one_device_mesh(), chunk=128)
    np.testing.assert_array_equal(np.asarray(labels)[:600], ref.labels_, err_msg=str(iterations))
    assert (np.asarray(labels)[600:] == -1).all()
    np.testing.assert_allclose(cents, ref.cluster_centers_, atol=1e-5, err_msg=str(iterations))
    np.testing.assert_allclose(obj, ref.inertia_, rtol=1e-5)


def test_empty_clusters_are_reseeded_by_splitting_the_largest():
  # 3 tight groups of sizes 5 / 3 / 2; centroid 3 starts far from everything and stays empty after assignment
  x = np.array([[1, 1]] * 5 + [[10, 0]] * 3 + [[0, 10]] * 2, np.float32)
  x[:5, 0] += 0.1 * np.arange(5)          # group 0 spread along the first coordinate
  init = np.array([[1, 1], [10, 0], [0, 10], [100, 100]], np.float32)
  xp, valid = jnp.asarray(x), jnp.ones(10, bool)
  counts = np.bincount(np.asarray(clustering.assign(xp, valid, jnp.asarray(init), one_device_mesh())[0]),
                       minlength=4)
  assert counts.tolist() == [5, 3, 2, 0]
  split = np.asarray(clustering.split_empty(jnp.asarray(init), jnp.asarray(counts)))
  eps = clustering.SPLIT_EPS
  np.testing.assert_allclose(split[3], init[0] * [1 + eps, 1 - eps])   # the largest cluster's centroid, perturbed
  np.testing.assert_allclose(split[0], init[0] * [1 - eps, 1 + eps])   # and its own copy the other way
  np.testing.assert_allclose(split[1:3], init[1:3])
  # one Lloyd iteration: cluster 0's points then divide between centroid 0 and centroid 3
  labels, cents, _ = clustering.kmeans(xp, valid, jnp.asarray(init), 1, one_device_mesh())
  assert np.bincount(np.asarray(labels), minlength=4).min() > 0


def test_pca_whiten_matches_numpy():
  x = blobs(n=300, d=10, k=4, seed=1) @ np.random.default_rng(2).normal(size=(10, 10)).astype(np.float32)
  valid = np.ones(300, bool)
  valid[-20:] = False                     # padding rows: ignored by the statistics, zero on output
  y = np.asarray(clustering.pca_whiten(jnp.asarray(x), jnp.asarray(valid), dim=4))
  xv = x[valid].astype(np.float64)
  xc = xv - xv.mean(0)
  w, v = np.linalg.eigh(xc.T @ xc / len(xv))
  ref = xc @ v[:, ::-1][:, :4] / np.sqrt(w[::-1][:4])
  ref /= np.linalg.norm(ref, axis=1, keepdims=True)
  got = y[valid]
  signs = np.sign(np.sum(got * ref, axis=0))   # each principal axis is defined up to its sign
  np.testing.assert_allclose(got * signs, ref, atol=2e-4)
  assert (y[~valid] == 0).all()


def test_balanced_indices_sample_every_cluster_equally():
  labels = np.array([0] * 90 + [1] * 8 + [2] * 2)
  idx = clustering.balanced_indices(labels, 4, 100, np.random.default_rng(0))   # cluster 3 is empty
  assert idx.shape == (100,)
  counts = np.bincount(labels[idx], minlength=4)
  # 3 non-empty clusters x (100 // 3 + 1 = 34) draws, shuffled, cut to 100: each cluster keeps 32..34
  assert counts[3] == 0 and counts[:3].min() >= 32 and counts.max() <= 34
  without = clustering.balanced_indices(labels, 4, 100, np.random.default_rng(0), replace=False)
  assert len(set(without[labels[without] == 0])) == np.sum(labels[without] == 0)   # cluster 0 (90) is big enough


def test_dot_kmeans_finds_separated_clusters_and_reseeds_empty_ones():
  """metric='dot' (InterCLR's re-clustering of its unit-norm bank), without a mesh, as inside a train step."""
  rng = np.random.default_rng(3)
  centers = unit(rng.normal(size=(4, 8)))
  truth = np.repeat(np.arange(4), 25)
  bank = unit(centers[truth] + 0.05 * rng.normal(size=(100, 8))).astype(np.float32)
  # start from two copies of one center: two clusters are empty after the first assignment
  init = np.stack([centers[0], centers[0], centers[1], centers[1]]).astype(np.float32)
  labels, cents, _ = clustering.kmeans(jnp.asarray(bank), jnp.ones(100, bool), jnp.asarray(init), 10, metric='dot')
  labels = np.asarray(labels)
  assert len(np.unique(labels)) == 4
  # the clustering equals the truth up to a permutation
  for c in range(4):
    assert len(np.unique(labels[truth == c])) == 1


EIGHT_DEVICES = r'''
import jax, jax.numpy as jnp, numpy as np
from jssl.parts import clustering
from jssl.train import sharding
rng = np.random.default_rng(0)
x = (rng.normal(0, 3, (12, 16))[rng.integers(0, 12, 1000)] + rng.normal(0, 1, (1000, 16))).astype(np.float32)
out = {}
for n in (1, 8):
  mesh = sharding.make_mesh(devices=jax.devices()[:n])
  xp, valid = clustering.pad_rows(jnp.asarray(x), jnp.ones(1000, bool), n)
  xp = jax.device_put(xp, clustering.row_sharding(mesh))
  valid = jax.device_put(valid, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(sharding.BATCH_AXES)))
  y = clustering.pca_whiten(xp, valid, dim=8)
  init = clustering.init_centroids(jax.random.PRNGKey(3), y, valid, 12)
  labels, cents, obj = clustering.kmeans(y, valid, init, 10, mesh, chunk=64)
  assert n == 1 or not labels.sharding.is_fully_replicated, labels.sharding   # labels stay row-sharded
  out[n] = (np.asarray(labels)[:1000], np.asarray(cents), float(obj))
np.testing.assert_array_equal(out[1][0], out[8][0])
np.testing.assert_allclose(out[1][1], out[8][1], atol=1e-5)
np.testing.assert_allclose(out[1][2], out[8][2], rtol=1e-5)
print('ok', np.bincount(out[8][0]).tolist())
'''


@pytest.mark.slow
def test_pca_and_kmeans_on_eight_devices_match_one_device():
  from tests.conftest import run_python
  assert 'ok' in run_python(EIGHT_DEVICES, devices=8).stdout
