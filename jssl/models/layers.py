"""Transformer building blocks shared by the ViT backbone and the MAE decoder.

Structure and parameter names follow timm's VisionTransformer so that
checkpoints map one-to-one (qkv is a single Dense of 3*dim, proj, fc1/fc2).
"""
from typing import Any, Callable, Optional, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# timm/MAE initialise every Linear with xavier_uniform and zero bias.
dense_init = nn.initializers.xavier_uniform()
# MAE inits the patch projection like a Linear on the flattened [D, C*p*p] weight.
patch_embed_init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform', in_axis=(0, 1, 2), out_axis=-1)


def get_1d_sincos_pos_embed_from_grid(embed_dim, pos):
  """[M] positions -> [M, embed_dim] as [sin(pos * w), cos(pos * w)]."""
  assert embed_dim % 2 == 0, embed_dim
  omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
  omega = 1.0 / 10000**omega
  out = np.einsum('m,d->md', pos.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_2d_sincos_pos_embed_from_grid(embed_dim, grid):
  """grid: [2, ...] coordinates -> [prod(...), embed_dim]."""
  assert embed_dim % 2 == 0, embed_dim
  emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])
  emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])
  return np.concatenate([emb_h, emb_w], axis=1)


SINCOS_LAYOUTS = ('mae', 'mocov3')


