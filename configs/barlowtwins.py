"""Barlow Twins, ResNet-50, the reference recipe `barlowtwins_resnet50_8xb256-coslr-300e_in1k`:
batch 2048 (8 GPUs x 256), LARS lr 1.6 / momentum 0.9 / weight decay 1e-6; BN and biases excluded from weight
decay and adaptation and trained at lr x 0.024 (= 0.0384, the paper's 0.0048 x 2048/256); linear warmup from
lr x 1.6e-4 over 10 epochs, then cosine to 0.0016 at epoch 300; ResNet-50 with zero-init residuals;
NonLinearNeck 2048-8192-8192-8192 (no biases, BN + ReLU between, no last BN, Kaiming-uniform fcs);
cross-correlation loss with lambda 0.0051. BYOL's asymmetric views: 224 bicubic crops, flip, color jitter
(0.4, 0.4, 0.2, 0.1) p=0.8, grayscale p=0.2, then blur p=1.0 / solarize p=0.0 on view 1 and blur p=0.1 /
solarize p=0.2 on view 2.

Known differences: the reference's cosine `eta_min` 0.0016 is absolute for every parameter group, here the BN /
bias learning rate ends at 0.0016 x 0.024; the reference normalizes the embeddings per GPU in the loss, here over
the global batch as the paper's code (SyncBN).

Variants: `configs/barlowtwins.py` (ImageNet), `configs/barlowtwins.py:demo` (embedded digits, ResNet-18, CPU minutes).
"""
from jssl.config import base_config, byol_augment, demo_run, digits_data, imagenet_data


def get_config(arg=None):
  c = base_config()
  c.method = 'barlowtwins'
  c.batch_size = 2048
  c.epochs = 300
  c.backbone.name = 'resnet50'
  c.backbone.kwargs.zero_init_residual = True
  c.model.lambd = 0.0051
  c.model.neck_hid_channels = 8192
  c.model.neck_out_channels = 8192
  c.model.neck_num_layers = 3
  c.optimizer.name = 'lars'
  c.optimizer.lr = 1.6
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-6
  c.optimizer.excluded_lr_mult = 0.024
  c.optimizer.grad_clip_norm = 0.
  c.optimizer.grad_accum_steps = 1
  c.schedule.update({'name': 'cosine', 'warmup_epochs': 10., 'warmup_start_factor': 1.6e-4, 'min_lr': 0.0016})
  views = [dict(size=224, scale=(0.08, 1.0), interpolation='bicubic', flip_prob=0.5, num=2)]
  c.data = imagenet_data(views=views, augment=byol_augment(1.0, 0.0, blur_kernel=23))
  c.data.augment_per_view = [byol_augment(1.0, 0.0, blur_kernel=23), byol_augment(0.1, 0.2, blur_kernel=23)]

  if arg == 'demo':
    size = 32
    views = [dict(size=size, scale=(0.3, 1.0), interpolation='bilinear', flip_prob=0.0, num=2)]
    c.data = digits_data(views=views, augment=byol_augment(1.0, 0.0, blur_kernel=3), image_size=size)
    c.data.augment_per_view = [byol_augment(1.0, 0.0, blur_kernel=3), byol_augment(0.1, 0.2, blur_kernel=3)]
    demo_run(c, size)
    # ResNet-18 at half width: XLA's CPU convolutions fall off a cliff at 64+ channels on 1x1/2x2 maps
    c.backbone.name = 'resnet18'
    c.backbone.kwargs.num_filters = 32
    c.model.neck_hid_channels = 512
    c.model.neck_out_channels = 512
    c.batch_size = 128
    c.epochs = 30
    c.optimizer.lr = 0.2
    c.schedule.warmup_epochs = 2.
    c.schedule.min_lr = 0.0002
  elif arg:
    raise ValueError(f"configs/barlowtwins.py: unknown variant '{arg}'; valid: demo")
  return c
