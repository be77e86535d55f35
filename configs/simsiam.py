"""SimSiam, ResNet-50, the reference recipe `simsiam_resnet50_8xb32-coslr-100e_in1k`:
batch 256 (8 GPUs x 32), SGD lr 0.05 (x batch / 256) / momentum 0.9 / weight decay 1e-4 on all parameters, cosine
to 0 over 100 epochs (no warmup), the predictor at the fixed lr 0.05 (SimSiamHook); ResNet-50 with zero-init
residual BN; projector NonLinearNeck 2048-2048-2048 (3 layers, last BN without affine), predictor
NonLinearNeck 2048-512-2048 (last fc with bias, no last BN); two 224 crops (scale 0.2-1) with color jitter
(0.4, 0.4, 0.4, 0.1) p=0.8, grayscale p=0.2, Gaussian blur sigma 0.1-2.0 p=0.5, horizontal flip (MoCo v2's).

Variants: `configs/simsiam.py` (ImageNet), `configs/simsiam.py:demo` (embedded digits, ResNet-18, CPU minutes).
"""
from jssl.config import base_config, demo_run, digits_data, imagenet_data, mocov2_augment


def get_config(arg=None):
  c = base_config()
  c.method = 'simsiam'
  c.batch_size = 256
  c.epochs = 100
  c.backbone.name = 'resnet50'
  c.backbone.kwargs.zero_init_residual = True
  c.model.neck_hid_channels = 2048
  c.model.neck_out_channels = 2048
  c.model.pred_hid_channels = 512
  c.optimizer.name = 'sgd'
  c.optimizer.lr = 0.05 * c.batch_size / 256
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.exclude_1d_from_decay = False  # torch SGD: weight decay on BN and biases too
  c.optimizer.fixed_lr_names = ('head',)     # the predictor
  c.optimizer.grad_clip_norm = 0.
  c.optimizer.grad_accum_steps = 1
  c.schedule.update({'name': 'cosine', 'warmup_epochs': 0., 'min_lr': 0.})
  # kernel_size 23 ~ 10% of 224; sigma sampled per image
  c.data = imagenet_data(views=[dict(size=224, scale=(0.2, 1.0), interpolation='bilinear', flip_prob=0.5, num=2)],
                         augment=mocov2_augment(blur_kernel=23))

  if arg == 'demo':
    size = 32
    c.data = digits_data(views=[dict(size=size, scale=(0.3, 1.0), interpolation='bilinear', flip_prob=0.0, num=2)],
                         augment=mocov2_augment(blur_kernel=3), image_size=size)
    demo_run(c, size)
    # ResNet-18 at half width: XLA's CPU convolutions fall off a cliff at 64+ channels on 1x1/2x2 maps
    c.backbone.name = 'resnet18'
    c.backbone.kwargs.num_filters = 32
    c.model.neck_hid_channels = 512
    c.model.neck_out_channels = 512
    c.model.pred_hid_channels = 128
    c.batch_size = 128
    c.epochs = 30
    c.optimizer.lr = 0.05 * c.batch_size / 256 * 4  # a short run: 4x the linear-scaling lr
  elif arg:
    raise ValueError(f"configs/simsiam.py: unknown variant '{arg}'; valid: demo")
  return c
