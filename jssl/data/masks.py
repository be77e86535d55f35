"""Mask generators that run on device inside the train step, from the step's PRNG key."""
import math

import jax
import jax.numpy as jnp


def random_masking(key, batch_size: int, num_patches: int, mask_ratio: float):
  """MAE's per-sample random masking.

  Returns (ids_keep [B, K], mask [B, N] with 1 = masked, ids_restore [B, N]) where
  K = int(N * (1 - mask_ratio)) patches stay visible in every sample. `ids_restore` un-shuffles the
  [visible; masked] token order back to the patch grid (used by the decoder).
  """
  num_keep = int(num_patches * (1 - mask_ratio))
  noise = jax.random.uniform(key, (batch_size, num_patches))
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  ids_keep = ids_shuffle[:, :num_keep]
  mask = jnp.ones((batch_size, num_patches), jnp.float32).at[:, :num_keep].set(0.)
  mask = jnp.take_along_axis(mask, ids_restore, axis=1)
  return ids_keep, mask, ids_restore


def simmim_masking(key, batch_size: int, input_size: int = 192, mask_patch_size: int = 32,
                   model_patch_size: int = 4, mask_ratio: float = 0.6):
  """SimMIM's mask (the reference's SimMIMMaskGenerator): ceil(ratio * G^2) of the G x G mask patches
  (G = input_size / mask_patch_size) chosen uniformly per sample, each covering (mask_patch / model_patch)^2 model
  tokens. Returns [B, input_size / model_patch_size, same] float32, 1 = masked."""
  if input_size % mask_patch_size or mask_patch_size % model_patch_size:
    raise ValueError(f'SimMIM mask: input_size {input_size} must be a multiple of mask_patch_size '
                     f'{mask_patch_size}, itself a multiple of model_patch_size {model_patch_size}')
  grid = input_size // mask_patch_size
  scale = mask_patch_size // model_patch_size
  mask_count = int(math.ceil(grid * grid * mask_ratio))
  ranks = jnp.argsort(jnp.argsort(jax.random.uniform(key, (batch_size, grid * grid)), axis=1), axis=1)
  mask = (ranks < mask_count).astype(jnp.float32).reshape(batch_size, grid, grid)
  return jnp.repeat(jnp.repeat(mask, scale, axis=1), scale, axis=2)


def block_masking(key, batch_size: int, height: int, width: int, num_masking_patches: int,
                  min_num_patches: int = 4, max_num_patches=None, min_aspect: float = 0.3, max_aspect=None):
  """BEiT's block-wise mask (the reference's BEiTMaskGenerator, also MaskFeat's and CAE's): rectangles of random
  area in [min_num_patches, what is still to mask] and log-uniform aspect ratio are added, each only when it
  masks at least one new patch and no more than are still to mask, until exactly `num_masking_patches` of the
  height x width patches are masked. As the reference, a rectangle starts at a top/left drawn from
  [0, size - extent), so it never touches the last row/column. Returns [B, height, width] float32, 1 = masked."""
  reachable = (height - 1) * (width - 1)  # rectangles never reach the last row/column (the reference would hang)
  if not 0 < num_masking_patches <= reachable:
    raise ValueError(f'block mask: num_masking_patches must be in 1..{reachable} for a {height} x {width} grid, '
                     f'got {num_masking_patches}')
  max_num = num_masking_patches if max_num_patches is None else max_num_patches
  log_aspect = (math.log(min_aspect), math.log(max_aspect or 1 / min_aspect))
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]

  def attempt(mask, key, max_mask):
    """One of the reference's up-to-10 tries: the new mask and how many patches it added (0 if rejected)."""
    area_key, aspect_key, top_key, left_key = jax.random.split(key, 4)
    # numpy's uniform(low, high) also draws from (high, low] when high < low (little left to mask);
    # jax.random.uniform would clamp to `minval` and could never finish
    target_area = min_num_patches + jax.random.uniform(area_key, ()) * (max_mask - min_num_patches)
    aspect = jnp.exp(jax.random.uniform(aspect_key, (), minval=log_aspect[0], maxval=log_aspect[1]))
    h = jnp.round(jnp.sqrt(target_area * aspect)).astype(jnp.int32)
    w = jnp.round(jnp.sqrt(target_area / aspect)).astype(jnp.int32)
    fits = (w < width) & (h < height)
    top = jax.random.randint(top_key, (), 0, jnp.maximum(height - h, 1))
    left = jax.random.randint(left_key, (), 0, jnp.maximum(width - w, 1))
    rect = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    new = jnp.sum(rect & (mask == 0))
    accept = fits & (new > 0) & (new <= max_mask)
    return jnp.where(accept & rect, 1., mask), jnp.where(accept, new, 0)

  def one_round(state):
    """The reference's `_mask`: up to 10 attempts, stopping at the first that adds patches."""
    mask, count, key = state
    max_mask = jnp.minimum(num_masking_patches - count, max_num).astype(jnp.float32)
    def try_again(s):
      return (s[1] == 0) & (s[2] < 10)
    def step(s):
      m, _, i, k = s
      k, sub = jax.random.split(k)
      m, delta = attempt(m, sub, max_mask)
      return m, delta, i + 1, k
    mask, delta, _, key = jax.lax.while_loop(try_again, step, (mask, jnp.int32(0), 0, key))
    return mask, count + delta, key

  def one_sample(key):
    init = (jnp.zeros((height, width), jnp.float32), jnp.int32(0), key)
    mask, _, _ = jax.lax.while_loop(lambda s: s[1] != num_masking_patches, one_round, init)
    return mask

  return jax.vmap(one_sample)(jax.random.split(key, batch_size))
