"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018; the protocol of MMSelfSup's
`knn_classifier`, from DINO): cosine similarity, the k nearest training samples vote for their class with
weight exp(sim / T); top-1 / top-5 accuracy in percent."""
import concurrent.futures
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jssl.losses import l2_normalize
from jssl.train import sharding


@functools.partial(jax.jit, static_argnames=('k',))
def _votes(train_features, train_onehot, test_features, temperature, k):
  sim = test_features @ train_features.T
  top_sim, top_idx = jax.lax.top_k(sim, k)
  weights = jnp.exp(top_sim / temperature)
  return jnp.einsum('tk,tkc->tc', weights, train_onehot[top_idx])


def knn_accuracy(train_features, train_labels, test_features, test_labels, k=20, temperature=0.07,
                 num_classes=None, chunk=1024):
  """Top-1 / top-5 accuracy (%) of the weighted kNN classifier."""
  train_labels = np.asarray(train_labels)
  test_labels = np.asarray(test_labels)
  num_classes = int(max(train_labels.max(), test_labels.max()) + 1) if num_classes is None else num_classes
  train_features = l2_normalize(jnp.asarray(train_features, jnp.float32))
  test_features = l2_normalize(jnp.asarray(test_features, jnp.float32))
  onehot = jax.nn.one_hot(train_labels, num_classes)
  k = min(k, train_features.shape[0])
  top1 = top5 = 0
  for start in range(0, test_features.shape[0], chunk):
    votes = _votes(train_features, onehot, test_features[start:start + chunk], temperature, k=k)
    ranked = np.argsort(-np.asarray(votes), axis=1, kind='stable')[:, :5]
    labels = test_labels[start:start + chunk, None]
    top1 += int((ranked[:, :1] == labels).sum())
    top5 += int((ranked == labels).any(axis=1).sum())
  n = len(test_labels)
  return {'top1': 100. * top1 / n, 'top5': 100. * top5 / n}


def make_extractor(extract_fn, normalize, mesh):
  """jit of (variables, uint8 images, labels) -> (features, labels) for `extract_features`.

  `extract_fn(variables, images_float) -> [B, D]`; the variables are an argument, not a closure, so that one
  compiled program serves every state of a run (the trained and the random-init kNN at the end, monitors).
  The batch is sharded over all devices; the outputs are replicated.
  """
  # input shardings come from the arguments (batch-sharded images, the state's own layout); labels ride along so
  # that every host ends with all of them, whichever host read the record
  return jax.jit(lambda variables, x, y: (extract_fn(variables, normalize(x)), y),
                 out_shardings=sharding.replicated(mesh))


def extract_features(extractor, variables, source, transform, batch_size, mesh, num_threads=4):
  """Features and labels of every record of `source`, in order, by `extractor` (from `make_extractor`).

  Each host reads the records of its share of every global batch, and the last batch is padded (and the
  padding dropped).
  """
  n = len(source)
  procs, proc = jax.process_count(), jax.process_index()
  per_host = batch_size // procs
  in_sharding = sharding.batch_sharding(mesh)
  feats, labels = [], []
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    for start in range(0, n, batch_size):
      ids = [min(i, n - 1) for i in range(start + proc * per_host, start + (proc + 1) * per_host)]
      records = list(pool.map(lambda i: transform.map(source[i]), ids))
      images = np.stack([r['image'] for r in records])
      local_labels = np.array([r['label'] for r in records], np.int32)
      out_feats, out_labels = extractor(variables, jax.make_array_from_process_local_data(in_sharding, images),
                                        jax.make_array_from_process_local_data(in_sharding, local_labels))
      count = min(batch_size, n - start)
      feats.append(np.asarray(out_feats)[:count])
      labels.append(np.asarray(out_labels)[:count])
  return np.concatenate(feats), np.concatenate(labels)


def extract_sharded(extract_fn, source, transform, batch_size, mesh, num_threads=4):
  """Features of every record of `source` as a global [M, D] array with rows split over all devices, and each
  row's record index [M] (-1 on padding rows), for clustering the whole training set on the accelerators.
  `extract_fn(images_uint8) -> [B, D]` takes a global batch sharded over all devices (jit it once: it is called
  for every batch of every epoch).

  Unlike `extract_features` nothing is gathered across hosts: each host copies out the rows its devices computed
  (M / hosts rows, not the whole set) and they go back to the same devices. The row order is host-major (host 0's
  rows of every batch, then host 1's...)."""
  n = len(source)
  procs, proc = jax.process_count(), jax.process_index()
  per_host = batch_size // procs
  in_sharding = sharding.batch_sharding(mesh)
  feats, ids = [], []
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    for start in range(0, n, batch_size):
      want = np.arange(start + proc * per_host, start + (proc + 1) * per_host)
      records = list(pool.map(lambda i: transform.map(source[int(min(i, n - 1))]), want))
      out = extract_fn(jax.make_array_from_process_local_data(in_sharding, np.stack([r['image'] for r in records])))
      shards = sorted(out.addressable_shards, key=lambda s: s.index[0].start or 0)
      feats.append(np.concatenate([np.asarray(s.data) for s in shards]))
      ids.append(np.where(want < n, [r['index'] for r in records], -1))
  return (jax.make_array_from_process_local_data(in_sharding, np.concatenate(feats)),
          jax.make_array_from_process_local_data(in_sharding, np.concatenate(ids).astype(np.int32)))
