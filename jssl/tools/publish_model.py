"""Publish a trained model (MMSelfSup's publish_model): one file with the backbone's variables (--whole_model: also
the neck's and head's) and the run's config, without the optimizer state or anything else training-only (EMA
targets, queues, memory banks, RNG, data position), named OUT-<first 8 hex digits of its sha256>.safetensors.

  python -m jssl.tools.publish_model runs/simclr published/simclr_r50    # published/simclr_r50-1a2b3c4d.safetensors
  python -m jssl.tools.publish_model runs/mae published/mae_vitb --whole_model --step=1000

jssl reads it back directly: `--config.init.backbone=published/simclr_r50-1a2b3c4d.safetensors`,
`jssl.pretrained.load_pretrained_backbone(path)`, or `jssl.convert.published.read_published(path)` for the config and
every module (the layout is in jssl/convert/published.py). For PyTorch (torchvision / timm / mmpretrain /
detectron2 names) use `python -m jssl.convert WORKDIR FILE --format=...` instead.
"""
import os
import sys

import numpy as np

from jssl.tools import cli

PROG = 'jssl.tools.publish_model'


def module_variables(state, name: str) -> dict:
  """{'params': ..., ['batch_stats': ...]} of one top-level module of a TrainState, as numpy arrays."""
  import jax
  variables = {'params': state.params[name]}
  for collection, trees in (state.model_state or {}).items():
    if name in trees:
      variables[collection] = trees[name]
  return jax.tree.map(np.asarray, variables)


def publish(workdir: str, out: str, step: int | None = None, whole_model: bool = False):
  """Writes the published file; returns (its path, the checkpoint step, the modules written)."""
  from jssl.convert.published import write_published
  from jssl.pretrained import load_workdir
  config, state, step = load_workdir(workdir, step)
  names = ['backbone'] + ([n for n in state.params if n != 'backbone'] if whole_model else [])
  modules = {name: module_variables(state, name) for name in names}
  return write_published(out, modules, config, step), int(step), modules


def parse_args(argv):
  p = cli.Parser(prog=PROG, description=__doc__)
  p.add_argument('workdir', help='a jssl workdir (config.json + checkpoints/)')
  p.add_argument('out', help='the file name without the hash: OUT-<hash8>.safetensors is written')
  p.add_argument('--step', type=int, default=None, help='checkpoint step (default: the latest)')
  p.add_argument('--whole_model', action='store_true', help='also the neck/head (every top-level module)')
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)

  def run(args):
    import jax
    path, step, modules = publish(args.workdir, args.out, args.step, args.whole_model)
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(modules))
    print(f'wrote {path}: {", ".join(modules)} of {args.workdir} at step {step} ({count:,} values, '
          f'{os.path.getsize(path) / 2**20:.1f} MiB)')
  cli.run(PROG, run, args)


if __name__ == '__main__':
  main()
