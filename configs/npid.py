"""NPID, ResNet-50, the reference recipe `npid_resnet50_8xb32-steplr-200e_in1k`:
batch 256 (8 GPUs x 32), SGD lr 0.03 / momentum 0.9 / weight decay 1e-4 (on every parameter, as torch SGD),
lr x 0.1 at epochs 120 and 160, 200 epochs; LinearNeck 2048 -> 128; memory bank of 128-d unit features of every
training image, momentum 0.5; 65,536 negatives per image drawn uniformly from the bank; softmax over
[positive, negatives] / 0.07. One 224 crop (scale 0.2-1) per image, grayscale p=0.2, color jitter
(0.4, 0.4, 0.4, 0.4) always, horizontal flip.

Variants: `configs/npid.py` (ImageNet), `configs/npid.py:demo` (embedded digits, ResNet-18, CPU minutes).
"""
from jssl.config import base_config, demo_run, digits_data, imagenet_data, mocov1_augment


def get_config(arg=None):
  c = base_config()
  c.method = 'npid'
  c.batch_size = 256
  c.epochs = 200
  c.backbone.name = 'resnet50'
  c.model.neck_out_channels = 128
  c.model.temperature = 0.07
  c.model.neg_num = 65536
  c.model.memory_momentum = 0.5     # weight of the new feature: row <- normalize(0.5 row + 0.5 feature)
  c.model.ensure_neg = False        # the reference's default: a negative may be the image itself
  c.optimizer.name = 'sgd'
  c.optimizer.lr = 0.03
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.exclude_1d_from_decay = False  # torch SGD: weight decay on BN and biases too
  c.optimizer.grad_clip_norm = 0.
  c.optimizer.grad_accum_steps = 1
  c.schedule.update({'name': 'step', 'warmup_epochs': 0., 'milestones': (120, 160), 'gamma': 0.1})
  c.data = imagenet_data(views=[dict(size=224, scale=(0.2, 1.0), interpolation='bilinear', flip_prob=0.5, num=1)],
                         augment=mocov1_augment())

  if arg == 'demo':
    size = 32
    c.data = digits_data(views=[dict(size=size, scale=(0.3, 1.0), interpolation='bilinear', flip_prob=0.0, num=1)],
                         augment=mocov1_augment(), image_size=size)
    demo_run(c, size)
    # ResNet-18 at half width: XLA's CPU convolutions fall off a cliff at 64+ channels on 1x1/2x2 maps
    c.backbone.name = 'resnet18'
    c.backbone.kwargs.num_filters = 32
    c.model.neg_num = 4096          # with replacement from the 1,437 training images
    c.batch_size = 128
    c.epochs = 30
    c.optimizer.lr = 0.03           # the reference's; 0.3 reached 59.6% kNN, 0.1 88.9% (random init 91.1%)
    c.schedule.milestones = (18, 24)
  elif arg:
    raise ValueError(f"configs/npid.py: unknown variant '{arg}'; valid: demo")
  return c
