"""SwAV, ResNet-50, the reference recipe `swav_resnet50_8xb32-mcrop-2-6-coslr-200e_in1k-224-96`.

Paper: Caron et al. 2020, *Unsupervised Learning of Visual Features by Contrasting Cluster Assignments*
Demo: python -m jssl.main --config=configs/swav.py:demo --workdir=workdirs/swav_demo
Demo result: kNN top-1 78.0% (random init 12.8%: zero-init residuals), digits test split
Demo runtime: 27 min 12 s (8 min 22 s of CPU time) on 2 CPU cores shared with other jobs (load average ~26;
2026-11-22)

Batch 256 (8 GPUs x 32), 200 epochs; multi-crop: 2 crops at 224 px (scale 0.14-1) + 6 crops at 96 px (scale
0.05-0.14), each with flip p=0.5, color jitter (0.8, 0.8, 0.8, 0.2) p=0.8, grayscale p=0.2, Gaussian blur
sigma 0.1-2.0 p=0.5; ResNet-50 with zero-init residuals; SwAVNeck 2048-2048-128 (fc-BN-ReLU-fc, L2-normalized);
3000 prototypes of dim 128; Sinkhorn-Knopp 3 iterations, epsilon 0.05; temperature 0.1; codes from crops 0 and 1;
queue of 3840 embeddings from epoch 15; prototypes frozen for the first 5005 iterations.
LARS lr 0.6 / momentum 0.9 / weight decay 1e-6 / eta 0.001 on every parameter (the reference config has no
paramwise_cfg: BN and biases are adapted and decayed too); cosine from 0.6 to 6e-4 over the 200 epochs, per
iteration, no warmup (the SwAV config replaces the base schedule's warmup + cosine by one CosineAnnealingLR).

Variants: `configs/swav.py` (ImageNet), `configs/swav.py:demo` (embedded digits, ResNet-18, CPU minutes).
"""
from configs import common
from jssl.config import base_config

VARIANTS = ('demo',)


def get_config(arg=None):
  arg = common.parse_arg(arg, __file__, VARIANTS)
  c = base_config('swav', 'resnet50', batch_size=256, epochs=200)
  c.backbone.kwargs.zero_init_residual = True
  c.model.update({'neck_hid_channels': 2048, 'neck_out_channels': 128, 'num_prototypes': 3000, 'temperature': 0.1})
  c.model.update({'epsilon': 0.05, 'sinkhorn_iterations': 3, 'crops_for_assign': (0, 1)})
  c.model.queue_length = 3840               # global (the reference's 8 GPUs x 480)
  c.model.epoch_queue_starts = 15
  c.model.freeze_prototypes_iters = 5005
  # no paramwise_cfg in the reference: LARS on everything
  c.optimizer = common.lars(lr=0.6, weight_decay=1e-6, trust_coefficient=0.001, exclude_1d_from_decay=False)
  c.schedule.update({'name': 'cosine', 'warmup_epochs': 0., 'warmup_start_factor': 1.0, 'min_lr': 6e-4})
  # PIL's GaussianBlur(radius=sigma) in the reference: a 23-tap kernel covers sigma <= 2 on both crop sizes
  crops = common.views(224, (0.14, 1.0), num=2) + common.views(96, (0.05, 0.14), num=6)
  c.data = common.imagenet_data(crops, common.simclr_augment(blur_kernel=23))

  if arg == 'demo':
    crops = common.views(32, (0.3, 1.0), num=2, flip_prob=0.) + common.views(16, (0.1, 0.3), num=4, flip_prob=0.)
    common.resnet_demo(c, crops, common.simclr_augment(blur_kernel=3))
    c.model.update({'neck_hid_channels': 256, 'neck_out_channels': 64})
    # 30 prototypes for 10 classes: Sinkhorn spreads each batch of 128 evenly, ~4 samples per prototype
    c.model.num_prototypes = 30
    c.model.update({'queue_length': 512, 'epoch_queue_starts': 10})
    c.model.freeze_prototypes_iters = 11    # ~1 epoch, as 5005 iterations are 1 ImageNet epoch at batch 256
    c.epochs = 30
    c.optimizer.lr = 0.3
    c.schedule.min_lr = 3e-4
  return c
