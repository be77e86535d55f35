"""Pretrained backbones, without a Trainer: what config.init.backbone, the evaluators, the feature tools and
`python -m jssl.convert` read. A pretrained backbone is one of

  a jssl workdir         config.json + checkpoints/: a checkpoint's backbone arrays as saved (params/backbone,
                         model_state/batch_stats/backbone; checkpoint.restore_parts reads nothing else: no optimizer
                         state), checked against their checksums and against the backbone config.json describes
  an imported backbone   a directory written by `python -m jssl.convert FILE DIR` or jssl.tools.extract_backbone:
                         backbone.json ({'name', 'kwargs', 'source'}) + variables/ (orbax)
  a published model      a file written by `python -m jssl.tools.publish_model` (jssl/convert/published.py)

    name, kwargs = pretrained_arch(path)                       # the JSON alone
    name, kwargs, variables = load_pretrained_backbone(path)   # {'params', ['batch_stats']} of numpy arrays
    state = load_backbone(config, state, path)                 # into a TrainState, its architecture checked

A backbone is loaded only into a config of its architecture (check_arch): its name, and every backbone kwarg but
those that leave what its weights compute as it is (FREE_KWARGS).
"""
import dataclasses
import json
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jssl import checkpoint
from jssl.convert.errors import ConversionError
from jssl.convert.io import current_umask
from jssl.convert.published import published_arch, read_published
from jssl.models import BACKBONES, build_backbone
from jssl.train.state import TrainState
from jssl.train.workdir import checkpoint_steps

BACKBONE_JSON = 'backbone.json'
VARIABLES_DIR = 'variables'
BACKBONE_PARTS = ('params/backbone', 'model_state/batch_stats/backbone')
MODEL_PARTS = ('params', 'model_state', 'method_state')  # a TrainState but its optimizer state and RNG
# Backbone kwargs a run may set apart from its pretrained weights' own: how it trains (drop path, remat, frozen
# stages, BatchNorm statistics frozen, the init of what the weights lack), what it outputs (out_indices, output,
# fc_norm, a mask token), its compute dtype, and the input size and window that a load adapts the weights to or
# refuses by their shapes (learned position embeddings; Swin's relative position tables, which a non-strict load
# resizes: merge_backbone). Any other kwarg changes what the weights compute (a sin-cos table's layout, the number
# of heads) or which weights there are.
FREE_KWARGS = ('dtype', 'remat', 'drop_path_rate', 'frozen_stages', 'norm_eval', 'zero_init_residual', 'init_mode',
               'out_indices', 'output', 'use_fc_norm', 'frozen_patch_embed', 'mask_token', 'img_size', 'window_size')


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


def check_step(workdir: str, step: int | None = None):
  """The workdir has a checkpoint (of `step`, when given)."""
  steps = checkpoint_steps(workdir)
  if not steps:
    raise ConversionError(f'{workdir}: no checkpoint under {os.path.join(workdir, "checkpoints")}')
  if step is not None and step not in steps:
    raise ConversionError(f'{workdir}: no checkpoint for step {step}; available: {", ".join(map(str, steps))}')


def load_workdir(workdir: str, step: int | None = None):
  """(config, state, step) of a workdir's checkpoint (the latest that reads back, unless `step`): `state` a
  TrainState of the model as saved (params, model_state, method_state: numpy arrays), its optimizer state and RNG
  not read (None)."""
  config = load_config(workdir)
  check_step(workdir, step)
  parts, step = checkpoint.restore_parts(workdir, MODEL_PARTS, step)
  state = TrainState(step=np.int32(step), params=parts['params'], opt_state=None,
                     model_state=parts.get('model_state', {}), method_state=parts.get('method_state', {}), rng=None)
  return config, state, step


