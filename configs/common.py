"""Recipe pieces the configs share (as big_vision's configs/common.py): the variant argument, the data blocks of
ImageNet and of the embedded digits, the augmentation recipes of the reference configs, the optimizers as those
configs set them, and the settings of every `:demo`. Library code never imports this: a recipe is a config's choice.

Every method config's docstring starts `<Method>, <backbone>, the reference recipe `<MMSelfSup config>`.`, then
one block of `Key: value` lines (a value may wrap onto the next lines), the single place its demo's figures live;
tools/methods_table.py puts them in README.md (configs/eval/: in docs/evaluation.md, a Demo triple per demo):

  Paper: <authors year>, *<title>*
  Page: docs/methods/<page>.md          (only where it is not docs/methods/<m>.md)
  Demo: python -m jssl.main --config=configs/<m>.py:demo --workdir=workdirs/<m>_demo
  Demo result: kNN top-1 <trained>% (random init <the same network untrained>%)[, ...], digits test split
  Demo runtime: <wall time>, <hardware> (<how and when measured>)

Each config lists its variants in VARIANTS (`configs/<m>.py:<variant>`; none: the reference recipe).
"""
import os

import ml_collections

from jssl.config import IMAGENET_MEAN, IMAGENET_STD


def parse_arg(arg, path, variants):
  """`get_config`'s argument (`configs/x.py:<variant>`) -> the variant name, '' for the reference recipe."""
  arg = arg or ''
  if arg and arg not in variants:
    parts = os.path.normpath(path).split(os.sep)
    if 'configs' in parts:  # 'configs/eval/linear.py' wherever the checkout is
      path = '/'.join(parts[len(parts) - 1 - parts[::-1].index('configs'):])
    raise ValueError(f"{path}: unknown variant '{arg}'; valid: {', '.join(sorted(variants))}")
  return arg


# --- data -------------------------------------------------------------------------------------------------------

def views(size, scale=(0.08, 1.0), num=None, flip_prob=0.5, interpolation='bilinear', **extra):
  """One group of host crops: `num` RandomResizedCrops of `size` px (torchvision's sampling) + flip."""
  view = dict(size=size, scale=scale, interpolation=interpolation, flip_prob=flip_prob, **extra)
  if num is not None:
    view['num'] = num
  return [view]


def imagenet_data(views, augment) -> ml_collections.ConfigDict:
  """ImageNet in the MMSelfSup layout: data/imagenet/{train,val}/ class folders (or meta/*.txt lists via
  name='imagelist'), or an ArrayRecord TFDS imagenet2012 via name='tfds'."""
  return ml_collections.ConfigDict({
      'name': 'imagefolder', 'root': 'data/imagenet', 'train_split': 'train', 'val_split': 'val',
      'train_ann_file': 'meta/train.txt', 'val_ann_file': 'meta/val.txt', 'tfds_name': 'imagenet2012',
      'train_subset_file': '',  # semi-supervised: SimCLR's 1percent.txt / 10percent.txt (see jssl/data/sources.py)
      'image_size': 224, 'workers': 8, 'views': views, 'augment': augment,
      'skip_corrupt_images': False,  # True: an unreadable image's record -> the next readable one, warned, counted
      'mean': IMAGENET_MEAN, 'std': IMAGENET_STD,
  })


def digits_data(views, augment, image_size=32) -> ml_collections.ConfigDict:
  """The embedded demo dataset: scikit-learn's 8x8 digits upsampled to `image_size` RGB (ships with sklearn)."""
  return ml_collections.ConfigDict({
      'name': 'digits', 'root': '', 'train_split': 'train', 'val_split': 'test',
      'train_ann_file': '', 'val_ann_file': '', 'tfds_name': '',
      'image_size': image_size, 'workers': 0, 'views': views, 'augment': augment, 'skip_corrupt_images': False,
      'mean': IMAGENET_MEAN, 'std': IMAGENET_STD,
  })


# --- the augmentation recipes of the reference configs (on-device ops, after the host's crop + flip) -----------
# blur_kernel: the blur kernel, ~10% of the crop (23 at 224); sigma is sampled per image.

def simclr_augment(blur_kernel):
  """SimCLR, SwAV: strong color jitter (0.8, 0.8, 0.8, 0.2) p=0.8, grayscale p=0.2, blur p=0.5."""
  return [
      dict(type='ColorJitter', brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, prob=0.8),
      dict(type='RandomGrayscale', prob=0.2),
      dict(type='GaussianBlur', sigma_min=0.1, sigma_max=2.0, kernel_size=blur_kernel, prob=0.5),
  ]


