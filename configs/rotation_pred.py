"""Rotation Prediction, ResNet-50, the reference recipe `rotation-pred_resnet50_8xb16-steplr-70e_in1k`:
batch 128 images (8 GPUs x 16), each in 4 rotations (512 samples); SGD lr 0.2 / momentum 0.9 / weight decay 1e-4 on
all parameters, linear warmup from 0.1x over 5 epochs, lr x0.1 at epochs 30 and 50, 70 epochs; ClsHead (pool +
linear 2048 -> 4, Normal(0.01) init); RandomResizedCrop 224 + flip; SyncBN.

Variants: `configs/rotation_pred.py` (ImageNet), `configs/rotation_pred.py:demo` (embedded digits, CPU minutes).
"""
from jssl.config import base_config, demo_run, digits_data, imagenet_data


def get_config(arg=None):
  c = base_config()
  c.method = 'rotation_pred'
  c.batch_size = 128                  # images; the loss sees 4x as many samples
  c.epochs = 70
  c.backbone.name = 'resnet50'
  c.model.head_init_std = 0.01
  c.optimizer.name = 'sgd'
  c.optimizer.lr = 0.2
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.exclude_1d_from_decay = False  # torch SGD without paramwise_cfg: decay on BN and biases too
  c.schedule.update({'name': 'step', 'warmup_epochs': 5., 'warmup_start_factor': 0.1, 'milestones': (30, 50),
                     'gamma': 0.1})
  # no color augmentation in the reference: the device only normalizes (and rotates, in the method)
  c.data = imagenet_data(views=[dict(size=224, scale=(0.08, 1.0), interpolation='bilinear', flip_prob=0.5)],
                         augment=[])

  if arg == 'demo':
    size = 32
    c.data = digits_data(views=[dict(size=size, scale=(0.08, 1.0), interpolation='bilinear', flip_prob=0.5)],
                         augment=[], image_size=size)
    demo_run(c, size)
    # ResNet-18 at half width: XLA's CPU convolutions fall off a cliff at 64+ channels on 1x1/2x2 maps
    c.backbone.name = 'resnet18'
    c.backbone.kwargs.num_filters = 32
    c.batch_size = 64                 # 256 rotated samples per step
    c.epochs = 16
    c.optimizer.lr = 0.1
    c.schedule.update({'warmup_epochs': 1., 'milestones': (7, 11)})
  elif arg:
    raise ValueError(f"configs/rotation_pred.py: unknown variant '{arg}'; valid: demo")
  return c
