"""Necks of the MMSelfSup algorithms as Flax modules (projectors, predictors, decoders)."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl.models import layers


def global_avg_pool(x):
  """[B, H, W, C] -> [B, C]; tokens/vectors pass through."""
  return x.mean(axis=(1, 2)) if x.ndim == 4 else x


class NonLinearNeck(nn.Module):
  """MMSelfSup's NonLinearNeck: [avgpool] -> (fc -> BN -> ReLU) x (num_layers - 1) -> fc [-> BN].

  BatchNorm over the global batch is SyncBN (the reference uses SyncBN). Defaults follow the reference:
  no bias on the fcs, last BN with affine, no last bias.
  """
  hid_channels: int
  out_channels: int
  num_layers: int = 2
  with_bias: bool = False
  with_last_bn: bool = True
  with_last_bn_affine: bool = True
  with_last_bias: bool = False
  with_avg_pool: bool = True
  kernel_init: Any = nn.linear.default_kernel_init  # e.g. Barlow Twins' Kaiming uniform (fan_out)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.with_avg_pool:
      x = global_avg_pool(x)
    bn = lambda name, affine=True: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                                use_scale=affine, use_bias=affine, dtype=self.dtype, name=name)
    for i in range(self.num_layers - 1):
      x = nn.Dense(self.hid_channels, use_bias=self.with_bias, kernel_init=self.kernel_init, dtype=self.dtype,
                   name=f'fc{i}')(x)
      x = nn.relu(bn(f'bn{i}')(x))
    x = nn.Dense(self.out_channels, use_bias=self.with_last_bias, kernel_init=self.kernel_init, dtype=self.dtype,
                 name=f'fc{self.num_layers - 1}')(x)
    if self.with_last_bn:
      x = bn(f'bn{self.num_layers - 1}', self.with_last_bn_affine)(x)
    return x


class MAEDecoder(nn.Module):
  """MAE's lightweight decoder (MMSelfSup MAEPretrainDecoder): embed visible tokens, insert mask tokens,
  un-shuffle to the patch grid, fixed 2-D sin-cos positions, transformer blocks, predict patch pixels."""
  num_patches: int
  patch_size: int
  in_chans: int = 3
  decoder_embed_dim: int = 512
  decoder_depth: int = 8
  decoder_num_heads: int = 16
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  remat: bool = False
  attention_head_chunks: int = 1  # heads attended at a time: decoder_num_heads / this (layers.attention_in_chunks)

  @nn.compact
  def __call__(self, x, ids_restore, train: bool = False):
    """x: encoder tokens [B, 1 + K, D] (cls first); ids_restore: [B, N]. Returns [B, N, p*p*C]."""
    x = nn.Dense(self.decoder_embed_dim, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
                 name='decoder_embed')(x)
    mask_token = self.param('mask_token', nn.initializers.normal(0.02), (1, 1, self.decoder_embed_dim))
    b, n = ids_restore.shape
    num_masked = n - (x.shape[1] - 1)
    patches = jnp.concatenate([x[:, 1:], jnp.broadcast_to(mask_token, (b, num_masked, x.shape[-1])).astype(x.dtype)],
                              axis=1)
    patches = jnp.take_along_axis(patches, ids_restore[:, :, None], axis=1)
    x = jnp.concatenate([x[:, :1], patches], axis=1)
    grid = int(round(self.num_patches ** 0.5))
    pos = layers.get_2d_sincos_pos_embed(self.decoder_embed_dim, grid, cls_token=True)
    x = x + jnp.asarray(pos, x.dtype)[None]
    for i in range(self.decoder_depth):
      block = layers.Block(num_heads=self.decoder_num_heads, mlp_ratio=self.mlp_ratio, dtype=self.dtype,
                           attention_head_chunks=self.attention_head_chunks, name=f'decoder_blocks_{i}')
      x = layers.remat_call(block, x, train) if self.remat else block(x, train)
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='decoder_norm')(x)
    x = nn.Dense(self.patch_size ** 2 * self.in_chans, dtype=self.dtype,
                 kernel_init=nn.initializers.xavier_uniform(), name='decoder_pred')(x)
    return x[:, 1:]


class SimMIMLinearDecoder(nn.Module):
  """SimMIM's one-layer prediction head (MMSelfSup SimMIMLinearDecoder): a 1x1 conv to encoder_stride^2 * 3
  channels, then torch's PixelShuffle to the input resolution: channel c * r * r + i * r + j of map cell (h, w)
  becomes pixel (h * r + i, w * r + j) of channel c. [B, H/r, W/r, C] -> [B, H, W, 3]. Torch's default conv
  init (the reference leaves the neck to it): weights and bias U(-1/sqrt(C), 1/sqrt(C))."""
  encoder_stride: int
  out_channels: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    r, c = self.encoder_stride, self.out_channels
    bound = x.shape[-1] ** -0.5
    x = nn.Conv(r * r * c, (1, 1), kernel_init=torch_linear_init, dtype=self.dtype, name='decoder',
                bias_init=lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound))(x)
    b, h, w, _ = x.shape
    x = x.reshape(b, h, w, c, r, r).transpose(0, 1, 4, 2, 5, 3)  # (h, i, w, j, c)
    return x.reshape(b, h * r, w * r, c)


# torch.nn.Linear's default weight init (kaiming_uniform with a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
torch_linear_init = nn.initializers.variance_scaling(1. / 3., 'fan_in', 'uniform')


class LinearNeck(nn.Module):
  """MMSelfSup's LinearNeck (MoCo v1): [avgpool] -> fc with bias. Without the pool it maps each
  token ([..., D] -> [..., out]); MaskFeat's neck, initialized truncated normal 0.02 (`kernel_init`)."""
  out_channels: int
  with_avg_pool: bool = True
  kernel_init: Any = torch_linear_init
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no BatchNorm
    if self.with_avg_pool:
      x = global_avg_pool(x)
    return nn.Dense(self.out_channels, kernel_init=self.kernel_init, dtype=self.dtype, name='fc')(x)


