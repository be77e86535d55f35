"""The memory-bank pieces (jssl/parts/memory.py) against NumPy: the momentum update with duplicate indices, uniform
sampling, cluster centroids, same-cluster sampling."""
import jax
import jax.numpy as jnp
import numpy as np

from jssl.parts import memory


def unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def numpy_bank_update(bank, index, features, momentum):
  """row <- normalize((1 - m) row + m f) for each distinct index, f the mean of its normalized batch features."""
  bank = np.array(bank, np.float64)
  f = unit(features)
  for i in np.unique(index):
    mean = f[index == i].mean(0)
    bank[i] = unit((1 - momentum) * bank[i] + momentum * mean)
  return bank


def test_memory_update_equations_and_duplicates():
  rng = np.random.default_rng(1)
  bank = rng.normal(size=(10, 4)).astype(np.float32)
  bank /= np.linalg.norm(bank, axis=1, keepdims=True)
  index = np.array([2, 7, 2, 2, 9])
  feats = rng.normal(size=(5, 4)).astype(np.float32) * 3
  for m in (0.5, 1.0, 0.2):
    got, rows = memory.momentum_update(jnp.asarray(bank), jnp.asarray(index), jnp.asarray(feats), m)
    want = numpy_bank_update(bank, index, feats, m)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rows, want[index], rtol=1e-5, atol=1e-6)
  # momentum 1 replaces the row by the normalized feature (InterCLR's bank); row 2 by the mean of its three
  got, _ = memory.momentum_update(jnp.asarray(bank), jnp.asarray(index), jnp.asarray(feats), 1.)
  unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
  np.testing.assert_allclose(got[7], unit[1], rtol=1e-5)
  mean2 = unit[[0, 2, 3]].mean(0)
  np.testing.assert_allclose(got[2], mean2 / np.linalg.norm(mean2), rtol=1e-5)


def test_negative_sampling_is_uniform_with_replacement():
  idx = np.asarray(memory.sample_uniform(jax.random.key(0), (50, 2000), 10))
  counts = np.bincount(idx.ravel(), minlength=10)
  assert idx.min() == 0 and idx.max() == 9
  np.testing.assert_allclose(counts / idx.size, 0.1, atol=0.005)
  # ensure_neg: uniform over the other rows, never the image's own
  own = jnp.arange(50)[:, None] % 10
  idx = np.asarray(memory.sample_uniform(jax.random.key(1), (50, 2000), 10, exclude=own))
  assert not (idx == np.asarray(own)).any()
  for r in (0, 13):
    counts = np.bincount(idx[r], minlength=10)
    assert counts[r % 10] == 0 and np.all(np.abs(counts[np.arange(10) != r % 10] / 2000 - 1 / 9) < 0.03)
def test_centroids_and_nearest_centroid():
  rng = np.random.default_rng(2)
  bank = unit(rng.normal(size=(30, 5))).astype(np.float32)
  labels = rng.integers(0, 4, 30).astype(np.int32)
  labels[labels == 3] = 2  # cluster 3 empty: keeps its old centroid
  old = rng.normal(size=(4, 5)).astype(np.float32)
  got = np.asarray(memory.compute_centroids(jnp.asarray(bank), jnp.asarray(labels), jnp.asarray(old)))
  for c in range(3):
    np.testing.assert_allclose(got[c], bank[labels == c].mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got[3], old[3])
  np.testing.assert_array_equal(memory.nearest_centroid(jnp.asarray(bank), jnp.asarray(got)),
                                np.argmax(bank @ got.T, axis=1))
  np.testing.assert_array_equal(memory.cluster_sizes(jnp.asarray(labels), 4), np.bincount(labels, minlength=4))


def test_sample_same_cluster_is_uniform_within_the_cluster():
  labels = jnp.asarray(np.array([2, 0, 2, 1, 2, 0, 2, 1, 1, 2], np.int32))
  query = jnp.asarray(np.repeat(np.array([0, 1, 2], np.int32), 3000))
  got = np.asarray(memory.sample_same_cluster(jax.random.key(0), labels, query))
  np.testing.assert_array_equal(np.asarray(labels)[got], np.asarray(query))
  for c, members in [(0, [1, 5]), (1, [3, 7, 8]), (2, [0, 2, 4, 6, 9])]:
    counts = np.bincount(got[np.asarray(query) == c], minlength=10)[members]
    np.testing.assert_allclose(counts / 3000, 1 / len(members), atol=0.03)


def test_clustered_bank_init_and_update_follow_the_centroids():
  bank = memory.init(jax.random.key(0), 10, 4, num_clusters=3)
  assert sorted(bank) == ['centroids', 'features', 'labels']
  np.testing.assert_allclose(np.linalg.norm(bank['features'], axis=1), 1., rtol=1e-6)
  np.testing.assert_array_equal(bank['labels'], np.arange(10) % 3)
  features = np.asarray(bank['features'], np.float64)
  for c in range(3):
    np.testing.assert_allclose(bank['centroids'][c], features[np.arange(10) % 3 == c].mean(0), rtol=1e-5, atol=1e-6)
  # the rows move (momentum 1: replaced), their labels follow the most similar centroid, the change is counted
  index = jnp.asarray([1, 4, 7])
  new_features = np.asarray(bank['centroids'])[[2, 2, 0]] * 3.
  new, change_ratio = memory.update(bank, index, jnp.asarray(new_features, jnp.float32), 1.)
  np.testing.assert_allclose(new['features'][np.asarray(index)], unit(new_features), rtol=1e-5)
  want = np.argmax(unit(new_features) @ np.asarray(bank['centroids'], np.float64).T, axis=1)
  np.testing.assert_array_equal(new['labels'][np.asarray(index)], want)
  np.testing.assert_allclose(change_ratio, np.mean(want != np.asarray([1, 1, 1])))
  assert float(change_ratio) > 0
  moved = memory.update_centroids(new)
  np.testing.assert_allclose(moved['centroids'], memory.compute_centroids(new['features'], new['labels'],
                                                                          new['centroids']), rtol=1e-6)
  # a plain bank (NPID): the rows only
  plain, ratio = memory.update({'features': bank['features']}, index, jnp.asarray(new_features, jnp.float32), 1.)
  assert sorted(plain) == ['features'] and float(ratio) == 0.
