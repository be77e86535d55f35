"""MoCo v1, ResNet-50, the reference recipe `mocov1_resnet50_8xb32-steplr-200e_in1k` (MMSelfSup 0.x/1.x).

Paper: He et al. 2020, *Momentum Contrast for Unsupervised Visual Representation Learning*
Page: docs/methods/mocov2.md
Demo: python -m jssl.main --config=configs/mocov1.py:demo --workdir=workdirs/mocov1_demo
Demo result: kNN top-1 94.4% (random init 91.1%), digits test split
Demo runtime: 6 min 5 s of training on 2 CPU cores shared with other jobs (an upper bound; 2026-11-22)

Batch 256 (8 GPUs x 32), SGD lr 0.03 / momentum 0.9 / weight decay 1e-4, 200 epochs; LinearNeck 2048->128,
InfoNCE at temperature 0.07 against a queue of 65,536 keys, key encoder momentum 0.999, shuffle-BN over 8 groups;
two 224 crops (scale 0.2-1) with grayscale p=0.2, then color jitter (0.4, 0.4, 0.4, 0.4) always, horizontal flip.

Schedule: the lr is multiplied by 0.1 at epochs 120 and 160 (the reference's MultiStepLR), no warmup.

Variants: `configs/mocov1.py` (ImageNet), `configs/mocov1.py:demo` (embedded digits, ResNet-18, CPU minutes).
"""
from configs import common, mocov2

VARIANTS = ('demo',)


def get_config(arg=None):
  arg = common.parse_arg(arg, __file__, VARIANTS)
  c = mocov2.get_config(arg)  # the same method, optimizer and run settings; v1's neck, T and augmentation
  c.method = 'mocov1'
  c.model.neck = 'linear'
  c.model.neck_hid_channels = 0  # unused by the linear neck
  c.model.temperature = 0.07
  c.schedule.update({'name': 'step', 'milestones': (120, 160), 'gamma': 0.1})
  if arg == 'demo':
    c.schedule.milestones = (18, 24)  # the reference's 120/160 of 200 epochs, over the demo's 30
    c.data = common.digits_data(common.views(32, (0.3, 1.0), num=2, flip_prob=0.), common.mocov1_augment())
  else:
    c.data = common.imagenet_data(common.views(224, (0.2, 1.0), num=2), common.mocov1_augment())
  return c
