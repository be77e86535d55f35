"""Batched on-device image augmentations in jnp, run (jitted) inside the train step.

Images are float32 in [0, 1], NHWC. The per-image ops take one image [H, W, 3] and match
torchvision.transforms.functional on float tensors (same formulas, same clamping); vmap them for a batch.
The random ops take a batch [B, H, W, 3] and a PRNG key, draw their parameters per sample and apply to each
sample with its own probability (jnp.where on a Bernoulli draw), so nothing branches on traced values.

`build_augment` turns a config list such as
    [dict(type='ColorJitter', brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, prob=0.8),
     dict(type='RandomGrayscale', prob=0.2),
     dict(type='GaussianBlur', sigma_min=0.1, sigma_max=2.0, kernel_size=23, prob=0.5),
     dict(type='Solarize', threshold=0.5, prob=0.2)]
into `augment(key, images_uint8) -> normalized float32 images`. Random erasing (fine-tuning) runs on the
normalized images: build_augment normalizes before it.
"""
import functools
import inspect
import math
import numbers

import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------------------------
# Per-image ops, [H, W, 3] float32 in [0, 1].

def _blend(img, other, factor):
  return jnp.clip(factor * img + (1.0 - factor) * other, 0.0, 1.0)


def _gray(img):
  """Luma [H, W, 1] with torchvision's (ITU-R 601-2) weights."""
  return (0.2989 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2])[..., None]


def rgb_to_grayscale(img):
  """Grayscale image repeated over 3 channels."""
  return jnp.broadcast_to(_gray(img), img.shape)


def adjust_brightness(img, factor):
  # torchvision blends with a black image: factor * img + (1 - factor) * 0.
  return jnp.clip(factor * img, 0.0, 1.0)


def adjust_contrast(img, factor):
  # torchvision blends with the mean of the grayscale image (a scalar per image).
  return _blend(img, jnp.mean(_gray(img)), factor)


def adjust_saturation(img, factor):
  return _blend(img, _gray(img), factor)


def _rgb_to_hsv(img):
  """torchvision's _rgb2hsv (after Pillow's Convert.c); returns h, s, v each [H, W]."""
  r, g, b = img[..., 0], img[..., 1], img[..., 2]
  # The hue sector comes from the index of the max channel, not from float equality `maxc == r`: XLA may
  # compute `img` twice in different fusions (e.g. once per device layout), and an equality between two
  # roundings of the same value can fail, which picked the wrong sector on some pixels when sharded.
  # argmax breaks ties towards the first channel: torchvision's priority r, then g, then b.
  max_channel = jnp.argmax(img, axis=-1)
  maxc = jnp.max(img, axis=-1)
  minc = jnp.min(img, axis=-1)
  # Where maxc == minc, S and H are 0; replace the denominators by 1 so no NaN is formed (also under grad).
  eqc = maxc == minc
  chroma = maxc - minc
  s = chroma / jnp.where(eqc, 1.0, maxc)
  chroma_divisor = jnp.where(eqc, 1.0, chroma)
  rc = (maxc - r) / chroma_divisor
  gc = (maxc - g) / chroma_divisor
  bc = (maxc - b) / chroma_divisor
  h = jnp.where(max_channel == 0, bc - gc, jnp.where(max_channel == 1, 2.0 + rc - bc, 4.0 + gc - rc))
  h = jnp.fmod(h / 6.0 + 1.0, 1.0)
  return h, s, maxc


def _hsv_to_rgb(h, s, v):
  """torchvision's _hsv2rgb; returns [H, W, 3]."""
  i = jnp.floor(h * 6.0)
  f = h * 6.0 - i
  i = i.astype(jnp.int32) % 6
  p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
  q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
  t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
  sector = [i == k for k in range(6)]
  r = jnp.select(sector, [v, q, p, p, t, v])
  g = jnp.select(sector, [t, v, v, q, p, p])
  b = jnp.select(sector, [p, p, t, v, v, q])
  return jnp.stack([r, g, b], axis=-1)


