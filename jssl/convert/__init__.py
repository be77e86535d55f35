"""Checkpoint conversion between jssl and the PyTorch ecosystems (torchvision, timm, mmpretrain/mmselfsup,
official MAE / MoCo v3, detectron2).

    export_workdir('runs/simclr', 'r18.pth', 'torchvision')                 # backbone only
    export_workdir('runs/simclr', 'full.pth', 'mmpretrain', whole_model=True)
    variables = import_backbone('resnet18.pth', 'resnet18', 'torchvision')   # {'params', 'batch_stats'}
    variables = import_backbone(torch_model.state_dict(), 'resnet18', 'torchvision')  # the same, in memory
    state = jssl.pretrained.replace_backbone(state, variables)              # start fine-tuning from them
    state_dict = to_state_dict(variables, 'resnet18', 'torchvision')        # and back: {name: numpy array}

The backbone's names and layouts come from the per-family key maps (jssl/convert/{resnet,vit,swin}.py:
`to_torch`, strict `from_torch`); this module finds the backbone in a file (io.backbone_state_dict lists the
keys each format ignores) and maps it to and from jssl's variables. Whole-model exports add the non-backbone
parts under jssl's own names (see `flatten_to_torch`), which are not those of any PyTorch class. Reading workdirs,
imported backbone directories and published files is jssl/pretrained.py's.
"""
import importlib
import json
import os
from collections.abc import Mapping

import ml_collections  # jax is imported by the functions that use it: `python -m jssl.convert --help` starts fast
import numpy as np

from jssl.convert import io
from jssl.convert.errors import ConversionError

# family -> module with FORMATS / to_torch / from_torch, chosen by the backbone's registry name
FAMILY_MODULES = {'resnet': 'jssl.convert.resnet', 'vit': 'jssl.convert.vit', 'swin': 'jssl.convert.swin'}
FAMILY_PREFIXES = {'resnet': ('resnet', 'resnext'), 'vit': ('vit_',), 'swin': ('swin_',)}


def family_name(backbone_name: str) -> str:
  for family, prefixes in FAMILY_PREFIXES.items():
    if backbone_name.startswith(prefixes):
      return family
  raise ConversionError(f"no checkpoint conversion for backbone '{backbone_name}'; supported: "
                        "resnet*/resnext* (resnet), vit_* (vit), swin_* (swin)")


def family_of(backbone_name: str):
  """The key-map module of the backbone's family; its FORMATS lists the naming formats it converts."""
  family = family_name(backbone_name)
  try:
    return importlib.import_module(FAMILY_MODULES[family])
  except ModuleNotFoundError as e:
    if e.name != FAMILY_MODULES[family]:
      raise
    raise ConversionError(f"no key map for the {family} family yet ({FAMILY_MODULES[family]} is missing); "
                          f"backbone '{backbone_name}' cannot be converted") from None


def check_format(backbone_name: str, fmt: str):
  """The family's key-map module, after checking it knows `fmt`."""
  family = family_of(backbone_name)
  if fmt not in family.FORMATS:
    raise ConversionError(f"unknown format '{fmt}' for {backbone_name} ({family_name(backbone_name)} family); "
                          f"valid: {', '.join(family.FORMATS)}")
  return family


def arch_of(backbone_name: str, backbone_kwargs=None, **extra) -> dict:
  return {'name': backbone_name, **dict(backbone_kwargs or {}), **extra}