def load_workdir_backbone(workdir: str, step: int | None = None):
  """(config, variables, step): the backbone ({'params', ['batch_stats']} of numpy arrays) of a workdir's checkpoint
  (the latest that reads back, unless `step`), all that is read of it; a backbone of other shapes than config.json
  describes is an error."""
  config = load_config(workdir)
  check_step(workdir, step)
  parts, step = checkpoint.restore_parts(workdir, BACKBONE_PARTS, step)
  variables = {'params': parts['params/backbone']}
  if 'model_state/batch_stats/backbone' in parts:
    variables['batch_stats'] = parts['model_state/batch_stats/backbone']
  name, kwargs = config.backbone.name, config.backbone.get('kwargs', ml_collections.ConfigDict()).to_dict()
  flat = lambda tree: {jax.tree_util.keystr(p, simple=True, separator='/'): tuple(np.shape(v))
                       for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  saved, described = flat(variables), flat(backbone_template(name, kwargs))
  # a method may add to its backbone what the kwargs do not say (SimMIM's mask token): only a missing or
  # reshaped array is a mismatch
  wrong = [k for k in described if saved.get(k) != described[k]]
  if wrong:
    what = ', '.join(f'{k} {saved[k]} (config.json: {described[k]})' if k in saved else f'{k} missing'
                     for k in wrong[:3]) + (f' and {len(wrong) - 3} more' if len(wrong) > 3 else '')
    raise ConversionError(f'{workdir}: the backbone of checkpoint {step} is not the {name} {kwargs} its config.json '
                          f'describes: {what}')
  return config, variables, step


def flat_leaves(tree) -> dict:
  """{'params/layer1_0/conv1/kernel': leaf, ...}: a variables tree by leaf path (the names errors and notes show)."""
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def nested_leaves(flat: dict) -> dict:
  """The inverse of `flat_leaves`."""
  tree = {}
  for name, value in flat.items():
    *path, leaf = name.split('/')
    node = tree
    for key in path:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def described_only(name: str, kwargs: dict, variables: dict):
  """(variables restricted to the leaves of the `name` backbone built with `kwargs`, the names of the leaves left
  out): what an imported-backbone directory holds, so that backbone.json describes its variables exactly (a method's
  own additions, e.g. SimMIM's mask token, stay in the workdir)."""
  described, given = flat_leaves(backbone_template(name, kwargs)), flat_leaves(variables)
  return (nested_leaves({k: v for k, v in given.items() if k in described}),
          sorted(set(given) - set(described)))


def backbone_subtree(state) -> dict:
  """{'params': ..., ['batch_stats': ...]} of the backbone inside a TrainState (arrays as they are)."""
  variables = {'params': state.params['backbone']}
  batch_stats = (state.model_state or {}).get('batch_stats', {})
  if 'backbone' in batch_stats:
    variables['batch_stats'] = batch_stats['backbone']
  return variables


def backbone_variables(state) -> dict:
  """The backbone's variables as numpy arrays (what the key maps' to_torch takes)."""
  return jax.tree.map(np.asarray, backbone_subtree(state))


def backbone_template(backbone_name: str, backbone_kwargs=None) -> dict:
  """{'params': ..., ['batch_stats': ...]} of ShapeDtypeStructs for the backbone (nothing is computed)."""
  kwargs = dict(backbone_kwargs or {})
  module = _build(backbone_name, kwargs)
  size = kwargs.get('img_size', 224)
  images = jax.ShapeDtypeStruct((1, size, size, kwargs.get('in_channels', 3)), jnp.float32)
  try:  # an inconsistent kwarg (out_indices, ...) fails when tracing
    variables = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x, train=False), images)
  except (TypeError, ValueError) as e:
    raise ConversionError(f'backbone kwargs {kwargs} do not fit {backbone_name}: '
                          f'{str(e).splitlines()[0] if str(e) else type(e).__name__}') from None
  return jax.tree.map(lambda x: x, dict(variables))  # FrozenDict / nested dicts -> plain dicts


def _build(backbone_name, kwargs):
  if backbone_name not in BACKBONES:
    raise ConversionError(f"unknown backbone '{backbone_name}'; valid: {', '.join(sorted(BACKBONES))}")
  try:  # an unknown kwarg fails when building
    return build_backbone(backbone_name, **kwargs)
  except (TypeError, ValueError) as e:
    raise ConversionError(f'backbone kwargs {kwargs} do not fit {backbone_name}: '
                          f'{str(e).splitlines()[0] if str(e) else type(e).__name__}') from None


