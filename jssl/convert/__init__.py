"""Checkpoint conversion between jssl and the PyTorch ecosystems (torchvision, timm, mmpretrain/mmselfsup,
official MAE / MoCo v3, detectron2).

    config, state, step = load_workdir('runs/simclr')
    export_workdir('runs/simclr', 'r18.pth', 'torchvision')                 # backbone only
    export_workdir('runs/simclr', 'full.pth', 'mmpretrain', whole_model=True)
    variables = import_backbone('resnet18.pth', 'resnet18', 'torchvision')   # {'params', 'batch_stats'}
    state = replace_backbone(state, variables)                              # start fine-tuning from them

The backbone's names and layouts come from the per-family key maps (jssl/convert/{resnet,vit,swin}.py:
`to_torch`, strict `from_torch`); this module finds the backbone in a file (io.backbone_state_dict lists the
keys each format ignores), builds templates, and reads/writes jssl workdirs. Whole-model exports add the
non-backbone parts under jssl's own names (see `flatten_to_torch`), which are not those of any PyTorch class.
"""
import importlib
import json
import os
import shutil
import tempfile

import ml_collections  # jax is imported by the functions that use it: `python -m jssl.convert --help` starts fast
import numpy as np

from jssl.convert import io, published
from jssl.convert.errors import ConversionError

# family -> module with FORMATS / to_torch / from_torch, chosen by the backbone's registry name
FAMILY_MODULES = {'resnet': 'jssl.convert.resnet', 'vit': 'jssl.convert.vit', 'swin': 'jssl.convert.swin'}
FAMILY_PREFIXES = {'resnet': ('resnet', 'resnext'), 'vit': ('vit_',), 'swin': ('swin_',)}

BACKBONE_JSON = 'backbone.json'
VARIABLES_DIR = 'variables'


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


# --- jssl workdirs ----------------------------------------------------------------------------------------------
def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise ConversionError(f'{workdir}: no config.json (not a jssl workdir, or its run never started)')
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except json.JSONDecodeError as e:
    raise ConversionError(f'{path}: not valid JSON: {e}') from None


def load_workdir(workdir: str, step: int | None = None):
  """(config, TrainState, step) of a workdir's checkpoint (the latest unless `step`)."""
  from jssl import checkpoint
  from jssl.train.loop import Trainer
  config = load_config(workdir)
  checkpoints = os.path.join(workdir, 'checkpoints')
  steps = sorted(int(s) for s in os.listdir(checkpoints) if s.isdigit()) if os.path.isdir(checkpoints) else []
  if not steps:
    raise ConversionError(f'{workdir}: no checkpoint under {checkpoints}')
  if step is not None and step not in steps:
    raise ConversionError(f'{workdir}: no checkpoint for step {step}; available: {", ".join(map(str, steps))}')
  trainer = Trainer(config, workdir, num_records=1)
  state, step = checkpoint.restore_params(workdir, trainer.abstract_state, step)
  return config, state, step


def backbone_subtree(state) -> dict:
  """{'params': ..., ['batch_stats': ...]} of the backbone inside a TrainState (arrays as they are)."""
  variables = {'params': state.params['backbone']}
  batch_stats = (state.model_state or {}).get('batch_stats', {})
  if 'backbone' in batch_stats:
    variables['batch_stats'] = batch_stats['backbone']
  return variables


def backbone_variables(state) -> dict:
  """The backbone's variables as numpy arrays (what the key maps' to_torch takes)."""
  import jax
  return jax.tree.map(np.asarray, backbone_subtree(state))


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
  config = load_config(workdir)
  name = config.backbone.name
  family = check_format(name, fmt)
  file_type = io.file_type_of(dst, file_format)
  io.check_destination(dst, directory=False)  # all that can be told without the checkpoint: before loading it
  io.check_modules(dst, file_type, reading=False)
  _, state, step = load_workdir(workdir, step)
  arch = arch_of(name, config.backbone.get('kwargs', ml_collections.ConfigDict()).to_dict())
  state_dict = family.to_torch(backbone_variables(state), fmt, arch)
  extra = whole_model_extras(state) if whole_model else None
  meta = {'source': 'jssl', 'workdir': os.path.abspath(workdir), 'step': int(step), 'method': config.method,
          'backbone': name}
  io.write_checkpoint(dst, state_dict, fmt, file_type, extra=extra, meta=meta)
  return {'step': int(step), 'num_tensors': len(state_dict) + len(extra or {})}


