"""Relative Location, ResNet-50, the reference recipe `relative-loc_resnet50_8xb64-steplr-70e_in1k`.

Paper: Doersch et al. 2015, *Unsupervised Visual Representation Learning by Context Prediction*
Demo: python -m jssl.main --config=configs/relative_loc.py:demo --workdir=workdirs/relative_loc_demo
Demo result: kNN top-1 88.0% (random init 92.2%: below it, see docs/methods/relative_loc.md), digits test split
Demo runtime: 3 min 30 s of training on 2 CPU cores shared with other jobs (2026-11-23)

Batch 512 images (8 GPUs x 64), each giving 8 (neighbour, centre) patch pairs; SGD lr 0.2 / momentum 0.9 / weight
decay 1e-4 on all parameters and 5e-4 on the neck and head (paramwise decay_mult 5), linear warmup from 0.1x over
5 epochs, lr x0.1 at epochs 30 and 50, 70 epochs; RelativeLocNeck (fc 4096 on the 2 x 2048 pair features, BN1d,
ReLU, dropout 0.5), ClsHead 4096 -> 8 with Normal(0.005) init. Data: Resize 292 + RandomCrop 255 (host),
grayscale p=0.66 (device), 3 x 3 cells of 85 px with a random 64-px patch in each (jitter 21).

Variants: `configs/relative_loc.py` (ImageNet), `configs/relative_loc.py:demo` (embedded digits, CPU minutes).
"""
from configs import common
from jssl.config import base_config

VARIANTS = ('demo',)


def get_config(arg=None):
  arg = common.parse_arg(arg, __file__, VARIANTS)
  # batch: images; the loss sees 8 pairs per image
  c = base_config('relative_loc', 'resnet50', batch_size=512, epochs=70)
  c.model.patch_size = 64             # cells are view_size // 3 = 85 px: a jitter of up to 21 px
  c.model.update({'neck_out_channels': 4096, 'neck_dropout': 0.5, 'head_init_std': 0.005})
  c.optimizer = common.sgd(lr=0.2, weight_decay=1e-4, decay_mult={'neck': 5., 'head': 5.})
  c.schedule.update({'name': 'step', 'warmup_epochs': 5., 'warmup_start_factor': 0.1, 'milestones': (30, 50),
                     'gamma': 0.1})
  c.data = common.imagenet_data([dict(resize=292, size=255, interpolation='bilinear', flip_prob=0.)],
                                augment=[dict(type='RandomGrayscale', prob=0.66)])

  if arg == 'demo':
    # 32-px digits -> Resize 37 + RandomCrop 33 -> 3 x 3 cells of 11 px -> 8-px patches (jitter 3, ~the reference's
    # 21/85 of a cell); the resize/crop ratio 37/33 ~ 292/255
    common.resnet_demo(c, [dict(resize=37, size=33, interpolation='bilinear', flip_prob=0.)],
                       augment=[dict(type='RandomGrayscale', prob=0.66)], batch_size=64)
    c.model.update({'patch_size': 8, 'neck_out_channels': 512})
    c.epochs = 16
    c.optimizer.lr = 0.1
    c.schedule.update({'warmup_epochs': 1., 'milestones': (7, 11)})
  return c
