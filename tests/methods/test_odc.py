"""ODC against a hand-written NumPy version of its memory (MMSelfSup's ODCMemory + ODCHook, mmpretrain 1.2 has no
ODC): samples-memory update and label re-assignment, centroid updates, small-cluster handling; the 2-means split
against scikit-learn; the initial clustering against scikit-learn's KMeans; then 8 devices vs 1, exact resume and
the demo."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.odc import get_config
from jssl.methods import odc
from jssl.parts import clustering, memory
from jssl.train.loop import Trainer
from tests.conftest import apply_overrides

SMALL = {'backbone.kwargs.num_filters': 8, 'model.neck_hid_channels': 32, 'model.neck_out_channels': 16,
         'model.num_clusters': 12, 'model.min_cluster': 4}
SMALL_16PX = {**SMALL, 'data.views.0.size': 16, 'data.image_size': 16, 'eval.resize': 16, 'eval.crop': 16}


def normalize(x):
  return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-10)


def numpy_two_means(bank, member, iterations=20):
  idx = np.where(member)[0]
  x = bank[idx].astype(np.float64)
  a = x[np.argmax(((x - x.mean(0)) ** 2).sum(1))]
  b = x[np.argmax(((x - a) ** 2).sum(1))]
  for _ in range(iterations):
    second = ((x - b) ** 2).sum(1) < ((x - a) ** 2).sum(1)
    a = x[~second].mean(0) if (~second).any() else a
    b = x[second].mean(0) if second.any() else b
  second = ((x - b) ** 2).sum(1) < ((x - a) ** 2).sum(1)
  if second.all() or not second.any():
    second = np.arange(len(idx)) >= len(idx) // 2
  out = np.zeros(len(bank), bool)
  out[idx[second]] = True
  return out


class NumpyODCMemory:
  """ODCMemory's rules, one loop per cluster as the reference writes them."""

  def __init__(self, bank, labels, centroids, momentum, min_cluster):
    self.bank, self.labels, self.centroids = bank.astype(np.float64), labels.copy(), centroids.astype(np.float64)
    self.momentum, self.min_cluster, self.k = momentum, min_cluster, len(centroids)

  def update_samples(self, idx, feature):
    new = normalize((1 - self.momentum) * self.bank[idx] + self.momentum * normalize(feature))
    self.bank[idx] = new
    self.labels[idx] = np.argmax(self.centroids @ new.T, axis=0)

  def update_centroids(self, cinds=None):
    for c in range(self.k) if cinds is None else cinds:
      if (self.labels == c).any():
        self.centroids[c] = self.bank[self.labels == c].mean(0)

  def deal_with_small_clusters(self):
    small = np.where(np.bincount(self.labels, minlength=self.k) < self.min_cluster)[0]
    inclusion = np.setdiff1d(np.arange(self.k), small)
    for s in small:
      idx = np.where(self.labels == s)[0]
      if len(idx):
        self.labels[idx] = inclusion[np.argmax(self.centroids[inclusion] @ self.bank[idx].T, axis=0)]
    for e in small:
      largest = np.bincount(self.labels, minlength=self.k).argmax()
      self.labels[numpy_two_means(self.bank, self.labels == largest)] = e
      self.update_centroids([largest, e])


def test_two_means_splits_like_scikit_learn():
  from sklearn.cluster import KMeans
  rng = np.random.default_rng(0)
  bank = np.concatenate([rng.normal(0, .3, (30, 4)) + 2, rng.normal(0, .3, (20, 4)) - 2, rng.normal(0, 1, (10, 4))])
  member = np.arange(60) < 50                     # the first two blobs form the cluster to split
  part = np.asarray(memory.two_means(jnp.asarray(bank, jnp.float32), jnp.asarray(member)))
  ref = KMeans(n_clusters=2, random_state=0, max_iter=20, n_init=1).fit(bank[member]).labels_
  assert not part[50:].any()
  ours = part[:50]
  assert (ours == (ref == ref[-1])).all() or (ours == (ref != ref[-1])).all()
  np.testing.assert_array_equal(part, numpy_two_means(bank, member))


def test_small_clusters_match_numpy():
  rng = np.random.default_rng(1)
  k, n = 6, 80
  bank = normalize(rng.normal(size=(n, 8))).astype(np.float32)
  labels = rng.choice(k, n, p=[.4, .3, .2, .06, .04, 0.]).astype(np.int32)   # clusters 3-5 are under 6 (5 empty)
  centroids = normalize(rng.normal(size=(k, 8))).astype(np.float32)
  ref = NumpyODCMemory(bank, labels, centroids, 0.5, min_cluster=6)
  ref.deal_with_small_clusters()
  got_labels, got_centroids = jax.jit(memory.deal_with_small_clusters, static_argnums=3)(
      jnp.asarray(bank), jnp.asarray(labels), jnp.asarray(centroids), 6)
  np.testing.assert_array_equal(got_labels, ref.labels)
  np.testing.assert_allclose(got_centroids, ref.centroids, atol=1e-6)
  assert np.bincount(np.asarray(got_labels), minlength=k).min() > 0
  # a small chunk (rows of small clusters moved a few per pass) gives the same
  again, _ = memory.deal_with_small_clusters(jnp.asarray(bank), jnp.asarray(labels), jnp.asarray(centroids), 6, chunk=3)
  np.testing.assert_array_equal(again, ref.labels)


