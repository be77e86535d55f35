"""Checkpoints: an orbax CheckpointManager saving the TrainState (sharded, async) together with the grain
data-iterator position, keeping the last N plus every K-th step, and resuming from the latest that reads back: a
step whose files are truncated or missing (a crash or a full disk while writing, a file deleted by hand) is moved to
WORKDIR/checkpoints_corrupt/<step> with a warning, and the one before it is restored."""
import os
import sys

import grain.python as grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath


class CheckpointError(FileNotFoundError):
  """No checkpoint of a workdir that has some could be restored (a FileNotFoundError, so that the tools that report
  a workdir without checkpoints in one line report this too)."""


def make_manager(workdir: str, max_to_keep: int = 3, keep_period: int | None = None,
                 async_save: bool = True, create: bool = True) -> ocp.CheckpointManager:
  """create=False: WORKDIR/checkpoints is not made until a save (readers leave a workdir as they found it)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, keep_period=keep_period,
                                         enable_async_checkpointing=async_save, create=create)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options,
                               item_names=('state', 'data_iter'))


def save(manager: ocp.CheckpointManager, step: int, state, data_iter=None, force=False) -> bool:
  items = {'state': ocp.args.StandardSave(state)}
  if data_iter is not None:
    items['data_iter'] = grain.PyGrainCheckpointSave(data_iter)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def restore(manager: ocp.CheckpointManager, abstract_state, data_iter=None, step: int | None = None):
  """Restores into `abstract_state` (ShapeDtypeStructs with shardings) and, in place, the data iterator: `step`,
  or else the latest step that reads back on every process, moving the ones after it aside (see module doc)."""
  items = {'state': ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    items['data_iter'] = grain.PyGrainCheckpointRestore(data_iter)
  if step is not None:
    return manager.restore(step, args=ocp.args.Composite(**items))['state'], step
  failed = []
  for step in sorted(manager.all_steps(), reverse=True):
    restored, error = _try_restore(manager, step, ocp.args.Composite(**items))
    if jax.process_count() > 1:  # all processes resume from the same step, or the collectives would not match
      from jax.experimental import multihost_utils
      failed_on = multihost_utils.process_allgather(np.int32(restored is None))
      if failed_on.any() and error is None:
        error = f'process {int(np.argmax(failed_on))} could not read it'
    if error is None:
      for bad_step, bad_error in failed:  # only once an older step restores: see below
        _set_aside(manager, bad_step, bad_error)
      return restored['state'], step
    failed.append((step, error))
  # Nothing restores: rather a config that does not match the run (another model or optimizer) than every step
  # corrupt, so nothing is moved; the first error says which
  step, error = failed[0]
  raise CheckpointError(f'no checkpoint in {manager.directory} could be restored into this config (step {step}: '
                        f'{error}); a run resumes only with the config it was started with; nothing was moved')


def _try_restore(manager, step, args):
  """(restored, None), or (None, the error's first line) where the step does not read back."""
  try:
    return manager.restore(step, args=args), None
  except Exception as e:  # orbax/tensorstore raise many types (ValueError, FileNotFoundError, XlaRuntimeError, ...)
    first = str(e).strip().splitlines()[0] if str(e).strip() else ''
    return None, f'{type(e).__name__}: {first[:300]}'


def _corrupt_dir(manager):
  return os.path.join(os.path.dirname(str(manager.directory)), 'checkpoints_corrupt')


def _set_aside(manager, step, error):
  """Moves an unreadable step out of orbax's sight (nothing is deleted): left in place, it would be tried again at
  every start, and a later save of the same step number would collide with it."""
  src = epath.Path(str(manager.directory)) / str(step)
  dest = epath.Path(_corrupt_dir(manager)) / str(step)
  for i in range(1, 1000):  # the same step may go bad twice
    if not dest.exists():
      break
    dest = dest.parent / f'{step}.{i}'
  print(f'jssl: warning: checkpoint {src} could not be restored ({error}); moved to {dest}, an older step '
        f'restored', file=sys.stderr, flush=True)
  if jax.process_index() == 0:
    dest.parent.mkdir(parents=True, exist_ok=True)
    src.rename(dest)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f'jssl checkpoint {step} set aside')
  manager.reload()


def restore_data_iter(manager: ocp.CheckpointManager, step: int, data_iter):
  """Restores only the data iterator's position (in place), e.g. into an iterator built after the state was
  restored because the epoch's sampling plan depends on it."""
  manager.restore(step, args=ocp.args.Composite(data_iter=grain.PyGrainCheckpointRestore(data_iter)))


def restore_params(workdir: str, abstract_state, step: int | None = None):
  """Only the TrainState of a workdir's checkpoint (for evaluation / export): `step`, or else the latest that reads
  back. Read-only: an unreadable step is only warned about (the next training run on the workdir moves it aside)."""
  manager = make_manager(workdir, async_save=False, create=False)
  args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
  if step is not None:
    return manager.restore(step, args=args)['state'], step
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f'no checkpoint in {os.path.join(workdir, "checkpoints")}')
  for step in steps:
    restored, error = _try_restore(manager, step, args)
    if error is None:
      return restored['state'], step
    print(f'jssl: warning: checkpoint {manager.directory / str(step)} could not be restored ({error}); trying '
          f'the step before it', file=sys.stderr, flush=True)
  raise CheckpointError(f'no checkpoint in {manager.directory} could be restored')
