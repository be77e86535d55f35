"""Heads of the MMSelfSup pretext-task algorithms as Flax modules: classifiers over backbone or neck features."""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jssl.models.necks import global_avg_pool


class ClsHead(nn.Module):
  """MMSelfSup's ClsHead: [global average pool] -> one linear layer -> class scores.

  The reference initializes the linear layer Normal(0, std) with bias 0 (std 0.01 by default; Relative Location
  uses 0.005)."""
  num_classes: int
  with_avg_pool: bool = False
  init_std: float = 0.01
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.with_avg_pool:
      x = global_avg_pool(x)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(self.init_std),
                    bias_init=nn.initializers.zeros, dtype=self.dtype, name='fc_cls')(x)


# MMSelfSup's pooling of ResNet-50's outputs 0 (stem, after its ReLU) .. 4 (stage 4) at 224 px to about 9,000
# dimensions each: 'specified' (kernel, stride, padding) average pools, or 'adaptive' pools to these grid sizes.
POOL_PARAMS = {'resnet50': ((10, 10, 4), (16, 8, 0), (13, 5, 0), (8, 3, 0), (6, 1, 0))}
POOL_SIZES = {'resnet50': (12, 6, 4, 3, 2)}


def adaptive_avg_pool(x, size: int):
  """torch AdaptiveAvgPool2d(size) on NHWC: output cell i averages input rows [floor(i H / size),
  ceil((i + 1) H / size)), likewise for columns (bins overlap when H is not a multiple of size)."""
  h, w = x.shape[1:3]
  x = jnp.concatenate([x[:, i * h // size:-(-(i + 1) * h // size)].mean(1, keepdims=True) for i in range(size)], 1)
  return jnp.concatenate([x[:, :, j * w // size:-(-(j + 1) * w // size)].mean(2, keepdims=True)
                          for j in range(size)], 2)


class MultiPooling(nn.Module):
  """MMSelfSup's MultiPooling: one pool per backbone output of `in_indices` (0 = stem, 1..4 = stages).
  'specified' is torch AvgPool2d (zero padding counted, floor mode); 'adaptive' is AdaptiveAvgPool2d."""
  pool_type: str = 'adaptive'
  in_indices: Sequence[int] = (0,)
  backbone: str = 'resnet50'

  def __call__(self, feats):
    if self.pool_type not in ('adaptive', 'specified'):
      raise ValueError(f"MultiPooling pool_type: unknown '{self.pool_type}'; valid: adaptive, specified")
    if self.backbone not in POOL_SIZES:
      raise ValueError(f"MultiPooling backbone: unknown '{self.backbone}'; valid: {', '.join(POOL_SIZES)}")
    if len(feats) != len(self.in_indices):
      raise ValueError(f'MultiPooling: {len(feats)} feature maps for in_indices {tuple(self.in_indices)}')
    pooled = []
    for i, x in zip(self.in_indices, feats):
      if self.pool_type == 'adaptive':
        pooled.append(adaptive_avg_pool(x, POOL_SIZES[self.backbone][i]))
      else:
        k, s, p = POOL_PARAMS[self.backbone][i]
        pooled.append(nn.avg_pool(x, (k, k), strides=(s, s), padding=((p, p), (p, p)), count_include_pad=True))
    return pooled


class MultiClsHead(nn.Module):
  """MMSelfSup's MultiClsHead (the multi-stage linear probe): per backbone output of `in_indices`, MultiPooling ->
  BatchNorm (unless with_norm=False; `norm_affine=False` as the benchmark configs' SyncBN(affine=False)) ->
  flatten -> linear (Normal(0, 0.01), bias 0). Returns one score array per index.

  The flatten is in torch's (C, H, W) order, so the fc weights convert to and from MMSelfSup's as plain transposes.
  (The reference's `with_last_layer_unpool` option is not provided: it appends to `self.fcs` before creating it.)
  """
  num_classes: int = 1000
  in_indices: Sequence[int] = (0, 1, 2, 3, 4)
  pool_type: str = 'adaptive'
  backbone: str = 'resnet50'
  with_norm: bool = True
  norm_affine: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats, train: bool = False):
    scores = []
    pooled = MultiPooling(self.pool_type, tuple(self.in_indices), self.backbone)(feats)
    for i, x in zip(self.in_indices, pooled):
      if self.with_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, use_scale=self.norm_affine,
                         use_bias=self.norm_affine, dtype=self.dtype, name=f'norm{i}')(x)
      x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)
      scores.append(nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01),
                             bias_init=nn.initializers.zeros, dtype=self.dtype, name=f'fc{i}')(x))
    return scores


class FinetuneHead(nn.Module):
  """The ViT fine-tuning heads MMSelfSup pairs with MIM pretraining: one linear layer on the pooled feature
  (bias 0, truncated-normal weights). MAEFinetuneHead: init_std 2e-5; MaskFeatFinetuneHead: init_std 0.02 (it
  applies softmax in eval mode, which leaves the top-k unchanged; logits are returned here). Both train with
  label-smoothed cross-entropy (`losses.label_smoothing_cross_entropy`, 0.1)."""
  num_classes: int = 1000
  init_std: float = 2e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.truncated_normal(self.init_std),
                    bias_init=nn.initializers.zeros, dtype=self.dtype, name='head')(x)


class MAELinprobeHead(nn.Module):
  """MAE's linear probe: BatchNorm without affine parameters (eps 1e-6; MAE's recipe, it whitens the frozen
  features so one lr suits every model), then a linear layer (truncated normal 0.01, bias 0)."""
  num_classes: int = 1000
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-6, use_scale=False, use_bias=False,
                     dtype=self.dtype, name='bn')(x)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.truncated_normal(0.01),
                    bias_init=nn.initializers.zeros, dtype=self.dtype, name='head')(x)