class ODCNeck(nn.Module):
  """MMSelfSup's ODCNeck: [avgpool] -> fc -> BN (no affine, torch momentum 0.001) -> ReLU -> dropout 0.5 -> fc -> ReLU.
  Dropout needs the 'dropout' rng in train mode."""
  hid_channels: int
  out_channels: int
  with_avg_pool: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.with_avg_pool:
      x = global_avg_pool(x)
    x = nn.Dense(self.hid_channels, kernel_init=torch_linear_init, dtype=self.dtype, name='fc0')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.999, epsilon=1e-5, use_scale=False, use_bias=False,
                     dtype=self.dtype, name='bn0')(x)
    x = nn.Dropout(0.5, deterministic=not train)(nn.relu(x))
    return nn.relu(nn.Dense(self.out_channels, kernel_init=torch_linear_init, dtype=self.dtype, name='fc1')(x))


class MoCoV2Neck(nn.Module):
  """MMSelfSup's MoCoV2Neck: [avgpool] -> fc -> ReLU -> fc, both with bias, no BatchNorm."""
  hid_channels: int
  out_channels: int
  with_avg_pool: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no BatchNorm
    if self.with_avg_pool:
      x = global_avg_pool(x)
    x = nn.relu(nn.Dense(self.hid_channels, kernel_init=torch_linear_init, dtype=self.dtype, name='fc0')(x))
    return nn.Dense(self.out_channels, kernel_init=torch_linear_init, dtype=self.dtype, name='fc1')(x)


