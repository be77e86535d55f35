"""VisionTransformer key maps: timm, mmpretrain, official MAE and MoCo v3.

jssl names -> torch names (Dense/LayerNorm: .weight/.bias, conv OIHW):

  jssl                        timm, mae, mocov3        mmpretrain
  patch_embed/proj            patch_embed.proj         patch_embed.projection
  cls_token, pos_embed        cls_token, pos_embed     cls_token, pos_embed
  blocks_{i}/norm1, norm2     blocks.{i}.norm1, norm2  layers.{i}.ln1, ln2
  blocks_{i}/attn/qkv, proj   blocks.{i}.attn.qkv/proj layers.{i}.attn.qkv/proj
  blocks_{i}/attn/q_bias, v_bias, relative_position_bias_table: same leaf name
                              under blocks.{i}.attn / layers.{i}.attn
  blocks_{i}/mlp/fc1, fc2     blocks.{i}.mlp.fc1, fc2  layers.{i}.ffn.layers.0.0, .1
  blocks_{i}/ls1, ls2 gamma   blocks.{i}.ls1.gamma     layers.{i}.attn.gamma1.weight,
                                                       layers.{i}.ffn.gamma2.weight
  norm                        norm                     ln1
  fc_norm                     fc_norm                  ln2

With rel_pos_bias or qkv_bias='qv' the layout is BEiT's (timm `Beit`,
mmpretrain `BEiTViT`, and CAE's `CAEPretrainViT`, a BEiT block with absolute
sin-cos positions): layer scales are blocks.{i}.gamma_1 / gamma_2
(layers.{i}.gamma_1 / gamma_2). With rel_pos_bias mmpretrain also stores the
constant layers.{i}.attn.relative_position_index (timm does not persist it). 'mae' and 'mocov3' are timm names: the official
checkpoints' encoders are timm VisionTransformers (the framework strips the
`model` / `module.base_encoder.` wrappers and drops decoder_*, mask_token and
head.*, see jssl.convert.io.IGNORED).

MaskFeat's `mask_token` (jssl's VisionTransformer(mask_token=True)) is the
top-level `mask_token` of mmpretrain's MaskFeatViT; timm has none (to_torch
refuses it). from_torch drops an mmpretrain `mask_token` when the target ViT
has none (a MaskFeat checkpoint loaded for fine-tuning / eval).

pos_embed='sincos' is a constant in jssl: exported as pos_embed (the table
the backbone computes with, so the file gives torch the same features); on
import the checkpoint's pos_embed is optional and, when present, must be one of
the two fixed tables (within 1e-3): MAE's (sincos_layout='mae', jssl's default)
or MoCo v3's, which mmpretrain uses for all its sin-cos ViTs (MAEViT,
MoCoV3ViT, CAEPretrainViT: sincos_layout='mocov3', the two channel halves
swapped). `checkpoint_kwargs` tells which one a file holds; a table of the other
layout than the backbone's is an error naming the sincos_layout to set, any
other table one saying pos_embed='learned' keeps its values. A learned
pos_embed of another grid is an error unless arch['interpolate_pos_embed']
(bicubic resize, cls kept).
"""
import re

import jax.numpy as jnp
import numpy as np

from jssl.convert import keymap
from jssl.convert.errors import ConversionError
from jssl.models.layers import SINCOS_LAYOUTS, get_2d_sincos_pos_embed, relative_position_index
from jssl.models.vit import resize_pos_embed

FORMATS = ('timm', 'mmpretrain', 'mae', 'mocov3')

LEAVES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}

LAYOUT_NAMES = {'mae': "MAE's", 'mocov3': "MoCo v3's / mmpretrain's"}
SINCOS_TOLERANCE = 1e-3  # float16 rounding of values in [-1, 1] is below 2.5e-4; the two layouts differ by ~2


def sincos_layout_of(value, embed_dim):
  """Which fixed sin-cos table a checkpoint's pos_embed [1, 1 + n*n, D] is, at its own grid n: 'mae', 'mocov3'
  or None (neither: a learned table, another shape)."""
  value = np.asarray(value)
  side = int(round(max(value.shape[1] - 1, 0) ** 0.5)) if value.ndim == 3 else 0
  if not side or side * side != value.shape[1] - 1 or value.shape[2] != embed_dim or embed_dim % 4:
    return None
  for layout in SINCOS_LAYOUTS:
    if np.max(np.abs(value - get_2d_sincos_pos_embed(embed_dim, side, layout=layout)[None])) <= SINCOS_TOLERANCE:
      return layout
  return None


