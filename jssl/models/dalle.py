"""The DALL-E dVAE tokenizer's encoder (Ramesh et al. 2021), the frozen target generator of BEiT and CAE.

Same architecture as mmpretrain's `DALL-E` encoder (models/selfsup/cae.py, from openai/DALL-E): a 7x7 input conv
to n_hid channels, 4 groups of `n_blk_per_group` residual blocks at 1, 2, 4, 8 x n_hid channels with a 2x2 max
pool after each of the first three groups, then ReLU and a 1x1 conv to `vocab_size` logits. A block is
id_path(x) + post_gain * res_path(x), res_path = (ReLU, conv 3x3 to n_out/4) x 3, ReLU, conv 1x1 to n_out, with
id_path a 1x1 conv when the width changes, and post_gain = 1 / (4 * n_blk_per_group)^2.
An image [B, H, W, 3] in DALL-E's pixel range (0.1 .. 0.9, see `map_pixels`) gives logits [B, H/8, W/8, vocab];
112 px -> 14 x 14 tokens, one per 16-px patch of the 224-px view the ViT sees.

Params (never trained; CAE keeps them in method_state): input, group_{g}_block_{i}/{id_path, conv_1..conv_4},
output, each {'kernel' HWIO, 'bias'}. `load_tokenizer` reads them from the mmselfsup `dalle_encoder.pth` (torch
needed) or the .npz written by `python -m jssl.convert.dalle IN.pth OUT.npz` (no torch).
"""
import os
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jssl.convert.errors import ConversionError

GROUPS = 4  # the reference's structure is fixed: widths 1, 2, 4, 8 x n_hid
WEIGHTS_URL = 'https://download.openmmlab.com/mmselfsup/1.x/target_generator_ckpt/dalle_encoder.pth'
# DALL-E's (0.1 .. 0.9) pixel range as the reference's TwoNormDataPreprocessor writes it on 0..255 pixels
PIXEL_MEAN, PIXEL_STD = -31.875, 318.75


def map_pixels(images_01):
  """[0, 1] pixels -> the tokenizer's input, (255 x - (-31.875)) / 318.75 = 0.8 x + 0.1 (DALL-E's map_pixels)."""
  return (images_01 * 255. - PIXEL_MEAN) / PIXEL_STD


def _conv(features, kw, name):
  # padding (kw - 1) // 2 as the reference; weights always come from a file or `random_params`
  return nn.Conv(features, (kw, kw), padding=(kw - 1) // 2, name=name)


class EncoderBlock(nn.Module):
  n_out: int
  post_gain: float

  @nn.compact
  def __call__(self, x):
    n_hid = self.n_out // 4
    identity = x if x.shape[-1] == self.n_out else _conv(self.n_out, 1, 'id_path')(x)
    h = x
    for i, (width, kw) in enumerate(((n_hid, 3), (n_hid, 3), (n_hid, 3), (self.n_out, 1))):
      h = _conv(width, kw, f'conv_{i + 1}')(nn.relu(h))
    return identity + self.post_gain * h


class DALLEEncoder(nn.Module):
  n_hid: int = 256
  n_blk_per_group: int = 2
  vocab_size: int = 8192

  @nn.compact
  def __call__(self, x):
    """x: [B, H, W, 3] float32 in DALL-E's pixel range -> logits [B, H/8, W/8, vocab_size]."""
    post_gain = 1. / (GROUPS * self.n_blk_per_group) ** 2
    x = _conv(self.n_hid, 7, 'input')(x.astype(jnp.float32))
    for g in range(GROUPS):
      for i in range(self.n_blk_per_group):
        x = EncoderBlock(self.n_hid * 2 ** g, post_gain, name=f'group_{g + 1}_block_{i + 1}')(x)
      if g < GROUPS - 1:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    return _conv(self.vocab_size, 1, 'output')(nn.relu(x))


def tokens(params, images):
  """Token ids [B, H/8 * W/8] (row-major) of images in DALL-E's pixel range; the architecture follows the params."""
  return jnp.argmax(encoder_for(params).apply({'params': params}, images), axis=-1).reshape(images.shape[0], -1)


def encoder_for(params):
  """The DALLEEncoder that `params` fit (width, blocks per group and vocabulary read from their shapes)."""
  n_blk = sum(1 for k in params if k.startswith('group_1_block_'))
  return DALLEEncoder(n_hid=params['input']['kernel'].shape[-1], n_blk_per_group=n_blk,
                      vocab_size=params['output']['kernel'].shape[-1])


def random_params(n_hid, n_blk_per_group, vocab_size, seed=0):
  """A randomly initialized tokenizer (numpy, fixed seed; the reference's init: kernels N(0, 1 / fan_in), zero
  biases): a stand-in for demos and tests, not a trained dVAE. Drawn on the host: XLA compiles a jit'd init of
  this conv stack for tens of seconds on a CPU."""
  model = DALLEEncoder(n_hid=n_hid, n_blk_per_group=n_blk_per_group, vocab_size=vocab_size)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))['params']
  rng = np.random.default_rng(seed)
  def init(path, s):
    if path[-1].key == 'bias':
      return np.zeros(s.shape, np.float32)
    return (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32)
  return jax.tree_util.tree_map_with_path(init, shapes)


