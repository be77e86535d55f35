"""ResNet / ResNeXt / ResNetV1d key maps: torchvision, mmpretrain, detectron2.

jssl names -> torch names ({w} = weight, BN = weight/bias/running_mean/
running_var (+ num_batches_tracked except in detectron2)):

  jssl                       torchvision, mocov3   mmpretrain            detectron2
  conv1, bn1                 conv1, bn1            conv1, bn1            stem.conv1, stem.conv1.norm
  stem_{i}_conv, _bn (V1d)   -                     stem.{i}.conv, .bn    -
  layer{s}_{b}/conv{k}       layer{s}.{b}.conv{k}  same                  res{s+1}.{b}.conv{k}
  layer{s}_{b}/bn{k}         layer{s}.{b}.bn{k}    same                  res{s+1}.{b}.conv{k}.norm
  .../downsample_conv        .downsample.0         .downsample.0 (.1)    .shortcut
  .../downsample_bn          .downsample.1         .downsample.1 (.2)    .shortcut.norm

(.1/.2: mmpretrain's avg-down blocks, whose downsample.0 is the AvgPool.)
'mocov3' is the official MoCo v3 ResNet-50 (torchvision names once
`module.base_encoder.` is stripped; its projection MLP `fc.*` is not the
backbone). detectron2 files are those of its ResNet built with
STRIDE_IN_1X1=False (the stride on the 3x3 conv, as torchvision and jssl),
i.e. converted torchvision/MoCo weights - not MSRA's caffe R-50 (stride in
the 1x1, BGR 0-255 input), which would load but compute something else.
torchvision and detectron2 have no ResNet-D (deep stem, avg-down): those
archs are mmpretrain-only.
"""
import re

import numpy as np

from jssl.convert import keymap
from jssl.convert.errors import ConversionError

FORMATS = ('torchvision', 'mmpretrain', 'detectron2', 'mocov3')

BN_LEAVES = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
             'var': 'running_var'}


def torch_module(path, fmt, avg_down):
  """Torch module name of the jssl conv/BN module at `path` (a tuple)."""
  d2 = fmt == 'detectron2'
  top = path[0]
  if top == 'conv1':
    return 'stem.conv1' if d2 else 'conv1'
  if top == 'bn1':
    return 'stem.conv1.norm' if d2 else 'bn1'
  m = re.fullmatch(r'stem_(\d)_(conv|bn)', top)
  if m:  # only mmpretrain reaches here (checked in key_map)
    return f'stem.{m.group(1)}.{m.group(2)}'
  m = re.fullmatch(r'layer(\d)_(\d+)', top)
  if not m or len(path) != 2:
    raise ConversionError(f"no {fmt} name for jssl module '{'/'.join(path)}'")
  stage, block = int(m.group(1)), int(m.group(2))
  child = path[1]
  prefix = f'res{stage + 1}.{block}' if d2 else f'layer{stage}.{block}'
  # The first block of stages 2..4 is strided; in ResNet-D its shortcut
  # starts with the AvgPool, shifting the conv/bn indices by one.
  shift = int(avg_down and stage > 1 and block == 0)
  if child == 'downsample_conv':
    return f'{prefix}.shortcut' if d2 else f'{prefix}.downsample.{shift}'
  if child == 'downsample_bn':
    return (f'{prefix}.shortcut.norm' if d2
            else f'{prefix}.downsample.{1 + shift}')
  m = re.fullmatch(r'(conv|bn)(\d)', child)
  if not m:
    raise ConversionError(f"no {fmt} name for jssl module '{'/'.join(path)}'")
  if m.group(1) == 'bn' and d2:
    return f'{prefix}.conv{m.group(2)}.norm'
  return f'{prefix}.{child}'


def key_map(template, fmt, arch):
  """(entries, constants) of `fmt` for the ResNet that `arch` describes."""
  keymap.check_format(fmt, FORMATS)
  module = keymap.build_module(arch)
  if fmt != 'mmpretrain' and (module.deep_stem or module.avg_down):
    raise ConversionError(
        f"{fmt} has no ResNet-D (deep stem / avg-down) for '{arch['name']}'; "
        "use format 'mmpretrain'")
  entries, bn_modules = [], set()
  for collection, path, _ in keymap.leaves(template):
    name = torch_module(path[:-1], fmt, module.avg_down)
    leaf = path[-1]
    if leaf == 'kernel':
      entries.append(keymap.Entry(collection, path, f'{name}.weight', 'conv'))
    elif leaf in BN_LEAVES:
      entries.append(keymap.Entry(collection, path,
                                  f'{name}.{BN_LEAVES[leaf]}', 'plain'))
      bn_modules.add(name)
    else:
      raise ConversionError(f"no {fmt} name for jssl leaf "
                            f"'{collection}/{'/'.join(path)}'")
  # detectron2's FrozenBatchNorm2d has no counter, but files converted from
  # torchvision may still carry it: tolerated, not written.
  constants = [keymap.Constant(f'{name}.num_batches_tracked',
                               np.array(0, np.int64),
                               export=fmt != 'detectron2')
               for name in sorted(bn_modules)]
  return entries, constants


def architecture_of(state_dict, fmt):
  """Backbone kwargs that the file's stem tells (num_filters, in_channels), for the hint of an import whose
  backbone_kwargs do not fit (the demos' ResNet-18 has num_filters=32)."""
  stem = state_dict.get('stem.conv1.weight' if fmt == 'detectron2' else 'conv1.weight')
  if stem is None:  # ResNet-D: the deep stem's last conv has num_filters outputs
    last = state_dict.get('stem.2.conv.weight')
    first = state_dict.get('stem.0.conv.weight')
    return ({'num_filters': int(last.shape[0]), 'in_channels': int(first.shape[1])}
            if last is not None and first is not None and np.ndim(last) == np.ndim(first) == 4 else {})
  return {'num_filters': int(stem.shape[0]), 'in_channels': int(stem.shape[1])} if np.ndim(stem) == 4 else {}


def to_torch(variables, fmt, arch):
  """{'params', 'batch_stats'} -> {torch name: array} (OIHW convs)."""
  for collection in ('params', 'batch_stats'):
    if collection not in variables:
      raise ConversionError(f"ResNet variables need '{collection}' (got "
                            f"{', '.join(sorted(variables)) or 'none'})")
  entries, constants = key_map(variables, fmt, arch)
  return keymap.to_torch(variables, entries, constants)


def from_torch(state_dict, fmt, template, arch):
  """Strict: missing/unexpected keys and shape mismatches raise
  ConversionError; num_batches_tracked is accepted but not required (old
  torchvision files lack it)."""
  entries, constants = key_map(template, fmt, arch)
  return keymap.from_torch(state_dict, entries, constants, template)
