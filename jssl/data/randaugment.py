"""RandAugment on the host (PIL), as timm's `rand_augment_transform` used by the MAE / BEiT / CAE / MaskFeat
fine-tuning recipes: `rand-m9-mstd0.5-inc1` after RandomResizedCrop + flip (mmpretrain's ports:
RandAugment(policies='timm_increasing', num_policies=2, magnitude_level=9, magnitude_std=0.5)).

Per image: `num_ops` ops drawn uniformly with replacement from the op set; each op runs with probability `prob`
(timm's default 0.5) at a magnitude level ~ N(magnitude, magnitude_std) clipped to [0, magnitude_max] (10 unless
'mmax' says otherwise; 'mstd' > 100 means U[0, magnitude]); signed ops (rotate, shear, translate, the 'increasing'
enhancements) get a random sign. Geometric ops fill with `fill` (timm: `img_mean`, the ImageNet mean in uint8)
and resample with `interpolation`: 'bicubic' in the recipes (timm's create_transform passes its interpolation to
the RandAugment hparams), 'random' picks bilinear or bicubic per op (timm's default when none is given).

Each op is a pure function of the PIL image and its argument; `level_to_arg` maps a level in [0, 10] to that
argument. The results equal timm's ops bit for bit (tests/data/test_randaugment.py). All randomness comes from
the np.random.Generator grain passes to `RandAugmentViews.random_map`.
"""
import math
import re

import grain.python as grain
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

LEVEL_DENOM = 10.0  # magnitudes are levels on a 0..10 scale
IMAGENET_FILL = (124, 116, 104)  # round(255 * ImageNet mean), timm's img_mean
RESAMPLES = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}


# ---------------------------------------------------------------------------------------------------------------
# The ops: PIL image + argument -> PIL image. Geometric ops also take the fill colour and the resample filter.

def auto_contrast(img, _=None):
  return ImageOps.autocontrast(img)


def equalize(img, _=None):
  return ImageOps.equalize(img)


def invert(img, _=None):
  return ImageOps.invert(img)


def posterize(img, bits):
  """Keeps the `bits` most significant bits of each channel; 0 bits is a black image (what ImageOps.posterize
  gave before Pillow refused bits=0, which now makes timm's op raise at the levels that map to 0 bits)."""
  if bits <= 0:
    return Image.new(img.mode, img.size)
  return img if bits >= 8 else ImageOps.posterize(img, bits)


def solarize(img, threshold):
  """Inverts the pixels >= threshold (threshold 256: no change)."""
  return ImageOps.solarize(img, threshold)


def solarize_add(img, add, threshold=128):
  """Adds `add` (saturating at 255) to the pixels below threshold."""
  values = np.arange(256)
  lut = np.where(values < threshold, np.minimum(255, values + add), values).tolist()
  return img.point(lut * len(img.getbands()))


def color(img, factor):
  return ImageEnhance.Color(img).enhance(factor)


def contrast(img, factor):
  return ImageEnhance.Contrast(img).enhance(factor)


def brightness(img, factor):
  return ImageEnhance.Brightness(img).enhance(factor)


def sharpness(img, factor):
  return ImageEnhance.Sharpness(img).enhance(factor)


def _affine(img, coefficients, fill, resample):
  # PIL's affine maps each output pixel (x, y) to the input at (a x + b y + c, d x + e y + f).
  return img.transform(img.size, Image.AFFINE, coefficients, resample=resample, fillcolor=fill)


def rotate(img, degrees, fill=IMAGENET_FILL, resample=Image.BICUBIC):
  """Counter-clockwise about the centre, same size."""
  return img.rotate(degrees, resample=resample, fillcolor=fill)


def shear_x(img, factor, fill=IMAGENET_FILL, resample=Image.BICUBIC):
  return _affine(img, (1, factor, 0, 0, 1, 0), fill, resample)


def shear_y(img, factor, fill=IMAGENET_FILL, resample=Image.BICUBIC):
  return _affine(img, (1, 0, 0, factor, 1, 0), fill, resample)


def translate_x(img, fraction, fill=IMAGENET_FILL, resample=Image.BICUBIC):
  """Shifts the image left by `fraction` of its width (right when negative)."""
  return _affine(img, (1, 0, fraction * img.size[0], 0, 1, 0), fill, resample)


def translate_y(img, fraction, fill=IMAGENET_FILL, resample=Image.BICUBIC):
  """Shifts the image up by `fraction` of its height (down when negative)."""
  return _affine(img, (1, 0, 0, 0, 1, fraction * img.size[1]), fill, resample)


