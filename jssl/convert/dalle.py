"""The DALL-E tokenizer's encoder weights: torch state dict (mmselfsup's `dalle_encoder.pth`, the module names of
mmpretrain's `DALL-E` encoder) -> jssl's .npz, which CAE reads without torch.

  python -m jssl.convert.dalle dalle_encoder.pth dalle_encoder.npz

  torch (under an optional 'state_dict' and any prefix)      jssl (jssl/models/dalle.py)
  blocks.input.{w,b}                                         input/{kernel,bias}
  blocks.group_{g}.block_{i}.id_path.{w,b}                   group_{g}_block_{i}/id_path/{kernel,bias}
  blocks.group_{g}.block_{i}.res_path.conv_{j}.{w,b}         group_{g}_block_{i}/conv_{j}/{kernel,bias}
  blocks.output.conv.{w,b}                                   output/{kernel,bias}
Kernels go from OIHW to HWIO. Failures are one line on stderr, exit code 2, and nothing is written.
"""
import os
import re
import sys

import numpy as np

from jssl.convert.errors import ConversionError

_PATTERNS = [
    (re.compile(r'blocks\.input\.([wb])'), lambda m: 'input'),
    (re.compile(r'blocks\.group_(\d+)\.block_(\d+)\.id_path\.([wb])'), lambda m: f'group_{m[1]}_block_{m[2]}/id_path'),
    (re.compile(r'blocks\.group_(\d+)\.block_(\d+)\.res_path\.conv_(\d+)\.([wb])'),
     lambda m: f'group_{m[1]}_block_{m[2]}/conv_{m[3]}'),
    (re.compile(r'blocks\.output\.conv\.([wb])'), lambda m: 'output'),
]


def from_torch_state(state_dict, path='state dict'):
  """{torch name: array} -> the jssl params tree (numpy); every key must map."""
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
  from jssl.convert.io import read_checkpoint
  content = read_checkpoint(path)
  state_dict = content.get('state_dict', content) if isinstance(content, dict) else content
  if not isinstance(state_dict, dict):
    raise ConversionError(f'{path}: expected a state dict (a mapping of tensors), got {type(state_dict).__name__}')
  return from_torch_state(state_dict, path)


def main(argv):
  from jssl.tools.cli import Parser
  p = Parser(prog='jssl.convert.dalle', description=__doc__)
  p.add_argument('src', help="the torch state dict (mmselfsup's dalle_encoder.pth)")
  p.add_argument('dst', help='the .npz to write')
  args = p.parse_args(argv)
  src, dst = args.src, args.dst
  from jssl.models import dalle  # after parsing: --help starts without jax
  if not dst.endswith('.npz'):
    raise ConversionError(f'{dst}: the output is an .npz file; usage: python -m jssl.convert.dalle IN.pth OUT.npz')
  params = from_torch_file(src)
  dalle.check_params(params, src)
  if not os.path.isdir(os.path.dirname(os.path.abspath(dst))):
    raise ConversionError(f'{dst}: the directory {os.path.dirname(os.path.abspath(dst))} does not exist')
  tmp = dst[:-len('.npz')] + '.tmp.npz'
  try:
    dalle.save_npz(tmp, params)
    os.replace(tmp, dst)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  model = dalle.encoder_for(params)
  print(f'wrote {dst}: DALL-E encoder, n_hid {model.n_hid}, {model.n_blk_per_group} blocks per group, '
        f'vocabulary {model.vocab_size}')


if __name__ == '__main__':
  try:
    main(sys.argv[1:])
  except ConversionError as e:
    print(f'jssl.convert.dalle: error: {" ".join(str(e).split())}', file=sys.stderr, flush=True)
    sys.exit(2)