def adaptive_avg_pool(x, grid):
  """[B, H, W, C] -> [B, grid, grid, C] by averaging equal windows (torch AdaptiveAvgPool2d when grid divides H, W)."""
  b, h, w, c = x.shape
  if h % grid or w % grid:
    raise ValueError(f'num_grid {grid} must divide the feature map size {h}x{w}')
  return x.reshape(b, grid, h // grid, grid, w // grid, c).mean(axis=(2, 4))


class DenseCLNeck(nn.Module):
  """MMSelfSup's DenseCLNeck on a backbone feature map [B, H, W, C]; returns three outputs:

  - global: avgpool -> fc -> ReLU -> fc, [B, out] (MoCo v2's projector);
  - dense: [adaptive avgpool to num_grid x num_grid] -> 1x1 conv -> ReLU -> 1x1 conv, flattened to [B, S^2, out]
    with locations in row-major (h, w) order (torch's view(B, C, -1) of an NCHW map, transposed);
  - dense mean: the dense output averaged over the locations, [B, out] (what the dense queue is fed with).

  Biases on all four layers; kernels with torch's default (Kaiming-uniform a=sqrt(5)) scale, biases zero.
  """
  hid_channels: int
  out_channels: int
  num_grid: Any = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no BatchNorm
    g = global_avg_pool(x)
    g = nn.relu(nn.Dense(self.hid_channels, kernel_init=torch_linear_init, dtype=self.dtype, name='fc0')(g))
    g = nn.Dense(self.out_channels, kernel_init=torch_linear_init, dtype=self.dtype, name='fc1')(g)
    if self.num_grid:
      x = adaptive_avg_pool(x, self.num_grid)
    conv = lambda features, name: nn.Conv(features, (1, 1), kernel_init=torch_linear_init, dtype=self.dtype,
                                          name=name)
    d = conv(self.out_channels, 'conv1')(nn.relu(conv(self.hid_channels, 'conv0')(x)))
    dense = d.reshape(d.shape[0], -1, d.shape[-1])
    return g, dense, dense.mean(axis=1)


class SwAVNeck(nn.Module):
  """MMSelfSup's SwAVNeck: global-average-pool each feature map of the list (one per crop resolution), concatenate
  them along the batch, then fc -> BN -> ReLU -> fc (both fcs with bias) -> L2 normalization.

  The BN sees all crops of all resolutions together (the reference concatenates before projecting); over the global
  batch it is the reference's SyncBN. hid_channels == 0: a single fc; out_channels == 0: no projection."""
  hid_channels: int
  out_channels: int
  with_avg_pool: bool = True
  with_l2norm: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, xs, train: bool = False):
    if not isinstance(xs, (list, tuple)):
      xs = [xs]
    x = jnp.concatenate([global_avg_pool(x) if self.with_avg_pool else x.reshape(x.shape[0], -1) for x in xs])
    if self.out_channels and self.hid_channels:
      x = nn.Dense(self.hid_channels, kernel_init=torch_linear_init, dtype=self.dtype, name='fc0')(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype, name='bn0')(x)
      x = nn.relu(x)
      x = nn.Dense(self.out_channels, kernel_init=torch_linear_init, dtype=self.dtype, name='fc1')(x)
    elif self.out_channels:
      x = nn.Dense(self.out_channels, kernel_init=torch_linear_init, dtype=self.dtype, name='fc0')(x)
    if self.with_l2norm:  # torch.nn.functional.normalize: x / max(|x|, 1e-12)
      x = x / jnp.maximum(jnp.linalg.norm(x.astype(jnp.float32), axis=-1, keepdims=True), 1e-12).astype(x.dtype)
    return x


def normalized_prototypes_init(key, shape, dtype=jnp.float32):
  """torch.nn.Linear's weight init with every prototype (a column of the [D, K] kernel) scaled to unit length:
  the state the reference's prototypes are in after its first in-place normalization."""
  w = torch_linear_init(key, shape, dtype)
  return w / jnp.linalg.norm(w, axis=0, keepdims=True)


class RelativeLocNeck(nn.Module):
  """MMSelfSup's RelativeLocNeck on a pair's concatenated pooled features: fc -> BN1d -> ReLU -> dropout.

  Reference initialization: fc Normal(0, 0.01) with bias 0, BN weight 1 / bias 0; its BN momentum is 0.003 (torch),
  i.e. running stats keep 0.997 of their value per step; dropout p = 0.5 (torch nn.Dropout's default)."""
  out_channels: int = 4096
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(self.out_channels, kernel_init=nn.initializers.normal(0.01), bias_init=nn.initializers.zeros,
                 dtype=self.dtype, name='fc')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.997, epsilon=1e-5, dtype=self.dtype, name='bn')(x)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))


class CrossAttention(nn.Module):
  """mmpretrain's CrossMultiheadAttention: queries from x, keys and values from k and v (separate q/k/v Linears
  without bias), learned q and v biases (none on k) when qkv_bias, then an output projection."""
  num_heads: int
  qkv_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, k, v):
    dim = x.shape[-1]
    head_dim = dim // self.num_heads
    dense = lambda name, bias=False: nn.Dense(dim, use_bias=bias, kernel_init=layers.dense_init, dtype=self.dtype,
                                              name=name)
    q, k, v = dense('q')(x), dense('k')(k), dense('v')(v)
    if self.qkv_bias:
      q = q + self.param('q_bias', nn.initializers.zeros, (dim,)).astype(q.dtype)
      v = v + self.param('v_bias', nn.initializers.zeros, (dim,)).astype(v.dtype)
    split = lambda t: t.reshape(*t.shape[:2], self.num_heads, head_dim)
    x = jax.nn.dot_product_attention(split(q), split(k), split(v))
    return dense('proj', bias=True)(x.reshape(*x.shape[:2], dim))