# timm's op names -> op. '...Increasing' ops are the same op with a level mapping whose strength grows with the
# level (the 'inc1' set).
OPS = {
    'AutoContrast': auto_contrast,
    'Equalize': equalize,
    'Invert': invert,
    'Rotate': rotate,
    'Posterize': posterize,
    'PosterizeIncreasing': posterize,
    'Solarize': solarize,
    'SolarizeIncreasing': solarize,
    'SolarizeAdd': solarize_add,
    'Color': color,
    'ColorIncreasing': color,
    'Contrast': contrast,
    'ContrastIncreasing': contrast,
    'Brightness': brightness,
    'BrightnessIncreasing': brightness,
    'Sharpness': sharpness,
    'SharpnessIncreasing': sharpness,
    'ShearX': shear_x,
    'ShearY': shear_y,
    'TranslateXRel': translate_x,
    'TranslateYRel': translate_y,
}
GEOMETRIC = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
# Ops whose argument gets a random sign.
SIGNED = GEOMETRIC + ('ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing')

# timm's RandAugment op sets (no Cutout: random erasing runs separately, on device).
_COMMON = ('AutoContrast', 'Equalize', 'Invert', 'Rotate')
_SHAPE = ('ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
RAND_OPS = _COMMON + ('Posterize', 'Solarize', 'SolarizeAdd', 'Color', 'Contrast', 'Brightness', 'Sharpness') + _SHAPE
RAND_INCREASING_OPS = _COMMON + ('PosterizeIncreasing', 'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing',
                                 'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing') + _SHAPE


def level_to_arg(name, level, negate=False, translate_pct=0.45):
  """The argument of op `name` at magnitude `level` (0..10), as timm's LEVEL_TO_ARG; `negate` is the random sign
  of the ops in SIGNED. Returns None for the ops without an argument."""
  if name not in OPS:
    raise ValueError(f'Unknown RandAugment op {name!r}; valid: {", ".join(OPS)}')
  fraction = level / LEVEL_DENOM

  def signed(value):
    return -value if negate else value

  if name in ('AutoContrast', 'Equalize', 'Invert'):
    return None
  if name == 'Rotate':
    return signed(fraction * 30.)  # degrees in [-30, 30]
  if name in ('ShearX', 'ShearY'):
    return signed(fraction * 0.3)
  if name in ('TranslateXRel', 'TranslateYRel'):
    return signed(fraction * translate_pct)
  if name == 'Posterize':
    return int(fraction * 4)  # bits kept 0..4: stronger at low levels
  if name == 'PosterizeIncreasing':
    return 4 - int(fraction * 4)
  if name == 'Solarize':
    return min(256, int(fraction * 256))
  if name == 'SolarizeIncreasing':
    return 256 - min(256, int(fraction * 256))
  if name == 'SolarizeAdd':
    return min(128, int(fraction * 110))
  if name.endswith('Increasing'):  # enhance factor 1 -/+ up to 0.9, kept >= 0.1
    return max(0.1, 1.0 + signed(fraction * .9))
  return fraction * 1.8 + 0.1  # enhance factor in [0.1, 1.9]


def apply_op(img, name, level, negate=False, fill=IMAGENET_FILL, resample=Image.BICUBIC, translate_pct=0.45):
  """Op `name` at magnitude `level` on a PIL image."""
  arg = level_to_arg(name, level, negate, translate_pct)
  if name in GEOMETRIC:
    return OPS[name](img, arg, fill=fill, resample=resample)
  return OPS[name](img, arg)


# ---------------------------------------------------------------------------------------------------------------
# Policy strings and the grain transform.

_POLICY_KEYS = {  # timm's policy-string sections -> (constructor argument, parser)
    'm': ('magnitude', int),
    'n': ('num_ops', int),
    'p': ('prob', float),
    'mstd': ('magnitude_std', float),
    'mmax': ('magnitude_max', int),
    'inc': ('increasing', lambda v: bool(int(v))),
}


def parse_policy(policy):
  """timm's RandAugment policy string, e.g. 'rand-m9-mstd0.5-inc1', -> RandAugmentViews arguments.

  Sections missing from the string take timm's defaults for it (m10, n2, p0.5, mstd0, inc0); 'mstd' > 100 means
  uniform magnitudes (std inf), as in timm.
  """
  sections = str(policy).split('-')
  if sections[0] != 'rand':
    raise ValueError(f'RandAugment policy {policy!r} must start with "rand-"')
  args = dict(magnitude=10, num_ops=2, prob=0.5, magnitude_std=0.0, increasing=False)
  for section in sections[1:]:
    match = re.fullmatch(r'([a-z]+)(\d.*)', section)
    if not match or match.group(1) not in _POLICY_KEYS:
      raise ValueError(f'Unknown section {section!r} in RandAugment policy {policy!r}; valid: '
                       f'{", ".join(k + "<number>" for k in _POLICY_KEYS)}')
    key, parse = _POLICY_KEYS[match.group(1)]
    try:
      args[key] = parse(match.group(2))
    except ValueError:
      raise ValueError(f'Bad number in section {section!r} of RandAugment policy {policy!r}') from None
  if args['magnitude_std'] > 100:
    args['magnitude_std'] = math.inf
  return args


class RandAugmentViews(grain.RandomMapTransform):
  """RandAugment on every uint8 [H, W, 3] array of a record's 'views' (after RandomResizedCropViews).

  Arguments: num_ops ops per image, each applied with probability `prob` at a level ~ N(magnitude, magnitude_std)
  clipped to [0, magnitude_max] (magnitude_std inf: U[0, magnitude]); `increasing` picks timm's 'inc1' op set;
  `fill` is the RGB fill of geometric ops; `interpolation` is 'bicubic' | 'bilinear' | 'random' (per op);
  `translate_pct` the largest translation as a fraction of the image side. The defaults are the fine-tuning
  recipes' 'rand-m9-mstd0.5-inc1' with the ImageNet-mean fill and bicubic resampling.
  """

  def __init__(self, num_ops=2, magnitude=9, magnitude_std=0.5, magnitude_max=10, prob=0.5, increasing=True,
               fill=IMAGENET_FILL, interpolation='bicubic', translate_pct=0.45):
    if interpolation != 'random' and interpolation not in RESAMPLES:
      raise ValueError(f'RandAugment interpolation {interpolation!r}; valid: random, {", ".join(RESAMPLES)}')
    if num_ops < 0 or not 0 <= prob <= 1 or magnitude_std < 0:
      raise ValueError(f'RandAugment needs num_ops >= 0, 0 <= prob <= 1 and magnitude_std >= 0, got '
                       f'num_ops={num_ops}, prob={prob}, magnitude_std={magnitude_std}')
    self.num_ops = int(num_ops)
    self.magnitude = float(magnitude)
    self.magnitude_std = float(magnitude_std)
    self.magnitude_max = float(magnitude_max or LEVEL_DENOM)
    self.prob = float(prob)
    self.op_names = RAND_INCREASING_OPS if increasing else RAND_OPS
    self.fill = tuple(int(c) for c in fill)
    self.interpolation = interpolation
    self.translate_pct = float(translate_pct)

  @classmethod
  def from_config(cls, config):
    """From a mapping: the constructor's arguments, and/or `policy` (a timm policy string such as
    'rand-m9-mstd0.5-inc1', which sets num_ops/magnitude/magnitude_std/magnitude_max/prob/increasing)."""
    config = dict(config)
    policy = config.pop('policy', None)
    args = parse_policy(policy) if policy is not None else {}
    valid = ('num_ops', 'magnitude', 'magnitude_std', 'magnitude_max', 'prob', 'increasing', 'fill',
             'interpolation', 'translate_pct')
    unknown = sorted(set(config) - set(valid))
    if unknown:
      raise ValueError(f'Unknown RandAugment options {unknown}; valid: policy, {", ".join(valid)}')
    clash = sorted(set(config) & set(args))
    if clash:
      raise ValueError(f'RandAugment options {clash} are also set by the policy {policy!r}')
    return cls(**args, **config)

  def sample_ops(self, rng: np.random.Generator):
    """The ops one image gets: a list of (name, level, negate, resample), in order, skipped ops left out."""
    ops = []
    for index in rng.integers(0, len(self.op_names), size=self.num_ops):
      if self.prob < 1.0 and rng.random() > self.prob:
        continue
      if self.magnitude_std == math.inf:
        level = rng.uniform(0, self.magnitude)
      elif self.magnitude_std > 0:
        level = rng.normal(self.magnitude, self.magnitude_std)
      else:
        level = self.magnitude
      level = max(0., min(float(level), self.magnitude_max))
      negate = bool(rng.random() > 0.5)
      if self.interpolation == 'random':
        resample = (Image.BILINEAR, Image.BICUBIC)[int(rng.integers(2))]
      else:
        resample = RESAMPLES[self.interpolation]
      ops.append((self.op_names[index], level, negate, resample))
    return ops

  def augment(self, img, rng: np.random.Generator):
    """RandAugment of one PIL image."""
    for name, level, negate, resample in self.sample_ops(rng):
      img = apply_op(img, name, level, negate, self.fill, resample, self.translate_pct)
    return img

  def random_map(self, element, rng: np.random.Generator):
    if 'views' not in element:
      raise KeyError(f"RandAugmentViews: the record has no 'views' (keys {sorted(element)}); "
                     'put it after RandomResizedCropViews')
    out = dict(element)
    out['views'] = tuple(np.asarray(self.augment(Image.fromarray(view), rng), dtype=np.uint8)
                         for view in element['views'])
    return out
