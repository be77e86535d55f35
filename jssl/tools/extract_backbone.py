"""Extract the backbone of a trained model (MMSelfSup's extract_backbone_weights) as an imported-backbone directory
(backbone.json + variables/, what `python -m jssl.convert FILE DIR` writes), which a fine-tuning or evaluation run
starts from with `--config.init.backbone=DST`.

  python -m jssl.tools.extract_backbone runs/simclr backbones/simclr_r50 [--step=N]
  python -m jssl.tools.extract_backbone published/simclr_r50-1a2b3c4d.safetensors backbones/simclr_r50

SRC is a jssl workdir or a file written by `python -m jssl.tools.publish_model`. The PyTorch-side equivalent is
`python -m jssl.convert WORKDIR r50.pth --format=torchvision` (or mmpretrain / timm / detectron2 names).
"""
import os
import sys

from jssl.tools import cli

PROG = 'jssl.tools.extract_backbone'


def extract_backbone(src: str, dst: str, step: int | None = None) -> tuple[str, dict, list]:
  """Writes SRC's backbone to the directory `dst`; returns (backbone name, kwargs, names of the leaves left out:
  a method's own additions such as SimMIM's mask token)."""
  from jssl import pretrained
  from jssl.convert.errors import ConversionError
  dst_abs = os.path.abspath(dst)
  if os.path.exists(dst_abs) and (not os.path.isdir(dst_abs) or os.listdir(dst_abs)):  # before reading SRC
    raise ConversionError(f'{dst}: already exists and is not an empty directory')
  source = {'extracted_from': os.path.abspath(src)}
  if os.path.isdir(src):
    if not os.path.isfile(os.path.join(src, 'config.json')):
      raise ConversionError(f'{src}: not a jssl workdir (no config.json)')
    name, kwargs = pretrained.pretrained_arch(src)
    _, variables, step = pretrained.load_workdir_backbone(src, step)
    source['step'] = int(step)
  elif step is not None:
    raise ConversionError(f'--step is for a workdir; {src} holds one step')
  else:
    name, kwargs, variables = pretrained.load_pretrained_backbone(src)
  variables, left_out = pretrained.described_only(name, kwargs, variables)
  if left_out:  # the pretraining method's own params (SimMIM's mask token), not the backbone's
    source['left_out'] = left_out
  pretrained.save_imported_backbone(dst, name, kwargs, variables, source)
  return name, kwargs, left_out


def parse_args(argv):
  p = cli.Parser(prog=PROG, description=__doc__)
  p.add_argument('src', help='a jssl workdir, or a published .safetensors file')
  p.add_argument('dst', help='the directory to create (backbone.json + variables/)')
  p.add_argument('--step', type=int, default=None, help='workdir checkpoint step (default: the latest)')
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)

  def run(args):
    name, _, left_out = extract_backbone(args.src, args.dst, args.step)
    note = f' (left out, not the backbone\'s: {", ".join(left_out)})' if left_out else ''
    print(f'wrote {args.dst}: the {name} backbone of {args.src}{note}; start a run from it with '
          f'--config.init.backbone={args.dst}')
  cli.run(PROG, run, args)


if __name__ == '__main__':
  main()
