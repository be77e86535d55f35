"""Swin Transformer <-> torch state dicts of timm and mmpretrain.

jssl keeps timm's structure, so the timm map only renames (layers_1/blocks_0
-> layers.1.blocks.0, kernel/scale -> weight) and transposes (conv HWIO ->
OIHW, linear [in, out] -> [out, in]). mmpretrain differs in:

  * names: patch_embed.projection, attn.w_msa.*, ffn.layers.0.0 (fc1),
    ffn.layers.1 (fc2), stages.{i} and a final norm per out index: jssl's
    `norm` (last stage) is norm{last}, `norm{i}` keeps its name;
  * patch merging sits at the END of stage i (stages.{i}.downsample) instead
    of the start of stage i+1 (layers.{i+1}.downsample);
  * the merged 4C channel order: timm concatenates the 2x2 neighbourhood as
    blocks [x(0,0), x(1,0), x(0,1), x(1,1)] of C channels (channel
    (col * 2 + row) * C + c), mmcv's nn.Unfold interleaves them as
    c * 4 + row * 2 + col. The downsample norm and the input axis of its
    reduction are permuted accordingly;
  * relative_position_index is a persistent buffer (timm's buffers are not
    persistent in timm >= 1.0), so to_torch writes it for mmpretrain only.

SimMIM's `mask_token` (jssl's SwinTransformer(mask_token=True)) is the
top-level `mask_token` of mmpretrain's SimMIMSwinTransformer. timm's Swin has
none: to_torch(..., 'timm') leaves it out (it only serves pretraining, so the
export is the backbone a timm fine-tune loads strictly), and from_torch of a
timm file into a Swin with a mask token fails naming it. from_torch drops an
mmpretrain `mask_token` when the target Swin has none (a SimMIM checkpoint
loaded for fine-tuning / evaluation).

from_torch accepts and ignores relative_position_index / attn_mask buffers.
With arch['interpolate_rel_pos'] (or the generic 'interpolate_pos_embed')
it bicubically resizes relative position bias tables trained with another
window size (per head, on the (2W-1)^2 grid, like torch's
F.interpolate(mode='bicubic', align_corners=False) in the official Swin /
SimMIM repos; timm's and mmpretrain's resizers use a BEiT-style geometric
grid instead).
"""
import math
import re

import numpy as np
from flax import traverse_util

from jssl.convert.errors import ConversionError
from jssl.models.swin import relative_position_index

FORMATS = ('timm', 'mmpretrain')
BUFFERS = ('relative_position_index', 'attn_mask')


def merge_permutation(channels):
  """perm with mmpretrain_vec = timm_vec[perm] for a 4*channels merge axis."""
  # timm index = (col, row, c); mmcv Unfold index = (c, row, col).
  return np.arange(4 * channels).reshape(2, 2, channels).transpose(
      2, 1, 0).reshape(-1)


def _cubic_weights(t, a=-0.75):
  """torch's bicubic weights for taps at offsets -1, 0, 1, 2 from floor."""
  def near(d):  # |d| <= 1
    return ((a + 2) * d - (a + 3)) * d * d + 1
  def far(d):  # 1 < |d| < 2
    return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
  return far(1 + t), near(t), near(1 - t), far(2 - t)


def _bicubic_matrix(in_size, out_size):
  """[out, in] matrix of torch's bicubic resize (align_corners=False)."""
  matrix = np.zeros((out_size, in_size))
  scale = in_size / out_size
  for i in range(out_size):
    src = (i + 0.5) * scale - 0.5
    start = math.floor(src)
    for k, weight in enumerate(_cubic_weights(src - start)):
      matrix[i, min(max(start - 1 + k, 0), in_size - 1)] += weight
  return matrix


def resize_rel_pos_table(table, window):
  """((2W-1)^2, heads) table -> ((2w-1)^2, heads) for window w, bicubic."""
  table = np.asarray(table)
  src = math.isqrt(table.shape[0])
  dst = 2 * window - 1
  if src * src != table.shape[0]:
    raise ValueError(f'table of shape {table.shape} is not square')
  if src == dst:
    return table
  matrix = _bicubic_matrix(src, dst)
  grid = table.astype(np.float64).reshape(src, src, -1)
  grid = np.einsum('ij,jkh,lk->ilh', matrix, grid, matrix)
  return grid.reshape(dst * dst, -1).astype(table.dtype)


def _num_stages(params):
  return sum(1 for k in params if re.fullmatch(r'layers_\d+', k))


def _torch_name(path, fmt, num_stages):
  """jssl param path (tuple) -> torch state-dict key."""
  *modules, leaf = path
  leaf = {'kernel': 'weight', 'scale': 'weight'}.get(leaf, leaf)
  if fmt == 'timm':
    if modules and re.fullmatch(r'norm\d+', modules[0]):
      raise ConversionError(
          f"'{'/'.join(path)}': timm's SwinTransformer has only the final "
          "norm; export intermediate out_indices to mmpretrain")
    if leaf == 'absolute_pos_embed':
      raise ConversionError(
          "'absolute_pos_embed': timm's SwinTransformer has no absolute "
          'position embedding; use mmpretrain')
    names = [re.sub(r'_(\d+)$', r'.\1', m) for m in modules]
    return '.'.join(names + [leaf])

  names = []
  for i, m in enumerate(modules):
    stage = re.fullmatch(r'layers_(\d+)', m)
    if stage and modules[i + 1] == 'downsample':
      names.append(f'stages.{int(stage.group(1)) - 1}')
    elif stage:
      names.append(f'stages.{stage.group(1)}')
    elif m == 'proj' and modules[0] == 'patch_embed':
      names.append('projection')
    elif m == 'attn':
      names.append('attn.w_msa')
    elif m == 'mlp':
      pass  # fc1/fc2 name the whole ffn path
    elif m == 'fc1':
      names.append('ffn.layers.0.0')
    elif m == 'fc2':
      names.append('ffn.layers.1')
    elif m == 'norm' and i == 0:
      names.append(f'norm{num_stages - 1}')
    else:
      names.append(re.sub(r'_(\d+)$', r'.\1', m))
  return '.'.join(names + [leaf])


