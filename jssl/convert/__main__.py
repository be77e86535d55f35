"""Convert checkpoints between jssl and PyTorch.

  # jssl workdir -> PyTorch file (the file type follows from DST's extension, or --file_format)
  python -m jssl.convert runs/simclr r18.pth --format=torchvision
  python -m jssl.convert runs/simclr r18.pkl --format=detectron2
  python -m jssl.convert runs/mae vit.pth --format=mmpretrain --whole_model
  python -m jssl.convert runs/mae vit.safetensors --format=timm --step=1000

  # PyTorch file -> jssl backbone directory (backbone.json + orbax variables/), see load_imported_backbone
  python -m jssl.convert resnet50-0676ba61.pth imported/r50 --format=torchvision --backbone=resnet50
  python -m jssl.convert mae_pretrain_vit_base.pth imported/vitb --format=mae --backbone=vit_base \\
      --backbone_kwargs='{"img_size": 224}'

Any failure (wrong architecture, damaged file, unknown format) is one line on stderr, exit code 2, and
nothing is written. What can be told without the checkpoint (the destination's folder, the flags, a missing
PyTorch for a .pth/.safetensors file: `pip install -e '.[torch]'`) is checked before it is loaded; an import whose
--backbone_kwargs do not fit the file's shapes names the kwargs that do (`num_filters=32` for the demos' ResNet).
A sin-cos ViT takes its table layout from the file (MAE's or MoCo v3's / mmpretrain's, `sincos_layout`).
"""
import argparse
import json
import os
import re
import sys

from jssl.convert.errors import ConversionError


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    fail(message)


def shorten_key_lists(message: str, show: int = 12) -> str:
  """'missing keys: a, b, ... (300 keys)': a whole wrong architecture would otherwise be a 5 kB line."""
  def shorten(m):
    keys = m.group(2).split(', ')
    return m.group(0) if len(keys) <= show else f"{m.group(1)}{', '.join(keys[:show])}, ... ({len(keys)} keys)"
  return re.sub(r'((?:missing|unexpected) keys: )([^;]*)', shorten, message)


def fail(message: str):
  print(f'jssl.convert: error: {shorten_key_lists(" ".join(str(message).split()))}', file=sys.stderr, flush=True)
  sys.exit(2)


def parse_args(argv):
  p = _Parser(prog='python -m jssl.convert', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('src', help='a jssl workdir (has config.json), or a .pth/.pt/.bin/.pkl/.safetensors file')
  p.add_argument('dst', help='export: the file to write; import: the directory to create')
  p.add_argument('--format', required=True,
                 help='naming scheme: resnet: torchvision, mmpretrain, detectron2; '
                      'vit: timm, mmpretrain, mae, mocov3; swin: timm, mmpretrain')
  p.add_argument('--step', type=int, default=None, help='export: checkpoint step (default: latest)')
  p.add_argument('--whole_model', action='store_true',
                 help="export: also the neck/head/method state, under jssl's own names")
  p.add_argument('--file_format', choices=('pth', 'pkl', 'safetensors'), default=None,
                 help="export: file type when DST's extension does not say it")
  p.add_argument('--backbone', default=None, help='import: registry name, e.g. resnet50, vit_base')
  p.add_argument('--backbone_kwargs', default='{}', help='import: JSON kwargs, e.g. \'{"patch_size": 16}\'')
  p.add_argument('--interpolate_pos_embed', action='store_true',
                 help="import (ViT): resize the file's position embedding to the backbone's grid")
  return p.parse_args(argv)


def export(args):
  from jssl.convert import export_workdir
  if args.backbone or args.interpolate_pos_embed:
    fail('--backbone/--interpolate_pos_embed are for importing a file; a workdir knows its backbone')
  info = export_workdir(args.src, args.dst, args.format, step=args.step, whole_model=args.whole_model,
                        file_format=args.file_format)
  print(f'wrote {args.dst}: {info["num_tensors"]} tensors, {args.format} names, step {info["step"]} of {args.src}')


def import_(args):
  from jssl.convert import import_backbone_file, io
  from jssl.pretrained import save_imported_backbone
  if not args.backbone:
    fail('--backbone is required to import a file, e.g. --backbone=resnet50')
  if args.step is not None or args.whole_model or args.file_format:
    fail('--step/--whole_model/--file_format are for exporting a workdir')
  try:
    kwargs = json.loads(args.backbone_kwargs)
  except json.JSONDecodeError as e:
    fail(f'--backbone_kwargs is not JSON ({e}): {args.backbone_kwargs}')
  if not isinstance(kwargs, dict):
    fail(f'--backbone_kwargs must be a JSON object, got {args.backbone_kwargs}')
  # all that can be told without reading the file: before reading it
  io.check_destination(args.dst, directory=True)
  if not os.path.isfile(args.src) or not os.access(args.src, os.R_OK):
    fail(f'{args.src}: not a readable file')
  io.check_modules(args.src, io.read_file_type(args.src), reading=True)
  result = import_backbone_file(args.src, args.backbone, args.format, kwargs,
                                interpolate_pos_embed=args.interpolate_pos_embed)
  ignored = result['ignored']
  source = {'file': os.path.abspath(args.src), 'format': args.format, 'ignored': ignored}
  save_imported_backbone(args.dst, args.backbone, result['kwargs'], result['variables'], source)
  shown = ', '.join(ignored[:8]) + (f', ... ({len(ignored)} in all)' if len(ignored) > 8 else '')
  print(f'wrote {args.dst}: {args.backbone} from {args.src} ({args.format} names)'
        + ''.join(f'; {note}' for note in result['notes']) + (f'; ignored {shown}' if ignored else ''))


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  from absl import logging
  logging.set_verbosity(logging.WARNING)  # orbax's INFO chatter
  try:
    if os.path.isdir(args.src):
      if not os.path.isfile(os.path.join(args.src, 'config.json')):
        fail(f'{args.src}: a directory without config.json is not a jssl workdir')
      export(args)
    elif os.path.exists(args.src):
      import_(args)
    else:
      fail(f'{args.src}: no such file or directory')
  except ConversionError as e:
    fail(str(e))
  except OSError as e:  # unwritable destination, full disk, ...
    fail(f'{e.filename or args.dst}: {e.strerror or e}')


if __name__ == '__main__':
  main()
