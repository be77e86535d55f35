"""SimSiam, ResNet-50, the reference recipe `simsiam_resnet50_8xb32-coslr-100e_in1k`.

Paper: Chen & He 2021, *Exploring Simple Siamese Representation Learning*
Demo: python -m jssl.main --config=configs/simsiam.py:demo --workdir=workdirs/simsiam_demo
Demo result: kNN top-1 75.2% (random init 12.8%: zero-init residuals), digits test split
Demo runtime: 55-65 min on 2 CPU cores shared with other jobs, with kNN every 55 steps (2026-11-22)

Batch 256 (8 GPUs x 32), SGD lr 0.05 (x batch / 256) / momentum 0.9 / weight decay 1e-4 on all parameters, cosine
to 0 over 100 epochs (no warmup), the predictor at the fixed lr 0.05 (SimSiamHook); ResNet-50 with zero-init
residual BN; projector NonLinearNeck 2048-2048-2048 (3 layers, last BN without affine), predictor
NonLinearNeck 2048-512-2048 (last fc with bias, no last BN); two 224 crops (scale 0.2-1) with color jitter
(0.4, 0.4, 0.4, 0.1) p=0.8, grayscale p=0.2, Gaussian blur sigma 0.1-2.0 p=0.5, horizontal flip (MoCo v2's).

Variants: `configs/simsiam.py` (ImageNet), `configs/simsiam.py:demo` (embedded digits, ResNet-18, CPU minutes).
"""
from configs import common
from jssl.config import base_config

VARIANTS = ('demo',)


def get_config(arg=None):
  arg = common.parse_arg(arg, __file__, VARIANTS)
  c = base_config('simsiam', 'resnet50', batch_size=256, epochs=100)
  c.backbone.kwargs.zero_init_residual = True
  c.model.update({'neck_hid_channels': 2048, 'neck_out_channels': 2048, 'pred_hid_channels': 512})
  c.optimizer = common.sgd(lr=0.05 * c.batch_size / 256, weight_decay=1e-4, fixed_lr_names=('head',))  # predictor
  c.schedule.update({'name': 'cosine', 'warmup_epochs': 0., 'min_lr': 0.})
  c.data = common.imagenet_data(common.views(224, (0.2, 1.0), num=2), common.mocov2_augment(blur_kernel=23))

  if arg == 'demo':
    common.resnet_demo(c, common.views(32, (0.3, 1.0), num=2, flip_prob=0.), common.mocov2_augment(blur_kernel=3))
    c.model.update({'neck_hid_channels': 512, 'neck_out_channels': 512, 'pred_hid_channels': 128})
    c.epochs = 30
    c.optimizer.lr = 0.05 * c.batch_size / 256 * 4  # a short run: 4x the linear-scaling lr
  return c