def _is_merge(path):
  return len(path) >= 2 and path[1] == 'downsample'


def _to_torch_layout(path, value, fmt):
  if path[-1] == 'kernel' and value.ndim == 4:  # conv HWIO -> OIHW
    value = value.transpose(3, 2, 0, 1)
  if fmt == 'mmpretrain' and _is_merge(path):
    # norm scale/bias [4C], reduction kernel [4C, 2C]: permute the 4C axis.
    value = value[merge_permutation(value.shape[0] // 4)]
  if path[-1] == 'kernel' and value.ndim == 2:  # linear [in, out] -> [out, in]
    value = value.T
  return value


def _from_torch_layout(path, value, fmt):
  if path[-1] == 'kernel' and value.ndim == 4:  # conv OIHW -> HWIO
    value = value.transpose(2, 3, 1, 0)
  if path[-1] == 'kernel' and value.ndim == 2:
    value = value.T
  if fmt == 'mmpretrain' and _is_merge(path):
    value = value[np.argsort(merge_permutation(value.shape[0] // 4))]
  return value


def _torch_shape(path, shape):
  if path[-1] == 'kernel' and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if path[-1] == 'kernel' and len(shape) == 2:
    return (shape[1], shape[0])
  return tuple(shape)


def _check_format(fmt):
  if fmt not in FORMATS:
    raise ValueError(f"unknown format '{fmt}'; valid: {', '.join(FORMATS)}")


HINT_NOTE = " (and num_heads as the file's model had them: the weights do not tell them)"


def architecture_of(state_dict, fmt):
  """Backbone kwargs that the file's shapes tell (embed_dim, patch_size, depths), for the hint of an import whose
  backbone_kwargs do not fit."""
  found = {}
  proj = state_dict.get('patch_embed.projection.weight' if fmt == 'mmpretrain' else 'patch_embed.proj.weight')
  if proj is not None and np.ndim(proj) == 4:
    found.update(embed_dim=int(proj.shape[0]), patch_size=int(proj.shape[2]))
  blocks = {}
  for k in state_dict:
    m = re.match(r'(?:stages|layers)\.(\d+)\.blocks\.(\d+)\.', k)
    if m:
      blocks[int(m.group(1))] = max(blocks.get(int(m.group(1)), 0), int(m.group(2)) + 1)
  if blocks and sorted(blocks) == list(range(len(blocks))):
    found['depths'] = tuple(blocks[i] for i in range(len(blocks)))
  return found


def to_torch(variables, fmt, arch):
  """{'params': swin tree} -> {torch key: np.ndarray} in `fmt`'s layout."""
  del arch  # the tree itself tells the stages, windows and heads
  _check_format(fmt)
  params = variables['params']
  num_stages = _num_stages(params)
  state_dict = {}
  for path, value in traverse_util.flatten_dict(params).items():
    if fmt == 'timm' and path == ('mask_token',):
      continue  # SimMIM's pretraining-only token: timm's Swin has none
    name = _torch_name(path, fmt, num_stages)
    state_dict[name] = np.ascontiguousarray(
        _to_torch_layout(path, np.asarray(value), fmt))
    if fmt == 'mmpretrain' and path[-1] == 'relative_position_bias_table':
      window = (math.isqrt(value.shape[0]) + 1) // 2
      index_name = name.replace('bias_table', 'index')
      state_dict[index_name] = relative_position_index(window).astype(np.int64)
  return state_dict


def from_torch(state_dict, fmt, template, arch):
  """Strict inverse of to_torch; `template` gives the tree, shapes, dtypes."""
  _check_format(fmt)
  params = template['params']
  num_stages = _num_stages(params)
  expected = {}
  for path, leaf in traverse_util.flatten_dict(params).items():
    expected[_torch_name(path, fmt, num_stages)] = (path, leaf)
  given = {k: v for k, v in state_dict.items() if not k.endswith(BUFFERS)}
  if fmt == 'mmpretrain' and 'mask_token' not in expected:
    given.pop('mask_token', None)  # SimMIM's pretraining-only token

  missing = sorted(set(expected) - set(given))
  unexpected = sorted(set(given) - set(expected))
  if missing or unexpected:
    raise ConversionError(
        f'{fmt} Swin state dict does not fit {arch.get("name", "swin")}: '
        f'missing keys {missing}; unexpected keys {unexpected}')

  # jssl.convert.import_backbone's generic flag means the same for Swin.
  interpolate = (arch.get('interpolate_rel_pos', False)
                 or arch.get('interpolate_pos_embed', False))
  flat = {}
  for name, (path, leaf) in expected.items():
    value = np.asarray(given[name])
    shape = _torch_shape(path, leaf.shape)
    if (value.shape != shape and interpolate
        and path[-1] == 'relative_position_bias_table'
        and value.shape[1:] == shape[1:]):
      value = resize_rel_pos_table(value, (math.isqrt(shape[0]) + 1) // 2)
    if value.shape != shape:
      raise ConversionError(f"'{name}': checkpoint shape {value.shape}, "
                            f'expected {shape}')
    flat[path] = _from_torch_layout(path, value, fmt).astype(leaf.dtype)
  return {'params': traverse_util.unflatten_dict(flat)}
