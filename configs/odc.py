"""ODC, ResNet-50, the reference recipe `odc_resnet50_8xb64-steplr-440e_in1k`.

Paper: Zhan et al. 2020, *Online Deep Clustering for Unsupervised Representation Learning*
Demo: python -m jssl.main --config=configs/odc.py:demo --workdir=workdirs/odc_demo
Demo result: kNN top-1 96.4% (random init 91.1%), digits test split; one H100 run of these settings
Demo runtime: not measured: the result's run was on an H100 (2026-11-23), no CPU run of all 100 epochs yet

Batch 512 (8 GPUs x 64), SGD lr 0.06 / momentum 0.9 / weight decay 1e-5 on every parameter (torch SGD), no momentum
for the classifier (paramwise head momentum 0), lr x 0.4 at epoch 400, 440 epochs; ODCNeck 2048-512-256
(fc-BN-ReLU-dropout-fc-ReLU), ClsHead 256 -> 10,000; samples memory of every image's 256-d feature (momentum 0.5)
and label, centroids memory; initial labels from one k-means (k=10,000, no PCA) before training; centroids
recomputed every 10 steps, clusters under 20 images handled every step, loss re-weighting with power 0.5. Views: one
RandomResizedCrop 224 + flip, RandomRotation 2 degrees, color jitter (0.4, 0.4, 1.0, 0.5) always, grayscale p=0.2
(the DeepCluster pipeline).

Variants: `configs/odc.py` (ImageNet), `configs/odc.py:demo` (embedded digits, ResNet-18, CPU minutes).
"""
from configs import common
from jssl.config import base_config

VARIANTS = ('demo',)


def get_config(arg=None):
  arg = common.parse_arg(arg, __file__, VARIANTS)
  c = base_config('odc', 'resnet50', batch_size=512, epochs=440)
  c.model.update({'with_sobel': False, 'neck_hid_channels': 512, 'neck_out_channels': 256, 'num_clusters': 10000})
  c.model.update({'memory_momentum': 0.5, 'min_cluster': 20, 'centroids_update_interval': 10,
                  'small_clusters_interval': 1})
  c.model.update({'reweight': True, 'reweight_pow': 0.5, 'kmeans_iterations': 20})
  c.optimizer = common.sgd(lr=0.06, weight_decay=1e-5, no_momentum_names=('head',))
  c.schedule.update({'name': 'step', 'warmup_epochs': 0., 'milestones': (400,), 'gamma': 0.4})
  c.data = common.imagenet_data(common.views(224, num=1), common.clustering_augment())

  if arg == 'demo':
    common.resnet_demo(c, common.views(32, (0.3, 1.0), num=1, flip_prob=0.), common.clustering_augment())
    c.model.update({'neck_hid_channels': 256, 'neck_out_channels': 64})
    c.model.num_clusters = 30      # ~48 images a cluster, as ImageNet's 1.28M / 10,000 gives 128
    c.model.min_cluster = 8
    # the recipe's lr and re-weighting; its labels move a little each step, so it needs more steps than DeepCluster:
    # 30 epochs stayed below random init, 100 beat it (docs/methods/odc.md)
    c.epochs = 100
    c.schedule.milestones = (90,)  # the recipe's step at 10/11 of the run
  return c
