"""DeepCluster (Caron et al. 2018): alternate k-means over the features of the whole training set with training the
network to classify every image into its cluster.

Before every epoch (MMSelfSup's DeepClusterHook with initial=True, interval=1), in `on_epoch`:
  1. features of every training image: backbone (on the Sobel-filtered grayscale image) -> global average pool,
     eval mode, eval transform (resize + centre crop); rows stay sharded over all devices;
  2. PCA to `pca_dim` (256) with whitening, then L2 normalization (faiss PCAMatrix(eigen_power=-0.5));
  3. k-means with k = `num_clusters` (10,000), `kmeans_iterations` (20, faiss' default) Lloyd iterations from k
     random rows, empty clusters re-seeded by splitting large ones, on the accelerators (jssl/parts/clustering.py);
  4. each image's cluster is its pseudo-label (`method_state['labels']`, addressed by dataset index);
  5. the epoch reads the training set uniformly over pseudo-classes (`epoch_indices`: MMSelfSup's
     DeepClusterSampler, the paper's UnifLabelSampler);
  6. the classifier is re-initialized (its optimizer state zeroed: the recipe gives it no momentum anyway) and,
     with `reweight`, the loss weights become (1 / cluster size) ** reweight_pow, normalized.
Per step: cross-entropy of ClsHead(avgpool(backbone(sobel(view)))) against the image's pseudo-label.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jssl.losses import weighted_cross_entropy
from jssl.methods import base
from jssl.models import build_backbone
from jssl.models.heads import ClsHead
from jssl.models.layers import check_sobel_input, sobel
from jssl.models.necks import global_avg_pool
from jssl.parts import clustering


class ClusterClassifier(nn.Module):
  """[Sobel ->] backbone -> global average pool (the AvgPool2dNeck) -> ClsHead. Params: {'backbone', 'head'}."""
  backbone: nn.Module
  head: nn.Module
  with_sobel: bool = True

  def features(self, images, train: bool = False):
    x = sobel(images) if self.with_sobel else images
    return global_avg_pool(self.backbone(x, train=train)[-1])

  def __call__(self, images, train: bool = True):
    return self.head(self.features(images, train=train))


class Method(base.Method):
  def __init__(self, config, total_steps=0, steps_per_epoch=0, num_records=0):
    del total_steps, steps_per_epoch
    m = config.model
    clustering.check_num_clusters('deepcluster', m.num_clusters, num_records)
    check_sobel_input(m.with_sobel, config.backbone.get('kwargs'))
    self.num_records = num_records
    self.num_clusters = m.num_clusters
    self.pca_dim = m.pca_dim
    self.kmeans_iterations = m.kmeans_iterations
    self.uniform_sampling = m.uniform_sampling
    self.reweight = m.reweight
    self.reweight_pow = m.reweight_pow
    dtype = base.compute_dtype(config)
    self.head = ClsHead(num_classes=m.num_clusters, dtype=dtype)
    self.net = ClusterClassifier(
        backbone=build_backbone(config.backbone.name, dtype=dtype, **config.backbone.get('kwargs', {})),
        head=self.head, with_sobel=m.with_sobel)

  def init(self, rng, batch):
    params, model_state = self.init_net(rng, batch['views'][0])
    method_state = {'labels': jnp.zeros((self.num_records,), jnp.int32),
                    'loss_weight': jnp.full((self.num_clusters,), 1. / self.num_clusters, jnp.float32)}
    return params, model_state, method_state

  def loss(self, params, model_state, method_state, batch, rng, step):
    del rng, step
    logits, model_state = self.forward(params, model_state, batch['views'][0])
    labels = method_state['labels'][batch['index'].astype(jnp.int32)]
    loss = weighted_cross_entropy(logits, labels, method_state['loss_weight'] if self.reweight else None)
    accuracy = jnp.mean(jnp.argmax(logits, axis=1) == labels)
    return loss, ({'loss': loss, 'pseudo_label_acc': accuracy}, model_state, method_state)

  # --- epoch-level: the clustering -------------------------------------------------------------------------------
  def cluster(self, features, index, rng, mesh):
    """Pseudo-labels [num_records] (by dataset index) and the k-means objective from row-sharded features."""
    valid = index >= 0
    whitened = clustering.pca_whiten(features, valid, dim=min(self.pca_dim, features.shape[1]))
    centroids = clustering.init_centroids(rng, whitened, valid, self.num_clusters)
    row_labels, _, objective = clustering.kmeans(whitened, valid, centroids, self.kmeans_iterations, mesh)
    return clustering.to_records(row_labels, index, self.num_records), objective

  def on_epoch(self, state, epoch, trainer):
    features, index = trainer.features.training_set(state, self.extract)
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, 0xDC), epoch)
    kmeans_rng, head_rng = jax.random.split(rng)
    labels, objective = self.cluster(features, index, kmeans_rng, trainer.mesh)
    method_state = {**state.method_state, 'labels': labels,
                    'loss_weight': clustering.loss_weights(labels, self.num_clusters, self.reweight_pow)}
    # a new classifier for the new labels, and no optimizer memory of the old one
    head = self.head.init(head_rng, jnp.zeros((1, self.net_feature_dim(state.params)), jnp.float32))['params']
    params = {**state.params, 'head': head}
    opt_state = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.zeros_like(x) if any(getattr(k, 'key', None) == 'head' for k in p) else x,
        state.opt_state)
    sizes = np.bincount(np.asarray(labels), minlength=self.num_clusters)
    summary = (f'k-means on {self.num_records} images: {self.num_clusters} clusters, {int((sizes == 0).sum())} '
               f'empty, sizes {int(sizes.min())}..{int(sizes.max())}, objective {float(objective):.4g}')
    return state.replace(params=params, opt_state=opt_state, method_state=method_state), summary

  def net_feature_dim(self, params):
    return params['head']['fc_cls']['kernel'].shape[0]

  def epoch_indices(self, method_state, epoch, seed):
    """The record order of an epoch: uniform over pseudo-classes (None: a plain shuffle)."""
    if not self.uniform_sampling:
      return None
    labels = np.asarray(jax.device_get(method_state['labels']))
    return clustering.balanced_indices(labels, self.num_clusters, self.num_records, np.random.default_rng(seed))
