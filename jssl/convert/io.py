"""Checkpoint files on disk: reading PyTorch / safetensors / detectron2 files into flat {name: np.ndarray}
dicts, and writing them back in each ecosystem's container (atomically: a temp file in the destination
directory, then os.replace, so a failed write leaves nothing behind).

A naming format (`--format`) decides the wrapper around the state dict; the file type (.pth, .pkl,
.safetensors) follows from the destination's extension:

  torchvision, timm   .pth  the state dict itself
  mmpretrain          .pth  {'state_dict': {'backbone.' + name: tensor}, 'meta': {...}}   (OpenMMLab)
  mae                 .pth  {'model': state dict}                                     (official MAE)
  mocov3              .pth  {'state_dict': {'module.base_encoder.' + name: tensor}}     (official MoCo v3)
  detectron2          .pkl  {'model': {name: np.ndarray}, '__author__': 'jssl', 'matching_heuristics': True}
  any format   .safetensors the wrapper's flat names (prefix included), no container
"""
import argparse
import importlib.util
import os
import pickle
import tempfile

import numpy as np

from jssl.convert.errors import ConversionError

# naming format -> (container key or None, name prefix) of the backbone's weights in that ecosystem's files
WRAPPERS = {
    'torchvision': (None, ''),
    'timm': (None, ''),
    'mmpretrain': ('state_dict', 'backbone.'),
    'mae': ('model', ''),
    'mocov3': ('state_dict', 'module.base_encoder.'),
    'detectron2': ('model', ''),
}

FILE_TYPES = {'.pth': 'pth', '.pt': 'pth', '.bin': 'pth', '.pkl': 'pkl', '.safetensors': 'safetensors'}


def file_type_of(path: str, file_format: str | None = None) -> str:
  """'pth' | 'pkl' | 'safetensors': `file_format` if given, else from the extension."""
  valid = sorted(set(FILE_TYPES.values()))
  if file_format:
    if file_format not in valid:
      raise ConversionError(f"unknown file format '{file_format}'; valid: {', '.join(valid)}")
    return file_format
  ext = os.path.splitext(path)[1].lower()
  if ext not in FILE_TYPES:
    raise ConversionError(f"{path}: cannot tell the file type from the extension '{ext}'; use one of "
                          f"{', '.join(sorted(FILE_TYPES))} or --file_format={'|'.join(valid)}")
  return FILE_TYPES[ext]


# modules each file type needs beyond jssl's own dependencies, reading / writing (all in setup.cfg's `torch` extra)
FILE_MODULES = {'pth': (('torch',), ('torch',)), 'safetensors': (('safetensors', 'torch'), ('safetensors',)),
                'pkl': ((), ())}
TORCH_EXTRA = "pip install -e '.[torch]'"


def check_modules(path: str, file_type: str, reading: bool):
  """ConversionError naming the extra to install when reading / writing `file_type` needs a module that is not
  installed; checked before any model or checkpoint is loaded. (find_spec imports nothing: torch takes seconds.)"""
  missing = [m for m in FILE_MODULES[file_type][0 if reading else 1] if importlib.util.find_spec(m) is None]
  if missing:
    raise ConversionError(f"{path}: {'reading' if reading else 'writing'} a .{file_type} file needs "
                          f"{' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
                          f'{TORCH_EXTRA} (the PyTorch extra: torch, torchvision, timm, safetensors)')


def read_file_type(path: str) -> str:
  """The file type read_checkpoint reads `path` as (an unknown extension: a torch file, e.g. MoCo v3's .pth.tar)."""
  return file_type_of(path) if os.path.splitext(path)[1].lower() in FILE_TYPES else 'pth'