def adjust_hue(img, hue_factor):
  """Rotates the hue by `hue_factor` in [-0.5, 0.5] (a fraction of the hue circle)."""
  h, s, v = _rgb_to_hsv(img)
  h = (h + hue_factor) % 1.0
  return _hsv_to_rgb(h, s, v)


def gaussian_blur(img, kernel_size: int, sigma):
  """torchvision's gaussian_blur with a square kernel: reflect padding, normalized Gaussian taps.

  torchvision convolves with the outer product of two 1-D kernels; here the two 1-D passes run separately
  (same result up to float rounding). Each pass is a sum of shifted slices, which XLA fuses and which stays
  exact float32 (a conv or matmul may run in TF32/bf16 by default on accelerators). `sigma` may be traced.
  """
  if kernel_size % 2 != 1 or kernel_size < 1:
    raise ValueError(f'kernel_size must be a positive odd integer, got {kernel_size}')
  half = (kernel_size - 1) * 0.5
  x = jnp.linspace(-half, half, kernel_size, dtype=jnp.float32)
  pdf = jnp.exp(-0.5 * (x / sigma) ** 2)
  kernel = pdf / jnp.sum(pdf)
  pad = kernel_size // 2
  height, width = img.shape[0], img.shape[1]
  padded = jnp.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode='reflect')
  rows = sum(kernel[k] * padded[k:k + height] for k in range(kernel_size))
  return sum(kernel[k] * rows[:, k:k + width] for k in range(kernel_size))


def solarize(img, threshold):
  """Inverts the pixels >= threshold."""
  return jnp.where(img >= threshold, 1.0 - img, img)


def rotate_nearest(img, angle_degrees):
  """torchvision F.rotate(img, angle) on a tensor with its defaults: counter-clockwise about the image centre,
  nearest neighbour, same size, 0 outside. Each output pixel (x, y), centred coordinates, reads the input at
  R(angle) (x, y) rounded half to even (grid_sample 'nearest', align_corners=False)."""
  h, w = img.shape[:2]
  a = jnp.deg2rad(angle_degrees)
  y, x = jnp.meshgrid(jnp.arange(h) - (h - 1) / 2, jnp.arange(w) - (w - 1) / 2, indexing='ij')
  src_x = jnp.cos(a) * x - jnp.sin(a) * y + (w - 1) / 2
  src_y = jnp.sin(a) * x + jnp.cos(a) * y + (h - 1) / 2
  ix, iy = jnp.round(src_x).astype(jnp.int32), jnp.round(src_y).astype(jnp.int32)
  inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
  out = img[jnp.clip(iy, 0, h - 1), jnp.clip(ix, 0, w - 1)]
  return jnp.where(inside[..., None], out, 0.)


