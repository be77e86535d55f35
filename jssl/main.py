"""jssl entry point.

  python -m jssl.main --config=configs/simclr.py:demo --workdir=/tmp/simclr_demo
  python -m jssl.main --config=configs/mae.py --workdir=gs://bucket/mae --config.batch_size=512

Re-running on a workdir that holds a checkpoint resumes from it (checked against the run's config.json: a changed
length or learning rate is printed, a changed model, data or batch refused); SIGTERM saves a checkpoint and exits 0
(see docs/staying_up.md). Configuration mistakes (unknown field, wrong type, unknown method/backbone, missing data or
split, a batch the devices cannot split), a refused resume, a workdir in use by another run and an unreadable image
file end with one line on stderr and exit code 2, before anything is compiled or written where they can be; a NaN/inf
loss (config.nonfinite='stop') with one line naming the step and exit code 1.
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jssl.config import ConfigError, check_config, config_value, fail, parse_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/mae.py:demo.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory (or gs:// path) for checkpoints, logs and results.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                          "train: train (resuming if possible); eval: the latest checkpoint's kNN (k = 10, 20, "
                          "100, 200), or an evaluator's val top-1 / top-5.")


def maybe_initialize_distributed():
  """Multi-process launches join one JAX job: explicit JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES +
  JAX_PROCESS_ID (any cluster, e.g. several processes on one host), or what jax detects by itself
  (SLURM with several tasks, TPU pod workers)."""
  import jax
  env = os.environ
  if env.get('JAX_COORDINATOR_ADDRESS') and env.get('JAX_NUM_PROCESSES'):
    jax.distributed.initialize(coordinator_address=env['JAX_COORDINATOR_ADDRESS'],
                               num_processes=int(env['JAX_NUM_PROCESSES']),
                               process_id=int(env.get('JAX_PROCESS_ID', '0')))
  elif env.get('SLURM_NTASKS', '1') != '1' or env.get('TPU_WORKER_HOSTNAMES', '').count(',') > 0 \
      or env.get('JAX_COORDINATOR_ADDRESS'):
    jax.distributed.initialize()


def quiet_logs():
  """What a run prints unless --verbosity is given (-v 0: absl's INFO lines and format for everything): library
  INFO chatter off; jssl's own warnings as `jssl: warning: ...` lines, as its errors are; tensorboardX's warning
  about the NaN/inf values it is given off: with config.nonfinite='skip' jssl writes them knowingly, and the
  progress line and train/nonfinite_steps count those steps."""
  import logging as python_logging
  logging.set_verbosity(logging.WARNING)
  python_logging.getLogger('tensorboardX.x2num').setLevel(python_logging.ERROR)
  jssl_dir = os.path.dirname(os.path.abspath(__file__))
  absl_format = logging.get_absl_handler().python_handler.formatter

  class Plain(python_logging.Formatter):
    def format(self, record):
      if not record.pathname.startswith(jssl_dir):
        return absl_format.format(record)
      return f'jssl: {record.levelname.lower()}: {record.getMessage()}'
  logging.get_absl_handler().setFormatter(Plain())


def main(argv):
  del argv
  config = config_value(_CONFIG)
  if not flags.FLAGS['verbosity'].present:
    quiet_logs()
  if not _WORKDIR.value:
    fail('--workdir is required')
  if _MODE.value == 'eval':  # before anything is imported or built: seconds, and nothing written to the workdir
    from jssl.train.workdir import checkpoint_steps
    if not checkpoint_steps(_WORKDIR.value):
      fail(f'--workdir: no checkpoint in {os.path.join(_WORKDIR.value, "checkpoints")} to evaluate; train first '
           f'(--mode=train), or point --workdir at a trained run')
  from jssl.data.sources import CorruptImageError, DataNotFoundError
  from jssl.convert.errors import ConversionError
  from jssl.checkpoint import CheckpointError
  from jssl.train.guard import WorkdirLocked
  try:
    from jssl.pretrained import resolve_pretrained_backbone
    resolve_pretrained_backbone(config)  # evaluators take the architecture of config.init.backbone
    check_config(config)
    maybe_initialize_distributed()
    import jax
    if jax.process_index() != 0:
      logging.set_verbosity(logging.WARNING)
    from jssl.train.loop import Trainer
    if jax.process_index() == 0:  # the data, the model and its compiled init: seconds to a minute
      print(f'building {config.method} ({config.backbone.name}, {config.data.name} data) ...', flush=True)
    trainer = Trainer(config, _WORKDIR.value, mode=_MODE.value)
    if _MODE.value == 'train':
      trainer.run()
    else:
      from jssl import checkpoint
      try:
        state, step = checkpoint.restore_params(_WORKDIR.value, trainer.abstract_state)
      except FileNotFoundError as e:  # --mode=eval on a workdir that has not trained
        fail(f'--workdir: {e}')
      if jax.process_index() == 0:
        print(f'evaluating step {step} on the {config.data.val_split} split ...', flush=True)
      from jssl.evaluate import evaluators
      evaluators.evaluate_checkpoint(trainer, state, step)
  except (ConfigError, DataNotFoundError, ConversionError, WorkdirLocked, CheckpointError) as e:
    fail(str(e))
  except FloatingPointError as e:  # config.nonfinite='stop': one line naming the step, exit 1
    print(f'jssl: error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)
  except CorruptImageError as e:  # also raised in a grain worker: grain re-raises it here, message intact
    fail(f'{e} (set --config.data.skip_corrupt_images=True to train on with the next readable image instead)')
  except ValueError as e:  # unknown registry names raised while building (backbone kwargs, augment ops, ...)
    if str(e).startswith('config.') or 'valid:' in str(e):
      fail(str(e))
    raise


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