# --- imported backbones on disk ---------------------------------------------------------------------------------
def save_imported_backbone(dst: str, backbone_name: str, backbone_kwargs, variables, source: dict | None = None):
  """DST/backbone.json ({'name', 'kwargs', 'source'}) + DST/variables/ (orbax StandardSave of the variables).
  Written into a temp directory next to DST and renamed, so DST appears complete or not at all."""
  dst = os.path.abspath(dst)
  if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
    raise ConversionError(f'{dst}: already exists and is not an empty directory')
  parent = os.path.dirname(dst)
  if not os.path.isdir(parent):
    raise ConversionError(f'{dst}: the directory {parent} does not exist')
  tmp = tempfile.mkdtemp(dir=parent, prefix=f'.{os.path.basename(dst)}.', suffix='.tmp')
  try:
    checkpoint.save_tree(os.path.join(tmp, VARIABLES_DIR), variables)
    with open(os.path.join(tmp, BACKBONE_JSON), 'w') as f:
      json.dump({'name': backbone_name, 'kwargs': dict(backbone_kwargs or {}), 'source': source or {}}, f, indent=2)
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 -> what a plain mkdir would have given
    if os.path.isdir(dst):
      os.rmdir(dst)  # empty (checked above); os.replace cannot replace a directory on every platform
    os.replace(tmp, dst)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def load_imported_backbone(path: str):
  """(backbone name, kwargs, variables) of a directory written by `python -m jssl.convert FILE DST`; place
  them into a TrainState with `replace_backbone(state, variables)`."""
  meta_path = os.path.join(path, BACKBONE_JSON)
  if not os.path.isfile(meta_path):
    raise ConversionError(f'{path}: no {BACKBONE_JSON} (not written by python -m jssl.convert)')
  with open(meta_path) as f:
    meta = json.load(f)
  template = backbone_template(meta['name'], meta['kwargs'])
  try:
    variables = checkpoint.restore_tree(os.path.join(os.path.abspath(path), VARIABLES_DIR), template)
  except checkpoint.CheckpointError as e:  # damaged, or not the architecture backbone.json says
    raise ConversionError(f'{e}, as the {meta["name"]} {meta["kwargs"]} of {meta_path}') from None
  return meta['name'], meta['kwargs'], dict(variables)


# --- any pretrained backbone ------------------------------------------------------------------------------------
def pretrained_arch(path: str) -> tuple[str, dict]:
  """(backbone name, kwargs) of a pretrained backbone `path`: a jssl workdir (its config.json), a directory
  written by `python -m jssl.convert FILE DST` (its backbone.json) or a file written by
  `python -m jssl.tools.publish_model` (its metadata). Reads only the JSON, so an evaluator's config can take its
  architecture from the checkpoint it starts from."""
  if os.path.isfile(path):
    return published_arch(path)
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
    return name, kwargs, read_published(path)[1]['backbone']
  if os.path.isfile(os.path.join(path, BACKBONE_JSON)):
    return load_imported_backbone(path)
  return name, kwargs, load_workdir_backbone(path, step)[1]


# --- into a run -------------------------------------------------------------------------------------------------
def resolve_pretrained_backbone(config):
  """An evaluator config may leave config.backbone.name empty: the architecture is then the one of
  config.init.backbone (a jssl workdir or an imported backbone), its kwargs updated by config.backbone.kwargs
  (e.g. a fine-tune's drop_path_rate). Written into the config, so the workdir's config.json records it."""
  if config.backbone.name or not config.init.get('backbone'):
    return
  name, kwargs = pretrained_arch(config.init.backbone)
  with config.unlocked():
    config.backbone.name = name
    config.backbone.kwargs = {**kwargs, **config.backbone.get('kwargs', {}).to_dict()}


def check_pretrained(config, path: str):
  """config.init.backbone reads back as far as its metadata tell (a workdir's checkpoints, the architecture) and
  is of config.backbone's architecture (check_arch): before anything is built."""
  try:
    name, kwargs = pretrained_arch(path)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, BACKBONE_JSON)) and \
        not checkpoint_steps(path):
      raise ConversionError(f'{path}: a jssl workdir without checkpoints (its run has not saved one)')
  except ConversionError as e:
    raise ConversionError(f'config.init.backbone: {e}') from None
  check_arch(config, path, name, kwargs)


