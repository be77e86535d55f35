"""ODC (Zhan et al. 2020, Online Deep Clustering): the pseudo-labels evolve with the network, step by step, instead of
being recomputed by a global clustering every epoch.

Memories (`method_state['memory']`, jssl/parts/memory.py; MMSelfSup's ODCMemory): the samples memory holds every
image's L2-normalized feature (`features`, [N, 256]) and pseudo-label (`labels`, [N]); the centroids memory holds
the clusters' mean features (`centroids`, [K, 256]). `method_state['loss_weight']`: the classes' loss weights.
  0. Once, before the first epoch: features of the whole training set (backbone -> ODCNeck, eval mode),
     L2-normalized, k-means with k = `num_clusters` on the devices (no PCA: the reference's pca_dim=-1); the
     memories start from them (centroids: the clusters' means).
Per step, for one augmented view of each image i (its dataset index in batch['index']):
  1. f_i = ODCNeck(backbone(view)) (fc-BN-ReLU-dropout-fc-ReLU, 256-d);
  2. loss = cross-entropy of ClsHead(f_i) against labels[i], class-weighted by (1 / cluster size)^0.5, normalized
     (the ODCHook's re-weighting, updated after every step);
  3. samples memory: features[i] <- normalize(0.5 features[i] + 0.5 normalize(f_i)); labels[i] <- the centroid
     most similar (dot product) to the new feature; `change_ratio` logs the fraction of batch labels that moved.
After every step (ODCHook.after_train_iter, iteration counted from 1):
  4. every `centroids_update_interval` (10) steps: every non-empty centroid <- the mean of its members' features;
  5. every `small_clusters_interval` (1) steps: clusters under `min_cluster` (20) members are emptied into the
     nearest other clusters and each refilled with half of a 2-means split of the largest cluster
     (`memory.deal_with_small_clusters`);
  6. the loss weights from the new cluster sizes.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jssl.losses import l2_normalize, weighted_cross_entropy
from jssl.methods import base
from jssl.models import build_backbone
from jssl.models.heads import ClsHead
from jssl.models.layers import check_sobel_input, sobel
from jssl.models.necks import ODCNeck, global_avg_pool
from jssl.parts import clustering, memory


class ODCNet(nn.Module):
  """[Sobel ->] backbone -> ODCNeck -> ClsHead. Params: {'backbone', 'neck', 'head'}."""
  backbone: nn.Module
  neck: nn.Module
  head: nn.Module
  with_sobel: bool = False

  def backbone_out(self, images, train):
    return self.backbone(sobel(images) if self.with_sobel else images, train=train)[-1]

  def __call__(self, images, train: bool = True):
    feature = self.neck(self.backbone_out(images, train), train=train)
    return feature, self.head(feature)

  def neck_features(self, images):
    return self.neck(self.backbone_out(images, False), train=False)

  def features(self, images):
    return global_avg_pool(self.backbone_out(images, False))


class Method(base.Method):
  def __init__(self, config, total_steps=0, steps_per_epoch=0, num_records=0):
    del total_steps, steps_per_epoch
    m = config.model
    clustering.check_num_clusters('odc', m.num_clusters, num_records)
    check_sobel_input(m.get('with_sobel', False), config.backbone.get('kwargs'))
    self.num_records = num_records
    self.num_clusters = m.num_clusters
    self.feat_dim = m.neck_out_channels
    self.memory_momentum = m.memory_momentum
    self.min_cluster = m.min_cluster
    self.centroids_update_interval = m.centroids_update_interval
    self.small_clusters_interval = m.small_clusters_interval
    self.reweight = m.reweight
    self.reweight_pow = m.reweight_pow
    self.kmeans_iterations = m.kmeans_iterations
    dtype = base.compute_dtype(config)
    self.net = ODCNet(
        backbone=build_backbone(config.backbone.name, dtype=dtype, **config.backbone.get('kwargs', {})),
        neck=ODCNeck(hid_channels=m.neck_hid_channels, out_channels=m.neck_out_channels, dtype=dtype),
        head=ClsHead(num_classes=m.num_clusters, dtype=dtype), with_sobel=m.get('with_sobel', False))

  def init(self, rng, batch):
    net_rng, bank_rng = jax.random.split(rng)
    params, model_state = self.init_net(net_rng, batch['views'][0])
    # a valid memory from the start (random unit features, labels by index); the initial clustering replaces it
    # before the first step (the reference starts from zeros and fills them the same way)
    bank = memory.init(bank_rng, self.num_records, self.feat_dim, self.num_clusters)
    return params, model_state, {'memory': bank, 'loss_weight': self.loss_weights(bank['labels'])}

  def loss_weights(self, labels):
    return clustering.loss_weights(labels, self.num_clusters, self.reweight_pow)

  def loss(self, params, model_state, method_state, batch, rng, step):
    del step
    index = batch['index'].astype(jnp.int32)
    (feature, logits), model_state = self.forward(params, model_state, batch['views'][0], rngs={'dropout': rng})
    labels = method_state['memory']['labels'][index]
    loss = weighted_cross_entropy(logits, labels, method_state['loss_weight'] if self.reweight else None)
    # the samples memory: momentum update of the features, then each image's label from the centroids
    bank, change_ratio = memory.update(method_state['memory'], index, feature.astype(jnp.float32),
                                       self.memory_momentum)
    return loss, ({'loss': loss, 'change_ratio': change_ratio}, model_state, {**method_state, 'memory': bank})

  def after_step(self, params, method_state, step):
    del params
    done = step + 1  # the reference's hooks count iterations from 1
    bank = jax.lax.cond(done % self.centroids_update_interval == 0, memory.update_centroids, lambda b: b,
                        method_state['memory'])

    def small_clusters(bank):
      labels, centroids = memory.deal_with_small_clusters(bank['features'], bank['labels'], bank['centroids'],
                                                          self.min_cluster)
      return {**bank, 'labels': labels, 'centroids': centroids}
    bank = jax.lax.cond(done % self.small_clusters_interval == 0, small_clusters, lambda b: b, bank)
    return {**method_state, 'memory': bank, 'loss_weight': self.loss_weights(bank['labels'])}

  def neck_features(self, params, model_state, images):
    return self.net.apply({'params': params, **model_state}, images, method=ODCNet.neck_features)

  # --- the initial clustering (MMSelfSup: DeepClusterHook with init_memory=True, once) -----------------------------
  def on_epoch(self, state, epoch, trainer):
    if epoch > 0:
      return state, 'online clustering (no global step)'
    features, index = trainer.features.training_set(state, self.neck_features)
    valid = index >= 0
    features = jnp.where(valid[:, None], l2_normalize(features.astype(jnp.float32), eps=1e-10), 0.)
    rng = jax.random.fold_in(state.rng, 0x0DC)
    centroids = clustering.init_centroids(rng, features, valid, self.num_clusters)
    row_labels, _, objective = clustering.kmeans(features, valid, centroids, self.kmeans_iterations, trainer.mesh)
    labels = clustering.to_records(row_labels, index, self.num_records)
    bank = clustering.to_records(features, index, self.num_records)
    centroids = memory.compute_centroids(bank, labels, jnp.zeros((self.num_clusters, features.shape[1])))
    method_state = {**state.method_state, 'memory': {'features': bank, 'labels': labels, 'centroids': centroids},
                    'loss_weight': self.loss_weights(labels)}
    sizes = np.bincount(np.asarray(labels), minlength=self.num_clusters)
    summary = (f'initial k-means on {self.num_records} images: {self.num_clusters} clusters, '
               f'{int((sizes == 0).sum())} empty, sizes {sizes.min()}..{sizes.max()}, objective {float(objective):.4g}')
    return state.replace(method_state=method_state), summary
