"""Published models (MMSelfSup's publish_model): one safetensors file with a run's backbone (and, for a whole
model, its neck/head) variables under jssl's own names, and the run's config in the file's metadata; nothing
training-only (optimizer state, EMA targets, queues, memory banks, RNG). Named `<OUT>-<hash8>.safetensors`, hash8
the first 8 hex digits of the file's sha256, which `read_published` checks.

  tensors   '<module>/<collection>/<path>' -> array, e.g. 'backbone/params/layer1_0/conv1/kernel',
            'backbone/batch_stats/bn1/mean', 'neck/params/fc0/kernel' (Flax layouts, float32)
  metadata  'jssl_published': '1', 'config': the run's config as JSON, 'backbone': registry name,
            'backbone_kwargs': JSON, 'step': the checkpoint step, 'modules': comma-separated module names

safetensors keeps the file free of pickles and readable by any safetensors client.
"""
import hashlib
import json
import os
import re
import tempfile

import numpy as np

from jssl.convert.errors import ConversionError

EXTENSION = '.safetensors'
MARKER = 'jssl_published'
HASH_IN_NAME = re.compile(r'-([0-9a-f]{8})\.safetensors$')


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 24), b''):
      digest.update(block)
  return digest.hexdigest()


def write_published(out: str, modules: dict, config, step: int) -> str:
  """Writes `modules` ({'backbone': {'params': ..., ['batch_stats': ...]}, 'neck': ...}) and `config` (a
  ConfigDict) to `<out>-<hash8>.safetensors` (a trailing .safetensors of `out` is dropped); returns that path.
  Written to a temporary name in the same directory and renamed once hashed."""
  import ml_collections
  import safetensors.numpy
  from flax import traverse_util
  from jssl.convert.io import current_umask
  stem = out[:-len(EXTENSION)] if out.endswith(EXTENSION) else out
  directory = os.path.dirname(os.path.abspath(stem))
  if not os.path.isdir(directory):
    raise ConversionError(f'{out}: the directory {directory} does not exist')
  tensors = {k: np.ascontiguousarray(v) for k, v in traverse_util.flatten_dict(modules, sep='/').items()}
  kwargs = config.backbone.get('kwargs', ml_collections.ConfigDict()).to_dict()
  metadata = {MARKER: '1', 'config': config.to_json_best_effort(), 'backbone': config.backbone.name,
              'backbone_kwargs': json.dumps(kwargs), 'step': str(int(step)), 'modules': ','.join(modules)}
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{os.path.basename(stem)}.', suffix='.tmp')
  os.close(fd)
  try:
    safetensors.numpy.save_file(tensors, tmp, metadata=metadata)
    os.chmod(tmp, 0o666 & ~current_umask())
    final = f'{stem}-{sha256_of(tmp)[:8]}{EXTENSION}'
    os.replace(tmp, final)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return final


def published_metadata(path: str) -> dict:
  """The file's metadata (reads only the header)."""
  import safetensors
  if not os.path.isfile(path):
    raise ConversionError(f'{path}: no such file')
  if not path.endswith(EXTENSION):
    raise ConversionError(f'{path}: not a published jssl model (a {EXTENSION} file written by python -m '
                          'jssl.tools.publish_model); import PyTorch weights with python -m jssl.convert FILE DIR '
                          '--format=... --backbone=...')
  try:
    with safetensors.safe_open(path, framework='np') as f:
      metadata = f.metadata() or {}
  except Exception as e:  # safetensors raises its own SafetensorError for a damaged header
    raise ConversionError(f'{path}: cannot read as a published jssl model (truncated or not a safetensors file?): '
                          f'{" ".join(str(e).split())[:200]}') from None
  if metadata.get(MARKER) != '1':
    raise ConversionError(f'{path}: a safetensors file but not a published jssl model (no {MARKER!r} metadata); '
                          'import PyTorch weights with python -m jssl.convert FILE DIR --format=... --backbone=...')
  return metadata


def published_arch(path: str) -> tuple[str, dict]:
  """(backbone name, kwargs) from the file's metadata."""
  metadata = published_metadata(path)
  return metadata['backbone'], json.loads(metadata['backbone_kwargs'])


def published_shapes(path: str) -> dict:
  """{tensor name: shape} from the header alone (no tensor is read)."""
  import safetensors
  published_metadata(path)
  with safetensors.safe_open(path, framework='np') as f:
    return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def read_published(path: str):
  """(config ConfigDict, {module: {collection: tree of numpy arrays}}) of a published file, after checking its
  sha256 against the hash in its name (when the name has one)."""
  import ml_collections
  import safetensors.numpy
  from flax import traverse_util
  metadata = published_metadata(path)
  named = HASH_IN_NAME.search(os.path.basename(path))
  if named and not sha256_of(path).startswith(named.group(1)):
    raise ConversionError(f'{path}: sha256 does not start with {named.group(1)} as the name says (the file was '
                          'damaged or changed after publishing)')
  try:
    flat = safetensors.numpy.load_file(path)
  except Exception as e:
    raise ConversionError(f'{path}: cannot read the tensors (truncated?): {" ".join(str(e).split())[:200]}') from None
  config = ml_collections.ConfigDict(json.loads(metadata['config']))
  return config, traverse_util.unflatten_dict(flat, sep='/')