def checkpoint_kwargs(state_dict, fmt, arch):
  """(kwargs, note): the backbone kwargs a file decides that the caller may leave open -- a sin-cos ViT's
  sincos_layout, from the file's table -- and a note saying what was found (None: nothing to say)."""
  module = keymap.build_module(arch)
  if module.pos_embed != 'sincos' or 'pos_embed' not in state_dict:
    return {}, None
  found = sincos_layout_of(state_dict['pos_embed'], module.embed_dim)
  if found is None:
    return {}, None  # from_torch names the problem
  return {'sincos_layout': found}, f"pos_embed: {LAYOUT_NAMES[found]} sin-cos table (sincos_layout='{found}')"


HINT_NOTE = " (and num_heads as the file's model had it: the weights do not tell it)"


def architecture_of(state_dict, fmt):
  """Backbone kwargs that the file's shapes tell (embed_dim, patch_size, depth, mlp_ratio), for the hint of an
  import whose backbone_kwargs do not fit."""
  mm = fmt == 'mmpretrain'
  found = {}
  proj = state_dict.get('patch_embed.projection.weight' if mm else 'patch_embed.proj.weight')
  if proj is not None and np.ndim(proj) == 4:
    found.update(embed_dim=int(proj.shape[0]), patch_size=int(proj.shape[2]))
  blocks = {int(m.group(1)) for k in state_dict for m in [re.match(r'(?:layers|blocks)\.(\d+)\.', k)] if m}
  if blocks:
    found['depth'] = max(blocks) + 1
  fc1 = state_dict.get('layers.0.ffn.layers.0.0.weight' if mm else 'blocks.0.mlp.fc1.weight')
  if fc1 is not None and 'embed_dim' in found and np.ndim(fc1) == 2:
    found['mlp_ratio'] = fc1.shape[0] / found['embed_dim']
  return found


def block_name(child, fmt, beit):
  """Torch name (under blocks.{i} / layers.{i}) of a block's sub-path."""
  mm = fmt == 'mmpretrain'
  joined = '/'.join(child)
  if child[0] in ('ls1', 'ls2'):
    k = child[0][-1]
    if beit:
      return f'gamma_{k}'
    if mm:
      return 'attn.gamma1.weight' if k == '1' else 'ffn.gamma2.weight'
    return f'{child[0]}.gamma'
  if child[0] in ('norm1', 'norm2'):
    module = f'ln{child[0][-1]}' if mm else child[0]
    return f'{module}.{LEAVES[child[1]]}'
  if child[0] == 'attn':
    if child[1] in ('q_bias', 'v_bias', 'relative_position_bias_table'):
      return f'attn.{child[1]}'
    if child[1] in ('qkv', 'proj'):
      return f'attn.{child[1]}.{LEAVES[child[2]]}'
  if child[0] == 'mlp' and child[1] in ('fc1', 'fc2'):
    if mm:
      module = 'ffn.layers.0.0' if child[1] == 'fc1' else 'ffn.layers.1'
    else:
      module = f'mlp.{child[1]}'
    return f'{module}.{LEAVES[child[2]]}'
  raise ConversionError(f"no {fmt} name for jssl param 'blocks_i/{joined}'")


def torch_key(path, fmt, beit):
  mm = fmt == 'mmpretrain'
  if path in (('cls_token',), ('pos_embed',)):
    return path[0]
  if path == ('mask_token',):
    if not mm:
      raise ConversionError("'mask_token': timm's VisionTransformer has no mask token (MaskFeat's pretraining "
                            'token); use mmpretrain')
    return path[0]
  if path[:2] == ('patch_embed', 'proj'):
    module = 'patch_embed.projection' if mm else 'patch_embed.proj'
    return f'{module}.{LEAVES[path[2]]}'
  if path[0] == 'norm':
    return f"{'ln1' if mm else 'norm'}.{LEAVES[path[1]]}"
  if path[0] == 'fc_norm':
    return f"{'ln2' if mm else 'fc_norm'}.{LEAVES[path[1]]}"
  m = re.fullmatch(r'blocks_(\d+)', path[0])
  if m:
    prefix = 'layers' if mm else 'blocks'
    return f'{prefix}.{m.group(1)}.{block_name(path[1:], fmt, beit)}'
  raise ConversionError(f"no {fmt} name for jssl param '{'/'.join(path)}'")


