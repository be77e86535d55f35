"""SimCLR, ResNet-50, the reference recipe `simclr_resnet50_8xb32-coslr-200e_in1k`.

Paper: Chen et al. 2020, *A Simple Framework for Contrastive Learning of Visual Representations*
Demo: python -m jssl.main --config=configs/simclr.py:demo --workdir=workdirs/simclr_demo
Demo result: kNN top-1 96.94% (random init 92.20%), linear probe 97.49% (94.15%), digits test split
Demo runtime: 7 min 12 s, the whole command on 2 CPU cores shared with three other jobs (2026-12-03)

Batch 256 (8 GPUs x 32), LARS lr 0.3 / momentum 0.9 / weight decay 1e-6 with BN and biases excluded from weight
decay and adaptation, 10 warmup epochs then cosine, 200 epochs; NonLinearNeck 2048-2048-128 with BN;
NT-Xent at temperature 0.1; two 224 crops with color jitter (0.8, 0.8, 0.8, 0.2) p=0.8, grayscale p=0.2,
Gaussian blur sigma 0.1-2.0 p=0.5.

Variants: `configs/simclr.py` (ImageNet), `configs/simclr.py:demo` (embedded digits, ResNet-18, CPU minutes).
"""
from configs import common
from jssl.config import base_config

VARIANTS = ('demo',)


def get_config(arg=None):
  arg = common.parse_arg(arg, __file__, VARIANTS)
  c = base_config('simclr', 'resnet50', batch_size=256, epochs=200)
  c.model.update({'temperature': 0.1, 'neck_hid_channels': 2048, 'neck_out_channels': 128, 'neck_num_layers': 2})
  c.optimizer = common.lars(lr=0.3, weight_decay=1e-6)
  c.schedule.update({'name': 'cosine', 'warmup_epochs': 10., 'warmup_start_factor': 1e-4, 'min_lr': 0.})
  # kernel_size 23 ~ 10% of 224 (SimCLR paper)
  c.data = common.imagenet_data(common.views(224, num=2), common.simclr_augment(blur_kernel=23))

  if arg == 'demo':
    common.resnet_demo(c, common.views(32, (0.3, 1.0), num=2, flip_prob=0.), common.simclr_augment(blur_kernel=3))
    c.model.neck_hid_channels = 256
    c.epochs = 30
    c.optimizer.lr = 0.6
    c.schedule.warmup_epochs = 2.
  return c