def mocov2_augment(blur_kernel):
  """MoCo v2, SimSiam, DenseCL, InterCLR: color jitter (0.4, 0.4, 0.4, 0.1) p=0.8, grayscale p=0.2, blur p=0.5."""
  return [
      dict(type='ColorJitter', brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, prob=0.8),
      dict(type='RandomGrayscale', prob=0.2),
      dict(type='GaussianBlur', sigma_min=0.1, sigma_max=2.0, kernel_size=blur_kernel, prob=0.5),
  ]


def mocov1_augment():
  """MoCo v1, NPID: grayscale p=0.2, then color jitter (0.4, 0.4, 0.4, 0.4) always."""
  return [
      dict(type='RandomGrayscale', prob=0.2),
      dict(type='ColorJitter', brightness=0.4, contrast=0.4, saturation=0.4, hue=0.4, prob=1.0),
  ]


def byol_augment(blur_prob, solarize_prob, blur_kernel):
  """BYOL's view pipeline: color jitter (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale p=0.2, blur, solarize (threshold 128)."""
  return [
      dict(type='ColorJitter', brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, prob=0.8),
      dict(type='RandomGrayscale', prob=0.2),
      dict(type='GaussianBlur', sigma_min=0.1, sigma_max=2.0, kernel_size=blur_kernel, prob=blur_prob),
      dict(type='Solarize', threshold=0.5, prob=solarize_prob),
  ]


def byol_augment_per_view(blur_kernel):
  """BYOL, Barlow Twins, MoCo v3: asymmetric views, blur p=1.0 / solarize 0 and blur p=0.1 / solarize p=0.2."""
  return [byol_augment(1.0, 0.0, blur_kernel), byol_augment(0.1, 0.2, blur_kernel)]


def clustering_augment():
  """DeepCluster's and ODC's on-device augmentation (after the host's RandomResizedCrop + flip)."""
  return [dict(type='RandomRotation', degrees=2.),
          dict(type='ColorJitter', brightness=0.4, contrast=0.4, saturation=1.0, hue=0.5, prob=1.0),
          dict(type='RandomGrayscale', prob=0.2)]


# --- optimizers as the reference configs set them -----------------------------------------------------------------
# grad_clip_norm 0: no clipping; grad_accum_steps: micro-batches per update (`batch_size` is then the micro-batch)

def sgd(lr, weight_decay, **extra):
  """torch SGD, momentum 0.9: weight decay on every parameter, BN and biases too (no paramwise_cfg)."""
  return ml_collections.ConfigDict(dict(name='sgd', lr=lr, momentum=0.9, weight_decay=weight_decay,
                                        exclude_1d_from_decay=False, grad_clip_norm=0., grad_accum_steps=1, **extra))


def lars(lr, weight_decay=1e-6, **extra):
  """LARS, momentum 0.9; BN and biases (1-D params) excluded from weight decay and the trust ratio unless
  exclude_1d_from_decay=False."""
  return ml_collections.ConfigDict(dict(name='lars', lr=lr, momentum=0.9, weight_decay=weight_decay,
                                        grad_clip_norm=0., grad_accum_steps=1, **extra))


def adamw(lr, betas, weight_decay, no_decay_names, grad_clip_norm=0., **extra):
  """AdamW without decay on 1-D params (norms, biases) and on the parameters named in `no_decay_names`."""
  return ml_collections.ConfigDict(dict(name='adamw', lr=lr, betas=betas, weight_decay=weight_decay,
                                        no_decay_names=no_decay_names, grad_clip_norm=grad_clip_norm,
                                        grad_accum_steps=1, **extra))


# --- the `:demo` variants: the embedded digits, minutes on a 2-core CPU ---------------------------------------

def demo_run(c: ml_collections.ConfigDict, image_size: int) -> None:
  """Run-level settings of every ':demo' variant; a pretraining demo ends with kNN and a quick linear probe."""
  c.log_every = 10
  c.checkpoint.every = 100
  c.eval.update({'batch_size': 256, 'resize': image_size, 'crop': image_size})
  if 'quick_linear' in c.evals:  # (an evaluator config's classifier stays alone)
    c.evals.quick_linear.at_end = True


def digits_demo(c, views, augment, size=32, batch_size=128):
  """The digits at `size` px in place of ImageNet, with the demo's run settings."""
  c.data = digits_data(views=views, augment=augment, image_size=size)
  demo_run(c, size)
  c.batch_size = batch_size


def resnet_demo(c, views, augment, size=32, batch_size=128):
  """The demo of a ResNet method: the digits and a ResNet-18 at half width (XLA's CPU convolutions fall off a cliff
  at 64+ channels on 1x1/2x2 maps)."""
  digits_demo(c, views, augment, size, batch_size)
  c.backbone.name = 'resnet18'
  c.backbone.kwargs.num_filters = 32