def check_arch(config, path: str, name: str, kwargs: dict):
  """The pretrained backbone `name` with `kwargs` (at `path`) is config.backbone's: the same name and the same value
  of every kwarg not in FREE_KWARGS (defaults included); else a ValueError naming the config field and the value
  to set: a --config.backbone.kwargs override where the config has the field, else an empty config.backbone.name,
  which takes the architecture of config.init.backbone (resolve_pretrained_backbone)."""
  if name != config.backbone.name:
    raise ValueError(f"config.init.backbone: {path} holds a '{name}' backbone but config.backbone.name is "
                     f"'{config.backbone.name}'; valid: {name}")
  theirs = _build(name, kwargs)
  ours = _build(name, config.backbone.get('kwargs', ml_collections.ConfigDict()).to_dict())
  as_json = lambda v: json.loads(json.dumps(v, default=str))  # tuples and lists alike
  differ = [f.name for f in dataclasses.fields(theirs) if f.name not in FREE_KWARGS + ('parent', 'name') and
            as_json(getattr(theirs, f.name)) != as_json(getattr(ours, f.name))]
  if differ:
    said = ', '.join(f'{k}={getattr(theirs, k)!r} (config.backbone.kwargs.{k}: {getattr(ours, k)!r})' for k in differ)
    settable = config.backbone.get('kwargs', {})
    valid = [f'--config.backbone.kwargs.{k}={_flag_value(getattr(theirs, k))}' for k in differ if k in settable]
    if len(valid) < len(differ):
      valid = ['--config.backbone.name='] + valid + ["(an empty name takes config.init.backbone's architecture, "
                                                      'config.backbone.kwargs laid over it)']
    raise ValueError(f'config.init.backbone: {path} holds a {name} with {said}; valid: {" ".join(valid)}')


def _flag_value(value):
  """How a command line sets `value` (ml_collections' overrides: strings bare, tuples as '(2,2,6,2)')."""
  if isinstance(value, (tuple, list)):
    return '(' + ','.join(str(v) for v in value) + (',)' if len(value) == 1 else ')')
  return str(value)


def load_backbone(config, state, path: str):
  """`state` with its backbone replaced by the pretrained one at `path` (config.init.backbone), after check_arch;
  config.init.strict=False: merged (merge_backbone) and what was not loaded printed."""
  name, kwargs, variables = load_pretrained_backbone(path)
  check_arch(config, path, name, kwargs)
  state, missing, unused = merge_backbone(state, variables)
  if config.init.get('strict', True):
    # strict: every leaf of the backbone comes from the checkpoint; the checkpoint may hold more (SimMIM's and
    # MaskFeat's mask token belongs to their pretraining, not to the backbone an evaluator builds)
    if missing:
      shown = ', '.join(missing[:3]) + (f' and {len(missing) - 3} more' if len(missing) > 3 else '')
      raise ConversionError(f'config.init.backbone: {path} lacks {shown} of the {name} backbone; '
                            f'--config.init.strict=False keeps their fresh init (fine-tuning)')
    print(f'backbone initialized from {path}' + (f'; in it, unused: {", ".join(unused)}' if unused else ''),
          flush=True)
    return state
  print(f'backbone initialized from {path}; not in it (fresh init): {", ".join(missing) or "none"}; '
        f'in it, unused: {", ".join(unused) or "none"}', flush=True)
  return state


def replace_backbone(state, variables):
  """The TrainState with its backbone params (and BatchNorm statistics) replaced by imported `variables`,
  keeping each leaf's dtype and sharding. Optimizer and method state are left as they are: a method that keeps
  an EMA copy of the backbone in method_state (a momentum encoder) has to copy it again."""
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
  current, loaded = flat_leaves(backbone_subtree(state)), flat_leaves(dict(variables))
  for name in sorted(set(current) & set(loaded)):
    if name.endswith('relative_position_bias_table') and current[name].shape != np.shape(loaded[name]):
      # another window size (SimMIM: pretrained w6 at 192 px, fine-tuned w7 at 224), resized as mmpretrain does
      loaded[name] = resize_relative_position_bias_table(loaded[name], int(round(current[name].shape[0] ** 0.5)))
    if tuple(current[name].shape) != tuple(np.shape(loaded[name])):
      raise ConversionError(f'{name}: pretrained shape {tuple(np.shape(loaded[name]))} != state shape '
                            f'{tuple(current[name].shape)}')
  state = replace_backbone(state, nested_leaves({name: loaded.get(name, value) for name, value in current.items()}))
  return state, sorted(set(current) - set(loaded)), sorted(set(loaded) - set(current))
