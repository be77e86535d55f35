"""The fields every config under configs/ starts from (`base_config`), loading a config file, and validation that
turns a bad config into a one-line error. The recipes (data blocks, augmentations, demo settings) live in
configs/common.py: library code does not depend on them."""
import sys

import ml_collections
from absl import flags

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def base_config(method='', backbone='', batch_size=256, epochs=200) -> ml_collections.ConfigDict:
  """Every field a config has, at its default; a method config starts from
  `base_config('<method>', '<backbone>', batch_size=..., epochs=...)`."""
  c = ml_collections.ConfigDict()
  c.method = method
  c.seed = 0
  c.batch_size = batch_size           # global batch over all hosts and devices
  c.epochs = epochs
  c.total_steps = 0                   # > 0 overrides epochs
  c.dtype = 'float32'                 # compute dtype: float32 | bfloat16 (params stay float32)
  c.remat = False                     # rematerialize transformer blocks (memory for compute)
  c.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1})
  c.param_sharding = 'replicate'      # replicate | fsdp (shard params + optimizer state over the fsdp axis)
  c.log_every = 50
  # a step with NaN/inf loss or gradients is never applied; 'stop': the run ends with an error naming the step at the
  # next log or checkpoint (no checkpoint is written after it); 'skip': training goes on, counted in the metrics,
  # but a checkpoint whose steps since the last one were more than nonfinite_max_skipped skipped is not written:
  # the run ends with an error instead (1: never)
  c.nonfinite = 'stop'
  c.nonfinite_max_skipped = 0.5
  # a resume may change the run's length, learning rate, logging, checkpoints, evaluation, layout; other fields only
  # if named here (comma-separated fields or groups, e.g. 'seed,data.augment'); see jssl/train/workdir.py
  c.allow_changed = ''
  c.checkpoint = ml_collections.ConfigDict({'every': 1000, 'keep': 3, 'keep_every': 0, 'async_save': True})
  # what the evaluators (and the clustering methods' per-epoch features) read: center-cropped images, in batches
  c.eval = ml_collections.ConfigDict({
      'batch_size': 256, 'resize': 256, 'crop': 224, 'interpolation': 'bilinear',
      'feature_stage': -1,            # -1: the method's features; k >= 0: backbone output k pooled (ResNet 0..4)
  })
  # the evaluators a run calls (jssl/evaluate/evaluators.py): each every N steps (or every_epochs; 0: never) and
  # at the end (at_end; the trained backbone next to the random-init one)
  c.evals = ml_collections.ConfigDict({
      'knn': {'every': 0, 'every_epochs': 0, 'at_end': True, 'k': 20, 't': 0.07},
      # a linear probe on kNN's features (standardized, SGD, cosine lr)
      'quick_linear': {'every': 0, 'every_epochs': 0, 'at_end': False, 'epochs': 100, 'lr': 0.1},
  })
  c.backbone = ml_collections.ConfigDict({'name': backbone, 'kwargs': ml_collections.ConfigDict()})
  # start a fresh run from imported weights: a directory written by `python -m jssl.convert FILE DIR --backbone=…`
  # strict: every backbone leaf must be in it (False: load the shared leaves, keep the others' init; fine-tuning)
  # random_init: only the architecture of init.backbone, its weights left out (an evaluator's random-init baseline)
  c.init = ml_collections.ConfigDict({'backbone': '', 'strict': True, 'random_init': False})
  c.model = ml_collections.ConfigDict()
  c.optimizer = ml_collections.ConfigDict()
  c.schedule = ml_collections.ConfigDict({'name': 'cosine', 'warmup_epochs': 0., 'warmup_start_factor': 1e-3,
                                          'min_lr': 0.})
  return c


class ConfigError(Exception):
  """A user mistake in the command line or config: reported as one line, exit code 2."""


