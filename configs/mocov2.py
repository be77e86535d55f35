"""MoCo v2, ResNet-50, the reference recipe `mocov2_resnet50_8xb32-coslr-200e_in1k`.

Paper: Chen et al. 2020, *Improved Baselines with Momentum Contrastive Learning*
Demo: python -m jssl.main --config=configs/mocov2.py:demo --workdir=workdirs/mocov2_demo
Demo result: kNN top-1 92.8% (random init 91.1%), digits test split
Demo runtime: 8 min 35 s of training on 2 CPU cores shared with other jobs (an upper bound; 2026-11-22)

Batch 256 (8 GPUs x 32), SGD lr 0.03 / momentum 0.9 / weight decay 1e-4, cosine over 200 epochs (no warmup);
MoCoV2Neck 2048-2048-128, InfoNCE at temperature 0.2 against a queue of 65,536 keys, key encoder momentum 0.999,
shuffle-BN over 8 groups (the reference's 8 GPUs); two 224 crops (scale 0.2-1) with color jitter (0.4, 0.4, 0.4, 0.1)
p=0.8, grayscale p=0.2, Gaussian blur sigma 0.1-2.0 p=0.5, horizontal flip.

Variants: `configs/mocov2.py` (ImageNet), `configs/mocov2.py:demo` (embedded digits, half-width ResNet-18, 30 epochs,
queue 512, key momentum 0.99, lr 0.06 after a 2-epoch warmup; CPU minutes).
"""
from configs import common
from jssl.config import base_config

VARIANTS = ('demo',)


def get_config(arg=None):
  arg = common.parse_arg(arg, __file__, VARIANTS)
  c = base_config('mocov2', 'resnet50', batch_size=256, epochs=200)
  c.model.update({'neck': 'mocov2', 'neck_hid_channels': 2048, 'neck_out_channels': 128, 'temperature': 0.2})
  c.model.update({'queue_len': 65536, 'momentum': 0.999, 'shuffle_bn_groups': 8})
  c.optimizer = common.sgd(lr=0.03, weight_decay=1e-4)
  c.schedule.update({'name': 'cosine', 'warmup_epochs': 0., 'min_lr': 0.})
  c.data = common.imagenet_data(common.views(224, (0.2, 1.0), num=2), common.mocov2_augment(blur_kernel=23))

  if arg == 'demo':
    common.resnet_demo(c, common.views(32, (0.3, 1.0), num=2, flip_prob=0.), common.mocov2_augment(blur_kernel=3))
    c.model.neck_hid_channels = 256
    c.epochs = 30
    # A queue of 4 batches and a 2-epoch warmup: while the queue still holds its random initial rows, the loss only
    # pulls queries towards their keys (random negatives repel nothing), and a full-lr step then collapses all
    # features onto one direction, after which the loss sits at ln(K + 1) with vanishing gradients.
    c.model.queue_len = 512
    c.model.momentum = 0.99   # a few hundred steps: the key encoder must follow within the run
    c.optimizer.lr = 0.06
    c.schedule.warmup_epochs = 2.
  return c
