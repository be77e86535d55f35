"""Parameter count per module (MMSelfSup's count_parameters): backbone, neck, head and each of their top-level
submodules (ResNet stages, ViT / Swin blocks), trainable and non-trainable, as a table.

  python -m jssl.tools.param_count configs/mae.py:vit_l           # a config: built abstractly, nothing computed
  python -m jssl.tools.param_count runs/simclr [--step=N]           # a workdir: its checkpoint's shapes
  python -m jssl.tools.param_count imported/r50                     # python -m jssl.convert FILE DIR's backbone
  python -m jssl.tools.param_count published/mae_vitb-1a2b3c4d.safetensors   # python -m jssl.tools.publish_model

Trainable: the params the optimizer updates. Non-trainable: BatchNorm statistics (batch_stats) and params frozen
by config.optimizer.frozen_names (MoCo v3's patch embedding). A torch model's sum(p.numel() for p in
model.parameters()) is trainable + frozen params (its BN running statistics are buffers). The method's state (EMA
targets, queues, memory banks) is listed apart and left out of the total; a config's memory banks are sized for
--num_records (default: ImageNet-1k's 1,281,167 training images).
"""
import json
import os
import re
import sys

import numpy as np

from jssl.tools import cli

PROG = 'jssl.tools.param_count'
IMAGENET_TRAIN_RECORDS = 1281167
NUMBERED = re.compile(r'^(.+)_(\d+)$')  # blocks_3, layer2_1: members of one family


def sizes(tree):
  """A tree of arrays / ShapeDtypeStructs / orbax metadata -> the same tree of element counts."""
  import jax
  return jax.tree.map(lambda x: int(np.prod(x.shape)), tree)


def split_count(collection: str, tree, frozen_names=(), prefix=()) -> tuple[int, int]:
  """(trainable, non-trainable) element counts of one collection's tree of sizes: only params not frozen train."""
  import jax
  trainable = non_trainable = 0
  for path, n in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = list(prefix) + [getattr(k, 'key', str(k)) for k in path]
    if collection == 'params' and not any(k in frozen_names for k in keys):
      trainable += n
    else:
      non_trainable += n
  return trainable, non_trainable


def natural_key(name: str):
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', name)]


def module_rows(name: str, variables: dict, frozen_names=(), expand=False) -> list[dict]:
  """Rows {'module', 'depth', 'trainable', 'non_trainable'} of one module ({collection: tree of sizes}) and of
  its top-level submodules. Unless `expand`, numbered siblings share one row: a ResNet stage (layer2_0..3), a
  ViT's blocks (blocks_0..11); up to 4 numbered siblings with no digit before the number are stages themselves
  (Swin's layers_0..3) and keep a row each."""
  def count(child=None):
    total = np.zeros(2, np.int64)
    for collection, tree in variables.items():
      if child is None:
        total += split_count(collection, tree, frozen_names)
      elif isinstance(tree, dict) and child in tree:
        total += split_count(collection, tree[child], frozen_names, (child,))
    return [int(x) for x in total]

  trainable, non_trainable = count()
  rows = [{'module': name, 'depth': 0, 'trainable': trainable, 'non_trainable': non_trainable}]
  children = sorted({c for tree in variables.values() if isinstance(tree, dict) for c in tree}, key=natural_key)
  families = {}
  for child in children:
    match = NUMBERED.match(child)
    families.setdefault(match.group(1) if match and not expand else child, []).append(child)
  for prefix, members in list(families.items()):  # a few numbered stages (Swin's layers_0..3): one row each
    if len(members) <= 4 and not prefix[-1].isdigit():
      del families[prefix]
      families.update({m: [m] for m in members})
  for members in sorted(families.values(), key=lambda m: natural_key(m[0])):
    counts = [count(m) for m in members]
    label = members[0]
    if len(members) > 1:
      totals = {sum(c) for c in counts}
      each = f' x {totals.pop():,}' if len(totals) == 1 else ''
      label = f'{members[0]}..{NUMBERED.match(members[-1]).group(2)} ({len(members)}{each})'
    rows.append({'module': label, 'depth': 1, 'trainable': sum(c[0] for c in counts),
                 'non_trainable': sum(c[1] for c in counts)})
  return rows


def by_module(params, model_state) -> dict:
  """{module: {collection: tree}} from a TrainState's params and model_state (batch_stats, ...)."""
  modules = {}
  for name in params:
    modules[name] = {'params': params[name]}
    for collection, trees in (model_state or {}).items():
      if isinstance(trees, dict) and name in trees:
        modules[name][collection] = trees[name]
  return dict(sorted(modules.items(), key=lambda kv: (kv[0] != 'backbone', kv[0])))


# --- what can be counted ----------------------------------------------------------------------------------------
def from_config(config, num_records=IMAGENET_TRAIN_RECORDS):
  """(modules, method_state) of a config's TrainState built abstractly (jax.eval_shape: nothing is computed)."""
  import jax
  from jssl.config import check_config
  from jssl.train.loop import Trainer
  check_config(config)
  state = Trainer(config, None, num_records=num_records, devices=jax.devices()[:1]).abstract_state
  return by_module(sizes(state.params), sizes(state.model_state)), sizes(state.method_state)