def missing_weights_message(field='config.model.tokenizer_path'):
  return (f"{field}: CAE needs the DALL-E tokenizer's encoder weights, a local file: download {WEIGHTS_URL}, "
          f"convert it with `python -m jssl.convert.dalle dalle_encoder.pth dalle_encoder.npz` (or give the .pth "
          f"itself, read with torch) and set {field}=dalle_encoder.npz ({field}=random: a random tokenizer, for "
          f"demos and tests only)")


def load_npz(path):
  """The params tree from a .npz of '/'-joined paths ('group_1_block_1/conv_1/kernel')."""
  with np.load(path) as f:
    return flax.traverse_util.unflatten_dict({tuple(k.split('/')): f[k] for k in f.files})


def save_npz(path, params):
  np.savez(path, **{'/'.join(k): np.asarray(v, np.float32)
                    for k, v in flax.traverse_util.flatten_dict(params).items()})


def load_tokenizer(path, field='config.model.tokenizer_path'):
  """numpy params of the tokenizer at `path` (.npz, or a torch .pth/.pt state dict), checked against the
  architecture; a missing path or file is a one-line ValueError naming `field`."""
  if not path:
    raise ValueError(missing_weights_message(field))
  if not os.path.isfile(path):
    raise ValueError(f'{field}: no such file {path!r}. ' + missing_weights_message(field).split(': ', 1)[1])
  if path.endswith('.npz'):
    params = load_npz(path)
  else:
    params = from_torch_file(path)
  check_params(params, path)
  return params


_PATTERNS = [
    (re.compile(r'blocks\.input\.([wb])'), lambda m: 'input'),
    (re.compile(r'blocks\.group_(\d+)\.block_(\d+)\.id_path\.([wb])'), lambda m: f'group_{m[1]}_block_{m[2]}/id_path'),
    (re.compile(r'blocks\.group_(\d+)\.block_(\d+)\.res_path\.conv_(\d+)\.([wb])'),
     lambda m: f'group_{m[1]}_block_{m[2]}/conv_{m[3]}'),
    (re.compile(r'blocks\.output\.conv\.([wb])'), lambda m: 'output'),
]


def from_torch_state(state_dict, path='state dict'):
  """{torch name: array} -> the jssl params tree (numpy); every key must map:

    torch (under an optional 'state_dict' and any prefix)      jssl
    blocks.input.{w,b}                                         input/{kernel,bias}
    blocks.group_{g}.block_{i}.id_path.{w,b}                   group_{g}_block_{i}/id_path/{kernel,bias}
    blocks.group_{g}.block_{i}.res_path.conv_{j}.{w,b}         group_{g}_block_{i}/conv_{j}/{kernel,bias}
    blocks.output.conv.{w,b}                                   output/{kernel,bias}
  Kernels go from OIHW to HWIO."""
  params, unexpected = {}, []
  for key, value in state_dict.items():
    name = key[key.find('blocks.'):] if 'blocks.' in key else key
    for pattern, module_of in _PATTERNS:
      m = pattern.fullmatch(name)
      if m:
        value = np.asarray(value, np.float32)
        leaf = 'kernel' if name.endswith('.w') else 'bias'
        node = params
        for part in module_of(m).split('/'):
          node = node.setdefault(part, {})
        node[leaf] = value.transpose(2, 3, 1, 0) if leaf == 'kernel' else value
        break
    else:
      unexpected.append(key)
  if unexpected:
    raise ConversionError(f'{path}: not a DALL-E encoder state dict: unexpected keys: {", ".join(unexpected)}')
  return params


def from_torch_file(path):
  """The params of a torch .pth/.pt file (torch needed)."""
  from jssl.convert.io import read_checkpoint
  content = read_checkpoint(path)
  state_dict = content.get('state_dict', content) if isinstance(content, dict) else content
  if not isinstance(state_dict, dict):
    raise ConversionError(f'{path}: expected a state dict (a mapping of tensors), got {type(state_dict).__name__}')
  return from_torch_state(state_dict, path)


def check_params(params, path):
  """The params must be exactly those of `encoder_for(params)`: names and shapes."""
  if 'input' not in params or 'output' not in params:
    raise ConversionError(f'{path}: not a DALL-E encoder (no input/output convs; has {", ".join(sorted(params))})')
  model = encoder_for(params)
  want = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))['params']
  want = {'/'.join(k): v.shape for k, v in flax.traverse_util.flatten_dict(want).items()}
  got = {'/'.join(k): np.shape(v) for k, v in flax.traverse_util.flatten_dict(params).items()}
  if want != got:
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    raise ConversionError(f'{path}: not a DALL-E encoder of width {model.n_hid}: missing keys: '
                          f'{", ".join(missing) or "none"}; unexpected keys: {", ".join(unexpected) or "none"}; '
                          f'wrong shapes: {", ".join(f"{k} {got[k]} != {want[k]}" for k in wrong) or "none"}')
