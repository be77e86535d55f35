"""NPID, ResNet-50, the reference recipe `npid_resnet50_8xb32-steplr-200e_in1k`.

Paper: Wu et al. 2018, *Unsupervised Feature Learning via Non-Parametric Instance Discrimination*
Demo: python -m jssl.main --config=configs/npid.py:demo --workdir=workdirs/npid_demo
Demo result: kNN top-1 94.43% (random init 91.09%), digits test split
Demo runtime: about 20 min on 2 CPU cores heavily shared with other jobs (2026-11-22)

Batch 256 (8 GPUs x 32), SGD lr 0.03 / momentum 0.9 / weight decay 1e-4 (on every parameter, as torch SGD),
lr x 0.1 at epochs 120 and 160, 200 epochs; LinearNeck 2048 -> 128; memory bank of 128-d unit features of every
training image, momentum 0.5; 65,536 negatives per image drawn uniformly from the bank; softmax over
[positive, negatives] / 0.07. One 224 crop (scale 0.2-1) per image, grayscale p=0.2, color jitter
(0.4, 0.4, 0.4, 0.4) always, horizontal flip.

Variants: `configs/npid.py` (ImageNet), `configs/npid.py:demo` (embedded digits, ResNet-18, CPU minutes).
"""
from configs import common
from jssl.config import base_config

VARIANTS = ('demo',)


def get_config(arg=None):
  arg = common.parse_arg(arg, __file__, VARIANTS)
  c = base_config('npid', 'resnet50', batch_size=256, epochs=200)
  c.model.update({'neck_out_channels': 128, 'temperature': 0.07, 'neg_num': 65536})
  c.model.memory_momentum = 0.5     # weight of the new feature: row <- normalize(0.5 row + 0.5 feature)
  c.model.ensure_neg = False        # the reference's default: a negative may be the image itself
  c.optimizer = common.sgd(lr=0.03, weight_decay=1e-4)
  c.schedule.update({'name': 'step', 'warmup_epochs': 0., 'milestones': (120, 160), 'gamma': 0.1})
  c.data = common.imagenet_data(common.views(224, (0.2, 1.0), num=1), common.mocov1_augment())

  if arg == 'demo':
    common.resnet_demo(c, common.views(32, (0.3, 1.0), num=1, flip_prob=0.), common.mocov1_augment())
    c.model.neg_num = 4096          # with replacement from the 1,437 training images
    c.epochs = 30
    c.optimizer.lr = 0.03           # the reference's; 0.3 reached 59.6% kNN, 0.1 88.9% (random init 91.1%)
    c.schedule.milestones = (18, 24)
  return c
