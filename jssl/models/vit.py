"""Vision Transformer backbone, timm-compatible parameter structure.

Params: patch_embed/proj, cls_token, pos_embed (learned only), blocks_{i}
(norm1, attn/{qkv, proj, q_bias, v_bias, relative_position_bias_table},
norm2, mlp/{fc1, fc2}, ls1/ls2 gamma), norm or fc_norm. The sin-cos position
embedding is a fixed constant, not a param: MAE's table, or with
sincos_layout='mocov3' MoCo v3's / mmpretrain's (the channel halves swapped). Outputs (jssl/models/backbone.py):
block1..block{depth} (tokens), 'cls' and 'mean' (after the final norm).
"""
import functools
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from jssl.models.backbone import Output, numbered, select
from jssl.models.layers import Block, PatchEmbed, dense_init, get_2d_sincos_pos_embed, patch_embed_init, remat_call

Dtype = Any


def qkv_thirds_init(key, shape, dtype=jnp.float32):
  """MoCo v3's qkv init: each third (q, k, v) of a [D, 3D] kernel Xavier-uniform as a [D, D] matrix, i.e. the
  whole kernel U(+-sqrt(6 / (D + D)))."""
  d_in, d_out = shape
  bound = (6. / (d_in + d_out // 3)) ** 0.5
  return jax.random.uniform(key, shape, dtype, -bound, bound)


# torch's trunc_normal_(std=0.02) cuts at +-2 absolute, i.e. +-100 std: in effect N(0, 0.02^2)
torch_trunc_normal = nn.initializers.truncated_normal(0.02, lower=-100., upper=100.)
token_init = nn.initializers.truncated_normal(0.02)
# init_mode -> initializers of (patch projection kernel, qkv kernels, the other Linear kernels, cls token); biases
# are 0, LayerNorms 1 / 0, pos_embed / mask token / relative position bias tables truncated normal 0.02 in all.
INIT_MODES = {
    # MAE's: Xavier-uniform Linears, the patch projection as a Linear on its flattened weight (MAE's cls token is
    # normal 0.02, not cut)
    'mae': (patch_embed_init, dense_init, dense_init, token_init),
    # MoCoV3ViT.init_weights: the q, k, v thirds of qkv Xavier-uniform on their own, cls token N(0, 1e-6)
    'moco_v3': (patch_embed_init, qkv_thirds_init, dense_init, nn.initializers.normal(1e-6)),
    # CAEPretrainViT: the patch projection as a Conv2d under mmpretrain's TruncNormal(std=0.02) (which cuts at +-2
    # absolute, not at 2 std)
    'cae': (nn.initializers.truncated_normal(0.02), dense_init, dense_init, token_init),
    # MaskFeatViT: every Linear and conv kernel torch's trunc_normal_(std=0.02)
    'maskfeat': (torch_trunc_normal, torch_trunc_normal, torch_trunc_normal, token_init),
}


def resize_pos_embed(pos_embed, old_grid, new_grid):
  """Bicubically resizes the patch part of [1, 1 + h*w, D]; keeps cls row."""
  if tuple(old_grid) == tuple(new_grid):
    return pos_embed
  cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
  d = pos_embed.shape[-1]
  patch_pos = patch_pos.reshape(1, *old_grid, d)
  patch_pos = jax.image.resize(patch_pos, (1, *new_grid, d), method='bicubic')
  patch_pos = patch_pos.reshape(1, new_grid[0] * new_grid[1], d)
  return jnp.concatenate([cls_pos, patch_pos], axis=1)


def token_features(tokens, feature: str = 'cls'):
  """One vector per image from [B, 1 + N, D] tokens: the 'cls' token or the 'mean' of the patch tokens (the kNN /
  export features of the masked-image-modeling methods)."""
  return tokens[:, 0] if feature == 'cls' else tokens[:, 1:].mean(axis=1)


class VisionTransformer(nn.Module):
  """ViT encoder; by default returns the (normed) token sequence [B, 1 + N, D].

  `ids_keep` [B, N_keep] selects patch tokens after the position embedding is
  added and before the cls token is prepended; MAE uses it to encode only the
  visible patches.

  output: 'tokens' [B, 1 + N, D] | 'cls' [B, D] | 'patch' [B, N, D] (all after
  the final norm) | 'mean' [B, D], the mean of the patch tokens; with
  use_fc_norm=True that mean goes through `fc_norm` and the final `norm` is
  dropped (timm global_pool='avg', fc_norm=True; MAE fine-tuning).
  rel_pos_bias: a BEiT relative position bias in every block (usually with
  pos_embed='none'). frozen_patch_embed: MoCo v3's stop-gradient after the
  patch projection, so it is never trained. qkv_bias: True | False | 'qv'.
  mask_token: a learned token (truncated normal, std 0.02) that replaces the patch embeddings where `mask` [B, N]
  is 1, before the position embedding (MaskFeat's and SimMIM's encoders; the whole grid is encoded).
  init_mode: the reference's initialization, INIT_MODES ('mae' | 'moco_v3' | 'cae' | 'maskfeat').
  outputs=names (a call argument): {name: array} of `feature_info`'s outputs instead of `output`.
  """
  img_size: int = 224
  patch_size: int = 16
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  qkv_bias: Union[bool, str] = True
  pos_embed: str = 'learned'  # 'learned' | 'sincos' | 'none'
  sincos_layout: str = 'mae'  # pos_embed='sincos': 'mae' | 'mocov3' (mmpretrain's), see get_2d_sincos_pos_embed
  drop_path_rate: float = 0.0
  layer_scale_init: Optional[float] = None
  dtype: Dtype = jnp.float32
  final_norm: bool = True
  remat: bool = False
  output: str = 'tokens'  # 'tokens' | 'cls' | 'mean' | 'patch'
  use_fc_norm: bool = False
  rel_pos_bias: bool = False
  frozen_patch_embed: bool = False
  mask_token: bool = False
  init_mode: str = 'mae'

  family = 'vit'
  pools = ('avg',)  # its outputs are vectors already

  @property
  def feature_dim(self):
    return self.embed_dim

  def feature_info(self):
    """block1..block{depth}: the tokens [B, 1 + N, D] after each block (before the final norm); 'cls' and 'mean'
    (the mean patch token) after the final norm, [B, D] ('mean' only, through fc_norm, with use_fc_norm)."""
    blocks = tuple(Output(f'block{i + 1}', 'tokens', self.embed_dim, self.patch_size, i) for i in range(self.depth))
    vectors = ('mean',) if self.use_fc_norm else ('cls', 'mean')
    return blocks + tuple(Output(v, 'vector', self.embed_dim, self.patch_size, self.depth - 1) for v in vectors)

  @property
  def default_feature(self):
    return 'mean' if self.use_fc_norm else 'cls'

  @classmethod
  def layer_ids(cls, params):
    """mmpretrain's VisionTransformer / BEiTViT get_layer_depth: patch embedding, cls token, pos_embed 0, block i
    i + 1, the rest (final norm, fc_norm, mask token) L + 1, L the blocks in the tree."""
    flat = flax.traverse_util.flatten_dict(params)
    num_blocks = len({numbered(p[0], 'blocks') for p in flat} - {None})

    def layer_id(path):
      if path[0] in ('patch_embed', 'cls_token', 'pos_embed'):
        return 0
      i = numbered(path[0], 'blocks')
      return num_blocks + 1 if i is None else i + 1
    return flax.traverse_util.unflatten_dict({p: layer_id(p) for p in flat}), num_blocks + 1

  @property
  def grid_size(self):
    return self.img_size // self.patch_size

  def sincos_table(self, cls_token=True):
    """The fixed sin-cos position table [(1 +) grid_size**2, embed_dim] of `sincos_layout` (numpy)."""
    return get_2d_sincos_pos_embed(self.embed_dim, self.grid_size, cls_token=cls_token, layout=self.sincos_layout)

  @nn.compact
  def __call__(self, x, train: bool = False, ids_keep=None, mask=None, outputs: Optional[Sequence[str]] = None):
    if self.output not in ('tokens', 'cls', 'mean', 'patch'):
      raise ValueError(f"unknown output '{self.output}'; "
                       'valid: tokens, cls, mean, patch')
    if self.init_mode not in INIT_MODES:
      raise ValueError(f"VisionTransformer: unknown init_mode '{self.init_mode}'; valid: {', '.join(INIT_MODES)}")
    wanted = select(self, outputs) if outputs is not None else None
    patch_init, qkv_init, linear_init, cls_init = INIT_MODES[self.init_mode]
    if self.use_fc_norm and self.output != 'mean':
      raise ValueError("use_fc_norm=True needs output='mean', "
                       f"got output='{self.output}'")
    if self.rel_pos_bias and ids_keep is not None:
      raise ValueError('rel_pos_bias does not support ids_keep (the bias is '
                       'defined over the full patch grid)')
    x, grid = PatchEmbed(self.patch_size, self.embed_dim, dtype=self.dtype, kernel_init=patch_init,
                         name='patch_embed')(x)
    if self.frozen_patch_embed:
      x = jax.lax.stop_gradient(x)
    b = x.shape[0]
    if self.mask_token:
      token = self.param('mask_token', nn.initializers.truncated_normal(0.02), (1, 1, self.embed_dim))
      if mask is not None:
        m = mask.reshape(b, -1, 1).astype(x.dtype)
        x = x * (1 - m) + token.astype(x.dtype) * m
    elif mask is not None:
      raise ValueError('VisionTransformer: a mask needs mask_token=True')

    num_pos = 1 + self.grid_size**2
    if self.pos_embed == 'learned':
      pos_embed = self.param('pos_embed',
                             nn.initializers.truncated_normal(0.02),
                             (1, num_pos, self.embed_dim))
    elif self.pos_embed == 'sincos':
      pos_embed = jnp.asarray(self.sincos_table(cls_token=True))[None]
    elif self.pos_embed == 'none':
      pos_embed = jnp.zeros((1, 1 + grid[0] * grid[1], self.embed_dim))
    else:
      raise ValueError(f"unknown pos_embed '{self.pos_embed}'; "
                       "valid: learned, sincos, none")
    if self.pos_embed != 'none':
      pos_embed = resize_pos_embed(pos_embed, (self.grid_size,) * 2, grid)
    pos_embed = pos_embed.astype(self.dtype)

    x = x + pos_embed[:, 1:]
    if ids_keep is not None:
      x = jnp.take_along_axis(x, ids_keep[..., None], axis=1)

    cls_token = self.param('cls_token', cls_init, (1, 1, self.embed_dim))
    cls_token = cls_token.astype(self.dtype) + pos_embed[:, :1]
    x = jnp.concatenate([jnp.broadcast_to(cls_token, (b, 1, self.embed_dim)),
                         x], axis=1)

    drop_path_rates = np.linspace(0.0, self.drop_path_rate, self.depth)
    rel_pos_window = (self.grid_size,) * 2 if self.rel_pos_bias else None
    blocks = []
    for i in range(self.depth):
      block = Block(self.num_heads, self.mlp_ratio, self.qkv_bias,
                    drop_path=float(drop_path_rates[i]),
                    layer_scale_init=self.layer_scale_init,
                    rel_pos_window=rel_pos_window, dtype=self.dtype,
                    kernel_init=linear_init, qkv_kernel_init=qkv_init,
                    name=f'blocks_{i}')
      x = remat_call(block, x, train) if self.remat else block(x, train)
      blocks.append(x)

    norm = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=name)
    if self.use_fc_norm:
      outs = {'mean': norm('fc_norm')(x[:, 1:].mean(axis=1))}
    else:
      if self.final_norm:
        x = norm('norm')(x)
      outs = {'tokens': x, 'cls': x[:, 0], 'mean': x[:, 1:].mean(axis=1), 'patch': x[:, 1:]}
    if wanted is not None:
      return {o.name: blocks[o.index] if o.kind == 'tokens' else outs[o.name] for o in wanted}
    return outs[self.output]


# the named sizes: (patch size, width, depth, heads)
SIZES = {'tiny': (16, 192, 12, 3), 'small': (16, 384, 12, 6), 'base': (16, 768, 12, 12), 'large': (16, 1024, 24, 16),
         'huge': (14, 1280, 32, 16)}
BACKBONES = {f'vit_{size}': functools.partial(VisionTransformer, patch_size=p, embed_dim=d, depth=n, num_heads=h)
             for size, (p, d, n, h) in SIZES.items()}