def check_config(config):
  """Names that select code (method, backbone, optimizer, ...) are checked before anything is built."""
  from jssl.methods.base import METHODS, DTYPES
  from jssl.models import BACKBONES
  from jssl import optim
  from jssl.data.sources import SOURCE_NAMES
  if not config.method:
    raise ConfigError('config.method is empty; valid: ' + ', '.join(sorted(METHODS)))
  if not config.backbone.name:
    raise ConfigError('config.backbone.name is empty: name a backbone, or point config.init.backbone at a pretrained '
                      'one (a jssl workdir or an imported backbone directory) to take its architecture')
  checks = [('config.method', config.method, METHODS), ('config.backbone.name', config.backbone.name, BACKBONES),
            ('config.dtype', config.dtype, DTYPES), ('config.optimizer.name', config.optimizer.name, optim.OPTIMIZERS),
            ('config.schedule.name', config.schedule.name, optim.SCHEDULES),
            ('config.param_sharding', config.param_sharding, ('replicate', 'fsdp')),
            ('config.nonfinite', config.get('nonfinite', 'stop'), ('stop', 'skip')),
            ('config.data.name', config.data.name, SOURCE_NAMES)]
  for field, value, valid in checks:
    if value not in valid:
      raise ConfigError(f"{field}: unknown value '{value}'; valid: {', '.join(sorted(valid))}")
  if config.batch_size <= 0:
    raise ConfigError(f'config.batch_size must be positive, got {config.batch_size}')
  if not 0 <= config.get('nonfinite_max_skipped', 0.5) <= 1:
    raise ConfigError(f'config.nonfinite_max_skipped must be a fraction in [0, 1], got '
                      f'{config.nonfinite_max_skipped}')


def fail(message: str):
  print(f'jssl: error: {message}', file=sys.stderr, flush=True)
  sys.exit(2)


def parse_flags(argv):
  """absl flag parsing whose failures (unknown config field, wrong type, bad variant) are one line, exit 2;
  --help / -h / --helpfull print the usage and exit 0."""
  argv = [argv[0]] + ['--help' if a == '-h' else a for a in argv[1:]]  # -h as argparse tools have it
  try:
    return flags.FLAGS(argv)
  except SystemExit as e:  # only absl's help flags exit while parsing, with 1 after printing what was asked
    sys.exit(0 if e.code == 1 else e.code)
  except flags.Error as e:
    message = str(e).strip()
    if 'Traceback' in message:  # the config file's get_config raised: keep its own last line
      message = f"{message.split(':', 1)[0]}: {message.splitlines()[-1].strip()}"
    fail(' '.join(message.split()))
  except (AttributeError, KeyError) as e:  # ml_collections: override of a field the config does not have
    fail(_unknown_field_message(argv) or f'bad config override: {e}')


def load_config_file(spec: str):
  """`path.py[:arg]` -> get_config(arg), as config_flags does."""
  import importlib.util
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_jssl_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _unknown_field_message(argv):
  """Names the first --config.a.b override whose path the config lacks, and the fields valid there."""
  spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if spec is None:
    return None
  config = load_config_file(spec)
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    node, path = config, 'config'
    for key in arg[2:].split('=', 1)[0].split('.')[1:]:
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        valid = ', '.join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else '(not a group)'
        return f"unknown config field '{path}.{key}' in {arg.split('=', 1)[0]}; valid fields of {path}: {valid}"
      node, path = node[key], f'{path}.{key}'
  return None


def config_value(holder):
  """The parsed --config; config_flags defers a missing/unreadable file's error to this access."""
  try:
    config = holder.value
    if config is not None:
      config.get('method')  # a lazy placeholder raises here when the file could not be loaded
  except OSError:
    spec = flags.FLAGS['config'].serialize().split('=', 1)[-1]
    fail(f"--config: cannot read config file '{spec.partition(':')[0]}'; e.g. --config=configs/simclr.py:demo")
  if config is None:
    fail('--config is required, e.g. --config=configs/simclr.py:demo')
  return config