def from_workdir(workdir: str, step=None):
  """(config, modules, method_state, step) from the shapes a workdir's checkpoint records (no array is read): of
  `step`, or else of the latest step whose metadata reads back."""
  from jssl import checkpoint, pretrained
  config = pretrained.load_config(workdir)
  pretrained.check_step(workdir, step)
  tree, step = checkpoint.saved_shapes(workdir, step)
  state = sizes({k: tree.get(k) or {} for k in ('params', 'model_state', 'method_state')})
  return config, by_module(state['params'], state['model_state']), state['method_state'], step


def from_published(path: str):
  """(config, modules) from a published file's header."""
  import ml_collections
  from flax import traverse_util
  from jssl.convert.published import published_metadata, published_shapes
  shapes = published_shapes(path)
  config = ml_collections.ConfigDict(json.loads(published_metadata(path)['config']))
  modules = traverse_util.unflatten_dict({k: int(np.prod(s)) for k, s in shapes.items()}, sep='/')
  return config, dict(sorted(modules.items(), key=lambda kv: (kv[0] != 'backbone', kv[0])))


def count(spec: str, step=None, num_records=IMAGENET_TRAIN_RECORDS):
  """(title, modules, method_state, frozen_names) of a config spec ('configs/mae.py:vit_l'), a workdir, an
  imported backbone directory or a published file."""
  from jssl import pretrained
  from jssl.config import ConfigError, load_config_file
  method_state = {}
  if os.path.isdir(spec) and os.path.isfile(os.path.join(spec, pretrained.BACKBONE_JSON)):
    name, kwargs = pretrained.pretrained_arch(spec)
    modules = {'backbone': sizes(pretrained.backbone_template(name, kwargs))}
    return f'{spec}: imported backbone {name} {kwargs}', modules, method_state, ()
  if os.path.isdir(spec):
    config, modules, method_state, step = from_workdir(spec, step)
    where = f'workdir, step {step}'
  elif os.path.isfile(spec) and spec.endswith('.safetensors'):
    config, modules = from_published(spec)
    where = 'published model'
  else:
    path = spec.partition(':')[0]
    if not path.endswith('.py') or not os.path.isfile(path):
      raise ConfigError(f'{spec}: neither a config file (path.py[:variant]), a workdir, an imported backbone '
                        'directory nor a published .safetensors file')
    try:
      config = load_config_file(spec)
    except ValueError as e:  # an unknown variant
      raise ConfigError(f'{spec}: {e}') from None
    modules, method_state = from_config(config, num_records)
    where = 'config'
  kwargs = config.backbone.get('kwargs', {})
  title = f'{spec} ({where}): {config.method}, backbone {config.backbone.name} {dict(kwargs)}'
  return title, modules, method_state, tuple(config.optimizer.get('frozen_names', ()))


# --- the table --------------------------------------------------------------------------------------------------
def table(title, modules, method_state, frozen_names=(), expand=False) -> tuple[str, list[dict]]:
  rows = [row for name, variables in modules.items() for row in module_rows(name, variables, frozen_names, expand)]
  top = [r for r in rows if r['depth'] == 0]
  total = {'module': 'total', 'depth': 0, 'trainable': sum(r['trainable'] for r in top),
           'non_trainable': sum(r['non_trainable'] for r in top)}
  rows.append(total)
  if method_state:
    rows += [dict(r, module=r['module'].replace('method_state', 'method_state (not in the total)'))
             for r in module_rows('method_state', {'method_state': method_state}, expand=expand)]
  width = max(len('  ' * r['depth'] + r['module']) for r in rows) + 2
  lines = [title, f'{"module":<{width}}{"trainable":>15}{"non-trainable":>15}{"total":>15}']
  for r in rows:
    if r['module'] == 'total' or r['module'].startswith('method_state'):
      lines.append('-' * (width + 45))
    label = '  ' * r['depth'] + r['module']
    lines.append(f'{label:<{width}}{r["trainable"]:>15,}{r["non_trainable"]:>15,}'
                 f'{r["trainable"] + r["non_trainable"]:>15,}')
  lines.append(f'{(total["trainable"] + total["non_trainable"]) / 1e6:.2f} M values, '
               f'{total["trainable"] / 1e6:.2f} M trainable; non-trainable: BatchNorm statistics'
               + (f', params frozen by config.optimizer.frozen_names ({", ".join(frozen_names)})'
                  if frozen_names else ''))
  return '\n'.join(lines), rows


def parse_args(argv):
  p = cli.Parser(prog=PROG, description=__doc__)
  p.add_argument('spec', help='configs/X.py[:variant], a workdir, an imported backbone directory or a published '
                              '.safetensors file')
  p.add_argument('--step', type=int, default=None, help='workdir checkpoint step (default: the latest)')
  p.add_argument('--num_records', type=int, default=IMAGENET_TRAIN_RECORDS,
                 help="config: training-set size that sizes memory banks (NPID, ODC)")
  p.add_argument('--expand', action='store_true', help='one row per numbered submodule (every block)')
  p.add_argument('--json', default=None, help='also write the rows to this JSON file')
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)

  def run(args):
    title, modules, method_state, frozen = count(args.spec, args.step, args.num_records)
    text, rows = table(title, modules, method_state, frozen, args.expand)
    print(text)
    if args.json:
      with open(args.json, 'w') as f:
        json.dump({'spec': args.spec, 'rows': rows}, f, indent=2)
  cli.run(PROG, run, args)


if __name__ == '__main__':
  main()
