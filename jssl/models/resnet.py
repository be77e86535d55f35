"""ResNet backbone matching torchvision (v1.5: stride on the 3x3 conv).

Param names mirror torchvision so checkpoints map directly: conv1, bn1,
layer{s}_{b}/{conv1,bn1,...,downsample_conv,downsample_bn}. Output index 0 is
the stem (conv1/bn1/relu, before the max-pool) and 1..4 are the stages, as in
mmselfsup's ResNet ("0: conv-1, x: stage-x").
"""
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any

# torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu').
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def batch_norm(train, dtype, name, zero_init=False):
  # Under jit over a global batch the statistics are global, i.e. SyncBN.
  return nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
      scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
      name=name)


def conv(features, kernel, stride, dtype, name):
  pad = kernel // 2  # torch-style symmetric padding
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False,
                 kernel_init=conv_init, dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convs; used by ResNet-18/34."""
  features: int
  stride: int = 1
  zero_init_residual: bool = False
  dtype: Dtype = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    out_features = self.features * self.expansion
    y = conv(self.features, 3, self.stride, self.dtype, 'conv1')(x)
    y = nn.relu(batch_norm(train, self.dtype, 'bn1')(y))
    y = conv(self.features, 3, 1, self.dtype, 'conv2')(y)
    y = batch_norm(train, self.dtype, 'bn2', self.zero_init_residual)(y)
    if self.stride != 1 or x.shape[-1] != out_features:
      x = conv(out_features, 1, self.stride, self.dtype, 'downsample_conv')(x)
      x = batch_norm(train, self.dtype, 'downsample_bn')(x)
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand x4; used by ResNet-50/101/152."""
  features: int
  stride: int = 1
  zero_init_residual: bool = False
  dtype: Dtype = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    out_features = self.features * self.expansion
    y = conv(self.features, 1, 1, self.dtype, 'conv1')(x)
    y = nn.relu(batch_norm(train, self.dtype, 'bn1')(y))
    y = conv(self.features, 3, self.stride, self.dtype, 'conv2')(y)
    y = nn.relu(batch_norm(train, self.dtype, 'bn2')(y))
    y = conv(out_features, 1, 1, self.dtype, 'conv3')(y)
    y = batch_norm(train, self.dtype, 'bn3', self.zero_init_residual)(y)
    if self.stride != 1 or x.shape[-1] != out_features:
      x = conv(out_features, 1, self.stride, self.dtype, 'downsample_conv')(x)
      x = batch_norm(train, self.dtype, 'downsample_bn')(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet trunk without avgpool/fc; returns a tuple of NHWC feature maps."""
  stage_sizes: Sequence[int]
  block_cls: Callable
  num_filters: int = 64
  in_channels: int = 3
  zero_init_residual: bool = False
  out_indices: Sequence[int] = (4,)
  dtype: Dtype = jnp.float32

  @property
  def feature_dim(self):
    """Channels of the last stage (512 for ResNet-18, 2048 for ResNet-50)."""
    return self.num_filters * 2**(len(self.stage_sizes) - 1) * (
        self.block_cls.expansion)

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.shape[-1] != self.in_channels:
      raise ValueError(f'expected {self.in_channels} input channels, '
                       f'got input of shape {x.shape}')
    num_outputs = len(self.stage_sizes) + 1
    if not all(0 <= i < num_outputs for i in self.out_indices):
      raise ValueError(f'out_indices {self.out_indices} must be in '
                       f'[0, {num_outputs - 1}]')
    x = x.astype(self.dtype)
    x = conv(self.num_filters, 7, 2, self.dtype, 'conv1')(x)
    x = nn.relu(batch_norm(train, self.dtype, 'bn1')(x))
    outs = {0: x}
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        stride = 2 if i > 0 and j == 0 else 1
        x = self.block_cls(self.num_filters * 2**i, stride=stride,
                           zero_init_residual=self.zero_init_residual,
                           dtype=self.dtype, name=f'layer{i + 1}_{j}')(x, train)
      outs[i + 1] = x
    return tuple(outs[i] for i in sorted(self.out_indices))


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2),
                             block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block_cls=Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3),
                              block_cls=Bottleneck)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3),
                              block_cls=Bottleneck)
