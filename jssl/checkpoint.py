"""Checkpoints: an orbax CheckpointManager saving the TrainState (sharded, async) together with the grain
data-iterator position, keeping the last N plus every K-th step, and resuming from the latest."""
import os

import grain.python as grain
import orbax.checkpoint as ocp


def make_manager(workdir: str, max_to_keep: int = 3, keep_period: int | None = None,
                 async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, keep_period=keep_period,
                                         enable_async_checkpointing=async_save, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options,
                               item_names=('state', 'data_iter'))


def save(manager: ocp.CheckpointManager, step: int, state, data_iter=None, force=False) -> bool:
  items = {'state': ocp.args.StandardSave(state)}
  if data_iter is not None:
    items['data_iter'] = grain.PyGrainCheckpointSave(data_iter)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def restore(manager: ocp.CheckpointManager, abstract_state, data_iter=None, step: int | None = None):
  """Restores into `abstract_state` (ShapeDtypeStructs with shardings) and, in place, the data iterator."""
  step = manager.latest_step() if step is None else step
  items = {'state': ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    items['data_iter'] = grain.PyGrainCheckpointRestore(data_iter)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return restored['state'], step


def restore_data_iter(manager: ocp.CheckpointManager, step: int, data_iter):
  """Restores only the data iterator's position (in place), e.g. into an iterator built after the state was
  restored because the epoch's sampling plan depends on it."""
  manager.restore(step, args=ocp.args.Composite(data_iter=grain.PyGrainCheckpointRestore(data_iter)))


def restore_params(workdir: str, abstract_state, step: int | None = None):
  """Only the TrainState of a workdir's checkpoint (for evaluation / export)."""
  manager = make_manager(workdir, async_save=False)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {os.path.join(workdir, "checkpoints")}')
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
  return restored['state'], step