class CAERegressorLayer(nn.Module):
  """CAE's regressor block (mmpretrain CAETransformerRegressorLayer): the masked queries attend to the
  [visible; masked] tokens (positions added to queries and keys, not values), then a post-norm MLP:
      x = x_q + g1 * attn(norm_q(x_q + pos_q), norm_k(x_kv + pos_k), norm_v(x_kv));  x = norm2(x)
      x = x + g2 * mlp(x)
  g1, g2: learned layer scales from `layer_scale_init` (> 0), else 1."""
  num_heads: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  layer_scale_init: float = 0.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_q, x_kv, pos_q, pos_k):
    dim = x_q.shape[-1]
    norm = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=name)
    scale = lambda name, y: (y * self.param(name, nn.initializers.constant(self.layer_scale_init), (dim,))
                             .astype(y.dtype) if self.layer_scale_init > 0 else y)
    y = CrossAttention(self.num_heads, self.qkv_bias, dtype=self.dtype, name='cross_attn')(
        norm('norm1_q_cross')(x_q + pos_q), norm('norm1_k_cross')(x_kv + pos_k), norm('norm1_v_cross')(x_kv))
    x = norm('norm2_cross')(x_q + scale('gamma_1_cross', y))
    return x + scale('gamma_2_cross', layers.Mlp(int(dim * self.mlp_ratio), dtype=self.dtype, name='mlp')(x))


class CAENeck(nn.Module):
  """CAE's latent regressor and decoder (mmpretrain CAENeck).

  Mask tokens (one per masked patch) go through `regressor_depth` cross-attention blocks over the encoder's
  visible tokens -> norm: the latent prediction of the masked patches, aligned with the teacher's latents. Then
  + their positions -> `decoder_depth` BEiT blocks (q/v bias, layer scale) over the masked tokens only -> norm ->
  a linear head to the tokenizer's vocabulary. Init as the reference: Linears Xavier-uniform with zero bias, the
  head's weight and the mask token truncated normal (0.02)."""
  num_classes: int = 8192
  regressor_depth: int = 4
  decoder_depth: int = 4
  num_heads: int = 12
  mlp_ratio: float = 4.0
  layer_scale_init: float = 0.1
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x_unmasked, pos_masked, pos_unmasked, train: bool = False):
    """x_unmasked: the encoder's visible patch tokens [B, V, D] (no cls); pos_*: their positions [B, M|V, D].
    Returns (logits [B, M, num_classes], latent_pred [B, M, D])."""
    b, m, dim = pos_masked.shape
    mask_token = self.param('mask_token', nn.initializers.truncated_normal(0.02), (1, 1, dim))
    x = jnp.broadcast_to(mask_token, (b, m, dim)).astype(self.dtype)
    pos_kv = jnp.concatenate([pos_unmasked, pos_masked], axis=1).astype(self.dtype)
    pos_masked = pos_masked.astype(self.dtype)
    regressor = nn.remat(CAERegressorLayer) if self.remat else CAERegressorLayer
    for i in range(self.regressor_depth):
      x = regressor(self.num_heads, self.mlp_ratio, layer_scale_init=self.layer_scale_init, dtype=self.dtype,
                    name=f'regressors_{i}')(x, jnp.concatenate([x_unmasked.astype(x.dtype), x], axis=1),
                                            pos_masked, pos_kv)
    latent_pred = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='norm_regressor')(x)
    x = latent_pred + pos_masked
    for i in range(self.decoder_depth):
      block = layers.Block(self.num_heads, self.mlp_ratio, qkv_bias='qv',
                           layer_scale_init=self.layer_scale_init or None, dtype=self.dtype, name=f'decoders_{i}')
      x = layers.remat_call(block, x, train) if self.remat else block(x, train)
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='norm_decoder')(x)
    logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.truncated_normal(0.02), dtype=self.dtype,
                      name='head')(x)
    return logits, latent_pred
