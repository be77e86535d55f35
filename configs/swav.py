"""SwAV, ResNet-50, the reference recipe `swav_resnet50_8xb32-mcrop-2-6-coslr-200e_in1k-224-96`:
batch 256 (8 GPUs x 32), 200 epochs; multi-crop: 2 crops at 224 px (scale 0.14-1) + 6 crops at 96 px (scale
0.05-0.14), each with flip p=0.5, color jitter (0.8, 0.8, 0.8, 0.2) p=0.8, grayscale p=0.2, Gaussian blur
sigma 0.1-2.0 p=0.5; ResNet-50 with zero-init residuals; SwAVNeck 2048-2048-128 (fc-BN-ReLU-fc, L2-normalized);
3000 prototypes of dim 128; Sinkhorn-Knopp 3 iterations, epsilon 0.05; temperature 0.1; codes from crops 0 and 1;
queue of 3840 embeddings from epoch 15; prototypes frozen for the first 5005 iterations.
LARS lr 0.6 / momentum 0.9 / weight decay 1e-6 / eta 0.001 on every parameter (the reference config has no
paramwise_cfg: BN and biases are adapted and decayed too); cosine from 0.6 to 6e-4 over the 200 epochs, per
iteration, no warmup (the SwAV config replaces the base schedule's warmup + cosine by one CosineAnnealingLR).

Variants: `configs/swav.py` (ImageNet), `configs/swav.py:demo` (embedded digits, ResNet-18, CPU minutes).
"""
from jssl.config import base_config, demo_run, digits_data, imagenet_data, simclr_augment


def get_config(arg=None):
  c = base_config()
  c.method = 'swav'
  c.batch_size = 256
  c.epochs = 200
  c.backbone.name = 'resnet50'
  c.backbone.kwargs.zero_init_residual = True
  c.model.neck_hid_channels = 2048
  c.model.neck_out_channels = 128
  c.model.num_prototypes = 3000
  c.model.temperature = 0.1
  c.model.epsilon = 0.05
  c.model.sinkhorn_iterations = 3
  c.model.crops_for_assign = (0, 1)
  c.model.queue_length = 3840               # global (the reference's 8 GPUs x 480)
  c.model.epoch_queue_starts = 15
  c.model.freeze_prototypes_iters = 5005
  c.optimizer.name = 'lars'
  c.optimizer.lr = 0.6
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-6
  c.optimizer.trust_coefficient = 0.001
  c.optimizer.exclude_1d_from_decay = False  # no paramwise_cfg in the reference: LARS on everything
  c.optimizer.grad_clip_norm = 0.
  c.optimizer.grad_accum_steps = 1
  c.schedule.update({'name': 'cosine', 'warmup_epochs': 0., 'warmup_start_factor': 1.0, 'min_lr': 6e-4})
  # PIL's GaussianBlur(radius=sigma) in the reference: a 23-tap kernel covers sigma <= 2 on both crop sizes
  views = [dict(size=224, scale=(0.14, 1.0), interpolation='bilinear', flip_prob=0.5, num=2),
           dict(size=96, scale=(0.05, 0.14), interpolation='bilinear', flip_prob=0.5, num=6)]
  c.data = imagenet_data(views=views, augment=simclr_augment(blur_kernel=23))

  if arg == 'demo':
    size = 32
    views = [dict(size=size, scale=(0.3, 1.0), interpolation='bilinear', flip_prob=0.0, num=2),
             dict(size=16, scale=(0.1, 0.3), interpolation='bilinear', flip_prob=0.0, num=4)]
    c.data = digits_data(views=views, augment=simclr_augment(blur_kernel=3), image_size=size)
    demo_run(c, size)
    # ResNet-18 at half width: XLA's CPU convolutions fall off a cliff at 64+ channels on 1x1/2x2 maps
    c.backbone.name = 'resnet18'
    c.backbone.kwargs.num_filters = 32
    c.model.neck_hid_channels = 256
    c.model.neck_out_channels = 64
    # 30 prototypes for 10 classes: Sinkhorn spreads each batch of 128 evenly, ~4 samples per prototype
    c.model.num_prototypes = 30
    c.model.queue_length = 512
    c.model.epoch_queue_starts = 10
    c.model.freeze_prototypes_iters = 11    # ~1 epoch, as 5005 iterations are 1 ImageNet epoch at batch 256
    c.batch_size = 128
    c.epochs = 30
    c.optimizer.lr = 0.3
    c.schedule.min_lr = 3e-4
  elif arg:
    raise ValueError(f"configs/swav.py: unknown variant '{arg}'; valid: demo")
  return c
