"""BYOL, ResNet-50, the reference recipe `byol_resnet50_16xb256-coslr-200e_in1k`:
batch 4096 (16 GPUs x 256), LARS lr 4.8 / momentum 0.9 / weight decay 1e-6 with BN and biases excluded from weight
decay and adaptation, linear warmup from lr x 1e-4 over 10 epochs then cosine to 0, 200 epochs;
projector NonLinearNeck 2048-4096-256 (fc biases, no last BN), predictor NonLinearNeck 256-4096-256;
target momentum 0.99 -> 1 on a cosine schedule over all steps (the reference's `base_momentum=0.01` is
mmpretrain's CosineEMA `momentum`, the weight of the online network, i.e. 1 - 0.99; the paper's 1000-epoch runs
use 0.996);
two 224 crops (bicubic, flip) with color jitter (0.4, 0.4, 0.2, 0.1) p=0.8 and grayscale p=0.2, asymmetric:
view 1 Gaussian blur p=1.0 and no solarization, view 2 blur p=0.1 and solarization p=0.2.

Variants: `configs/byol.py` (ImageNet), `configs/byol.py:demo` (embedded digits, ResNet-18, CPU minutes).
"""
from jssl.config import base_config, byol_augment_per_view, demo_run, digits_data, imagenet_data


def get_config(arg=None):
  c = base_config()
  c.method = 'byol'
  c.batch_size = 4096
  c.epochs = 200
  c.backbone.name = 'resnet50'
  c.model.neck_hid_channels = 4096
  c.model.neck_out_channels = 256
  c.model.pred_hid_channels = 4096
  c.model.base_momentum = 0.99
  c.optimizer.name = 'lars'
  c.optimizer.lr = 4.8
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-6
  c.optimizer.grad_clip_norm = 0.
  c.optimizer.grad_accum_steps = 1
  c.schedule.update({'name': 'cosine', 'warmup_epochs': 10., 'warmup_start_factor': 1e-4, 'min_lr': 0.})
  views = [dict(size=224, scale=(0.08, 1.0), interpolation='bicubic', flip_prob=0.5, num=2)]
  # kernel_size 23 ~ 10% of 224; sigma sampled per image
  c.data = imagenet_data(views=views, augment=[])
  c.data.augment_per_view = byol_augment_per_view(blur_kernel=23)

  if arg == 'demo':
    size = 32
    c.data = digits_data(views=[dict(size=size, scale=(0.3, 1.0), interpolation='bilinear', flip_prob=0.0, num=2)],
                         augment=[], image_size=size)
    c.data.augment_per_view = byol_augment_per_view(blur_kernel=3)
    demo_run(c, size)
    # ResNet-18 at half width: XLA's CPU convolutions fall off a cliff at 64+ channels on 1x1/2x2 maps
    c.backbone.name = 'resnet18'
    c.backbone.kwargs.num_filters = 32
    c.model.neck_hid_channels = 512
    c.model.neck_out_channels = 128
    c.model.pred_hid_channels = 512
    c.batch_size = 128
    c.epochs = 30
    # a few hundred steps: the predictor must keep up with the projector (10x its lr, as SimSiam's fixed predictor
    # lr and DirectPred's analysis suggest), the base lr is high (1.0: ~7x the linear-scaling 4.8 x 128 / 4096) and
    # the target follows within the run (0.97/0.99 did worse); the measured sweep is in docs/methods/byol.md
    c.optimizer.lr = 1.0
    c.optimizer.lr_mult_names = ('head',)
    c.optimizer.lr_mult = 10.
    c.schedule.warmup_epochs = 2.
    c.model.base_momentum = 0.9
  elif arg:
    raise ValueError(f"configs/byol.py: unknown variant '{arg}'; valid: demo")
  return c
