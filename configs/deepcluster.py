"""DeepCluster, ResNet-50 on Sobel input, the reference recipe `deepcluster-sobel_resnet50_8xb64-steplr-200e_in1k`.

Paper: Caron et al. 2018, *Deep Clustering for Unsupervised Learning of Visual Features*
Demo: python -m jssl.main --config=configs/deepcluster.py:demo --workdir=workdirs/deepcluster_demo
Demo result: kNN top-1 98.33% (random init 88.86%, the same Sobel network), digits test split
Demo runtime: about 16 min on 2 CPU cores shared with three other jobs (load average ~9; 2026-11-23)

Batch 512 (8 GPUs x 64), SGD lr 0.1 / momentum 0.9 / weight decay 1e-5 (on every parameter, as torch SGD), no
momentum for the classifier (paramwise custom_keys head: momentum=0), a constant lr (the reference's milestone 400
lies beyond its 200 epochs); Sobel-filtered grayscale input (2 channels into the ResNet), global average pool,
ClsHead 2048 -> 10,000 pseudo-classes. Before every epoch: features of the whole training set (resize 256,
centre crop 224), PCA-whitened to 256-d and L2-normalized, k-means k=10,000 (20 iterations), uniform sampling over
the clusters, a new classifier; no loss re-weighting (reweight_pow 0.5 when enabled).
Training views: one RandomResizedCrop 224 + flip, RandomRotation 2 degrees, color jitter (0.4, 0.4, 1.0, 0.5)
always, grayscale p=0.2.

Variants: `configs/deepcluster.py` (ImageNet), `configs/deepcluster.py:demo` (embedded digits, ResNet-18, CPU
minutes).
"""
from configs import common
from jssl.config import base_config

VARIANTS = ('demo',)


def get_config(arg=None):
  arg = common.parse_arg(arg, __file__, VARIANTS)
  c = base_config('deepcluster', 'resnet50', batch_size=512, epochs=200)
  c.backbone.kwargs.in_channels = 2       # the Sobel filter's two gradient maps
  c.model.update({'with_sobel': True, 'num_clusters': 10000, 'pca_dim': 256})
  c.model.kmeans_iterations = 20           # faiss Clustering's niter, as the reference sets it
  c.model.update({'uniform_sampling': True, 'reweight': False, 'reweight_pow': 0.5})
  c.optimizer = common.sgd(lr=0.1, weight_decay=1e-5, no_momentum_names=('head',))
  c.schedule.update({'name': 'constant', 'warmup_epochs': 0.})
  c.data = common.imagenet_data(common.views(224, num=1), common.clustering_augment())

  if arg == 'demo':
    common.resnet_demo(c, common.views(32, (0.3, 1.0), num=1, flip_prob=0.), common.clustering_augment())
    c.model.num_clusters = 50              # ~5x the 10 digit classes, as 10,000 is 10x ImageNet's 1,000
    c.model.pca_dim = 64                   # of the 256-d features (the reference: 256 of 2048)
    c.epochs = 30
    c.optimizer.lr = 0.05
  return c
