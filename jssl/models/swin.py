"""Swin Transformer backbone, timm-compatible parameter structure.

Params: patch_embed/{proj,norm}, [absolute_pos_embed], layers_{i}/
{downsample/{norm,reduction} (i > 0), blocks_{j}/{norm1, attn/
{relative_position_bias_table, qkv, proj}, norm2, mlp/{fc1,fc2}}}, and one
LayerNorm per out index: `norm` for the last stage (timm's final norm),
`norm{i}` for an earlier stage i (mmpretrain's name; timm has no such norm).

As in timm, patch merging sits at the start of stage i > 0 and concatenates
each 2x2 neighbourhood as [x(0,0), x(1,0), x(0,1), x(1,1)] ((row, col)
offsets), i.e. the original Swin order. Window size and shift of each stage
follow from `img_size`: a stage whose map is no larger than the window uses
the whole map as one window and does not shift (mmpretrain's
pad_small_map=False). With `pad_small_map` every stage keeps the window and
its shift, and a smaller map is zero-padded up to the window before the shift
(mmpretrain's pad_small_map=True: SimMIM's Swin-L, window 12 at 192 px).

`mask_token`: a learned token that replaces the patch embeddings where `mask`
[B, H/p, W/p] is 1, before the absolute position embedding and the stages
(mmpretrain's SimMIMSwinTransformer; param `mask_token` [1, 1, embed_dim]).

Outputs (jssl/models/backbone.py): feat{i + 1}, the normed map of stage i, for the stages of `out_indices` (the
others have no norm).
"""
import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from jssl.models.backbone import Output, numbered, select
from jssl.models.layers import DropPath, Mlp, remat_call

Dtype = Any

# timm initialises every Linear and the bias tables with trunc_normal(.02).
dense_init = nn.initializers.truncated_normal(0.02)


def relative_position_index(window):
  """[W*W, W*W] index into the ((2W-1)^2, heads) table (timm's layout)."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window),
                                indexing='ij')).reshape(2, -1)
  rel = coords[:, :, None] - coords[:, None, :] + (window - 1)
  return rel[0] * (2 * window - 1) + rel[1]


def window_partition(x, window):
  """[B, H, W, C] -> [B * nW, window * window, C], windows row-major."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows, window, h, w):
  """Inverse of window_partition back to [B, h, w, C]."""
  c = windows.shape[-1]
  x = windows.reshape(-1, h // window, w // window, window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def shifted_window_mask(h, w, window, shift):
  """[nW, N, N] additive mask: -100 between tokens from different regions.

  After the cyclic shift a window can hold tokens from up to 4 regions of the
  (padded) map that are not neighbours; timm labels the 3x3 regions and masks
  pairs with different labels by -100 (not -inf).
  """
  img_mask = np.zeros((1, h, w, 1), np.float32)
  slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
  label = 0
  for hs in slices:
    for ws in slices:
      img_mask[:, hs, ws, :] = label
      label += 1
  labels = window_partition(img_mask, window)[..., 0]  # [nW, N]
  diff = labels[:, None, :] - labels[:, :, None]
  return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


def stage_window(resolution, window_size):
  """(window, shift) of a stage: maps <= window are one unshifted window."""
  if resolution <= window_size:
    return resolution, 0
  return window_size, window_size // 2


class PatchEmbed(nn.Module):
  """Conv patchify (kernel = stride = patch_size) then LayerNorm; NHWC out."""
  patch_size: int = 4
  embed_dim: int = 96
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding='VALID',
                dtype=self.dtype, name='proj')(x)
    return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name='norm')(x)


