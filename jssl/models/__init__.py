"""Backbone registry: build_backbone('resnet50'), build_backbone('vit_base').

Each family module (its nn.Module, the interface of jssl/models/backbone.py, and `BACKBONES`, its named sizes) is
listed once in FAMILY_MODULES."""
from jssl.models.layers import (Attention, Block, DropPath, Mlp, PatchEmbed,
                                get_2d_sincos_pos_embed)
from jssl.models.resnet import (BasicBlock, Bottleneck, ResNet, ResNet18,
                                ResNet34, ResNet50, ResNet101, ResNet152)
from jssl.models import resnet, swin, vit
from jssl.models.vit import VisionTransformer
from jssl.models.swin import SwinTransformer

FAMILY_MODULES = (vit, swin, resnet)
BACKBONES = {name: make for family in FAMILY_MODULES for name, make in family.BACKBONES.items()}
# family name ('vit', 'swin', 'resnet') -> its module class
FAMILIES = {make.func.family: make.func for make in BACKBONES.values()}


def build_backbone(name, **kwargs):
  """Instantiates a registered backbone; kwargs override its defaults."""
  if name not in BACKBONES:
    raise ValueError(
        f"unknown backbone '{name}'; valid: {', '.join(sorted(BACKBONES))}")
  return BACKBONES[name](**kwargs)


def backbone_feature_dim(name, **kwargs):
  """Channels of the backbone's final output (no params are created)."""
  return build_backbone(name, **kwargs).feature_dim