def layout(path):
  if path[-1] != 'kernel':
    return 'plain'
  return 'conv' if path[0] == 'patch_embed' else 'dense'


def key_map(template, fmt, module):
  """(entries, constants) of `fmt` for the ViT `module`."""
  keymap.check_format(fmt, FORMATS)
  if 'params' not in template:
    raise ConversionError(f"ViT variables need 'params' (got "
                          f"{', '.join(sorted(template)) or 'none'})")
  beit = module.rel_pos_bias or module.qkv_bias == 'qv'  # the BEiT block (CAE's too)
  entries = [keymap.Entry('params', path, torch_key(path, fmt, beit),
                          layout(path))
             for path in keymap.flatten(template['params'])]
  constants = []
  if module.pos_embed == 'sincos':  # its value is checked by check_sincos_layout (at the file's own grid)
    constants.append(keymap.Constant('pos_embed', module.sincos_table()[None]))
  if module.rel_pos_bias and fmt == 'mmpretrain':
    index = relative_position_index((module.grid_size,) * 2)

    def check_index(value):
      if not np.array_equal(value, index):
        return 'differs from the BEiT relative position index'
    constants += [
        keymap.Constant(f'layers.{i}.attn.relative_position_index', index,
                        check_index) for i in range(module.depth)]
  return entries, constants


def to_torch(variables, fmt, arch):
  """{'params'} -> {torch name: array} (Dense [out, in], conv OIHW)."""
  module = keymap.build_module(arch)
  entries, constants = key_map(variables, fmt, module)
  return keymap.to_torch(variables, entries, constants)


def check_sincos_layout(state_dict, module):
  """A sin-cos backbone: the file's pos_embed (if any) must be the same fixed table."""
  if module.pos_embed != 'sincos' or 'pos_embed' not in state_dict:
    return
  found = sincos_layout_of(state_dict['pos_embed'], module.embed_dim)
  if found is None:
    raise ConversionError("'pos_embed': differs from both fixed sin-cos tables (MAE's, and MoCo v3's / "
                          "mmpretrain's); use pos_embed='learned' to keep the checkpoint's values")
  if found != module.sincos_layout:
    raise ConversionError(f"'pos_embed': is {LAYOUT_NAMES[found]} sin-cos table, the backbone's is "
                          f"{LAYOUT_NAMES[module.sincos_layout]} (sincos_layout='{module.sincos_layout}'); "
                          f"set sincos_layout='{found}' to import it")


def interpolate_pos_embed(state_dict, arch, module):
  """Resizes a learned pos_embed of another grid when arch allows it (a
  fixed sin-cos one is then dropped: jssl computes its own for the grid)."""
  if module.pos_embed == 'none' or 'pos_embed' not in state_dict:
    return state_dict
  value = np.asarray(state_dict['pos_embed'])
  want = (1, 1 + module.grid_size**2, module.embed_dim)
  if value.shape == want or value.ndim != 3 or value.shape[2] != want[2]:
    return state_dict  # equal, or a mismatch the strict load reports
  old = int(round((value.shape[1] - 1) ** 0.5))
  if not arch.get('interpolate_pos_embed') or old * old != value.shape[1] - 1:
    raise ConversionError(
        f"'pos_embed': checkpoint shape {value.shape} != expected {want} "
        '(another patch grid; set interpolate_pos_embed to resize it)')
  if module.pos_embed == 'sincos':
    return {k: v for k, v in state_dict.items() if k != 'pos_embed'}
  resized = resize_pos_embed(jnp.asarray(value), (old, old),
                             (module.grid_size,) * 2)
  return {**state_dict, 'pos_embed': np.asarray(resized, value.dtype)}


def from_torch(state_dict, fmt, template, arch):
  """Strict: missing/unexpected keys and shape mismatches raise
  ConversionError naming the keys."""
  module = keymap.build_module(arch)
  entries, constants = key_map(template, fmt, module)
  check_sincos_layout(state_dict, module)
  state_dict = interpolate_pos_embed(state_dict, arch, module)
  if fmt == 'mmpretrain' and 'mask_token' not in template['params']:
    state_dict = {k: v for k, v in state_dict.items() if k != 'mask_token'}  # MaskFeat's pretraining-only token
  return keymap.from_torch(state_dict, entries, constants, template)