# --- export ------------------------------------------------------------------------------------------------
def _torch_leaf(name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
  """A Flax leaf's torch name and layout: Dense [in, out] -> [out, in]; Conv HWIO -> OIHW (1-D: WIO -> OIW)."""
  if name == 'kernel':
    axes = {2: (1, 0), 3: (2, 1, 0), 4: (3, 2, 0, 1)}.get(value.ndim)
    return 'weight', value.transpose(axes) if axes else value
  return {'scale': 'weight', 'embedding': 'weight', 'mean': 'running_mean', 'var': 'running_var'}.get(
      name, name), value


def flatten_to_torch(tree, prefix: str) -> dict:
  """Generic Flax tree -> {'prefix.a.b.weight': array} with torch layouts (jssl's module names, dot-joined)."""
  import jax
  flat = {}
  for path, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = [str(getattr(p, 'key', getattr(p, 'name', getattr(p, 'idx', p)))) for p in path]
    leaf, array = _torch_leaf(names[-1], np.asarray(value))
    flat['.'.join([prefix.rstrip('.')] + names[:-1] + [leaf])] = array
  return flat


def whole_model_extras(state) -> dict:
  """Everything trained or tracked besides the backbone: params + batch_stats of each other top-level module
  ('neck.*', 'head.*', ...) and the method's state (EMA targets, queues: 'method_state.*')."""
  extras = {}
  batch_stats = (state.model_state or {}).get('batch_stats', {})
  for name in state.params:
    if name != 'backbone':
      extras.update(flatten_to_torch(state.params[name], name))
  for name in batch_stats:
    if name != 'backbone':
      extras.update(flatten_to_torch(batch_stats[name], name))
  if state.method_state:
    extras.update(flatten_to_torch(state.method_state, 'method_state'))
  return extras


def export_workdir(workdir: str, dst: str, fmt: str, step: int | None = None, whole_model: bool = False,
                   file_format: str | None = None) -> dict:
  """Writes the workdir's backbone (`whole_model`: plus neck/head/method state) to `dst` in `fmt`'s names;
  returns {'step', 'num_tensors'}."""
  from jssl import pretrained
  config = pretrained.load_config(workdir)
  name = config.backbone.name
  check_format(name, fmt)
  file_type = io.file_type_of(dst, file_format)
  io.check_destination(dst, directory=False)  # all that can be told without the checkpoint: before loading it
  io.check_modules(dst, file_type, reading=False)
  if whole_model:
    _, state, step = pretrained.load_workdir(workdir, step)
    variables = pretrained.backbone_variables(state)
  else:  # the backbone's arrays alone
    _, variables, step = pretrained.load_workdir_backbone(workdir, step)
  state_dict = to_state_dict(variables, name, fmt, config.backbone.get('kwargs', ml_collections.ConfigDict()).to_dict())
  extra = whole_model_extras(state) if whole_model else None
  meta = {'source': 'jssl', 'workdir': os.path.abspath(workdir), 'step': int(step), 'method': config.method,
          'backbone': name}
  io.write_checkpoint(dst, state_dict, fmt, file_type, extra=extra, meta=meta)
  return {'step': int(step), 'num_tensors': len(state_dict) + len(extra or {})}


def to_state_dict(variables, backbone_name: str, fmt: str, backbone_kwargs=None) -> dict:
  """A backbone's variables ({'params', ['batch_stats']}) as {name: numpy array} in `fmt`'s names and layouts, in
  memory (what export_workdir writes; `torch_model.load_state_dict({k: torch.from_numpy(v) ...})` takes it)."""
  family = check_format(backbone_name, fmt)
  return family.to_torch(variables, fmt, arch_of(backbone_name, dict(backbone_kwargs or {})))


# --- importing released weights ---------------------------------------------------------------------------------
def import_backbone(src, backbone_name: str, fmt: str, backbone_kwargs=None,
                    interpolate_pos_embed: bool = False, return_ignored: bool = False):
  """Backbone variables ({'params', ['batch_stats']}) of a PyTorch/safetensors/detectron2 file, or of a state dict
  in memory (`src` a mapping of names to torch tensors or numpy arrays, or a loaded checkpoint holding one under
  'state_dict' / 'model'); `fmt` says whose names it uses. Keys that are not the backbone's are ignored
  (io.IGNORED); a key the architecture lacks or needs but the file misses is an error, as is a sin-cos ViT whose file
  holds the other table layout than `backbone_kwargs` say (import_backbone_file takes it from the file).
  `return_ignored`: also return the ignored names."""
  result = _import(src, backbone_name, fmt, backbone_kwargs, interpolate_pos_embed, take_from_file=False)
  return (result['variables'], result['ignored']) if return_ignored else result['variables']


def import_backbone_file(src: str, backbone_name: str, fmt: str, backbone_kwargs=None,
                         interpolate_pos_embed: bool = False) -> dict:
  """import_backbone, taking from the file what `backbone_kwargs` leave open: a sin-cos ViT's `sincos_layout`
  (MAE's table or MoCo v3's / mmpretrain's). Returns {'variables', 'ignored', 'kwargs': the backbone kwargs the
  variables belong to, 'notes': what was found in the file, for the user}."""
  return _import(src, backbone_name, fmt, backbone_kwargs, interpolate_pos_embed, take_from_file=True)


def _import(src, backbone_name, fmt, backbone_kwargs, interpolate_pos_embed, take_from_file):
  import jax
  from jssl.convert import keymap
  from jssl.pretrained import backbone_template
  family = check_format(backbone_name, fmt)
  kwargs = dict(backbone_kwargs or {})
  template = backbone_template(backbone_name, kwargs)  # unknown backbone / bad kwargs: before reading the file
  if isinstance(src, Mapping):
    where, content = 'the state dict', io.to_numpy(dict(src))
  else:
    where, content = src, io.read_checkpoint(src)
  state_dict, ignored = io.backbone_state_dict(content, fmt, where)
  notes = []
  if hasattr(family, 'checkpoint_kwargs'):
    found, note = family.checkpoint_kwargs(state_dict, fmt, arch_of(backbone_name, kwargs))
    notes += [note] if note else []
    module = keymap.build_module(arch_of(backbone_name, kwargs))
    taken = {k: v for k, v in found.items() if k not in kwargs and getattr(module, k) != v}
    if take_from_file and taken:
      kwargs = {**kwargs, **taken}
      template = backbone_template(backbone_name, kwargs)
  arch = arch_of(backbone_name, kwargs)
  if interpolate_pos_embed:
    arch['interpolate_pos_embed'] = True
  try:
    variables = family.from_torch(state_dict, fmt, template, arch)
  except ConversionError as e:
    hint = kwargs_hint(family, state_dict, fmt, backbone_name, kwargs, str(e))
    raise ConversionError(f'{where}: {e}{hint}') from None
  variables = jax.tree.map(np.asarray, dict(variables))
  return {'variables': variables, 'ignored': ignored, 'kwargs': kwargs, 'notes': notes}


def kwargs_hint(family, state_dict, fmt: str, backbone_name: str, kwargs: dict, error: str) -> str:
  """What to append to an import error: the --backbone_kwargs that fit the file's shapes where they tell (the
  demos' half-width ResNet-18: num_filters=32), a general word for another shape mismatch, else nothing."""
  from jssl.convert import keymap
  module = keymap.build_module(arch_of(backbone_name, kwargs))
  file_arch = family.architecture_of(state_dict, fmt) if hasattr(family, 'architecture_of') else {}
  as_json = lambda v: list(v) if isinstance(v, tuple) else v
  differ = {k: v for k, v in file_arch.items() if hasattr(module, k) and as_json(getattr(module, k)) != as_json(v)}
  if differ:
    said = ', '.join(f'{k}={as_json(v)} (the backbone: {as_json(getattr(module, k))})' for k, v in differ.items())
    suggested = json.dumps({**kwargs, **{k: as_json(v) for k, v in differ.items()}})
    note = getattr(family, 'HINT_NOTE', '')  # what the weights cannot tell (a ViT's num_heads)
    return f"; the file's {backbone_name} has {said}: --backbone_kwargs='{suggested}'{note}"
  if 'checkpoint shape' in error:
    return "; --backbone_kwargs must describe the file's architecture (num_filters, embed_dim, patch_size, ...)"
  return ''
