"""The DALL-E tokenizer's encoder weights: torch state dict (mmselfsup's `dalle_encoder.pth`, the module names of
mmpretrain's `DALL-E` encoder) -> jssl's .npz, which CAE reads without torch.

  python -m jssl.convert.dalle dalle_encoder.pth dalle_encoder.npz

The names and layouts are jssl.models.dalle.from_torch_state's (its docstring has the table). Failures are one line
on stderr, exit code 2, and nothing is written.
"""
import os
import sys

from jssl.convert.errors import ConversionError


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
  params = dalle.from_torch_file(src)
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
