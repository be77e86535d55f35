"""Barlow Twins, ResNet-50, the reference recipe `barlowtwins_resnet50_8xb256-coslr-300e_in1k`.

Paper: Zbontar et al. 2021, *Barlow Twins: Self-Supervised Learning via Redundancy Reduction*
Demo: python -m jssl.main --config=configs/barlowtwins.py:demo --workdir=workdirs/barlowtwins_demo
Demo result: kNN top-1 93.3% (random init 12.8%: zero-init residuals), digits test split
Demo runtime: 2 min 50 s on 2 CPU cores (idle machine, 2026-11-22)

Batch 2048 (8 GPUs x 256), LARS lr 1.6 / momentum 0.9 / weight decay 1e-6; BN and biases excluded from weight
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
from configs import common
from jssl.config import base_config

VARIANTS = ('demo',)


def get_config(arg=None):
  arg = common.parse_arg(arg, __file__, VARIANTS)
  c = base_config('barlowtwins', 'resnet50', batch_size=2048, epochs=300)
  c.backbone.kwargs.zero_init_residual = True
  c.model.update({'lambd': 0.0051, 'neck_hid_channels': 8192, 'neck_out_channels': 8192, 'neck_num_layers': 3})
  c.optimizer = common.lars(lr=1.6, weight_decay=1e-6, excluded_lr_mult=0.024)
  c.schedule.update({'name': 'cosine', 'warmup_epochs': 10., 'warmup_start_factor': 1.6e-4, 'min_lr': 0.0016})
  # augment: view 1's (the config's single-view default); each view's own in augment_per_view
  c.data = common.imagenet_data(common.views(224, num=2, interpolation='bicubic'),
                                augment=common.byol_augment(1.0, 0.0, blur_kernel=23))
  c.data.augment_per_view = common.byol_augment_per_view(blur_kernel=23)

  if arg == 'demo':
    common.resnet_demo(c, common.views(32, (0.3, 1.0), num=2, flip_prob=0.),
                       augment=common.byol_augment(1.0, 0.0, blur_kernel=3))
    c.data.augment_per_view = common.byol_augment_per_view(blur_kernel=3)
    c.model.update({'neck_hid_channels': 512, 'neck_out_channels': 512})
    c.epochs = 30
    c.optimizer.lr = 0.2
    c.schedule.update({'warmup_epochs': 2., 'min_lr': 0.0002})
  return c
