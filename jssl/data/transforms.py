"""Host-side grain transforms (numpy + PIL), run in the grain worker processes.

Records from the sources are dicts {'image': uint8 [H, W, 3], 'label': int32, 'index': int64}. The host does
only the geometric part of the pipeline (random-resized crops, resize + random crop, flips, resize + center crop);
color and blur augmentations run batched on device (augment.py).

Crops and resizes reproduce torchvision on PIL images exactly: the crop box is sampled as in
RandomResizedCrop.get_params and the cropped region is resized by PIL, so outputs equal
torchvision.transforms.functional.resized_crop(pil_image, ...) bit for bit.
"""
import math

import grain.python as grain
import numpy as np
from PIL import Image

INTERPOLATIONS = {
    'bilinear': Image.BILINEAR,
    'bicubic': Image.BICUBIC,
    'lanczos': Image.LANCZOS,   # BEiT / CAE tokenizer inputs (second_interpolation)
}


def _resample(interpolation):
  if interpolation not in INTERPOLATIONS:
    raise ValueError(f'Unknown interpolation {interpolation!r}; valid: {", ".join(INTERPOLATIONS)}')
  return INTERPOLATIONS[interpolation]


def crop_params(rng: np.random.Generator, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """torchvision RandomResizedCrop.get_params: returns (top, left, crop_height, crop_width).

  Up to 10 tries of an area fraction ~ U[scale] and an aspect ratio (w / h) log-uniform in `ratio`; if none
  fits in the image, the largest central crop whose aspect ratio is clamped into `ratio`.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect_ratio)))
    h = int(round(math.sqrt(target_area / aspect_ratio)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w = width
    h = int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    h = height
    w = int(round(h * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def resize_shorter_side(image: Image.Image, size, resample):
  """torchvision Resize(size) (an int) on a PIL image: the shorter side becomes `size`, the longer one is scaled
  and truncated (torchvision's _compute_resized_output_size), the aspect ratio kept."""
  width, height = image.size
  short, long = min(width, height), max(width, height)
  new_short, new_long = size, int(size * long / short)
  new_size = (new_short, new_long) if width <= height else (new_long, new_short)
  return image if new_size == image.size else image.resize(new_size, resample)


def random_crop_params(rng: np.random.Generator, height, width, size):
  """torchvision RandomCrop.get_params for a (size, size) crop: (top, left), each uniform over the valid range."""
  if size > min(height, width):
    raise ValueError(f'random crop of {size} px from a {height}x{width} image; resize to at least {size} first')
  return int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))


def resized_crop(image: Image.Image, top, left, height, width, size, resample):
  """Crop then resize to (size, size), as torchvision's F.resized_crop on a PIL image.

  The crop comes first on purpose: PIL's `resize(box=...)` lets the filter read pixels outside the box, which
  changes the border pixels relative to torchvision.
  """
  crop = image.crop((left, top, left + width, top + height))
  return crop.resize((size, size), resample)


