"""Backbone registry: build_backbone('resnet50'), build_backbone('vit_base')."""
import functools

from jssl.models.layers import (Attention, Block, DropPath, Mlp, PatchEmbed,
                                get_2d_sincos_pos_embed)
from jssl.models.resnet import (BasicBlock, Bottleneck, ResNet, ResNet18,
                                ResNet34, ResNet50, ResNet101, ResNet152)
from jssl.models import resnet as _resnet
from jssl.models.vit import VisionTransformer
from jssl.models.swin import SwinTransformer

BACKBONES = {
    'resnet18': ResNet18,
    'resnet34': ResNet34,
    'resnet50': ResNet50,
    'resnet101': ResNet101,
    'resnet152': ResNet152,
    'resnext50_32x4d': _resnet.ResNeXt50_32x4d,
    'resnext101_32x8d': _resnet.ResNeXt101_32x8d,
    'resnet18_v1d': _resnet.ResNet18V1d,
    'resnet34_v1d': _resnet.ResNet34V1d,
    'resnet50_v1d': _resnet.ResNet50V1d,
    'resnet101_v1d': _resnet.ResNet101V1d,
    'resnet152_v1d': _resnet.ResNet152V1d,
    'vit_tiny': functools.partial(VisionTransformer, embed_dim=192, depth=12,
                                  num_heads=3),
    'vit_small': functools.partial(VisionTransformer, embed_dim=384, depth=12,
                                   num_heads=6),
    'vit_base': functools.partial(VisionTransformer, embed_dim=768, depth=12,
                                  num_heads=12),
    'vit_large': functools.partial(VisionTransformer, embed_dim=1024, depth=24,
                                   num_heads=16),
    'vit_huge': functools.partial(VisionTransformer, patch_size=14,
                                  embed_dim=1280, depth=32, num_heads=16),
    # window_size defaults to 7; SimMIM pretrains Swin-B at 192 px with 6.
    'swin_tiny': functools.partial(SwinTransformer, embed_dim=96,
                                   depths=(2, 2, 6, 2),
                                   num_heads=(3, 6, 12, 24)),
    'swin_small': functools.partial(SwinTransformer, embed_dim=96,
                                    depths=(2, 2, 18, 2),
                                    num_heads=(3, 6, 12, 24)),
    'swin_base': functools.partial(SwinTransformer, embed_dim=128,
                                   depths=(2, 2, 18, 2),
                                   num_heads=(4, 8, 16, 32)),
    'swin_large': functools.partial(SwinTransformer, embed_dim=192,
                                    depths=(2, 2, 18, 2),
                                    num_heads=(6, 12, 24, 48)),
}


def build_backbone(name, **kwargs):
  """Instantiates a registered backbone; kwargs override its defaults."""
  if name not in BACKBONES:
    raise ValueError(
        f"unknown backbone '{name}'; valid: {', '.join(sorted(BACKBONES))}")
  return BACKBONES[name](**kwargs)


def backbone_feature_dim(name, **kwargs):
  """Channels of the backbone's final output (no params are created)."""
  return build_backbone(name, **kwargs).feature_dim