def check_destination(dst: str, directory: bool):
  """Before any work: the folder that is to hold `dst` exists and is writable, and `dst` is not in the way (an
  export's file: not a directory; an import's directory: absent or empty)."""
  parent = os.path.dirname(os.path.abspath(dst))
  if not os.path.isdir(parent):
    raise ConversionError(f'{dst}: the directory {parent} does not exist')
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ConversionError(f'{dst}: the directory {parent} is not writable')
  if directory and os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
    raise ConversionError(f'{dst}: already exists and is not an empty directory')
  if not directory and os.path.isdir(dst):
    raise ConversionError(f'{dst}: is a directory; name the file to write')


# --- reading ----------------------------------------------------------------------------------------------------
def to_numpy(tree):
  """Torch tensors (any dtype, bfloat16 included) -> float/int numpy arrays, recursively through dicts (torch is
  imported only where there is a tensor: a dict of numpy arrays needs no PyTorch)."""
  if isinstance(tree, dict):
    return {k: to_numpy(v) for k, v in tree.items()}
  if type(tree).__module__.split('.')[0] == 'torch':
    import torch
    t = tree.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
  return tree


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """detectron2 .pkl files hold dicts of numpy arrays; anything else a pickle asks to import is refused."""
  ALLOWED = {('collections', 'OrderedDict'), ('numpy', 'ndarray'), ('numpy', 'dtype')} | {
      (f'numpy.{core}.{mod}', name) for core in ('core', '_core')
      for mod, name in (('multiarray', '_reconstruct'), ('multiarray', 'scalar'), ('numeric', '_frombuffer'))}

  def find_class(self, module, name):
    if (module, name) in self.ALLOWED:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f'refusing to load {module}.{name} (only numpy arrays are read from .pkl)')


def read_checkpoint(path: str):
  """The file's content with tensors as numpy arrays: a dict (possibly nested: {'state_dict': ...})."""
  if not os.path.isfile(path):
    raise ConversionError(f'{path}: no such file')
  kind = read_file_type(path)
  check_modules(path, kind, reading=True)
  if kind == 'safetensors':
    import safetensors.torch
  elif kind == 'pth':
    import torch
  try:
    if kind == 'safetensors':
      return to_numpy(safetensors.torch.load_file(path))
    if kind == 'pkl':
      with open(path, 'rb') as f:
        return _NumpyOnlyUnpickler(f, encoding='latin1').load()
    # argparse.Namespace: the 'args' entry that official MAE / DeiT training checkpoints carry
    with torch.serialization.safe_globals([argparse.Namespace]):
      return to_numpy(torch.load(path, map_location='cpu', weights_only=True))
  except Exception as e:  # torch / safetensors / pickle each raise their own types for a damaged file
    sentences = ' '.join(str(e).split()).split('. ')
    # torch's messages go on with advice: keep the sentence that says what is wrong
    message = next((s for s in sentences if 'Unsupported global' in s), sentences[0])
    raise ConversionError(f'{path}: cannot read as a {kind} checkpoint (truncated or not a checkpoint?): '
                          f'{type(e).__name__}: {message[:300]}') from None


