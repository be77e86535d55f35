"""ResNet / ResNeXt / ResNetV1d backbones matching torchvision and mmpretrain.

v1.5 everywhere: the stride sits on the 3x3 conv. Param names mirror
torchvision so checkpoints map directly: conv1, bn1,
layer{s}_{b}/{conv1,bn1,...,downsample_conv,downsample_bn}; the V1d deep stem
is stem_{i}_conv / stem_{i}_bn (i = 0, 1, 2). Output index 0 is the stem
(after its last ReLU, before the max-pool) and 1..4 are the stages, as in
mmselfsup's ResNet ("0: conv-1, x: stage-x"), named feat1..feat5 (jssl/models/backbone.py).
"""
import functools
import math
import re
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp

from jssl.models.backbone import Output, select

Dtype = Any

# torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu').
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def batch_norm(train, dtype, name, zero_init=False):
  # Under jit over a global batch the statistics are global, i.e. SyncBN.
  return nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
      scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
      name=name)


def conv(features, kernel, stride, dtype, name, groups=1):
  pad = kernel // 2  # torch-style symmetric padding
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False,
                 feature_group_count=groups, kernel_init=conv_init,
                 dtype=dtype, name=name)


def shortcut(x, features, stride, avg_down, train, dtype):
  """Projection shortcut; ResNet-D average-pools first so that the strided
  1x1 conv does not drop 3/4 of the activations.

  avg_down follows mmpretrain: AvgPool(stride, ceil_mode=True,
  count_include_pad=False) then a stride-1 1x1 conv.
  """
  if avg_down and stride != 1:
    # ceil_mode: pad the bottom/right up to a multiple of the stride, and
    # average only over real pixels in the partial windows.
    pad_h, pad_w = (-x.shape[1]) % stride, (-x.shape[2]) % stride
    x = nn.avg_pool(x, (stride, stride), strides=(stride, stride),
                    padding=((0, pad_h), (0, pad_w)), count_include_pad=False)
    stride = 1
  x = conv(features, 1, stride, dtype, 'downsample_conv')(x)
  return batch_norm(train, dtype, 'downsample_bn')(x)


class ResidualBlock(nn.Module):
  """What both block kinds take (torchvision's BasicBlock / Bottleneck arguments) and their shortcut sum."""
  features: int
  stride: int = 1
  zero_init_residual: bool = False
  groups: int = 1
  width_per_group: int = 64
  avg_down: bool = False
  dtype: Dtype = jnp.float32
  expansion = 1

  def residual(self, x, y, train):
    """relu(x + y), x through the downsampling shortcut where the block changes its stride or width."""
    out_features = self.features * self.expansion
    if self.stride != 1 or x.shape[-1] != out_features:
      x = shortcut(x, out_features, self.stride, self.avg_down, train, self.dtype)
    return nn.relu(x + y)


