"""InterCLR (MoCo flavour) against a hand-written NumPy version on a small case: intra InfoNCE, inter loss with the
cosine margin over the sampled positive / negatives, 0.75 / 0.25 weights, queue, bank replacement, online labels,
centroid updates and re-clustering; then 8 devices vs 1 (incl. bank, labels, centroids, queue), resume, demo."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.interclr import get_config
from jssl.methods import interclr
from jssl.models.shuffle_bn import shuffled_group_bn
from tests.parts.test_memory import numpy_bank_update, unit

SMALL = {'backbone.kwargs.num_filters': 8, 'model.neck_hid_channels': 16, 'model.neck_out_channels': 8,
         'model.queue_len': 64, 'model.num_clusters': 6, 'model.neg_num': 16, 'model.neg_pool': 40,
         'model.centroids_update_interval': 1, 'model.warmup_epochs': 0.,
         'model.recluster_epochs': 0.02, 'optimizer.lr': 0.03,  # k-means every 2 steps
         # 4 shuffle-BN groups of 4 images (as MoCo v2's test): groups of 2 images at 32 px made BatchNorm so
         # ill-conditioned that 1 vs 8 devices' round-off reached 3e-5 of the loss
         'model.shuffle_bn_groups': 4, 'data.views.0.size': 16}


def numpy_contrastive(pos, neg, temperature):
  """-log softmax of the positive over [pos, neg] / T, batch mean (float64)."""
  logits = np.concatenate([pos[:, None], neg], axis=1).astype(np.float64) / temperature
  mx = logits.max(1, keepdims=True)
  return np.mean(-(logits[:, 0] - mx[:, 0] - np.log(np.exp(logits - mx).sum(1))))


def small_method(num_records=20, **model):
  c = get_config('demo')
  c.batch_size = 6  # the tests' batches: the queue (12) holds two
  c.backbone.kwargs.num_filters = 8
  c.model.update({'neck_hid_channels': 16, 'neck_out_channels': 8, 'queue_len': 12, 'num_clusters': 4,
                  'neg_num': 5, 'neg_pool': 10, 'shuffle_bn_groups': 2, 'warmup_epochs': 0.,
                  'centroids_update_interval': 3, 'recluster_epochs': 2, 'kmeans_iterations': 5,
                  'inter_cos_margin': -0.5})
  c.model.update(model)
  return interclr.Method(c, steps_per_epoch=4, num_records=num_records)


def test_interclr_step_matches_numpy():
  method = small_method()
  rng = np.random.default_rng(0)
  im_q = jnp.asarray(rng.normal(size=(6, 16, 16, 3)), jnp.float32)
  im_k = jnp.asarray(rng.normal(size=(6, 16, 16, 3)) + 0.3, jnp.float32)
  index = jnp.asarray([3, 17, 5, 8, 19, 0], jnp.int32)
  batch = {'views': (im_q, im_k), 'index': index}
  params, model_state, state0 = jax.jit(method.init)(jax.random.key(0), batch)
  # a bank with real structure: features around 4 directions, labels by nearest centroid
  dirs = unit(rng.normal(size=(4, 8)))
  bank = unit(dirs[np.arange(20) % 4] + 0.3 * rng.normal(size=(20, 8))).astype(np.float32)
  labels = (np.arange(20) % 4).astype(np.int32)
  cents = np.stack([bank[labels == c].mean(0) for c in range(4)]).astype(np.float32)
  state0 = {**state0, 'memory': {'features': jnp.asarray(bank), 'labels': jnp.asarray(labels),
                                  'centroids': jnp.asarray(cents)}}
  queue = np.asarray(state0['queue']['keys'])
  step_rng = jax.random.key(5)
  loss, (metrics, _, state1) = jax.jit(method.loss)(params, model_state, state0, batch, step_rng, 0)

  # features: the query forward (BN over the batch) and the key encoder with shuffle-BN over 2 groups
  q, _ = method.net.apply({'params': params, **model_state}, im_q, train=True, mutable=['batch_stats'])
  q = unit(q)
  shuffle_rng, inter_rng = jax.random.split(step_rng)
  encode = lambda x: method.net.apply(state0['target'], x, train=True, mutable=['batch_stats'])[0]
  k = unit(shuffled_group_bn(encode, im_k, 2, shuffle_rng))
  intra = numpy_contrastive(np.sum(q * k, 1), q @ queue.T, 0.2)
  pos_idx, neg_idx = map(np.asarray, method.inter_samples(jnp.asarray(q, jnp.float32), state0['memory'], index,
                                                          inter_rng))
  own = labels[np.asarray(index)]
  # positives from the own cluster; negatives of other clusters, distinct, among the 10 most similar rows
  assert (labels[pos_idx] == own).all()
  assert neg_idx.shape == (6, 5) and (labels[neg_idx] != own[:, None]).all()
  sims = q @ bank.T
  for i in range(6):
    assert len(set(neg_idx[i])) == 5
    assert set(neg_idx[i]) <= set(np.argsort(-sims[i])[:10])
  inter = numpy_contrastive(np.sum(bank[pos_idx] * q, 1) + 0.5, np.einsum('bkd,bd->bk', bank[neg_idx], q), 0.2)
  np.testing.assert_allclose(metrics['intra_loss'], intra, rtol=1e-4)
  np.testing.assert_allclose(metrics['inter_loss'], inter, rtol=1e-4)
  np.testing.assert_allclose(loss, 0.75 * intra + 0.25 * inter, rtol=1e-4)

  # queue: the 6 keys at rows 0-5; bank rows replaced by the keys (momentum 1); labels: nearest centroid
  # (k here comes from an un-jitted forward with BN over groups of 3: float32 round-off)
  np.testing.assert_allclose(np.asarray(state1['queue']['keys'])[:6], k, atol=1e-3)
  np.testing.assert_array_equal(np.asarray(state1['queue']['keys'])[6:], queue[6:])
  assert int(state1['queue']['ptr']) == 6
  want_bank = numpy_bank_update(bank, np.asarray(index), k, 1.0)
  np.testing.assert_allclose(state1['memory']['features'], want_bank, atol=1e-3)
  want_bank = np.asarray(state1['memory']['features'], np.float64)  # the labels follow the rows actually stored
  want_labels = labels.copy()
  want_labels[np.asarray(index)] = np.argmax(want_bank[np.asarray(index)] @ cents.T, axis=1)
  np.testing.assert_array_equal(state1['memory']['labels'], want_labels)
  np.testing.assert_allclose(metrics['change_ratio'], np.mean(want_labels[np.asarray(index)] != own))
  np.testing.assert_array_equal(state1['memory']['centroids'], cents)  # centroids move only in after_step

  # after_step: EMA of the key encoder; at step 2 (3 steps done) the centroids become the cluster means
  after = jax.jit(method.after_step)
  s = after(params, state1, 0)
  np.testing.assert_array_equal(s['memory']['centroids'], cents)
  t = jax.tree.leaves(s['target']['params'])[0]
  np.testing.assert_allclose(t, 0.99 * jax.tree.leaves(state0['target']['params'])[0]
                             + 0.01 * jax.tree.leaves(params)[0], rtol=1e-6)
  s = after(params, state1, 2)
  want_cents = np.stack([want_bank[want_labels == c].mean(0) for c in range(4)])
  np.testing.assert_allclose(s['memory']['centroids'], want_cents, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(s['memory']['labels'], want_labels)
  # at the end of epoch 1 (4 steps done): k-means re-clusters the bank; labels = nearest final centroid
  s = after(params, state1, 3)
  got_labels, got_cents = np.asarray(s['memory']['labels']), np.asarray(s['memory']['centroids'])
  np.testing.assert_array_equal(got_labels, np.argmax(want_bank @ got_cents.T, axis=1))
  for c in np.unique(got_labels):
    np.testing.assert_allclose(got_cents[c], want_bank[got_labels == c].mean(0), rtol=1e-4, atol=1e-5)
  # gradients reach every parameter
  grads = jax.jit(jax.grad(lambda p: method.loss(p, model_state, state0, batch, step_rng, 0)[0]))(params)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert all(np.abs(g).sum() > 0 for g in jax.tree.leaves(grads['neck']))


def test_warmup_trains_intra_only():
  method = small_method(warmup_epochs=1.)
  rng = np.random.default_rng(1)
  views = tuple(jnp.asarray(rng.normal(size=(6, 16, 16, 3)), jnp.float32) for _ in range(2))
  batch = {'views': views, 'index': jnp.arange(6, dtype=jnp.int32)}
  params, model_state, state = method.init(jax.random.key(0), batch)
  loss_fn = jax.jit(method.loss)
  loss, (metrics, _, _) = loss_fn(params, model_state, state, batch, jax.random.key(1), 3)
  np.testing.assert_allclose(loss, metrics['intra_loss'], rtol=1e-6)
  loss, (metrics, _, _) = loss_fn(params, model_state, state, batch, jax.random.key(1), 4)
  np.testing.assert_allclose(loss, 0.75 * metrics['intra_loss'] + 0.25 * metrics['inter_loss'], rtol=1e-6)


def test_random_and_semieasy_negatives():
  rng = np.random.default_rng(2)
  bank = jnp.asarray(unit(rng.normal(size=(30, 4))), jnp.float32)
  labels = jnp.asarray(np.arange(30) % 3, jnp.int32)
  q = jnp.asarray(unit(rng.normal(size=(5, 4))), jnp.float32)
  own = jnp.asarray([0, 1, 2, 0, 1], jnp.int32)
  for mode in ('random', 'semieasy'):
    neg = np.asarray(interclr.sample_negatives(jax.random.key(0), q, bank, labels, own, 8, 24, mode))
    assert (np.asarray(labels)[neg] != np.asarray(own)[:, None]).all()
    assert all(len(set(r)) == 8 for r in neg)
  sims = np.asarray(q @ bank.T)
  for i in range(5):
    assert set(neg[i]) <= set(np.argsort(sims[i])[:24])  # semieasy: among the least similar rows


def test_config_is_the_reference_recipe():
  c = get_config()
  m = c.model
  assert (m.queue_len, m.momentum, m.temperature, m.num_clusters) == (65536, 0.999, 0.2, 10000)
  assert (m.neg_num, m.neg_pool, m.inter_cos_margin, m.memory_momentum) == (16384, 128000, -0.5, 1.0)
  assert (m.intra_loss_weight, m.inter_loss_weight, m.centroids_update_interval) == (0.75, 0.25, 10)
  assert (c.optimizer.lr, c.schedule.name, c.batch_size, c.epochs) == (0.03, 'cosine', 256, 200)
  c.model.neg_sampling = 'hard'
  with pytest.raises(ValueError, match='valid: semihard'):
    interclr.Method(c, num_records=100)
  with pytest.raises(ValueError, match='num_clusters'):
    small_method(num_records=3).init(jax.random.key(0), {'views': (jnp.zeros((2, 16, 16, 3)),) * 2})


# tests/methods/test_every_method.py: 1 vs 8 devices, kill-and-resume and the demo, made small by these
DEVICES = SMALL
METHOD_STATE_LEAVES = 6  # target params and BN statistics, queue, pointer, bank, labels, centroids
# the queue's keys are 8-d unit vectors from the key encoder, whose BatchNorm reduces over the devices in another
# order: up to 3.5e-5 apart (2026-12-06)
METHOD_STATE_ATOL = 1e-4
RESUME = {**SMALL, 'batch_size': 64, 'total_steps': 30}
