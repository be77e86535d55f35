"""ODC, ResNet-50, the reference recipe `odc_resnet50_8xb64-steplr-440e_in1k`: batch 512 (8 GPUs x 64), SGD lr 0.06 /
momentum 0.9 / weight decay 1e-5 on every parameter (torch SGD), no momentum for the classifier (paramwise head
momentum 0), lr x 0.4 at epoch 400, 440 epochs; ODCNeck 2048-512-256 (fc-BN-ReLU-dropout-fc-ReLU), ClsHead
256 -> 10,000; samples memory of every image's 256-d feature (momentum 0.5) and label, centroids memory; initial
labels from one k-means (k=10,000, no PCA) before training; centroids recomputed every 10 steps, clusters under 20
images handled every step, loss re-weighting with power 0.5. Views: one RandomResizedCrop 224 + flip, RandomRotation
2 degrees, color jitter (0.4, 0.4, 1.0, 0.5) always, grayscale p=0.2 (the DeepCluster pipeline).

Variants: `configs/odc.py` (ImageNet), `configs/odc.py:demo` (embedded digits, ResNet-18, CPU minutes).
"""
from jssl.config import base_config, clustering_augment, demo_run, digits_data, imagenet_data


def get_config(arg=None):
  c = base_config()
  c.method = 'odc'
  c.batch_size = 512
  c.epochs = 440
  c.backbone.name = 'resnet50'
  c.model.with_sobel = False
  c.model.neck_hid_channels = 512
  c.model.neck_out_channels = 256
  c.model.num_clusters = 10000
  c.model.memory_momentum = 0.5
  c.model.min_cluster = 20
  c.model.centroids_update_interval = 10
  c.model.small_clusters_interval = 1
  c.model.reweight = True
  c.model.reweight_pow = 0.5
  c.model.kmeans_iterations = 20
  c.optimizer.name = 'sgd'
  c.optimizer.lr = 0.06
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-5
  c.optimizer.exclude_1d_from_decay = False  # torch SGD: weight decay on BN and biases too
  c.optimizer.no_momentum_names = ('head',)
  c.optimizer.grad_clip_norm = 0.
  c.optimizer.grad_accum_steps = 1
  c.schedule.update({'name': 'step', 'warmup_epochs': 0., 'milestones': (400,), 'gamma': 0.4})
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
    c.model.neck_hid_channels = 256
    c.model.neck_out_channels = 64
    c.model.num_clusters = 30      # ~48 images a cluster, as ImageNet's 1.28M / 10,000 gives 128
    c.model.min_cluster = 8
    c.batch_size = 128
    # the recipe's lr and re-weighting; its labels move a little each step, so it needs more steps than DeepCluster:
    # 30 epochs stayed below random init, 100 beat it (docs/methods/odc.md)
    c.epochs = 100
    c.schedule.milestones = (90,)  # the recipe's step at 10/11 of the run
  elif arg:
    raise ValueError(f"configs/odc.py: unknown variant '{arg}'; valid: demo")
  return c
