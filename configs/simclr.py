"""SimCLR, ResNet-50, the reference recipe `simclr_resnet50_8xb32-coslr-200e_in1k`:
batch 256 (8 GPUs x 32), LARS lr 0.3 / momentum 0.9 / weight decay 1e-6 with BN and biases excluded from weight
decay and adaptation, 10 warmup epochs then cosine, 200 epochs; NonLinearNeck 2048-2048-128 with BN;
NT-Xent at temperature 0.1; two 224 crops with color jitter (0.8, 0.8, 0.8, 0.2) p=0.8, grayscale p=0.2,
Gaussian blur sigma 0.1-2.0 p=0.5.

Variants: `configs/simclr.py` (ImageNet), `configs/simclr.py:demo` (embedded digits, ResNet-18, CPU minutes).
"""
from jssl.config import base_config, demo_run, digits_data, imagenet_data, simclr_augment


def get_config(arg=None):
  c = base_config()
  c.method = 'simclr'
  c.batch_size = 256
  c.epochs = 200
  c.backbone.name = 'resnet50'
  c.model.temperature = 0.1
  c.model.neck_hid_channels = 2048
  c.model.neck_out_channels = 128
  c.model.neck_num_layers = 2
  c.optimizer.name = 'lars'
  c.optimizer.lr = 0.3
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-6
  c.optimizer.grad_clip_norm = 0.
  c.optimizer.grad_accum_steps = 1
  c.schedule.update({'name': 'cosine', 'warmup_epochs': 10., 'warmup_start_factor': 1e-4, 'min_lr': 0.})
  # kernel_size 23 ~ 10% of 224 (SimCLR paper); sigma sampled per image
  c.data = imagenet_data(views=[dict(size=224, scale=(0.08, 1.0), interpolation='bilinear', flip_prob=0.5, num=2)],
                         augment=simclr_augment(blur_kernel=23))

  if arg == 'demo':
    size = 32
    c.data = digits_data(views=[dict(size=size, scale=(0.3, 1.0), interpolation='bilinear', flip_prob=0.0, num=2)],
                         augment=simclr_augment(blur_kernel=3), image_size=size)
    demo_run(c, size)
    # ResNet-18 at half width: XLA's CPU convolutions fall off a cliff at 64+ channels on 1x1/2x2 maps
    c.backbone.name = 'resnet18'
    c.backbone.kwargs.num_filters = 32
    c.model.neck_hid_channels = 256
    c.batch_size = 128
    c.epochs = 30
    c.optimizer.lr = 0.6
    c.schedule.warmup_epochs = 2.
  elif arg:
    raise ValueError(f"configs/simclr.py: unknown variant '{arg}'; valid: demo")
  return c