# --- importing released weights ---------------------------------------------------------------------------------
def backbone_template(backbone_name: str, backbone_kwargs=None) -> dict:
  """{'params': ..., ['batch_stats': ...]} of ShapeDtypeStructs for the backbone (nothing is computed)."""
  import jax
  import jax.numpy as jnp
  from jssl.models import BACKBONES, build_backbone
  if backbone_name not in BACKBONES:
    raise ConversionError(f"unknown backbone '{backbone_name}'; valid: {', '.join(sorted(BACKBONES))}")
  kwargs = dict(backbone_kwargs or {})
  size = kwargs.get('img_size', 224)
  images = jax.ShapeDtypeStruct((1, size, size, kwargs.get('in_channels', 3)), jnp.float32)
  try:  # an unknown kwarg fails when building, an inconsistent one (out_indices, ...) when tracing
    module = build_backbone(backbone_name, **kwargs)
    variables = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x, train=False), images)
  except (TypeError, ValueError) as e:
    raise ConversionError(f'backbone kwargs {kwargs} do not fit {backbone_name}: '
                          f'{str(e).splitlines()[0] if str(e) else type(e).__name__}') from None
  return jax.tree.map(lambda x: x, dict(variables))  # FrozenDict / nested dicts -> plain dicts


def import_backbone(src: str, backbone_name: str, fmt: str, backbone_kwargs=None,
                    interpolate_pos_embed: bool = False, return_ignored: bool = False):
  """Backbone variables ({'params', ['batch_stats']}) of a PyTorch/safetensors/detectron2 file; `fmt` says whose
  names it uses. Keys that are not the backbone's are ignored (io.IGNORED); a key the architecture lacks or
  needs but the file misses is an error, as is a sin-cos ViT whose file holds the other table layout than
  `backbone_kwargs` say (import_backbone_file takes it from the file). `return_ignored`: also return the ignored
  names."""
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
  family = check_format(backbone_name, fmt)
  kwargs = dict(backbone_kwargs or {})
  template = backbone_template(backbone_name, kwargs)  # unknown backbone / bad kwargs: before reading the file
  state_dict, ignored = io.backbone_state_dict(io.read_checkpoint(src), fmt, src)
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
    raise ConversionError(f'{src}: {e}{kwargs_hint(family, state_dict, fmt, backbone_name, kwargs, str(e))}') from None
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


def replace_backbone(state, variables):
  """The TrainState with its backbone params (and BatchNorm statistics) replaced by imported `variables`,
  keeping each leaf's dtype and sharding. Optimizer and method state are left as they are: a method that keeps
  an EMA copy of the backbone in method_state (a momentum encoder) has to copy it again."""
  import jax
  import jax.numpy as jnp
  current = backbone_subtree(state)
  if jax.tree.structure(current) != jax.tree.structure(dict(variables)):
    raise ConversionError("imported backbone variables do not have the state's backbone structure "
                          f"(collections: {sorted(variables)} vs {sorted(current)})")
  for (path, new), old in zip(jax.tree_util.tree_flatten_with_path(dict(variables))[0], jax.tree.leaves(current)):
    if tuple(new.shape) != tuple(old.shape):
      raise ConversionError(f'{jax.tree_util.keystr(path)}: imported shape {tuple(new.shape)} != '
                            f'state shape {tuple(old.shape)}')
  placed = jax.tree.map(
      lambda new, old: jax.device_put(jnp.asarray(new, old.dtype), getattr(old, 'sharding', None)),
      dict(variables), current)
  params = {**state.params, 'backbone': placed['params']}
  model_state = state.model_state
  if 'batch_stats' in placed:
    model_state = {**model_state, 'batch_stats': {**model_state['batch_stats'], 'backbone': placed['batch_stats']}}
  return state.replace(params=params, model_state=model_state)


