"""Linear probe of a frozen pretrained backbone (jssl/evaluate/linear.py). The backbone and its architecture come from
`--config.init.backbone=PATH`: a jssl workdir (its latest checkpoint) or a directory written by
`python -m jssl.convert FILE DIR --format=... --backbone=...` (released PyTorch weights).

  python -m jssl.main --config=configs/eval/linear.py --config.init.backbone=runs/mocov2 --workdir=runs/mocov2_linear

Variants:
  (none)      MoCo protocol, mmpretrain `mocov2/benchmarks/resnet50_8xb32-linear-steplr-100e_in1k`: global-pooled
              last stage -> Linear (N(0, 0.01)); SGD lr 30, momentum 0.9, no weight decay, batch 256 (8 x 32),
              100 epochs, lr x 0.1 at epochs 60 and 80; RandomResizedCrop 224 + flip; eval resize 256 / crop 224.
  :mae        MAE protocol, `mae/benchmarks/vit-base-p16_8xb2048-linear-coslr-90e_in1k`: cls token after the final
              norm -> BatchNorm (no affine, eps 1e-6) -> Linear (trunc. normal 0.01); LARS lr 6.4 (0.1 x 16384 /
              256), momentum 0.9, no weight decay, batch 16384, 10 warmup epochs from 1e-4 x lr, cosine, 90 epochs.
  :multihead  ResNet-50 feat1..feat5, MMSelfSup's `resnet50_mhead_linear-8xb32-steplr-90e_in1k`: per stage a
              'specified' MultiPooling (~9k dims) -> BatchNorm (no affine) -> Linear; SGD lr 0.01, momentum 0.9,
              weight decay 1e-4, lr x 0.1 at epochs 30, 60, 90, 90 epochs.
  :demo       the embedded digits (32 px), the backbone of the README demo (workdirs/simclr_demo) by default: a
              MoCo-protocol probe, 10 epochs, CPU seconds.
  :demo_mae   the MAE protocol on the MAE demo (workdirs/mae_demo).

The random-init figures: the same command with --config.init.random_init=True.
Demo: python -m jssl.main --config=configs/eval/linear.py:demo --workdir=workdirs/simclr_linear
Demo result: top-1 95.26% (random init 73.82%) on the SimCLR demo's backbone (this machine's: kNN 96.94%), digits test split
Demo runtime: 79 s on 2 CPU cores shared with four other jobs (2026-12-03)
Demo: python -m jssl.main --config=configs/eval/linear.py:demo_mae --workdir=workdirs/mae_linear
Demo result: top-1 86.35% (random init 62.67%) on the MAE demo's backbone, digits test split
Demo runtime: 50 s on 2 CPU cores (2026-11-23)
"""
import ml_collections

from configs import common
from jssl.config import base_config

VARIANTS = ('demo', 'demo_mae', 'mae', 'multihead')


def get_config(arg=None):
  arg = common.parse_arg(arg, __file__, VARIANTS)
  c = base_config()
  c.method = 'linear_probe'
  c.backbone.name = ''                 # '' -> the architecture of config.init.backbone
  c.init.backbone = ''
  c.batch_size = 256
  c.epochs = 100
  c.model.head = 'linear'
  c.model.num_classes = 1000
  c.model.feature = 'cls'              # ViT: 'cls' token or 'mean' of the patch tokens
  c.model.in_indices = (0, 1, 2, 3, 4)  # head 'multi': ResNet outputs (0 stem .. 4 last stage)
  c.model.pool_type = 'specified'
  c.model.pool_backbone = 'resnet50'
  c.optimizer.update({'name': 'sgd', 'lr': 30., 'momentum': 0.9, 'weight_decay': 0., 'frozen_names': ('backbone',)})
  c.schedule.update({'name': 'step', 'milestones': (60, 80), 'gamma': 0.1, 'warmup_epochs': 0.})
  c.data = common.imagenet_data(common.views(224), augment=[])
  # the evaluator reports its heads' val top-1 / top-5, not kNN
  c.evals = ml_collections.ConfigDict({'classifier': {'every': 0, 'every_epochs': 0, 'at_end': True}})
  c.checkpoint.every = 5000

  if arg in ('mae', 'demo_mae'):
    c.model.head = 'mae'
    c.batch_size = 16384
    c.epochs = 90
    c.optimizer = ml_collections.ConfigDict({'name': 'lars', 'lr': 0.1 * 16384 / 256, 'momentum': 0.9,
                                         'weight_decay': 0., 'frozen_names': ('backbone',)})
    c.schedule.update({'name': 'cosine', 'warmup_epochs': 10., 'warmup_start_factor': 1e-4, 'min_lr': 0.})
  elif arg == 'multihead':
    c.model.head = 'multi'
    c.epochs = 90
    c.optimizer.update({'lr': 0.01, 'weight_decay': 1e-4})
    c.schedule.milestones = (30, 60, 90)
  if arg in ('demo', 'demo_mae'):
    common.digits_demo(c, common.views(32, (0.5, 1.0), flip_prob=0., interpolation='bicubic'), augment=[])
    c.model.num_classes = 10
    c.epochs = 10
    if arg == 'demo':
      c.init.backbone = 'workdirs/simclr_demo'
      c.optimizer.lr = 30. * 128 / 256
      c.schedule.milestones = (6, 8)
    else:
      c.init.backbone = 'workdirs/mae_demo'
      c.model.feature = 'mean'
      c.optimizer.lr = 25.  # LARS moves a weight by lr x 0.001 x its norm per step: 110 steps need a large lr
      c.schedule.warmup_epochs = 1.
  return c