def get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token=True, layout='mae'):
  """A fixed 2D sin-cos embedding, [(1 +) grid_size**2, embed_dim] float32, an all-zero row for the cls token.

  layout 'mae': facebookresearch/mae util/pos_embed.py exactly, including its meshgrid(w, h) ordering (the first
  half of the channels encodes the column index). 'mocov3': MoCo v3's `build_2d_sincos_position_embedding`, which
  mmpretrain uses for every sin-cos ViT (MAEViT, MoCoV3ViT, CAEPretrainViT, ...): the same columns with the two
  halves swapped (its torch.meshgrid(w, h) is 'ij'-indexed, so its first half encodes the row index).
  """
  if layout not in SINCOS_LAYOUTS:
    raise ValueError(f"unknown sin-cos layout '{layout}'; valid: {', '.join(SINCOS_LAYOUTS)}")
  grid_h = np.arange(grid_size, dtype=np.float32)
  grid_w = np.arange(grid_size, dtype=np.float32)
  grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0)
  grid = grid.reshape([2, 1, grid_size, grid_size])
  pos_embed = get_2d_sincos_pos_embed_from_grid(embed_dim, grid)
  if layout == 'mocov3':
    pos_embed = np.concatenate([pos_embed[:, embed_dim // 2:], pos_embed[:, :embed_dim // 2]], axis=1)
  if cls_token:
    pos_embed = np.concatenate([np.zeros([1, embed_dim]), pos_embed], axis=0)
  return pos_embed.astype(np.float32)


class PatchEmbed(nn.Module):
  """Non-overlapping patches via a conv with kernel = stride = patch_size.

  Returns tokens [B, h*w, D] in row-major (h, w) order plus the grid (h, w).
  """
  patch_size: int = 16
  embed_dim: int = 768
  dtype: Dtype = jnp.float32
  kernel_init: Callable = patch_embed_init

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding='VALID',
                kernel_init=self.kernel_init, dtype=self.dtype, name='proj')(x)
    b, h, w, d = x.shape
    return x.reshape(b, h * w, d), (h, w)


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per sample."""
  rate: float = 0.0

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    if deterministic or self.rate == 0.0:
      return x
    keep_prob = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = jax.random.bernoulli(self.make_rng('dropout'), keep_prob, shape)
    return jnp.where(keep, x / keep_prob, jnp.zeros_like(x))


class LayerScale(nn.Module):
  """Per-channel learnable scale of a residual branch (CaiT / timm ls1, ls2)."""
  init_value: float = 1e-5

  @nn.compact
  def __call__(self, x):
    gamma = self.param('gamma', nn.initializers.constant(self.init_value),
                       (x.shape[-1],))
    return x * gamma.astype(x.dtype)


def relative_position_index(window):
  """BEiT's [1 + N, 1 + N] index into the relative position bias table.

  Patch pairs index the (2h-1)(2w-1) relative offsets; the last 3 rows of the
  table are cls->patch, patch->cls and cls->cls (timm Beit / mmpretrain BEiT).
  """
  h, w = window
  num_relative = (2 * h - 1) * (2 * w - 1)
  coords = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing='ij'))
  coords = coords.reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)
  rel[:, :, 0] += h - 1
  rel[:, :, 1] += w - 1
  rel[:, :, 0] *= 2 * w - 1
  index = np.zeros((h * w + 1, h * w + 1), dtype=np.int64)
  index[1:, 1:] = rel.sum(-1)
  index[0, :] = num_relative
  index[:, 0] = num_relative + 1
  index[0, 0] = num_relative + 2
  return index


def attention_in_chunks(q, k, v, chunks):
  """jax.nn.dot_product_attention over [B, T, N, H] q, k, v, `chunks` groups of heads at a time (a scan whose
  body is rematerialized): the float32 [B, N / chunks, T, T] logits and probabilities of one group are alive at
  a time, in the forward and the backward pass. Same values: heads are independent."""
  b, t, n, h = q.shape
  split = lambda a: a.reshape(b, t, chunks, n // chunks, h).transpose(2, 0, 1, 3, 4)
  attend = jax.checkpoint(lambda qkv: jax.nn.dot_product_attention(*qkv))
  out = jax.lax.map(attend, (split(q), split(k), split(v)))  # [chunks, B, T, N / chunks, H]
  return out.transpose(1, 2, 0, 3, 4).reshape(b, t, n, h)


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection.

  qkv_bias: True (one bias on qkv), False (none) or 'qv' (BEiT: separate
  q_bias and v_bias params, no key bias). rel_pos_window (h, w): adds a
  learned per-head relative position bias (BEiT/CAE) over [cls] + h*w tokens.
  head_chunks: attend `num_heads / head_chunks` heads at a time (attention_in_chunks), for long sequences whose
  [B, heads, T, T] attention arrays dominate the memory (MAE ViT-H's decoder, docs/scale_out.md).
  kernel_init / qkv_kernel_init: of proj / qkv (the ViT's init modes).
  """
  num_heads: int = 8
  qkv_bias: Union[bool, str] = True
  rel_pos_window: Optional[Tuple[int, int]] = None
  dtype: Dtype = jnp.float32
  head_chunks: int = 1
  kernel_init: Callable = dense_init
  qkv_kernel_init: Callable = dense_init

  @nn.compact
  def __call__(self, x):
    if self.qkv_bias not in (True, False, 'qv'):
      raise ValueError(f"qkv_bias must be True, False or 'qv', "
                       f'got {self.qkv_bias!r}')
    b, t, dim = x.shape
    head_dim = dim // self.num_heads
    qkv = nn.Dense(3 * dim, use_bias=self.qkv_bias not in (False, 'qv'),
                   kernel_init=self.qkv_kernel_init, dtype=self.dtype, name='qkv')(x)
    if self.qkv_bias == 'qv':
      q_bias = self.param('q_bias', nn.initializers.zeros, (dim,))
      v_bias = self.param('v_bias', nn.initializers.zeros, (dim,))
      bias = jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias])
      qkv = qkv + bias.astype(qkv.dtype)
    # timm splits the 3*dim axis as (3, heads, head_dim).
    qkv = qkv.reshape(b, t, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    bias = None
    if self.rel_pos_window is not None:
      h, w = self.rel_pos_window
      if t != h * w + 1:
        raise ValueError(f'relative position bias is built for 1 + {h}x{w} '
                         f'tokens, got {t} tokens')
      table = self.param('relative_position_bias_table',
                         nn.initializers.truncated_normal(0.02),
                         ((2 * h - 1) * (2 * w - 1) + 3, self.num_heads))
      bias = table[relative_position_index(self.rel_pos_window)]  # [T, T, N]
      bias = bias.transpose(2, 0, 1)[None].astype(q.dtype)
    if self.head_chunks > 1:
      if self.num_heads % self.head_chunks or bias is not None:
        raise ValueError(f'Attention: head_chunks={self.head_chunks} needs num_heads ({self.num_heads}) divisible '
                         'by it and no relative position bias')
      x = attention_in_chunks(q, k, v, self.head_chunks)
    else:
      x = jax.nn.dot_product_attention(q, k, v, bias=bias)  # [B, T, N, H]
    x = x.reshape(b, t, dim)
    return nn.Dense(dim, kernel_init=self.kernel_init, dtype=self.dtype,
                    name='proj')(x)


class Mlp(nn.Module):
  """fc1 -> exact GELU -> fc2."""
  hidden_dim: int
  out_dim: Optional[int] = None
  dtype: Dtype = jnp.float32
  kernel_init: Callable = dense_init

  @nn.compact
  def __call__(self, x):
    out_dim = self.out_dim or x.shape[-1]
    x = nn.Dense(self.hidden_dim, kernel_init=self.kernel_init, dtype=self.dtype,
                 name='fc1')(x)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(out_dim, kernel_init=self.kernel_init, dtype=self.dtype,
                    name='fc2')(x)


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x)). kernel_init: of every Linear but qkv's."""
  num_heads: int
  mlp_ratio: float = 4.0
  qkv_bias: Union[bool, str] = True
  drop_path: float = 0.0
  layer_scale_init: Optional[float] = None
  rel_pos_window: Optional[Tuple[int, int]] = None
  dtype: Dtype = jnp.float32
  attention_head_chunks: int = 1
  kernel_init: Callable = dense_init
  qkv_kernel_init: Callable = dense_init

  @nn.compact
  def __call__(self, x, train: bool = False):
    dim = x.shape[-1]
    norm = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=name)
    drop_path = DropPath(self.drop_path)

    y = Attention(self.num_heads, self.qkv_bias, self.rel_pos_window, dtype=self.dtype,
                  head_chunks=self.attention_head_chunks, kernel_init=self.kernel_init,
                  qkv_kernel_init=self.qkv_kernel_init, name='attn')(norm('norm1')(x))
    if self.layer_scale_init is not None:
      y = LayerScale(self.layer_scale_init, name='ls1')(y)
    x = x + drop_path(y, deterministic=not train)

    y = Mlp(int(dim * self.mlp_ratio), dtype=self.dtype, kernel_init=self.kernel_init,
            name='mlp')(norm('norm2')(x))
    if self.layer_scale_init is not None:
      y = LayerScale(self.layer_scale_init, name='ls2')(y)
    return x + drop_path(y, deterministic=not train)