# --- writing ----------------------------------------------------------------------------------------------------
def current_umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _atomic_write(dst: str, write_fn):
  """write_fn(temp_path) writes the file; it becomes `dst` only if it finished."""
  directory = os.path.dirname(os.path.abspath(dst))
  if not os.path.isdir(directory):
    raise ConversionError(f'{dst}: the directory {directory} does not exist')
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{os.path.basename(dst)}.', suffix='.tmp')
  os.close(fd)
  try:
    write_fn(tmp)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 -> what a plain open() would have given
    os.replace(tmp, dst)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_checkpoint(dst: str, state_dict: dict, fmt: str, file_type: str, extra: dict | None = None,
                     meta: dict | None = None):
  """Writes the backbone `state_dict` (torch names, no prefix) wrapped for `fmt`; `extra` entries (whole-model
  export: 'neck.*', 'head.*', ...) go next to the backbone's, without the backbone prefix."""
  container, prefix = WRAPPERS[fmt]
  flat = {prefix + k: np.array(v) for k, v in state_dict.items()}  # writable copies (jax arrays are not)
  for k, v in (extra or {}).items():
    if k in flat:
      raise ConversionError(f"whole-model key '{k}' collides with a backbone key")
    flat[k] = np.array(v)

  if file_type == 'safetensors':
    import safetensors.numpy
    _atomic_write(dst, lambda tmp: safetensors.numpy.save_file(flat, tmp))
    return
  if file_type == 'pkl':
    content = {container or 'model': flat}
    if fmt == 'detectron2':
      content.update({'__author__': 'jssl', 'matching_heuristics': True})
    def write_pickle(tmp):
      with open(tmp, 'wb') as f:
        pickle.dump(content, f)
    _atomic_write(dst, write_pickle)
    return

  import torch
  tensors = {k: torch.from_numpy(v) for k, v in flat.items()}
  if container is None:
    content = tensors
  else:
    content = {container: tensors}
  if fmt == 'mmpretrain':
    content['meta'] = dict(meta or {})
  if fmt == 'detectron2':
    content.update({'__author__': 'jssl', 'matching_heuristics': True})
  _atomic_write(dst, lambda tmp: torch.save(content, tmp))


# --- unwrapping on import ---------------------------------------------------------------------------------------
# naming format -> prefixes under which its files keep the backbone (first one present wins; none present: the
# names are taken as they are), and the (de-prefixed) names that are not the backbone and are ignored
IMPORT_PREFIXES = {
    'torchvision': (),
    'timm': (),
    'mmpretrain': ('backbone.',),                           # neck./head./data_preprocessor./target_generator.
    'mae': (),
    'mocov3': ('module.base_encoder.', 'base_encoder.'),    # module.momentum_encoder., module.predictor.
    'detectron2': ('backbone.bottom_up.',),                 # a detection model's own fpn/heads
}
IGNORED = {
    'torchvision': ('fc.',),                                # the ImageNet classifier
    'timm': ('head.', 'head_dist.', 'fc.'),                 # classifier (and DeiT's distillation head)
    'mmpretrain': (),
    'mae': ('decoder_', 'mask_token', 'head.'),             # pretraining decoder; fine-tuned classifier
    'mocov3': ('head.', 'fc.'),                             # the projection MLP (ViT: head, ResNet: fc)
    'detectron2': ('stem.fc.', 'fc.'),                      # the classifier convert-torchvision-to-d2 keeps
}
# what a jssl whole-model export adds next to the backbone, in any format
WHOLE_MODEL_PREFIXES = ('neck.', 'head.', 'method_state.')


def backbone_state_dict(content, fmt: str, path: str) -> tuple[dict, list]:
  """(backbone {name: array} in `fmt`'s names without wrapper prefix, names of the file that were ignored)."""
  container, _ = WRAPPERS[fmt]
  inner = content
  for key in ((container,) if container else ('state_dict', 'model')):
    if isinstance(content, dict) and isinstance(content.get(key), dict):
      inner = content[key]
      break
  if not isinstance(inner, dict) or not inner:
    raise ConversionError(f'{path}: no state dict found (expected a dict of tensors'
                          f"{f', under {container!r}' if container else ''})")
  for k, v in inner.items():
    if not isinstance(v, np.ndarray):
      raise ConversionError(f"{path}: '{k}' holds a {type(v).__name__}, not a tensor; top-level keys: "
                            f"{', '.join(map(str, list(content)[:10]))}")
  names = list(inner)
  prefix = next((p for p in IMPORT_PREFIXES[fmt] if any(k.startswith(p) for k in names)), '')
  state_dict, ignored = {}, []
  for k in names:
    if not k.startswith(prefix):
      ignored.append(k)
    elif k[len(prefix):].startswith(IGNORED[fmt] + WHOLE_MODEL_PREFIXES):
      ignored.append(k)
    else:
      state_dict[k[len(prefix):]] = inner[k]
  return state_dict, ignored
