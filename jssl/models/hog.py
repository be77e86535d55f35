"""Histograms of oriented gradients: MaskFeat's prediction target, computed on the device inside the train step.

As MMSelfSup's / mmpretrain's `HOGGenerator` (from SlowFast): per RGB channel, 3x3 Sobel gradients of the
reflect-padded image, gradient magnitudes weighted by a Gaussian window (16 px, std 8, tiled over the image), voted
into 9 orientation bins of 20 degrees (floor(atan2(gx, gy) / pi * 9) mod 9: opposite directions share a bin),
summed over 8x8-pixel cells and L2-normalized per cell and channel. The cells of each ViT patch are then flattened in the reference's order
(channel, bin, cell row, cell column): 3 x 9 x 2 x 2 = 108 targets per 16-px patch.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

SOBEL = np.array([[1., 0., -1.], [2., 0., -2.], [1., 0., -1.]], np.float32)


def gaussian_window(size: int, std: float) -> np.ndarray:
  """The reference's 2-D Gaussian weights (outer product of a centred 1-D Gaussian), summing to 1."""
  n = np.arange(size, dtype=np.float32)
  w = np.exp(-0.5 * ((n - n.mean()) / std) ** 2)
  kernel = w[:, None] * w[None, :]
  return kernel / kernel.sum()


def _correlate3x3(x, kernel):
  """Cross-correlation of [B, H + 2, W + 2, C] with a fixed 3x3 kernel, per channel -> [B, H, W, C]."""
  h, w = x.shape[1] - 2, x.shape[2] - 2
  return sum(float(kernel[a, b]) * x[:, a:a + h, b:b + w, :]
             for a in range(3) for b in range(3) if kernel[a, b] != 0)


def hog_features(images, nbins: int = 9, pool: int = 8, window: int = 16, patch_size: int = 16):
  """[B, H, W, 3] images (as the model sees them) -> [B, (H / patch) * (W / patch), 3 * nbins * (patch / pool)^2]
  HOG targets per patch, in raster patch order. H and W must be multiples of `window` and `patch_size`."""
  b, h, w, c = images.shape
  if h % window or w % window or h % patch_size or w % patch_size or patch_size % pool:
    raise ValueError(f'HOG: image {h}x{w} must be a multiple of the Gaussian window ({window}) and of the patch '
                     f'size ({patch_size}), itself a multiple of the cell ({pool})')
  x = jnp.pad(images.astype(jnp.float32), ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
  gx = _correlate3x3(x, SOBEL)
  gy = _correlate3x3(x, SOBEL.T)
  magnitude = jnp.sqrt(gx * gx + gy * gy)
  phase = jnp.arctan2(gx, gy) / math.pi * nbins  # [-nbins, nbins]
  weights = np.tile(gaussian_window(window, window // 2), (h // window, w // window))
  magnitude = magnitude * weights[None, :, :, None]
  bins = jnp.mod(jnp.floor(phase).astype(jnp.int32), nbins)
  votes = jax.nn.one_hot(bins, nbins, dtype=jnp.float32) * magnitude[..., None]  # [B, H, W, C, bins]
  cells = votes.reshape(b, h // pool, pool, w // pool, pool, c, nbins).sum(axis=(2, 4))
  cells = cells / jnp.maximum(jnp.linalg.norm(cells, axis=-1, keepdims=True), 1e-12)  # F.normalize over bins
  per = patch_size // pool
  hp, wp = h // patch_size, w // patch_size
  patches = cells.reshape(b, hp, per, wp, per, c, nbins).transpose(0, 1, 3, 5, 6, 2, 4)
  return patches.reshape(b, hp * wp, c * nbins * per * per)
