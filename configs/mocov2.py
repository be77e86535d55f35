"""MoCo v2, ResNet-50, the reference recipe `mocov2_resnet50_8xb32-coslr-200e_in1k`:
batch 256 (8 GPUs x 32), SGD lr 0.03 / momentum 0.9 / weight decay 1e-4, cosine over 200 epochs (no warmup);
MoCoV2Neck 2048-2048-128, InfoNCE at temperature 0.2 against a queue of 65,536 keys, key encoder momentum 0.999,
shuffle-BN over 8 groups (the reference's 8 GPUs); two 224 crops (scale 0.2-1) with color jitter (0.4, 0.4, 0.4, 0.1)
p=0.8, grayscale p=0.2, Gaussian blur sigma 0.1-2.0 p=0.5, horizontal flip.

Variants: `configs/mocov2.py` (ImageNet), `configs/mocov2.py:demo` (embedded digits, half-width ResNet-18, 30 epochs,
queue 512, key momentum 0.99, lr 0.06 after a 2-epoch warmup; CPU minutes).
"""
from jssl.config import base_config, demo_run, digits_data, imagenet_data, mocov2_augment


def get_config(arg=None):
  c = base_config()
  c.method = 'mocov2'
  c.batch_size = 256
  c.epochs = 200
  c.backbone.name = 'resnet50'
  c.model.neck = 'mocov2'
  c.model.neck_hid_channels = 2048
  c.model.neck_out_channels = 128
  c.model.temperature = 0.2
  c.model.queue_len = 65536
  c.model.momentum = 0.999
  c.model.shuffle_bn_groups = 8
  c.optimizer.name = 'sgd'
  c.optimizer.lr = 0.03
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.exclude_1d_from_decay = False  # torch SGD: weight decay on BN and biases too
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
    c.model.neck_hid_channels = 256
    c.batch_size = 128
    c.epochs = 30
    # A queue of 4 batches and a 2-epoch warmup: while the queue still holds its random initial rows, the loss only
    # pulls queries towards their keys (random negatives repel nothing), and a full-lr step then collapses all
    # features onto one direction, after which the loss sits at ln(K + 1) with vanishing gradients.
    c.model.queue_len = 512
    c.model.momentum = 0.99   # a few hundred steps: the key encoder must follow within the run
    c.optimizer.lr = 0.06
    c.schedule.warmup_epochs = 2.
  elif arg:
    raise ValueError(f"configs/mocov2.py: unknown variant '{arg}'; valid: demo")
  return c
