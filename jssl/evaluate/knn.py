"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018; the protocol of MMSelfSup's
`knn_classifier`, from DINO): cosine similarity, the k nearest training samples vote for their class with
weight exp(sim / T); top-1 / top-5 accuracy in percent."""
import concurrent.futures
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jssl.losses import l2_normalize
from jssl.train import sharding
from jssl.train.sharding import BATCH_AXES


def _put(x, layout):
  """A host array (the same on every host) as a global array laid out by `layout` (multi-host safe)."""
  return jax.make_array_from_callback(x.shape, layout, lambda index: x[index])


@functools.lru_cache(maxsize=None)
def _neighbours_fn(mesh, k):
  """jit of (train rows split over the mesh, their labels, replicated queries) -> (similarity, label) of each
  query's k nearest rows, replicated. Each device ranks its own rows, then the devices' candidates are merged,
  so the [queries, train] similarities are never on one device."""
  def local(train_features, train_labels, queries):
    train_features, queries = l2_normalize(train_features), l2_normalize(queries)
    sim = jnp.matmul(queries, train_features.T, precision=jax.lax.Precision.HIGHEST)
    sim = jnp.where(train_labels[None, :] >= 0, sim, -jnp.inf)  # padding rows are never neighbours
    top_sim, top_idx = jax.lax.top_k(sim, min(k, sim.shape[1]))
    top_sim = jax.lax.all_gather(top_sim, BATCH_AXES, axis=1, tiled=True)
    top_labels = jax.lax.all_gather(train_labels[top_idx], BATCH_AXES, axis=1, tiled=True)
    top_sim, pick = jax.lax.top_k(top_sim, k)
    return top_sim, jnp.take_along_axis(top_labels, pick, axis=1)
  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(BATCH_AXES), P(BATCH_AXES), P()),
                               out_specs=(P(), P()), check_vma=False))


@functools.partial(jax.jit, static_argnames=('ks', 'num_classes'))
def _votes(top_sim, top_labels, temperature, ks, num_classes):
  """[len(ks), queries, classes]: each query's class votes from its k nearest, weight exp(sim / T), for each k
  (the neighbours come sorted, so the k nearest are the first k)."""
  weights = jnp.exp(top_sim / temperature)
  rows = jnp.arange(top_sim.shape[0])[:, None]
  return jnp.stack([jnp.zeros((top_sim.shape[0], num_classes)).at[rows, top_labels[:, :k]].add(weights[:, :k])
                    for k in ks])


def knn_accuracy(train_features, train_labels, test_features, test_labels, k=20, temperature=0.07,
                 num_classes=None, chunk=1024, mesh=None):
  """Top-1 / top-5 accuracy (%) of the weighted kNN classifier: {'top1', 'top5'} for an int `k`; for a tuple of
  ks, {k: {'top1', 'top5'}} for each, from one search for the largest (MMSelfSup reports k = 10, 20, 100, 200).

  `mesh`: the training features' rows are split over all of its devices (ImageNet's 1.28M x 2048 float32 is
  10 GB); default: the first local device only. Queries go in chunks of `chunk` rows."""
  ks = (k,) if np.ndim(k) == 0 else tuple(int(x) for x in k)
  train_labels = np.asarray(train_labels, np.int32)
  test_labels = np.asarray(test_labels)
  num_classes = int(max(train_labels.max(), test_labels.max()) + 1) if num_classes is None else num_classes
  if mesh is None:
    mesh = sharding.make_mesh(devices=jax.local_devices()[:1])
  clamped = tuple(min(x, len(train_labels)) for x in ks)
  rows = sharding.batch_sharding(mesh)
  pad = -len(train_labels) % mesh.size  # padding rows: zero features, label -1
  train_features = _put(np.pad(np.asarray(train_features, np.float32), ((0, pad), (0, 0))), rows)
  train_labels = _put(np.pad(train_labels, (0, pad), constant_values=-1), rows)
  test_features = np.asarray(test_features, np.float32)
  n = len(test_labels)
  neighbours = _neighbours_fn(mesh, max(clamped))
  chunk = min(chunk, n)
  top1, top5 = np.zeros(len(ks), np.int64), np.zeros(len(ks), np.int64)
  for start in range(0, n, chunk):
    queries = test_features[start:start + chunk]
    count = len(queries)
    queries = np.pad(queries, ((0, chunk - count), (0, 0)))  # one compiled shape for every chunk
    top_sim, top_labels = neighbours(train_features, train_labels, _put(queries, sharding.replicated(mesh)))
    votes = np.asarray(_votes(top_sim, top_labels, temperature, clamped, num_classes))[:, :count]
    ranked = np.argsort(-votes, axis=2, kind='stable')[:, :, :5]
    labels = test_labels[start:start + count, None]
    top1 += (ranked[:, :, 0] == labels[None, :, 0]).sum(axis=1)
    top5 += (ranked == labels[None]).any(axis=2).sum(axis=1)
  results = {x: {'top1': float(100. * t1 / n), 'top5': float(100. * t5 / n)} for x, t1, t5 in zip(ks, top1, top5)}
  return results[ks[0]] if np.ndim(k) == 0 else results


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


def _host_batches(source, transform, batch_size, num_threads):
  """(this host's record ids [batch_size / hosts], their transformed records) of every global batch of `source`,
  in order: host p reads the p-th share of each batch; ids past the end are the last record's (padding, ids >= n)."""
  n, procs, proc = len(source), jax.process_count(), jax.process_index()
  per_host = batch_size // procs
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    for start in range(0, n, batch_size):
      want = np.arange(start + proc * per_host, start + (proc + 1) * per_host)
      yield want, list(pool.map(lambda i: transform.map(source[int(min(i, n - 1))]), want))


def extract_features(extractor, variables, source, transform, batch_size, mesh, num_threads=4):
  """Features and labels of every record of `source`, in order, by `extractor` (from `make_extractor`); the
  features are an array or a pytree of arrays (e.g. {stage: [N, D]}), as `extractor` returns them.

  Each host reads the records of its share of every global batch, and the last batch is padded (and the
  padding dropped).
  """
  n, in_sharding = len(source), sharding.batch_sharding(mesh)
  feats, labels = [], []
  for start, (_, records) in zip(range(0, n, batch_size), _host_batches(source, transform, batch_size, num_threads)):
    images = np.stack([r['image'] for r in records])
    local_labels = np.array([r['label'] for r in records], np.int32)
    out_feats, out_labels = extractor(variables, jax.make_array_from_process_local_data(in_sharding, images),
                                      jax.make_array_from_process_local_data(in_sharding, local_labels))
    count = min(batch_size, n - start)
    feats.append(jax.tree.map(lambda f: np.asarray(f)[:count], out_feats))
    labels.append(np.asarray(out_labels)[:count])
  return jax.tree.map(lambda *f: np.concatenate(f), *feats), np.concatenate(labels)


def extract_sharded(extract_fn, source, transform, batch_size, mesh, num_threads=4):
  """Features of every record of `source` as a global [M, D] array with rows split over all devices, and each
  row's record index [M] (-1 on padding rows), for clustering the whole training set on the accelerators.
  `extract_fn(images_uint8) -> [B, D]` takes a global batch sharded over all devices (jit it once: it is called
  for every batch of every epoch).

  Unlike `extract_features` nothing is gathered across hosts: each host copies out the rows its devices computed
  (M / hosts rows, not the whole set) and they go back to the same devices. The row order is host-major (host 0's
  rows of every batch, then host 1's...)."""
  n, in_sharding = len(source), sharding.batch_sharding(mesh)
  feats, ids = [], []
  for want, records in _host_batches(source, transform, batch_size, num_threads):
    out = extract_fn(jax.make_array_from_process_local_data(in_sharding, np.stack([r['image'] for r in records])))
    shards = sorted(out.addressable_shards, key=lambda s: s.index[0].start or 0)
    feats.append(np.concatenate([np.asarray(s.data) for s in shards]))
    ids.append(np.where(want < n, [r['index'] for r in records], -1))
  return (jax.make_array_from_process_local_data(in_sharding, np.concatenate(feats)),
          jax.make_array_from_process_local_data(in_sharding, np.concatenate(ids).astype(np.int32)))