def small_method(num_records=40):
  c = get_config('demo')
  c.backbone.kwargs.num_filters = 8
  c.model.update(neck_hid_channels=32, neck_out_channels=16, num_clusters=5, min_cluster=3,
                 centroids_update_interval=2)
  return odc.Method(c, num_records=num_records)


def test_odc_step_and_hooks_match_numpy():
  method = small_method()
  rng = np.random.default_rng(2)
  images = jnp.asarray(rng.normal(size=(6, 16, 16, 3)), jnp.float32)
  index = np.array([3, 17, 5, 21, 39, 0])
  batch = {'views': (images,), 'index': jnp.asarray(index)}
  params, model_state, method_state = method.init(jax.random.key(0), batch)
  bank = normalize(rng.normal(size=(40, 16))).astype(np.float32)
  labels = (np.arange(40) % 5).astype(np.int32)
  centroids = normalize(rng.normal(size=(5, 16))).astype(np.float32)
  weight = clustering.loss_weights(jnp.asarray(labels), 5, 0.5)
  method_state = {'memory': {'features': jnp.asarray(bank), 'labels': jnp.asarray(labels),
                             'centroids': jnp.asarray(centroids)}, 'loss_weight': weight}
  step_rng = jax.random.key(3)
  loss, (metrics, _, new_state) = method.loss(params, model_state, method_state, batch, step_rng, 0)

  (feature, logits), _ = method.net.apply({'params': params, **model_state}, images, train=True,
                                          mutable=['batch_stats'], rngs={'dropout': step_rng})
  logp = np.asarray(jax.nn.log_softmax(logits), np.float64)
  w = np.asarray(weight, np.float64)[labels[index]]
  np.testing.assert_allclose(loss, -(w * logp[np.arange(6), labels[index]]).sum() / w.sum(), rtol=1e-5)
  ref = NumpyODCMemory(bank, labels, centroids, 0.5, min_cluster=3)
  ref.update_samples(index, np.asarray(feature, np.float64))
  np.testing.assert_allclose(new_state['memory']['features'], ref.bank, atol=1e-6)
  np.testing.assert_array_equal(new_state['memory']['labels'], ref.labels)
  np.testing.assert_allclose(metrics['change_ratio'], np.mean(ref.labels[index] != labels[index]))

  # after step 0 (iteration 1): no centroid update (interval 2), small clusters, weights; after step 1: centroids too
  for step in (0, 1):
    new_state = method.after_step(params, new_state, step)
    if (step + 1) % 2 == 0:
      ref.update_centroids()
    ref.deal_with_small_clusters()
    np.testing.assert_array_equal(new_state['memory']['labels'], ref.labels, err_msg=str(step))
    np.testing.assert_allclose(new_state['memory']['centroids'], ref.centroids, atol=1e-6, err_msg=str(step))
    inv = (1. / (np.bincount(ref.labels, minlength=5) + 1e-10)) ** 0.5
    np.testing.assert_allclose(new_state['loss_weight'], inv / inv.sum(), rtol=1e-5)


def test_initial_clustering_matches_scikit_learn(tmp_path):
  from sklearn.cluster import KMeans
  c = apply_overrides(get_config('demo'), SMALL_16PX)
  trainer = Trainer(c, str(tmp_path))
  state = trainer.init_state(jax.random.PRNGKey(0))
  new, summary = trainer.method.on_epoch(state, 0, trainer)
  assert 'initial k-means' in summary
  features, index = trainer.features.training_set(state, trainer.method.neck_features)
  valid = np.asarray(index) >= 0
  x = normalize(np.asarray(features, np.float64))[valid].astype(np.float32)
  init = clustering.init_centroids(jax.random.fold_in(state.rng, 0x0DC), jnp.asarray(np.where(
      valid[:, None], normalize(np.asarray(features, np.float64)), 0.), jnp.float32), jnp.asarray(valid), 12)
  ref = KMeans(n_clusters=12, init=np.asarray(init), n_init=1, max_iter=20, tol=0., algorithm='lloyd').fit(x)
  expected = np.zeros(len(trainer.train_source), np.int64)
  expected[np.asarray(index)[valid]] = ref.labels_
  np.testing.assert_array_equal(new.method_state['memory']['labels'], expected)
  bank = np.asarray(new.method_state['memory']['features'])
  np.testing.assert_allclose(np.linalg.norm(bank, axis=1), 1., rtol=1e-5)
  for cl in range(12):
    np.testing.assert_allclose(new.method_state['memory']['centroids'][cl], bank[expected == cl].mean(0), atol=1e-5)
  # later epochs do no global clustering
  later, summary = trainer.method.on_epoch(new, 1, trainer)
  assert later is new and 'online' in summary


def test_unknown_variant_is_named():
  with pytest.raises(ValueError, match='valid: demo'):
    get_config('small')


# tests/methods/test_every_method.py: 1 vs 8 devices, kill-and-resume and the demo, made small by these
# the memories start from random unit features with labels index % 12 (1,600 records: clusters 0-3 hold 134,
# 4-11 hold 133): a minimum of 134 makes after_step empty clusters 4-11 into 0-3 and refill each by a 2-means
# split of the largest, across the devices
DEVICES = {**SMALL, 'model.min_cluster': 134}
RESUME = {**SMALL_16PX, 'batch_size': 119, 'total_steps': 30}
RESUME_KILL_AT = (19,)