SOBEL_X = ((1., 0., -1.), (2., 0., -2.), (1., 0., -1.))
SOBEL_Y = ((1., 2., 1.), (0., 0., 0.), (-1., -2., -1.))


def check_sobel_input(with_sobel: bool, backbone_kwargs) -> None:
  """The backbone behind a Sobel layer reads its two gradient maps: one line naming the fields otherwise."""
  in_channels = dict(backbone_kwargs or {}).get('in_channels', 3)
  if with_sobel and in_channels != 2:
    raise ValueError(f'config.model.with_sobel=True feeds the backbone 2 channels (the Sobel gradients): set '
                     f'config.backbone.kwargs.in_channels=2 (it is {in_channels})')


def sobel(images):
  """MMSelfSup's Sobel layer: grayscale as the channel mean (a fixed 1x1 conv of weight 1/3), then the two 3x3
  Sobel filters (cross-correlation, zero padding 1): [B, H, W, 3] -> [B, H, W, 2]. No trainable parameters."""
  gray = jnp.mean(images, axis=-1, keepdims=True)
  kernel = jnp.stack([jnp.asarray(SOBEL_X), jnp.asarray(SOBEL_Y)], axis=-1)[:, :, None, :].astype(images.dtype)
  return jax.lax.conv_general_dilated(gray, kernel, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _after(tree, *deps):
  """`tree`'s floating-point leaves made to depend on `deps` at no numerical cost: leaf + 0 * sum(deps)
  (XLA does not fold a float `0 * s`, which is NaN for a non-finite s)."""
  zero = 0 * sum(jnp.sum(d.astype(jnp.float32)) for d in jax.tree.leaves(deps))
  return jax.tree.map(lambda x: x + zero.astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def remat_call(block, x, *args):
  """`block(x, *args)` rematerialized: only the block's input (and its params) are kept for the backward pass,
  which recomputes the block's activations. `args` are static (e.g. `train`). Params and RNG streams are those
  of `block(x, *args)`: turning remat on changes no name, and values only by float rounding.

  `nn.remat` alone leaves the order of the backward pass to XLA's scheduler, and XLA:CPU's (which also strips
  the optimization barriers JAX adds) recomputed every block first and deferred every weight gradient to the end
  of the backward pass: all the blocks' activations were alive at once (MAE ViT-L: ~110 MB per image,
  docs/benchmarks.md#scale-out). Two data dependencies of no numerical effect fix the order on any backend: the
  recompute of a block reads its saved input only after the cotangent of its output exists, and the cotangent
  passed to the block below exists only after this block's weight gradients do. So one block's activations are alive at
  a time, and under FSDP each block's weights are gathered where it runs (forward, then recompute).
  """
  f = nn.remat(lambda mdl, x: mdl(x, *args))

  def fwd(mdl, x):
    return nn.vjp(f, mdl, x)  # the residuals of the rematerialized f: x and the params

  def bwd(vjp_fn, g):
    params_t, x_t = _after(vjp_fn, g)(g)
    return params_t, _after(x_t, params_t)

  return nn.custom_vjp(f, forward_fn=fwd, backward_fn=bwd)(block, x)
