"""InterCLR (Xie et al. 2022, "Delving into Inter-Image Invariance for Unsupervised Visual Representations"), the
MoCo flavour: an intra-image branch (MoCo v2) plus an inter-image branch whose positives come from the same online
cluster, sharing one encoder and neck.

Per step, for two views of each image i (dataset index from batch['index']):
  1. q = normalize(MoCoV2Neck(backbone(view 1))); k = normalize(key encoder(view 2)) without gradient, the key
     encoder an EMA (0.999) of the query encoder, run with shuffle-BN: MoCo v2's (this Method extends it).
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
  5. the keys enter the queue; memory (`method_state['memory']`, jssl/parts/memory.py): M[i] <- normalize((1 - m)
     M[i] + m k_i) with m = 1 (replace), then y[i] <- argmax_c c . M[i] (online labels); `change_ratio` = fraction
     of the batch whose label changed.
  6. after the optimizer step: key encoder EMA; every `centroids_update_interval` (10) steps the centroids become
     the mean bank row of each cluster (empty clusters keep theirs); every `recluster_epochs` epochs (and at the end
     of the first epoch, once the bank holds real features) k-means re-clusters the bank (jssl/parts/clustering.py:
     Lloyd from the current centroids by dot product, the online labels' rule; empty clusters re-seeded by splitting
     large ones, faiss' rule).

Known differences from the reference (mmselfsup 0.x InterCLRMoCo + InterCLRMemory + InterCLRHook), all because the
reference's hook re-extracts the whole dataset offline, which a jit'd step cannot:
  - the bank starts as random unit vectors with balanced labels (index mod C), not k-means of features extracted
    by the initial network; hence `warmup_epochs` = 1 by default (the hook has the same option, set to 0 there);
  - re-clustering runs k-means on the bank's (key-encoder) features instead of re-extracting with the network;
  - small clusters (< min_cluster) are not split every iteration: empty clusters are re-seeded at re-clustering;
  - the key encoder's BatchNorm running statistics follow mmpretrain 1.x's MoCo (copied from the query encoder,
    moved by the key forward) rather than 0.x's own key-forward statistics; neither affects training;
  - semihard negatives are uniform without replacement among the pool's rows of other clusters (the reference
    draws without replacement from the whole pool, then redraws the same-cluster ones, which may repeat);
  - no 'hard' sampling and no arc margins.
"""
import jax
import jax.numpy as jnp

from jssl import losses
from jssl.methods import mocov2
from jssl.models.necks import MoCoV2Neck
from jssl.parts import clustering, memory

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


class Method(mocov2.Method):
  """MoCo v2 (query and key encoders, queue, key-encoder EMA) plus the inter-image branch on a memory bank."""

  def __init__(self, config, total_steps=0, steps_per_epoch=0, num_records=0):
    super().__init__(config)
    m = config.model
    if m.neg_sampling not in NEG_SAMPLING:
      raise ValueError(f"config.model.neg_sampling: unknown '{m.neg_sampling}'; valid: {', '.join(NEG_SAMPLING)}")
    clustering.check_num_clusters('interclr', m.num_clusters, num_records)
    if m.neg_num > min(m.neg_pool if m.neg_sampling != 'random' else num_records, num_records):
      raise ValueError(f'config.model.neg_num ({m.neg_num}) exceeds the negative pool (neg_pool {m.neg_pool}, '
                       f'num_records {num_records})')
    self.m = m
    self.num_records = num_records
    self.steps_per_epoch = max(steps_per_epoch, 1)

  def neck(self, m, dtype):
    return MoCoV2Neck(hid_channels=m.neck_hid_channels, out_channels=m.neck_out_channels, dtype=dtype)

  def init(self, rng, batch):
    net_rng, queue_rng, bank_rng = jax.random.split(rng, 3)
    params, model_state = self.init_net(net_rng, batch['views'][0])
    bank = memory.init(bank_rng, self.num_records, self.feat_dim, self.m.num_clusters)
    return params, model_state, {**self.moco_state(params, model_state, queue_rng), 'memory': bank}

  def inter_samples(self, q, bank, index, rng):
    """(positive [B], negatives [B, neg_num]) bank rows of the inter-image branch."""
    m = self.m
    pos_rng, neg_rng = jax.random.split(rng)
    own = bank['labels'][index]
    pos_idx = memory.sample_same_cluster(pos_rng, bank['labels'], own)
    neg_idx = sample_negatives(neg_rng, q, bank['features'], bank['labels'], own, m.neg_num, m.neg_pool,
                               m.neg_sampling)
    return pos_idx, neg_idx

  def inter_loss(self, q, bank, index, rng):
    pos_idx, neg_idx = self.inter_samples(q, bank, index, rng)
    pos = jnp.sum(bank['features'][pos_idx] * q, axis=-1)
    neg = jnp.einsum('bkd,bd->bk', bank['features'][neg_idx], q)
    return losses.contrastive_head_loss(pos - self.m.inter_cos_margin, neg, self.m.temperature)

  def loss(self, params, model_state, method_state, batch, rng, step):
    m = self.m
    index = batch['index'].astype(jnp.int32)
    shuffle_rng, inter_rng = jax.random.split(rng)
    q, k, model_state, new_state = self.query_and_key(params, model_state, method_state, batch, shuffle_rng)
    q = losses.l2_normalize(q.astype(jnp.float32))
    intra = losses.info_nce(q, k, method_state['queue']['keys'], m.temperature)
    inter = self.inter_loss(q, method_state['memory'], index, inter_rng)
    warm = step < int(round(m.warmup_epochs * self.steps_per_epoch))
    w_intra = jnp.where(warm, 1., m.intra_loss_weight)
    w_inter = jnp.where(warm, 0., m.inter_loss_weight)
    loss = w_intra * intra + w_inter * inter
    bank, change_ratio = memory.update(method_state['memory'], index, k, m.memory_momentum)
    metrics = {'loss': loss, 'intra_loss': intra, 'inter_loss': inter, 'change_ratio': change_ratio}
    return loss, (metrics, model_state, {**new_state, 'memory': bank})

  def after_step(self, params, method_state, step):
    m = self.m
    method_state = super().after_step(params, method_state, step)  # the key encoder's EMA
    done = step + 1  # steps completed, as the reference's every_n_iters
    bank = jax.lax.cond(done % m.centroids_update_interval == 0, memory.update_centroids, lambda b: b,
                        method_state['memory'])
    every = max(int(m.recluster_epochs * self.steps_per_epoch), 1)
    recluster = (done == self.steps_per_epoch) | (done % every == 0)

    def kmeans(bank):
      labels, centroids, _ = clustering.kmeans(bank['features'], jnp.ones(bank['labels'].shape, bool),
                                               bank['centroids'], m.kmeans_iterations, metric='dot')
      return {**bank, 'labels': labels, 'centroids': centroids}
    return {**method_state, 'memory': jax.lax.cond(recluster, kmeans, lambda b: b, bank)}
