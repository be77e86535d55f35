"""Rotation Prediction, ResNet-50, the reference recipe `rotation-pred_resnet50_8xb16-steplr-70e_in1k`.

Paper: Gidaris et al. 2018, *Unsupervised Representation Learning by Predicting Image Rotations*
Demo: python -m jssl.main --config=configs/rotation_pred.py:demo --workdir=workdirs/rotation_pred_demo
Demo result: kNN top-1 86.4% (random init 92.2%: below it, see docs/methods/rotation_pred.md), digits test split
Demo runtime: 5 min 51 s of training on 2 CPU cores shared with other jobs (2026-11-23)

Batch 128 images (8 GPUs x 16), each in 4 rotations (512 samples); SGD lr 0.2 / momentum 0.9 / weight decay 1e-4 on
all parameters, linear warmup from 0.1x over 5 epochs, lr x0.1 at epochs 30 and 50, 70 epochs; ClsHead (pool +
linear 2048 -> 4, Normal(0.01) init); RandomResizedCrop 224 + flip; SyncBN.

Variants: `configs/rotation_pred.py` (ImageNet), `configs/rotation_pred.py:demo` (embedded digits, CPU minutes).
"""
from configs import common
from jssl.config import base_config

VARIANTS = ('demo',)


def get_config(arg=None):
  arg = common.parse_arg(arg, __file__, VARIANTS)
  # batch: images; the loss sees 4x as many samples
  c = base_config('rotation_pred', 'resnet50', batch_size=128, epochs=70)
  c.model.head_init_std = 0.01
  c.optimizer = common.sgd(lr=0.2, weight_decay=1e-4)  # no paramwise_cfg
  c.schedule.update({'name': 'step', 'warmup_epochs': 5., 'warmup_start_factor': 0.1, 'milestones': (30, 50),
                     'gamma': 0.1})
  # no color augmentation in the reference: the device only normalizes (and rotates, in the method)
  c.data = common.imagenet_data(common.views(224), augment=[])

  if arg == 'demo':
    common.resnet_demo(c, common.views(32), augment=[], batch_size=64)  # 256 rotated samples per step
    c.epochs = 16
    c.optimizer.lr = 0.1
    c.schedule.update({'warmup_epochs': 1., 'milestones': (7, 11)})
  return c
