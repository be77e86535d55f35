"""Shared machinery of the per-family key maps (jssl/convert/resnet.py, vit.py).

A family describes a checkpoint format as a list of `Entry`s, one per jssl
leaf: its collection and path, the torch key, and the layout change ('conv':
HWIO <-> OIHW, 'dense': [in, out] <-> [out, in], 'plain': none). Buffers that
torch keeps but jssl does not (num_batches_tracked, relative_position_index, a
fixed sin-cos pos_embed) are `Constant`s: written on export, optional on
import, and checked when present.
"""
from collections.abc import Mapping
import dataclasses
from typing import Callable, Optional

import numpy as np

from jssl.models import build_backbone
from jssl.convert.errors import ConversionError

# Keys of `arch` that configure the conversion, not the backbone module.
CONVERSION_OPTIONS = ('name', 'interpolate_pos_embed')


@dataclasses.dataclass(frozen=True)
class Entry:
  collection: str  # 'params' | 'batch_stats'
  path: tuple  # path of the leaf inside the collection
  torch_key: str
  layout: str  # 'conv' | 'dense' | 'plain'


@dataclasses.dataclass(frozen=True)
class Constant:
  torch_key: str
  value: np.ndarray
  # check(checkpoint_value) -> error text or None; None: only the shape.
  check: Optional[Callable] = None
  export: bool = True  # False: tolerated on import, never written


def build_module(arch):
  """The backbone module `arch` describes ({'name': ..., **kwargs})."""
  if 'name' not in arch:
    raise ConversionError("arch has no 'name' (the backbone's registry name)")
  kwargs = {k: v for k, v in arch.items() if k not in CONVERSION_OPTIONS}
  try:
    return build_backbone(arch['name'], **kwargs)
  except (TypeError, ValueError) as e:
    raise ConversionError(f"arch {arch}: {e}") from None


def check_format(fmt, formats):
  if fmt not in formats:
    raise ConversionError(f"unknown format '{fmt}'; valid: {', '.join(formats)}")


def flatten(tree, prefix=()):
  """Nested dict -> {path tuple: leaf}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = value
  return flat


def unflatten(flat):
  tree = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def leaves(variables):
  """[(collection, path, leaf)] of {'params': ..., 'batch_stats': ...}."""
  return [(collection, path, leaf)
          for collection in sorted(variables)
          for path, leaf in flatten(variables[collection]).items()]


def jssl_to_torch_layout(value, layout):
  value = np.asarray(value)
  if layout == 'conv':  # HWIO -> OIHW
    value = value.transpose(3, 2, 0, 1)
  elif layout == 'dense':  # [in, out] -> [out, in]
    value = value.T
  return np.ascontiguousarray(value)


def torch_to_jssl_layout(value, layout):
  value = np.asarray(value)
  if layout == 'conv':  # OIHW -> HWIO
    value = value.transpose(2, 3, 1, 0)
  elif layout == 'dense':
    value = value.T
  return np.ascontiguousarray(value)


def torch_shape(shape, layout):
  shape = tuple(shape)
  if layout == 'conv':
    return (shape[3], shape[2], shape[0], shape[1])
  if layout == 'dense':
    return shape[::-1]
  return shape


def unflatten_get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def to_torch(variables, entries, constants):
  state_dict = {}
  for e in entries:
    tree = variables.get(e.collection)
    if tree is None:
      raise ConversionError(f"variables have no '{e.collection}' collection")
    try:
      value = unflatten_get(tree, e.path)
    except KeyError:
      raise ConversionError(
          f"variables lack '{e.collection}/{'/'.join(e.path)}' "
          f'(needed for {e.torch_key})') from None
    state_dict[e.torch_key] = jssl_to_torch_layout(value, e.layout)
  for c in constants:
    if c.export:
      state_dict[c.torch_key] = np.array(c.value)
  return state_dict


def from_torch(state_dict, entries, constants, template):
  """Strict load: every entry's key present with its shape; nothing else."""
  constants = {c.torch_key: c for c in constants}
  expected = {e.torch_key for e in entries}
  missing = sorted(expected - set(state_dict))
  unexpected = sorted(set(state_dict) - expected - set(constants))
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
      parts.append(f"unexpected keys: {', '.join(unexpected)}")
    raise ConversionError('; '.join(parts))

  for key, c in constants.items():
    if key not in state_dict:
      continue
    value = np.asarray(state_dict[key])
    if value.shape != np.shape(c.value):
      raise ConversionError(f"'{key}': checkpoint shape {value.shape} != "
                            f'expected {np.shape(c.value)}')
    error = c.check(value) if c.check else None
    if error:
      raise ConversionError(f"'{key}': {error}")

  flat = {collection: {} for collection in template}
  for e in entries:
    want = tuple(unflatten_get(template[e.collection], e.path).shape)
    value = np.asarray(state_dict[e.torch_key])
    if value.shape != torch_shape(want, e.layout):
      raise ConversionError(f"'{e.torch_key}': checkpoint shape {value.shape} "
                            f'!= expected {torch_shape(want, e.layout)}')
    leaf = unflatten_get(template[e.collection], e.path)
    flat[e.collection][e.path] = torch_to_jssl_layout(
        value, e.layout).astype(leaf.dtype)
  return {collection: unflatten(tree) for collection, tree in flat.items()}
