"""InterCLR (MoCo flavour), ResNet-50, the reference recipe `interclr-moco_resnet50_8xb32-coslr-200e_in1k`:
batch 256 (8 GPUs x 32), SGD lr 0.03 / momentum 0.9 / weight decay 1e-4, cosine to 0 over 200 epochs;
MoCoV2Neck 2048-2048-128 shared by both branches, temperature 0.2; intra-image branch: MoCo v2 (queue of 65,536
keys, key encoder momentum 0.999, shuffle-BN over 8 groups); inter-image branch: memory bank of every image's key
(momentum 1: replaced), 10,000 online clusters (centroids recomputed every 10 steps), positive drawn from the own
cluster, 16,384 semi-hard negatives drawn from the 128,000 nearest rows, cosine margin -0.5; loss weights
0.75 intra + 0.25 inter. Two 224 crops (scale 0.2-1) with color jitter (0.4, 0.4, 0.4, 0.1) p=0.8, grayscale
p=0.2, Gaussian blur sigma 0.1-2.0 p=0.5, horizontal flip. See jssl/methods/interclr.py for the known differences
(online re-clustering on the bank instead of the hook's offline extraction + k-means; one warmup epoch).

Variants: `configs/interclr.py` (ImageNet), `configs/interclr.py:demo` (embedded digits, ResNet-18, CPU minutes).
"""
from jssl.config import base_config, demo_run, digits_data, imagenet_data, mocov2_augment


def get_config(arg=None):
  c = base_config()
  c.method = 'interclr'
  c.batch_size = 256
  c.epochs = 200
  c.backbone.name = 'resnet50'
  m = c.model
  m.neck_hid_channels = 2048
  m.neck_out_channels = 128
  m.temperature = 0.2
  # intra-image branch (MoCo v2)
  m.queue_len = 65536
  m.momentum = 0.999
  m.shuffle_bn_groups = 8
  # inter-image branch
  m.memory_momentum = 1.0           # weight of the new key: the bank row is replaced
  m.num_clusters = 10000
  m.centroids_update_interval = 10  # steps
  m.recluster_epochs = 10.          # k-means of the bank (the reference hook's interval), and after epoch 1
  m.kmeans_iterations = 20
  m.neg_sampling = 'semihard'       # semihard | semieasy | random
  m.neg_num = 16384
  m.neg_pool = 128000
  m.inter_cos_margin = -0.5         # positive logit = cos - margin
  m.intra_loss_weight = 0.75
  m.inter_loss_weight = 0.25
  m.warmup_epochs = 1.              # intra only while the bank fills with real features
  c.optimizer.name = 'sgd'
  c.optimizer.lr = 0.03
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.exclude_1d_from_decay = False  # torch SGD: weight decay on BN and biases too
  c.optimizer.grad_clip_norm = 0.
  c.optimizer.grad_accum_steps = 1
  c.schedule.update({'name': 'cosine', 'warmup_epochs': 0., 'min_lr': 0.})
  c.data = imagenet_data(views=[dict(size=224, scale=(0.2, 1.0), interpolation='bilinear', flip_prob=0.5, num=2)],
                         augment=mocov2_augment(blur_kernel=23))

  if arg == 'demo':
    size = 32
    c.data = digits_data(views=[dict(size=size, scale=(0.3, 1.0), interpolation='bilinear', flip_prob=0.0, num=2)],
                         augment=mocov2_augment(blur_kernel=3), image_size=size)
    demo_run(c, size)
    # ResNet-18 at half width: XLA's CPU convolutions fall off a cliff at 64+ channels on 1x1/2x2 maps
    c.backbone.name = 'resnet18'
    c.backbone.kwargs.num_filters = 32
    m.neck_hid_channels = 256
    m.queue_len = 512               # as the MoCo v2 demo: 4 batches
    m.momentum = 0.99               # a few hundred steps: the key encoder must follow within the run
    m.num_clusters = 30             # ~48 images per cluster
    m.recluster_epochs = 5.
    m.neg_num = 256
    m.neg_pool = 640
    # 256 negatives: with the recipe's margin -0.5 (+2.5 on the positive logit at T 0.2) a collapsed encoder scores
    # a lower inter loss than a good one, and the demo collapsed (lr 0.3); margin 0 and 2 intra-only epochs here
    m.inter_cos_margin = 0.
    m.warmup_epochs = 2.
    c.batch_size = 128
    c.epochs = 30
    c.optimizer.lr = 0.06
    c.schedule.warmup_epochs = 2.   # as the MoCo v2 demo: a full-lr first step against a random queue collapses
  elif arg:
    raise ValueError(f"configs/interclr.py: unknown variant '{arg}'; valid: demo")
  return c