def resize_relative_position_bias_table(table, dst_side: int):
  """A relative position bias table [(2w-1)^2, heads] of a window w resized to [dst_side^2, heads] (BEiT's and
  mmpretrain's `resize_relative_position_bias_table`): the source offsets are spread on a geometric progression
  that reaches the new half-width, and each head's grid is interpolated by a bicubic spline through them (scipy's
  removed `interp2d(kind='cubic')` on a grid is this RectBivariateSpline)."""
  from scipy.interpolate import RectBivariateSpline
  table = np.asarray(table, np.float64)
  src_side = int(round(table.shape[0] ** 0.5))
  if src_side ** 2 != table.shape[0]:
    raise ConversionError(f'relative_position_bias_table of shape {table.shape} is not a square grid')
  if src_side < 4:  # a bicubic spline needs 4 points per axis
    raise ConversionError(f'relative_position_bias_table of shape {table.shape}: a window below 3 cannot be resized')
  half = src_side // 2
  left, right = 1.01, 1.5  # ratio q with 1 + q + ... + q^(half-1) = dst_side // 2, by bisection
  while right - left > 1e-6:
    q = (left + right) / 2.
    if (1. - q ** half) / (1. - q) > dst_side // 2:
      right = q
    else:
      left = q
  distances = np.cumsum([1.] + [q ** (i + 1) for i in range(half - 1)])
  coords = np.concatenate([-distances[::-1], [0.], distances])
  t = dst_side // 2.
  targets = np.arange(-t, t + 0.1, 1.)
  heads = [RectBivariateSpline(coords, coords, table[:, h].reshape(src_side, src_side), kx=3, ky=3, s=0)(
      targets, targets).reshape(-1) for h in range(table.shape[1])]
  return np.stack(heads, axis=1).astype(np.float32)


