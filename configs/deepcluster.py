"""DeepCluster with Sobel input, ResNet-50, the reference recipe `deepcluster-sobel_resnet50_8xb64-steplr-200e_in1k`:
batch 512 (8 GPUs x 64), SGD lr 0.1 / momentum 0.9 / weight decay 1e-5 (on every parameter, as torch SGD), no
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
from jssl.config import base_config, clustering_augment, demo_run, digits_data, imagenet_data


def get_config(arg=None):
  c = base_config()
  c.method = 'deepcluster'
  c.batch_size = 512
  c.epochs = 200
  c.backbone.name = 'resnet50'
  c.backbone.kwargs.in_channels = 2       # the Sobel filter's two gradient maps
  c.model.with_sobel = True
  c.model.num_clusters = 10000
  c.model.pca_dim = 256
  c.model.kmeans_iterations = 20           # faiss Clustering's niter, as the reference sets it
  c.model.uniform_sampling = True
  c.model.reweight = False
  c.model.reweight_pow = 0.5
  c.optimizer.name = 'sgd'
  c.optimizer.lr = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-5
  c.optimizer.exclude_1d_from_decay = False  # torch SGD: weight decay on BN and biases too
  c.optimizer.no_momentum_names = ('head',)
  c.optimizer.grad_clip_norm = 0.
  c.optimizer.grad_accum_steps = 1
  c.schedule.update({'name': 'constant', 'warmup_epochs': 0.})
  c.data = imagenet_data(views=[dict(size=224, scale=(0.08, 1.0), interpolation='bilinear', flip_prob=0.5, num=1)],
                         augment=clustering_augment())

  if arg == 'demo':
    size = 32
    c.data = digits_data(views=[dict(size=size, scale=(0.3, 1.0), interpolation='bilinear', flip_prob=0.0, num=1)],
                         augment=clustering_augment(), image_size=size)
    demo_run(c, size)
    # ResNet-18 at half width: XLA's CPU convolutions fall off a cliff at 64+ channels on 1x1/2x2 maps
    c.backbone.name = 'resnet18'
    c.backbone.kwargs.num_filters = 32
    c.model.num_clusters = 50              # ~5x the 10 digit classes, as 10,000 is 10x ImageNet's 1,000
    c.model.pca_dim = 64                   # of the 256-d features (the reference: 256 of 2048)
    c.batch_size = 128
    c.epochs = 30
    c.optimizer.lr = 0.05
  elif arg:
    raise ValueError(f"configs/deepcluster.py: unknown variant '{arg}'; valid: demo")
  return c
