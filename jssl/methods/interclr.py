"""InterCLR (Xie et al. 2022, "Delving into Inter-Image Invariance for Unsupervised Visual Representations"), the
MoCo flavour: an intra-image branch (MoCo v2) plus an inter-image branch whose positives come from the same online
cluster, sharing one encoder and neck.

Per step, for two views of each image i (dataset index from batch['index']):
  1. q = normalize(MoCoV2Neck(backbone(view 1))); k = normalize(key encoder(view 2)) without gradient, the key
     encoder an EMA (0.999) of the query encoder, run with shuffle-BN (jssl/models/shuffle_bn.py).
  2. intra = InfoNCE over [q.k, q.queue] / T (losses.info_nce, T = 0.2, queue of 65,536 keys).
  3. inter, against the memory bank M (unit features of every image, their pseudo-labels y and the cluster
     centroids c):
     - positive: M[p] with p drawn uniformly among the rows of i's cluster y[i] (may be i itself, as the reference);
     - negatives, 'semihard' (default): the `pool` rows most similar to q, of which `neg_num` are drawn uniformly
       WITHOUT replacement among those of another cluster than y[i] ('semieasy': the least similar rows; 'random':
       the whole bank is the pool);
     - cosine margin (AM-softmax): the positive logit is cos - margin, margin = -0.5 (a NEGATIVE margin, the paper's
       choice for noisy pseudo-labels); inter = cross-entropy of softmax([M[p].q - margin, M[n].q ...] / T).
  4. loss = 0.75 intra + 0.25 inter (intra only during `warmup_epochs`).
  5. the keys enter the queue; memory: M[i] <- normalize((1 - m) M[i] + m k_i) with m = 1 (replace), then
     y[i] <- argmax_c c . M[i] (online labels); `change_ratio` = fraction of the batch whose label changed.
  6. after the optimizer step: key encoder EMA; every `centroids_update_interval` (10) steps the centroids become
     the mean bank row of each cluster (empty clusters keep theirs); every `recluster_epochs` epochs (and at the end
     of the first epoch, once the bank holds real features) k-means re-clusters the bank (Lloyd from the current
     centroids, empty clusters re-seeded).

Known differences from the reference (mmselfsup 0.x InterCLRMoCo + InterCLRMemory + InterCLRHook), all because the
reference's hook re-extracts the whole dataset offline, which a jit'd step cannot:
  - the bank starts as random unit vectors with balanced labels (index mod C), not k-means of features extracted
    by the initial network; hence `warmup_epochs` = 1 by default (the hook has the same option, set to 0 there);
  - re-clustering runs k-means on the bank's (key-encoder) features instead of re-extracting with the network;
  - small clusters (< min_cluster) are not split every iteration: empty clusters are re-seeded at re-clustering;
  - semihard negatives are uniform without replacement among the pool's rows of other clusters (the reference
    draws without replacement from the whole pool, then redraws the same-cluster ones, which may repeat);
  - no 'hard' sampling and no arc margins.
"""
import jax
import jax.numpy as jnp

from jssl import losses
from jssl.methods.base import BackboneNeck, compute_dtype
from jssl.models import build_backbone
from jssl.models.necks import MoCoV2Neck
from jssl.models.shuffle_bn import shuffled_group_bn
from jssl.train import memory
from jssl.train import queue as fifo
from jssl.train.ema import ema_update

NEG_SAMPLING = ('semihard', 'semieasy', 'random')


def sample_negatives(rng, q, bank, labels, own_labels, neg_num, pool, mode):
  """[B, neg_num] bank rows of another cluster than own_labels, uniform without replacement inside the pool."""
  n = bank.shape[0]
  if mode == 'random':
    cand = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (q.shape[0], n))
  else:
    sims = jax.lax.stop_gradient(q) @ bank.T
    _, cand = jax.lax.top_k(sims if mode == 'semihard' else -sims, min(pool, n))
  valid = labels[cand] != own_labels[:, None]
  keys = jnp.where(valid, jax.random.uniform(rng, cand.shape), 2.)  # invalid last
  _, pick = jax.lax.top_k(-keys, neg_num)
  return jnp.take_along_axis(cand, pick, axis=1)