class RandomResizedCropViews(grain.RandomMapTransform):
  """Makes the SSL views of one image: per view a random-resized crop and a random horizontal flip.

  `views` is a list of specs, each a mapping with `size` and optionally `scale` (default (0.08, 1.0)),
  `ratio` ((3/4, 4/3)), `interpolation` ('bilinear' | 'bicubic'), `flip_prob` (0.5) and `num` (1: repeat the
  spec). E.g. SwAV's multi-crop: [dict(size=224, num=2, scale=(0.14, 1.)), dict(size=96, num=6, scale=(0.05, 0.14))].
  A spec with `resize` instead of `scale`/`ratio` is torchvision's Resize(resize) (shorter side) followed by
  RandomCrop(size), e.g. Relative Location's dict(resize=292, size=255, flip_prob=0.).
  A spec with `second_size` (and `second_interpolation`, default 'lanczos') also resizes the same crop, flipped
  alike, to second_size: the official BEiT / CAE RandomResizedCropAndInterpolationWithTwoPic (PIL), whose
  second image feeds the DALL-E tokenizer; it follows its view in 'views' (see `view_sizes`).
  Output: the record without 'image', plus 'views': a tuple of uint8 [size, size, 3] arrays.
  """

  def __init__(self, views):
    self.views = []
    for spec in views:
      spec = dict(spec)
      unknown = set(spec) - {'size', 'scale', 'ratio', 'interpolation', 'flip_prob', 'num', 'resize',
                             'second_size', 'second_interpolation'}
      if unknown:
        raise ValueError(f'Unknown view options {sorted(unknown)} in {spec}')
      if spec.get('resize') is not None and ({'scale', 'ratio', 'second_size'} & set(spec)
                                             or int(spec['resize']) < int(spec['size'])):
        raise ValueError(f'config.data.views: a view with resize takes no scale/ratio/second_size and needs '
                         f'resize >= size: {spec}')
      view = dict(
          size=int(spec['size']),
          resize=None if spec.get('resize') is None else int(spec['resize']),
          scale=tuple(spec.get('scale', (0.08, 1.0))),
          ratio=tuple(spec.get('ratio', (3 / 4, 4 / 3))),
          resample=_resample(spec.get('interpolation', 'bilinear')),
          flip_prob=float(spec.get('flip_prob', 0.5)),
          second_size=int(spec['second_size']) if spec.get('second_size') else None,
          second_resample=_resample(spec.get('second_interpolation', 'lanczos')),
      )
      self.views.extend([view] * int(spec.get('num', 1)))

  def random_map(self, element, rng: np.random.Generator):
    image = Image.fromarray(element['image'])
    views = []
    for view in self.views:
      second = None
      if view['resize'] is None:
        top, left, h, w = crop_params(rng, image.height, image.width, view['scale'], view['ratio'])
        crop = resized_crop(image, top, left, h, w, view['size'], view['resample'])
        if view['second_size']:
          second = resized_crop(image, top, left, h, w, view['second_size'], view['second_resample'])
      else:
        resized = resize_shorter_side(image, view['resize'], view['resample'])
        top, left = random_crop_params(rng, resized.height, resized.width, view['size'])
        crop = resized.crop((left, top, left + view['size'], top + view['size']))
      # Drawn after the crop, as torchvision's RandomResizedCrop -> RandomHorizontalFlip does.
      if rng.random() < view['flip_prob']:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        second = second and second.transpose(Image.FLIP_LEFT_RIGHT)
      views.append(np.asarray(crop, dtype=np.uint8))
      if second is not None:
        views.append(np.asarray(second, dtype=np.uint8))
    out = {k: v for k, v in element.items() if k != 'image'}
    out['views'] = tuple(views)
    return out


class ResizeCenterCrop(grain.MapTransform):
  """torchvision Resize(resize) (shorter side) + CenterCrop(crop) on the PIL image, for kNN / linear eval."""

  def __init__(self, resize=256, crop=224, interpolation='bilinear'):
    if crop > resize:
      raise ValueError(f'crop ({crop}) must not exceed resize ({resize})')
    self.resize = int(resize)
    self.crop = int(crop)
    self.resample = _resample(interpolation)

  def map(self, element):
    image = resize_shorter_side(Image.fromarray(element['image']), self.resize, self.resample)
    top = int(round((image.height - self.crop) / 2.0))
    left = int(round((image.width - self.crop) / 2.0))
    image = image.crop((left, top, left + self.crop, top + self.crop))
    out = dict(element)
    out['image'] = np.asarray(image, dtype=np.uint8)
    return out


class ResizeSquash(grain.MapTransform):
  """torchvision Resize(resize) (shorter side) then Resize((size, size)): the whole image squashed to a square, no
  crop; MMSelfSup's feature extraction for the VOC07 SVM benchmark. resize=0 skips the first step."""

  def __init__(self, resize=256, size=224, interpolation='bilinear'):
    self.resize = int(resize)
    self.size = int(size)
    self.resample = _resample(interpolation)

  def map(self, element):
    image = Image.fromarray(element['image'])
    if self.resize:
      image = resize_shorter_side(image, self.resize, self.resample)
    if image.size != (self.size, self.size):
      image = image.resize((self.size, self.size), self.resample)
    out = dict(element)
    out['image'] = np.asarray(image, dtype=np.uint8)
    return out


def view_sizes(views_cfg):
  """The sizes of the arrays in 'views', in order: `num` repeats of each spec's size, each followed by its
  second_size when it has one."""
  sizes = []
  for v in views_cfg:
    sizes += ([v['size']] + ([v['second_size']] if v.get('second_size') else [])) * v.get('num', 1)
  return sizes


def build_pretrain_transform(views_cfg):
  """The host-side pretraining transform for a config's list of view specs."""
  return RandomResizedCropViews(views_cfg)


def train_transforms(data):
  """The host-side transforms of a training run's records (`data`: config.data): the views' crops, then
  RandAugment where config.data.randaugment names a policy (e.g. 'rand-m9-mstd0.5-inc1', fine-tuning), filled
  with the mean colour as timm's."""
  crops = [build_pretrain_transform([dict(v) for v in data.views])]
  if data.get('randaugment'):
    from jssl.data.randaugment import RandAugmentViews
    fill = tuple(min(255, round(255 * m)) for m in data.mean)
    try:
      crops.append(RandAugmentViews.from_config(dict(policy=data.randaugment, fill=fill, interpolation='bicubic')))
    except ValueError as e:
      raise ValueError(f'config.data.randaugment: {e}') from None
  return crops