class BasicBlock(ResidualBlock):
  """Two 3x3 convs; used by ResNet-18/34."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.groups != 1 or self.width_per_group != 64:
      raise ValueError('BasicBlock supports only groups=1, width_per_group=64 '
                       f'(got groups={self.groups}, '
                       f'width_per_group={self.width_per_group})')
    y = conv(self.features, 3, self.stride, self.dtype, 'conv1')(x)
    y = nn.relu(batch_norm(train, self.dtype, 'bn1')(y))
    y = conv(self.features, 3, 1, self.dtype, 'conv2')(y)
    return self.residual(x, batch_norm(train, self.dtype, 'bn2', self.zero_init_residual)(y), train)


class Bottleneck(ResidualBlock):
  """1x1 reduce, 3x3 (strided, grouped for ResNeXt), 1x1 expand x4.

  Used by ResNet-50/101/152 and ResNeXt; the inner width is torchvision's
  int(features * width_per_group / 64) * groups.
  """
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    width = int(self.features * (self.width_per_group / 64.)) * self.groups
    y = conv(width, 1, 1, self.dtype, 'conv1')(x)
    y = nn.relu(batch_norm(train, self.dtype, 'bn1')(y))
    y = conv(width, 3, self.stride, self.dtype, 'conv2', self.groups)(y)
    y = nn.relu(batch_norm(train, self.dtype, 'bn2')(y))
    y = conv(self.features * self.expansion, 1, 1, self.dtype, 'conv3')(y)
    return self.residual(x, batch_norm(train, self.dtype, 'bn3', self.zero_init_residual)(y), train)


# mmpretrain's ResNet.get_layer_depth: (blocks per layer id in stage 2, in stage 3) by the depths of stages 2 and 3
LAYER_GROUPS = {(4, 6): (2, 3), (4, 23): (2, 3), (8, 36): (4, 4), (24, 36): (4, 4), (30, 48): (5, 6)}


class ResNet(nn.Module):
  """ResNet trunk without avgpool/fc; returns a tuple of NHWC feature maps (`out_indices`), or with
  `outputs=names` {name: map} of feat1..feat5 (`feature_info`).

  frozen_stages: -1 freezes nothing, 0 the stem, k the stem and stages 1..k
  (no gradient flows into them and their BN always uses running statistics,
  as mmpretrain's requires_grad=False + eval()). norm_eval: every BN uses its
  running statistics, also when train=True.
  """
  stage_sizes: Sequence[int]
  block_cls: Callable
  num_filters: int = 64
  in_channels: int = 3
  zero_init_residual: bool = False
  out_indices: Sequence[int] = (4,)
  groups: int = 1
  width_per_group: int = 64
  deep_stem: bool = False
  avg_down: bool = False
  frozen_stages: int = -1
  norm_eval: bool = False
  dtype: Dtype = jnp.float32

  family = 'resnet'
  # MMSelfSup's per-output pools of ResNet-50's maps at 224 px, its adaptive pools, the global average
  pools = ('specified', 'adaptive', 'avg')

  @property
  def feature_dim(self):
    """Channels of the last stage (512 for ResNet-18, 2048 for ResNet-50)."""
    return self.num_filters * 2**(len(self.stage_sizes) - 1) * (
        self.block_cls.expansion)

  def feature_info(self):
    """feat1: the stem (after its last ReLU, before the max-pool, stride 2); feat2.. the stages (stride 4, 8,
    ...). All of them whatever `out_indices`: no output has params of its own."""
    stages = tuple(Output(f'feat{i + 2}', 'map', self.num_filters * 2**i * self.block_cls.expansion, 4 * 2**i,
                          i + 1) for i in range(len(self.stage_sizes)))
    return (Output('feat1', 'map', self.num_filters, 2, 0),) + stages

  @property
  def default_feature(self):
    return self.feature_info()[-1].name

  @classmethod
  def layer_ids(cls, params):
    """mmpretrain's ResNet.get_layer_depth: the stem 0, stage 1 layer 1, stages 2 and 3 in groups of blocks
    (LAYER_GROUPS: ResNet-50 2 and 3 blocks per id), stage 4 the last id N = 2 + N2 + N3; L + 1 = N + 1 (the
    head's). mmpretrain numbers only the stage depths of LAYER_GROUPS (not ResNet-18's)."""
    flat = flax.traverse_util.flatten_dict(params)
    blocks = [re.fullmatch(r'layer(\d+)_(\d+)', str(p[0])) for p in flat]
    depths = [len({m.group(2) for m in blocks if m and int(m.group(1)) == s}) for s in (1, 2, 3, 4)]
    if tuple(depths[1:3]) not in LAYER_GROUPS:
      raise ValueError(f'config.optimizer.layer_decay: mmpretrain numbers the layers of ResNets whose stages 2 '
                       f'and 3 have {", ".join(f"{a} and {b}" for a, b in LAYER_GROUPS)} blocks, not '
                       f'{depths[1]} and {depths[2]}')
    per_id2, per_id3 = LAYER_GROUPS[tuple(depths[1:3])]
    n2, n3 = math.ceil(depths[1] / per_id2), math.ceil(depths[2] / per_id3)
    last_block = 2 + n2 + n3

    def layer_id(m):
      if not m:
        return 0  # the stem
      stage, block = int(m.group(1)), int(m.group(2))
      return {1: 1, 2: 2 + block // per_id2, 3: 2 + n2 + block // per_id3}.get(stage, last_block)
    ids = {p: layer_id(m) for p, m in zip(flat, blocks)}
    return flax.traverse_util.unflatten_dict(ids), last_block + 1

  @nn.compact
  def __call__(self, x, train: bool = False, outputs: Optional[Sequence[str]] = None):
    if x.shape[-1] != self.in_channels:
      raise ValueError(f'expected {self.in_channels} input channels, '
                       f'got input of shape {x.shape}')
    num_outputs = len(self.stage_sizes) + 1
    if not all(0 <= i < num_outputs for i in self.out_indices):
      raise ValueError(f'out_indices {self.out_indices} must be in '
                       f'[0, {num_outputs - 1}]')
    if not -1 <= self.frozen_stages < num_outputs:
      raise ValueError(f'frozen_stages {self.frozen_stages} must be in '
                       f'[-1, {num_outputs - 1}]')
    wanted = select(self, outputs) if outputs is not None else None
    # BN of stage i (0 = stem) normalises with batch statistics only when
    # training, not norm_eval and not frozen.
    bn_train = lambda i: train and not self.norm_eval and i > self.frozen_stages
    freeze = lambda x, i: (jax.lax.stop_gradient(x) if i <= self.frozen_stages
                           else x)

    x = x.astype(self.dtype)
    if self.deep_stem:
      # ResNetV1d: three 3x3 convs (c/2 stride 2, c/2, c) replace the 7x7.
      widths = (self.num_filters // 2, self.num_filters // 2, self.num_filters)
      for i, width in enumerate(widths):
        x = conv(width, 3, 2 if i == 0 else 1, self.dtype, f'stem_{i}_conv')(x)
        x = nn.relu(batch_norm(bn_train(0), self.dtype, f'stem_{i}_bn')(x))
    else:
      x = conv(self.num_filters, 7, 2, self.dtype, 'conv1')(x)
      x = nn.relu(batch_norm(bn_train(0), self.dtype, 'bn1')(x))
    x = freeze(x, 0)
    outs = {0: x}
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        stride = 2 if i > 0 and j == 0 else 1
        x = self.block_cls(self.num_filters * 2**i, stride=stride,
                           zero_init_residual=self.zero_init_residual,
                           groups=self.groups,
                           width_per_group=self.width_per_group,
                           avg_down=self.avg_down, dtype=self.dtype,
                           name=f'layer{i + 1}_{j}')(x, bn_train(i + 1))
      x = freeze(x, i + 1)
      outs[i + 1] = x
    if wanted is not None:
      return {o.name: outs[o.index] for o in wanted}
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
ResNeXt50_32x4d = functools.partial(ResNet50, groups=32, width_per_group=4)
ResNeXt101_32x8d = functools.partial(ResNet101, groups=32, width_per_group=8)
# mmpretrain's ResNetV1d = ResNet(deep_stem=True, avg_down=True).
ResNet18V1d = functools.partial(ResNet18, deep_stem=True, avg_down=True)
ResNet34V1d = functools.partial(ResNet34, deep_stem=True, avg_down=True)
ResNet50V1d = functools.partial(ResNet50, deep_stem=True, avg_down=True)
ResNet101V1d = functools.partial(ResNet101, deep_stem=True, avg_down=True)
ResNet152V1d = functools.partial(ResNet152, deep_stem=True, avg_down=True)

BACKBONES = {
    'resnet18': ResNet18, 'resnet34': ResNet34, 'resnet50': ResNet50, 'resnet101': ResNet101,
    'resnet152': ResNet152, 'resnext50_32x4d': ResNeXt50_32x4d, 'resnext101_32x8d': ResNeXt101_32x8d,
    'resnet18_v1d': ResNet18V1d, 'resnet34_v1d': ResNet34V1d, 'resnet50_v1d': ResNet50V1d,
    'resnet101_v1d': ResNet101V1d, 'resnet152_v1d': ResNet152V1d,
}