def normalize(images, mean=IMAGENET_MEAN, std=IMAGENET_STD):
  """(images - mean) / std over the channel (last) axis."""
  return (images - jnp.asarray(mean, images.dtype)) / jnp.asarray(std, images.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Random ops on a batch [B, H, W, 3].

def _per_sample(key, images, prob):
  """Bernoulli(prob) draw per sample, shaped to broadcast against the batch."""
  return (jax.random.uniform(key, (images.shape[0],)) < prob)[:, None, None, None]


def _factor_range(value, name, center=1.0, bound=(0.0, math.inf), clip_first_on_zero=True):
  """torchvision ColorJitter._check_input: a number v means [center - v, center + v], or give (min, max)."""
  if isinstance(value, numbers.Real):
    if value < 0:
      raise ValueError(f'If {name} is a single number, it must be non negative, got {value}')
    value = (center - value, center + value)
    if clip_first_on_zero:
      value = (max(value[0], 0.0), value[1])
  low, high = (float(v) for v in value)
  if not bound[0] <= low <= high <= bound[1]:
    raise ValueError(f'{name} range must satisfy {bound[0]} <= min <= max <= {bound[1]}, got ({low}, {high})')
  return low, high


# Blend ops in the color jitter, by id; id 3 is hue. A blend is factor * img + (1 - factor) * other.
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = 0, 1, 2, 3


def _jitter_one(img, order, blend_factors, hue_factor, use_hue):
  """Applies the four jitter ops to one image in `order` (a permutation of the op ids).

  Brightness, contrast and saturation are all blends, so each position is one blend whose partner image is
  selected by the op id. Hue (the costly one) is applied once: blends placed before it in `order` run first,
  the others after it. That is the same as applying the ops in `order`, at the cost of one hue pass instead
  of one per position.
  """
  hue_position = jnp.argmax(order == _HUE)
  # `order` without hue; unique sort keys (hue last) so the result cannot depend on sort stability
  blend_order = order[jnp.argsort(jnp.where(order == _HUE, 4, jnp.arange(4)))[:3]]

  def blends(img, before_hue):
    for position in range(3):
      op = blend_order[position]
      gray = _gray(img)
      other = jnp.where(op == _BRIGHTNESS, 0.0, jnp.where(op == _CONTRAST, jnp.mean(gray), gray))
      blended = _blend(img, other, blend_factors[op])
      img = jnp.where((position < hue_position) == before_hue, blended, img)
    return img

  img = blends(img, before_hue=True)
  if use_hue:
    img = adjust_hue(img, hue_factor)
  return blends(img, before_hue=False)


# The batched bodies are jitted so that eager calls (tests, notebooks) compile once rather than op by op;
# inside the jitted train step they are simply inlined.
@functools.partial(jax.jit, static_argnames='use_hue')
def _jitter_batch(images, orders, blend_factors, hue_factors, use_hue):
  return jax.vmap(functools.partial(_jitter_one, use_hue=use_hue))(images, orders, blend_factors, hue_factors)


@functools.partial(jax.jit, static_argnames='kernel_size')
def _blur_batch(images, sigmas, kernel_size):
  return jax.vmap(functools.partial(gaussian_blur, kernel_size=kernel_size))(images, sigma=sigmas)


def random_color_jitter(key, images, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, prob=1.0):
  """torchvision RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p=prob), per sample.

  Each of brightness/contrast/saturation is a number b (factor ~ U[max(0, 1 - b), 1 + b]) or a (min, max)
  pair; hue is h (factor ~ U[-h, h], h <= 0.5) or a pair within [-0.5, 0.5]. The four ops run in a random
  order drawn per sample (torchvision draws one order per call, i.e. per image).
  """
  ranges = [
      _factor_range(brightness, 'brightness'),
      _factor_range(contrast, 'contrast'),
      _factor_range(saturation, 'saturation'),
  ]
  hue_range = _factor_range(hue, 'hue', center=0.0, bound=(-0.5, 0.5), clip_first_on_zero=False)
  # One uniform draw per sample for everything: few RNG calls keep the compiled step small.
  u = jax.random.uniform(key, (images.shape[0], 9))
  apply = u[:, 0] < prob
  blend_factors = jnp.stack([lo + (hi - lo) * u[:, 1 + i] for i, (lo, hi) in enumerate(ranges)], axis=1)
  hue_factors = hue_range[0] + (hue_range[1] - hue_range[0]) * u[:, 4]
  orders = jnp.argsort(u[:, 5:], axis=1)  # a uniformly random permutation of the 4 op ids per sample
  use_hue = hue_range != (0.0, 0.0)  # static: skip the HSV round trip when hue is off
  jittered = _jitter_batch(images, orders, blend_factors, hue_factors, use_hue=use_hue)
  return jnp.where(apply[:, None, None, None], jittered, images)


def random_grayscale(key, images, prob=0.1):
  """torchvision RandomGrayscale(p=prob) with 3 output channels, per sample."""
  gray = jax.vmap(rgb_to_grayscale)(images)
  return jnp.where(_per_sample(key, images, prob), gray, images)


def random_gaussian_blur(key, images, sigma_min=0.1, sigma_max=2.0, kernel_size=23, prob=1.0):
  """RandomApply([GaussianBlur(kernel_size, (sigma_min, sigma_max))], p=prob); sigma ~ U[min, max] per sample."""
  if not 0 < sigma_min <= sigma_max:
    raise ValueError(f'need 0 < sigma_min <= sigma_max, got ({sigma_min}, {sigma_max})')
  u = jax.random.uniform(key, (images.shape[0], 2))
  sigmas = sigma_min + (sigma_max - sigma_min) * u[:, 1]
  blurred = _blur_batch(images, sigmas, kernel_size=int(kernel_size))
  return jnp.where((u[:, 0] < prob)[:, None, None, None], blurred, images)


def random_solarize(key, images, threshold=0.5, prob=1.0):
  """torchvision RandomSolarize(threshold, p=prob) on [0, 1] images, per sample."""
  return jnp.where(_per_sample(key, images, prob), solarize(images, threshold), images)


def random_rotation(key, images, degrees=2.0, prob=1.0):
  """torchvision RandomRotation(degrees) (angle ~ U[-degrees, degrees] per sample, nearest, fill 0), as in
  DeepCluster's and ODC's pipelines; `prob` < 1 wraps it in RandomApply."""
  u = jax.random.uniform(key, (images.shape[0], 2))
  angles = -degrees + 2. * degrees * u[:, 1]
  rotated = jax.vmap(rotate_nearest)(images, angles)
  return jnp.where((u[:, 0] < prob)[:, None, None, None], rotated, images)


ERASE_ATTEMPTS = 10


def erasing_boxes(uniforms, height, width, min_area=0.02, max_area=1 / 3, min_aspect=0.3, max_aspect=None):
  """timm RandomErasing's box per sample, from uniforms [B, 2 * ERASE_ATTEMPTS + 2] in [0, 1).

  Up to ERASE_ATTEMPTS tries of an area ~ U[min_area, max_area] * height * width and an aspect ratio (h / w)
  log-uniform in [min_aspect, max_aspect (default 1 / min_aspect)], h and w rounded; the first try with
  h < height and w < width wins, then top ~ U{0..height - h}, left ~ U{0..width - w}. All tries are computed
  and the first fit is selected (static shapes). Columns: area and aspect draw of try k at 2k and 2k + 1, then
  top and left. Returns int32 (top, left, h, w), each [B]; h = w = 0 (nothing erased) where no try fits.
  """
  max_aspect = max_aspect or 1 / min_aspect
  log_lo, log_hi = math.log(min_aspect), math.log(max_aspect)
  tries = uniforms[:, :2 * ERASE_ATTEMPTS].reshape(-1, ERASE_ATTEMPTS, 2)
  area = (min_area + (max_area - min_area) * tries[..., 0]) * (height * width)
  aspect = jnp.exp(log_lo + (log_hi - log_lo) * tries[..., 1])
  h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (h < height) & (w < width)
  first = jnp.argmax(fits, axis=1)[:, None]
  found = jnp.any(fits, axis=1)
  h = jnp.where(found, jnp.take_along_axis(h, first, axis=1)[:, 0], 0)
  w = jnp.where(found, jnp.take_along_axis(w, first, axis=1)[:, 0], 0)

  def integer_below(u, count):  # U{0..count - 1}; the clip guards u * count rounding up to count in float32
    return jnp.minimum((u * count).astype(jnp.int32), count - 1)

  top = integer_below(uniforms[:, -2], height - h + 1)
  left = integer_below(uniforms[:, -1], width - w + 1)
  return top, left, h, w


def random_erasing(key, images, prob=0.25, min_area=0.02, max_area=1 / 3, min_aspect=0.3, max_aspect=None,
                   mode='pixel'):
  """timm RandomErasing(probability=prob, mode=mode, max_count=1) on *normalized* images [B, H, W, C], per sample.

  One rectangle per erased sample (see `erasing_boxes`), filled with N(0, 1) noise per pixel ('pixel'; the
  fine-tuning recipes, = mmpretrain's RandomErasing(mode='rand', fill_color=mean, fill_std=std) up to its uint8
  rounding), one N(0, 1) colour per sample ('rand') or 0 ('const'). The box is a mask, so shapes stay static.
  """
  if mode not in ('pixel', 'rand', 'const'):
    raise ValueError(f"RandomErasing mode {mode!r}; valid: 'pixel', 'rand', 'const'")
  if not 0 < min_area <= max_area or min_aspect <= 0:
    raise ValueError(f'RandomErasing needs 0 < min_area <= max_area and min_aspect > 0, got '
                     f'min_area={min_area}, max_area={max_area}, min_aspect={min_aspect}')
  batch, height, width, channels = images.shape
  box_key, noise_key = jax.random.split(key)
  uniforms = jax.random.uniform(box_key, (batch, 2 * ERASE_ATTEMPTS + 3))
  top, left, h, w = erasing_boxes(uniforms[:, 1:], height, width, min_area, max_area, min_aspect, max_aspect)
  rows = jnp.arange(height)[None, :, None]
  cols = jnp.arange(width)[None, None, :]
  inside = ((rows >= top[:, None, None]) & (rows < (top + h)[:, None, None])
            & (cols >= left[:, None, None]) & (cols < (left + w)[:, None, None]))
  erase = inside & (uniforms[:, 0] < prob)[:, None, None]
  if mode == 'pixel':
    fill = jax.random.normal(noise_key, images.shape, images.dtype)
  elif mode == 'rand':
    fill = jax.random.normal(noise_key, (batch, 1, 1, channels), images.dtype)
  else:
    fill = jnp.zeros((), images.dtype)
  return jnp.where(erase[..., None], fill, images)


# ---------------------------------------------------------------------------------------------------------------
# Config-driven pipeline.

AUGMENTS = {
    'ColorJitter': random_color_jitter,
    'RandomGrayscale': random_grayscale,
    'GaussianBlur': random_gaussian_blur,
    'Solarize': random_solarize,
    'RandomRotation': random_rotation,
    'RandomErasing': random_erasing,
}
# Ops on normalized images (timm's RandomErasing follows Normalize): build_augment normalizes before the first one.
ON_NORMALIZED = ('RandomErasing',)


def build_augment(ops, mean=IMAGENET_MEAN, std=IMAGENET_STD):
  """Returns `augment(key, images_uint8 [B, H, W, 3]) -> float32 [B, H, W, 3]`, normalized.

  `ops` is a list of mappings (dicts or ConfigDicts), each with a `type` from AUGMENTS and that function's
  keyword arguments; the ops run in list order, each with its own key. The ops on [0, 1] images come first;
  normalization comes before the first op of ON_NORMALIZED (e.g. RandomErasing), or at the end.
  """
  steps = []
  normalized_from = None  # the name of the first op on normalized images
  for op in ops:
    params = dict(op)
    name = params.pop('type', None)
    if name not in AUGMENTS:
      raise ValueError(f'Unknown augment type {name!r}; valid types: {", ".join(AUGMENTS)}')
    if name in ON_NORMALIZED:
      normalized_from = normalized_from or name
    elif normalized_from:
      raise ValueError(f'Augment {name!r} works on [0, 1] images and must come before {normalized_from!r}, '
                       f'which works on normalized ones')
    fn = AUGMENTS[name]
    try:  # Catch a misspelt option now rather than at the first traced train step.
      inspect.signature(fn).bind(None, None, **params)
    except TypeError as e:
      raise TypeError(f'Augment {name!r}: {e}') from None
    steps.append((functools.partial(fn, **params), name in ON_NORMALIZED))

  def augment(key, images):
    x = images.astype(jnp.float32) / 255.0
    normalized = False
    for step_key, (step, on_normalized) in zip(jax.random.split(key, max(len(steps), 1)), steps):
      if on_normalized and not normalized:
        x, normalized = normalize(x, mean, std), True
      x = step(step_key, x)
    return x if normalized else normalize(x, mean, std)

  return augment
