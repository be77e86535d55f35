"""The interface of the backbone families, after timm's `feature_info`, `forward_intermediates` and
`group_matcher`: what feature extraction, the linear probes, layer-wise lr decay and the loop's kNN on a chosen
output ask a backbone, instead of switching on its type.

A family is one file (jssl/models/resnet.py, vit.py, swin.py; + its converter in jssl/convert/) holding its
nn.Module and a `BACKBONES` dict of its named sizes, listed in jssl/models/__init__.py. The module declares:

  family                   the family's name ('resnet', 'vit', 'swin'; config.optimizer.layer_decay_kind names it)
  feature_info()           the outputs the built module gives with its own params, shallow to deep: `Output`s
  __call__(x, ..., outputs=names)   {name: array}: those outputs of one forward pass (any of feature_info's)
  pools                    the poolings feature extraction may apply to its outputs, the default first
  default_feature          the output feature extraction reads when none is named
  layer_ids(params)        (classmethod) the layer id of every leaf of a params tree of the family and L + 1,
                           mmpretrain's `get_layer_depth` numbering: the lr multipliers of layer-wise decay
"""
import dataclasses
import re
from typing import Protocol, Sequence

KINDS = ('map', 'tokens', 'vector')


@dataclasses.dataclass(frozen=True)
class Output:
  """One output of a backbone: `kind` 'map' [B, H, W, C] (NHWC), 'tokens' [B, T, C] or 'vector' [B, C]."""
  name: str      # 'feat1' (ResNet, Swin), 'block3', 'cls', 'mean' (ViT)
  kind: str
  channels: int
  stride: int    # input pixels per output pixel (map) or per patch (tokens, and the vectors made of them)
  index: int     # the family's own numbering: ResNet 0 (stem) .. 4, Swin's stage, ViT's block


class Backbone(Protocol):
  """What a family's module has (the module docstring)."""
  family: str
  pools: tuple

  def feature_info(self) -> tuple: ...

  @property
  def default_feature(self) -> str: ...

  @classmethod
  def layer_ids(cls, params) -> tuple: ...


def select(module: Backbone, names: Sequence[str]) -> tuple:
  """The `Output`s of `module` called `names`; an unknown name is a ValueError listing the valid ones."""
  info = {o.name: o for o in module.feature_info()}
  for name in names:
    if name not in info:
      raise ValueError(f"{type(module).__name__}: unknown output '{name}'; valid: {', '.join(info)}")
  return tuple(info[name] for name in names)


def map_output(module: Backbone, index: int):
  """The 'map' output of `module` with the family's number `index` (ResNet 0..4, a Swin stage), or None."""
  return next((o for o in module.feature_info() if o.kind == 'map' and o.index == index), None)


def numbered(key, prefix):
  """3 for key 'blocks_3' and prefix 'blocks'; None for other keys (the numbered param subtrees)."""
  m = re.fullmatch(rf'{prefix}_(\d+)', str(key))
  return int(m.group(1)) if m else None