class PatchMerging(nn.Module):
  """2x2 neighbourhood -> 4C channels -> LayerNorm -> Linear(4C, 2C)."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    h, w = h + h % 2, w + w % 2
    # (row offset, col offset) -> channel block col * 2 + row, as timm.
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5)
    x = x.reshape(b, h // 2, w // 2, 4 * c)
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name='norm')(x)
    return nn.Dense(2 * c, use_bias=False, kernel_init=dense_init,
                    dtype=self.dtype, name='reduction')(x)


class WindowAttention(nn.Module):
  """Multi-head attention inside windows with a relative position bias."""
  num_heads: int
  window: int
  qkv_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    """x: [B * nW, N, C] windows; mask: [nW, N, N] additive or None."""
    bw, n, dim = x.shape
    head_dim = dim // self.num_heads
    table = self.param('relative_position_bias_table', dense_init,
                       ((2 * self.window - 1)**2, self.num_heads))
    index = relative_position_index(self.window).reshape(-1)
    bias = table[index].reshape(n, n, self.num_heads).transpose(2, 0, 1)
    bias = bias[None]  # [1, heads, N, N]
    if mask is not None:
      num_windows = mask.shape[0]
      mask = jnp.tile(jnp.asarray(mask)[:, None], (bw // num_windows, 1, 1, 1))
      bias = bias + mask  # [B * nW, heads, N, N]

    qkv = nn.Dense(3 * dim, use_bias=self.qkv_bias, kernel_init=dense_init,
                   dtype=self.dtype, name='qkv')(x)
    # timm splits the 3*dim axis as (3, heads, head_dim).
    qkv = qkv.reshape(bw, n, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    x = jax.nn.dot_product_attention(q, k, v, bias=bias.astype(q.dtype))
    x = x.reshape(bw, n, dim)
    return nn.Dense(dim, kernel_init=dense_init, dtype=self.dtype,
                    name='proj')(x)


class SwinBlock(nn.Module):
  """x + attn(norm1(x)) over (shifted) windows; x + mlp(norm2(x)). NHWC."""
  num_heads: int
  window: int
  shift: int = 0
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop_path: float = 0.0
  pad_first: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    b, h, w, dim = x.shape
    window, shift = self.window, self.shift
    norm = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)
    drop_path = DropPath(self.drop_path)

    # Like timm: cyclic shift first, then pad up to whole windows
    # (mmpretrain, `pad_first`: pad, then shift the padded map).
    y = norm('norm1')(x)
    pad_h, pad_w = -h % window, -w % window
    hp, wp = h + pad_h, w + pad_w
    pad = lambda y: jnp.pad(y, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    if self.pad_first:
      y = pad(y)
    if shift:
      y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
    if not self.pad_first:
      y = pad(y)
    mask = shifted_window_mask(hp, wp, window, shift) if shift else None
    y = WindowAttention(self.num_heads, window, self.qkv_bias,
                        dtype=self.dtype, name='attn')(
                            window_partition(y, window), mask)
    y = window_reverse(y, window, hp, wp)
    if not self.pad_first:
      y = y[:, :h, :w]
    if shift:
      y = jnp.roll(y, (shift, shift), axis=(1, 2))
    y = y[:, :h, :w]  # `pad_first`: the padding is cropped after the unshift
    x = x + drop_path(y, deterministic=not train)

    y = Mlp(int(dim * self.mlp_ratio), dtype=self.dtype,
            name='mlp')(norm('norm2')(x))
    return x + drop_path(y, deterministic=not train)


class SwinStage(nn.Module):
  """Optional patch merging, then blocks alternating W-MSA and SW-MSA."""
  depth: int
  num_heads: int
  window: int
  shift: int
  downsample: bool
  drop_paths: Sequence[float]
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  dtype: Dtype = jnp.float32
  remat: bool = False
  pad_first: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.downsample:
      x = PatchMerging(dtype=self.dtype, name='downsample')(x)
    for j in range(self.depth):
      block = SwinBlock(self.num_heads, self.window,
                        shift=0 if j % 2 == 0 else self.shift,
                        mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias,
                        drop_path=float(self.drop_paths[j]),
                        pad_first=self.pad_first, dtype=self.dtype,
                        name=f'blocks_{j}')
      # remat_call: one block's activations alive at a time (layers.py)
      x = remat_call(block, x, train) if self.remat else block(x, train)
    return x


class SwinTransformer(nn.Module):
  """Swin encoder returning a tuple of NHWC stage maps for `out_indices`.

  Stage i has embed_dim * 2**i channels at stride patch_size * 2**i. The
  output of stage i is normed by `norm` (last stage) or `norm{i}`.
  """
  img_size: int = 224
  patch_size: int = 4
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window_size: int = 7
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop_path_rate: float = 0.1
  out_indices: Sequence[int] = (3,)
  dtype: Dtype = jnp.float32
  remat: bool = False
  use_abs_pos_embed: bool = False
  pad_small_map: bool = False
  mask_token: bool = False

  family = 'swin'
  pools = ('avg',)

  @property
  def feature_dim(self):
    return self.embed_dim * 2**(len(self.depths) - 1)

  def feature_info(self):
    return tuple(Output(f'feat{i + 1}', 'map', self.embed_dim * 2**i, self.patch_size * 2**i, i)
                 for i in sorted(set(self.out_indices)))

  @property
  def default_feature(self):
    return self.feature_info()[-1].name

  @classmethod
  def layer_ids(cls, params):
    """mmpretrain's SwinTransformer get_layer_depth: the patch embedding 0, blocks counted across the stages
    (block j of stage s: sum(depths[:s]) + j + 1), a patch merging (mmpretrain's stages.{s - 1}.downsample) the
    id of the block before it, the rest (norms, absolute_pos_embed) L + 1, L the blocks in the tree."""
    flat = flax.traverse_util.flatten_dict(params)
    stages = {}  # stage -> its block numbers
    for p in flat:
      stage = numbered(p[0], 'layers')
      if stage is not None:
        stages.setdefault(stage, set()).add(numbered(p[1], 'blocks'))
    depths = [len(stages.get(s, set()) - {None}) for s in range(max(stages, default=-1) + 1)]
    num_blocks = sum(depths)

    def layer_id(path):
      if path[0] == 'patch_embed':
        return 0
      stage = numbered(path[0], 'layers')
      if stage is None:
        return num_blocks + 1
      if path[1] == 'downsample':
        return sum(depths[:stage])
      return sum(depths[:stage]) + numbered(path[1], 'blocks') + 1
    return flax.traverse_util.unflatten_dict({p: layer_id(p) for p in flat}), num_blocks + 1

  def stage_windows(self):
    """[(window, shift)] per stage, from the map sizes at `img_size`."""
    grid = self.img_size // self.patch_size
    resolutions = [-(-grid // 2**i) for i in range(len(self.depths))]
    if self.pad_small_map:
      return [(self.window_size, self.window_size // 2)] * len(resolutions)
    return [stage_window(r, self.window_size) for r in resolutions]

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None, outputs: Optional[Sequence[str]] = None):
    """mask: [B, H/p, W/p], 1 where the mask token replaces the patch; outputs: names of `feature_info` (then
    a dict)."""
    num_stages = len(self.depths)
    if not all(0 <= i < num_stages for i in self.out_indices):
      raise ValueError(f'out_indices {self.out_indices} must be in '
                       f'[0, {num_stages - 1}]')
    wanted = select(self, outputs) if outputs is not None else None
    x = x.astype(self.dtype)
    x = PatchEmbed(self.patch_size, self.embed_dim, dtype=self.dtype,
                   name='patch_embed')(x)
    if self.mask_token:
      # The reference's trunc_normal_(std=.02) cuts at +-2 absolute (100
      # std): a plain normal.
      token = self.param('mask_token', nn.initializers.normal(0.02),
                         (1, 1, self.embed_dim))
      if mask is not None:
        if mask.shape != x.shape[:3]:
          raise ValueError(f'SwinTransformer: mask of shape {mask.shape}, '
                           f'expected the patch grid {x.shape[:3]}')
        m = mask[..., None].astype(x.dtype)
        x = x * (1 - m) + token.reshape(1, 1, 1, -1).astype(x.dtype) * m
    elif mask is not None:
      raise ValueError('SwinTransformer: a mask needs mask_token=True')
    if self.use_abs_pos_embed:
      grid = self.img_size // self.patch_size
      pos_embed = self.param('absolute_pos_embed',
                             nn.initializers.truncated_normal(0.02),
                             (1, grid * grid, self.embed_dim))
      if x.shape[1:3] != (grid, grid):
        raise ValueError(f'absolute_pos_embed is for a {grid}x{grid} grid, '
                         f'got input of shape {x.shape}')
      x = x + pos_embed.reshape(1, grid, grid, -1).astype(self.dtype)

    drop_path_rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths))
    outs = {}
    for i, (window, shift) in enumerate(self.stage_windows()):
      start = sum(self.depths[:i])
      x = SwinStage(self.depths[i], self.num_heads[i], window, shift,
                    downsample=i > 0,
                    drop_paths=tuple(drop_path_rates[start:start +
                                                     self.depths[i]]),
                    mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias,
                    dtype=self.dtype, remat=self.remat,
                    pad_first=self.pad_small_map,
                    name=f'layers_{i}')(x, train)
      if i in self.out_indices:
        name = 'norm' if i == num_stages - 1 else f'norm{i}'
        outs[i] = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)(x)
    if wanted is not None:
      return {o.name: outs[o.index] for o in wanted}
    return tuple(outs.values())


# the named sizes: (width, blocks per stage, heads per stage); window_size defaults to 7 (SimMIM pretrains Swin-B at
# 192 px with 6)
SIZES = {'tiny': (96, (2, 2, 6, 2), (3, 6, 12, 24)), 'small': (96, (2, 2, 18, 2), (3, 6, 12, 24)),
         'base': (128, (2, 2, 18, 2), (4, 8, 16, 32)), 'large': (192, (2, 2, 18, 2), (6, 12, 24, 48))}
BACKBONES = {f'swin_{size}': functools.partial(SwinTransformer, embed_dim=d, depths=depths, num_heads=heads)
             for size, (d, depths, heads) in SIZES.items()}
