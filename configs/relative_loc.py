"""Relative Location, ResNet-50, the reference recipe `relative-loc_resnet50_8xb64-steplr-70e_in1k`:
batch 512 images (8 GPUs x 64), each giving 8 (neighbour, centre) patch pairs; SGD lr 0.2 / momentum 0.9 / weight
decay 1e-4 on all parameters and 5e-4 on the neck and head (paramwise decay_mult 5), linear warmup from 0.1x over
5 epochs, lr x0.1 at epochs 30 and 50, 70 epochs; RelativeLocNeck (fc 4096 on the 2 x 2048 pair features, BN1d,
ReLU, dropout 0.5), ClsHead 4096 -> 8 with Normal(0.005) init. Data: Resize 292 + RandomCrop 255 (host),
grayscale p=0.66 (device), 3 x 3 cells of 85 px with a random 64-px patch in each (jitter 21).

Variants: `configs/relative_loc.py` (ImageNet), `configs/relative_loc.py:demo` (embedded digits, CPU minutes).
"""
from jssl.config import base_config, demo_run, digits_data, imagenet_data


def get_config(arg=None):
  c = base_config()
  c.method = 'relative_loc'
  c.batch_size = 512                  # images; the loss sees 8 pairs per image
  c.epochs = 70
  c.backbone.name = 'resnet50'
  c.model.patch_size = 64             # cells are view_size // 3 = 85 px: a jitter of up to 21 px
  c.model.neck_out_channels = 4096
  c.model.neck_dropout = 0.5
  c.model.head_init_std = 0.005
  c.optimizer.name = 'sgd'
  c.optimizer.lr = 0.2
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.exclude_1d_from_decay = False  # torch SGD: decay on BN and biases too
  c.optimizer.decay_mult = {'neck': 5., 'head': 5.}
  c.schedule.update({'name': 'step', 'warmup_epochs': 5., 'warmup_start_factor': 0.1, 'milestones': (30, 50),
                     'gamma': 0.1})
  c.data = imagenet_data(views=[dict(resize=292, size=255, interpolation='bilinear', flip_prob=0.)],
                         augment=[dict(type='RandomGrayscale', prob=0.66)])

  if arg == 'demo':
    # 32-px digits -> Resize 37 + RandomCrop 33 -> 3 x 3 cells of 11 px -> 8-px patches (jitter 3, ~the reference's
    # 21/85 of a cell); the resize/crop ratio 37/33 ~ 292/255
    size = 32
    c.data = digits_data(views=[dict(resize=37, size=33, interpolation='bilinear', flip_prob=0.)],
                         augment=[dict(type='RandomGrayscale', prob=0.66)], image_size=size)
    demo_run(c, size)
    c.model.patch_size = 8
    # ResNet-18 at half width: XLA's CPU convolutions fall off a cliff at 64+ channels on 1x1/2x2 maps
    c.backbone.name = 'resnet18'
    c.backbone.kwargs.num_filters = 32
    c.model.neck_out_channels = 512
    c.batch_size = 64
    c.epochs = 16
    c.optimizer.lr = 0.1
    c.schedule.update({'warmup_epochs': 1., 'milestones': (7, 11)})
  elif arg:
    raise ValueError(f"configs/relative_loc.py: unknown variant '{arg}'; valid: demo")
  return c