def merge_backbone(state, variables):
  """Non-strict `replace_backbone` (mmengine's `load_checkpoint(strict=False)`), for fine-tuning a backbone whose
  head-side layers differ from pretraining's (MAE: pretrained `norm`, fine-tuned `fc_norm`): every leaf the state
  and `variables` share is loaded; the rest keeps its fresh init. Relative position bias tables of another window
  size are resized (`resize_relative_position_bias_table`). Returns (state, missing, unused): the state's
  leaves not in the checkpoint and the checkpoint's leaves the state lacks ('params/norm/scale', ...). A shared
  leaf of another shape is an error."""
  import jax
  flat = lambda tree: {'/'.join(str(getattr(k, 'key', k)) for k in path): v
                       for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  current, loaded = flat(backbone_subtree(state)), flat(dict(variables))
  for name in sorted(set(current) & set(loaded)):
    if name.endswith('relative_position_bias_table') and current[name].shape != np.shape(loaded[name]):
      # another window size (SimMIM: pretrained w6 at 192 px, fine-tuned w7 at 224), resized as mmpretrain does
      loaded[name] = resize_relative_position_bias_table(loaded[name], int(round(current[name].shape[0] ** 0.5)))
    if tuple(current[name].shape) != tuple(np.shape(loaded[name])):
      raise ConversionError(f'{name}: pretrained shape {tuple(np.shape(loaded[name]))} != state shape '
                            f'{tuple(current[name].shape)}')
  merged = {name: loaded.get(name, value) for name, value in current.items()}
  tree = {}
  for name, value in merged.items():
    *path, leaf = name.split('/')
    node = tree
    for key in path:
      node = node.setdefault(key, {})
    node[leaf] = value
  state = replace_backbone(state, tree)
  return state, sorted(set(current) - set(loaded)), sorted(set(loaded) - set(current))


# --- imported backbones on disk ---------------------------------------------------------------------------------
def save_imported_backbone(dst: str, backbone_name: str, backbone_kwargs, variables, source: dict | None = None):
  """DST/backbone.json ({'name', 'kwargs', 'source'}) + DST/variables/ (orbax StandardSave of the variables).
  Written into a temp directory next to DST and renamed, so DST appears complete or not at all."""
  import orbax.checkpoint as ocp
  dst = os.path.abspath(dst)
  if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
    raise ConversionError(f'{dst}: already exists and is not an empty directory')
  parent = os.path.dirname(dst)
  if not os.path.isdir(parent):
    raise ConversionError(f'{dst}: the directory {parent} does not exist')
  tmp = tempfile.mkdtemp(dir=parent, prefix=f'.{os.path.basename(dst)}.', suffix='.tmp')
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(os.path.join(tmp, VARIABLES_DIR), variables)
      checkpointer.wait_until_finished()
    with open(os.path.join(tmp, BACKBONE_JSON), 'w') as f:
      json.dump({'name': backbone_name, 'kwargs': dict(backbone_kwargs or {}), 'source': source or {}}, f, indent=2)
    os.chmod(tmp, 0o777 & ~io.current_umask())  # mkdtemp's 0700 -> what a plain mkdir would have given
    if os.path.isdir(dst):
      os.rmdir(dst)  # empty (checked above); os.replace cannot replace a directory on every platform
    os.replace(tmp, dst)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def pretrained_arch(path: str) -> tuple[str, dict]:
  """(backbone name, kwargs) of a pretrained backbone `path`: a jssl workdir (its config.json), a directory
  written by `python -m jssl.convert FILE DST` (its backbone.json) or a file written by
  `python -m jssl.tools.publish_model` (its metadata). Reads only the JSON, so an evaluator's config can take its
  architecture from the checkpoint it starts from."""
  if os.path.isfile(path):
    return published.published_arch(path)
  if os.path.isfile(os.path.join(path, BACKBONE_JSON)):
    with open(os.path.join(path, BACKBONE_JSON)) as f:
      meta = json.load(f)
    return meta['name'], dict(meta['kwargs'])
  if os.path.isfile(os.path.join(path, 'config.json')):
    config = load_config(path)
    return config.backbone.name, config.backbone.get('kwargs', ml_collections.ConfigDict()).to_dict()
  if not os.path.exists(path):
    raise ConversionError(f'{path}: does not exist (expected a jssl workdir, an imported backbone directory or a '
                          'published model file)')
  raise ConversionError(f'{path}: neither a jssl workdir (no config.json) nor an imported backbone (no '
                        f'{BACKBONE_JSON}); import PyTorch weights with python -m jssl.convert FILE DIR '
                        f'--format=... --backbone=...')


def load_pretrained_backbone(path: str, step: int | None = None):
  """(backbone name, kwargs, variables) of a jssl workdir's checkpoint (the latest unless `step`), of an
  imported backbone directory or of a published model file; variables are {'params', ['batch_stats']} of numpy
  arrays."""
  name, kwargs = pretrained_arch(path)
  if os.path.isfile(path):
    return name, kwargs, published.read_published(path)[1]['backbone']
  if os.path.isfile(os.path.join(path, BACKBONE_JSON)):
    return load_imported_backbone(path)
  _, state, _ = load_workdir(path, step)
  return name, kwargs, backbone_variables(state)


def load_imported_backbone(path: str):
  """(backbone name, kwargs, variables) of a directory written by `python -m jssl.convert FILE DST`; place
  them into a TrainState with `replace_backbone(state, variables)`."""
  import orbax.checkpoint as ocp
  meta_path = os.path.join(path, BACKBONE_JSON)
  if not os.path.isfile(meta_path):
    raise ConversionError(f'{path}: no {BACKBONE_JSON} (not written by python -m jssl.convert)')
  with open(meta_path) as f:
    meta = json.load(f)
  template = backbone_template(meta['name'], meta['kwargs'])
  with ocp.StandardCheckpointer() as checkpointer:
    variables = checkpointer.restore(os.path.join(os.path.abspath(path), VARIABLES_DIR), template)
  return meta['name'], meta['kwargs'], dict(variables)
