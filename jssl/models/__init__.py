"""Backbone registry: build_backbone('resnet50'), build_backbone('vit_base')."""
import functools

from jssl.models.layers import (Attention, Block, DropPath, Mlp, PatchEmbed,
                                get_2d_sincos_pos_embed)
from jssl.models.resnet import (BasicBlock, Bottleneck, ResNet, ResNet18,
                                ResNet34, ResNet50, ResNet101, ResNet152)
from jssl.models.vit import VisionTransformer

BACKBONES = {
    'resnet18': ResNet18,
    'resnet34': ResNet34,
    'resnet50': ResNet50,
    'resnet101': ResNet101,
    'resnet152': ResNet152,
    'vit_tiny': functools.partial(VisionTransformer, embed_dim=192, depth=12,
                                  num_heads=3),
    'vit_small': functools.partial(VisionTransformer, embed_dim=384, depth=12,
                                   num_heads=6),
    'vit_base': functools.partial(VisionTransformer, embed_dim=768, depth=12,
                                  num_heads=12),
    'vit_large': functools.partial(VisionTransformer, embed_dim=1024, depth=24,
                                   num_heads=16),
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