class Method:
  def __init__(self, config, total_steps=0, steps_per_epoch=0, num_records=0):
    del total_steps
    dtype = compute_dtype(config)
    m = config.model
    if m.neg_sampling not in NEG_SAMPLING:
      raise ValueError(f"config.model.neg_sampling: unknown '{m.neg_sampling}'; valid: {', '.join(NEG_SAMPLING)}")
    self.m = m
    self.num_records = num_records
    self.steps_per_epoch = max(steps_per_epoch, 1)
    self.feat_dim = m.neck_out_channels
    self.net = BackboneNeck(
        backbone=build_backbone(config.backbone.name, dtype=dtype, **config.backbone.get('kwargs', {})),
        neck=MoCoV2Neck(hid_channels=m.neck_hid_channels, out_channels=m.neck_out_channels, dtype=dtype))

  def init(self, rng, batch):
    m = self.m
    net_rng, queue_rng, bank_rng = jax.random.split(rng, 3)
    if self.num_records < m.num_clusters:
      raise ValueError(f'config.model.num_clusters ({m.num_clusters}) exceeds the training set size '
                       f'num_records ({self.num_records})')
    if m.neg_num > min(m.neg_pool if m.neg_sampling != 'random' else self.num_records, self.num_records):
      raise ValueError(f'config.model.neg_num ({m.neg_num}) exceeds the negative pool (neg_pool {m.neg_pool}, '
                       f'num_records {self.num_records})')
    variables = self.net.init(net_rng, batch['views'][0], train=False)
    params = variables.pop('params')
    model_state = dict(variables)
    queue = losses.l2_normalize(jax.random.normal(queue_rng, (m.queue_len, self.feat_dim), jnp.float32))
    bank = memory.init_bank(bank_rng, self.num_records, self.feat_dim)
    labels = jnp.arange(self.num_records, dtype=jnp.int32) % m.num_clusters
    centroids = memory.compute_centroids(bank, labels, jnp.zeros((m.num_clusters, self.feat_dim), jnp.float32))
    method_state = {'target': {'params': params, **model_state}, 'queue': queue,
                    'queue_ptr': jnp.zeros((), jnp.int32), 'memory': bank, 'labels': labels,
                    'centroids': centroids}
    return params, model_state, method_state

  def keys(self, target, images, rng):
    target = jax.lax.stop_gradient(target)
    encode = lambda x: self.net.apply(target, x, train=True, mutable=['batch_stats'])[0]
    return losses.l2_normalize(shuffled_group_bn(encode, images, self.m.shuffle_bn_groups, rng).astype(jnp.float32))

  def inter_samples(self, q, method_state, index, rng):
    """(positive [B], negatives [B, neg_num]) bank rows of the inter-image branch."""
    m = self.m
    labels = method_state['labels']
    pos_rng, neg_rng = jax.random.split(rng)
    own = labels[index]
    pos_idx = memory.sample_same_cluster(pos_rng, labels, own)
    neg_idx = sample_negatives(neg_rng, q, method_state['memory'], labels, own, m.neg_num, m.neg_pool,
                               m.neg_sampling)
    return pos_idx, neg_idx

  def inter_loss(self, q, method_state, index, rng):
    bank = method_state['memory']
    pos_idx, neg_idx = self.inter_samples(q, method_state, index, rng)
    pos = jnp.sum(bank[pos_idx] * q, axis=-1)
    neg = jnp.einsum('bkd,bd->bk', bank[neg_idx], q)
    return losses.contrastive_head_loss(pos - self.m.inter_cos_margin, neg, self.m.temperature)

  def loss(self, params, model_state, method_state, batch, rng, step):
    m = self.m
    im_q, im_k = batch['views'][:2]
    index = batch['index'].astype(jnp.int32)
    shuffle_rng, inter_rng = jax.random.split(rng)
    q, new_model_state = self.net.apply({'params': params, **model_state}, im_q, train=True,
                                        mutable=list(model_state))
    q = losses.l2_normalize(q.astype(jnp.float32))
    k = self.keys(method_state['target'], im_k, shuffle_rng)
    intra = losses.info_nce(q, k, method_state['queue'], m.temperature)
    inter = self.inter_loss(q, method_state, index, inter_rng)
    warm = step < int(round(m.warmup_epochs * self.steps_per_epoch))
    w_intra = jnp.where(warm, 1., m.intra_loss_weight)
    w_inter = jnp.where(warm, 0., m.inter_loss_weight)
    loss = w_intra * intra + w_inter * inter

    queue, ptr = fifo.enqueue(method_state['queue'], method_state['queue_ptr'], k)
    bank, rows = memory.momentum_update(method_state['memory'], index, k, m.memory_momentum)
    new_labels = memory.nearest_centroid(rows, method_state['centroids'])
    change_ratio = jnp.mean((new_labels != method_state['labels'][index]).astype(jnp.float32))
    labels = method_state['labels'].at[index].set(new_labels)
    target = method_state['target']
    # the key encoder's BN running statistics follow the query encoder's (after_step sees only params)
    target = {**target, 'batch_stats': ema_update(target['batch_stats'], new_model_state['batch_stats'], m.momentum)}
    method_state = {**method_state, 'target': target, 'queue': queue, 'queue_ptr': ptr, 'memory': bank,
                    'labels': labels}
    metrics = {'loss': loss, 'intra_loss': intra, 'inter_loss': inter, 'change_ratio': change_ratio}
    return loss, (metrics, dict(new_model_state), method_state)

  def after_step(self, params, method_state, step):
    m = self.m
    target = method_state['target']
    target = {**target, 'params': ema_update(target['params'], params, m.momentum)}
    done = step + 1  # steps completed, as the reference's every_n_iters
    bank, labels, centroids = method_state['memory'], method_state['labels'], method_state['centroids']
    centroids = jax.lax.cond(done % m.centroids_update_interval == 0,
                             lambda: memory.compute_centroids(bank, labels, centroids), lambda: centroids)
    every = max(int(m.recluster_epochs * self.steps_per_epoch), 1)
    recluster = (done == self.steps_per_epoch) | (done % every == 0)
    labels, centroids = jax.lax.cond(recluster, lambda: memory.kmeans(bank, centroids, m.kmeans_iterations),
                                     lambda: (labels, centroids))
    return {**method_state, 'target': target, 'labels': labels, 'centroids': centroids}

  def extract(self, params, model_state, images):
    return self.net.apply({'params': params, **model_state}, images, method=BackboneNeck.features)
