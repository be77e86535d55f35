"""Staying up: stop cleanly on SIGTERM (preemption, SLURM's --signal, `kill`), and one run per workdir.

`StopOnSigterm` answers "stop after this step?" the same on every process. One process: a Python SIGTERM handler
sets a flag. Several processes (jax.distributed): JAX's preemption sync manager, which `jax.distributed.initialize`
starts, catches SIGTERM in the runtime and agrees with the other processes on the first step all of them can
still reach (max step + 1); `reached_preemption_sync_point(step)` is then True on every process at that same step.
No Python handler is installed then: it would replace the runtime's and the notice would never be propagated.

`lock_workdir` takes a kernel lock (fcntl) on WORKDIR/.lock, held by the open file for the whole run: the kernel
drops it when the process ends, however it ends (kill -9 included), so it is never stale."""
import fcntl
import os
import signal
import socket
import sys
import threading

import jax
from absl import logging

from jssl import checkpoint


class WorkdirLocked(Exception):
  """Another live run holds the workdir."""


def lock_workdir(workdir: str):
  """Returns the open lock file (keep it for the run; closing it releases the lock), or None where there is no
  local lock to take (processes other than 0, gs:// and other non-local workdirs)."""
  if jax.process_index() != 0:
    return None
  if '://' in workdir:  # fcntl locks exist only on local / POSIX file systems
    logging.warning('workdir %s is not local: no lock against a second run on it', workdir)
    return None
  path = os.path.join(workdir, '.lock')
  f = open(path, 'a+')
  try:
    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.seek(0)
    holder = f.read().strip() or 'unknown'
    f.close()
    raise WorkdirLocked(f'workdir {workdir} is in use by another run ({holder}; lock {path}); wait for it to end '
                        f'or stop it, or use another --workdir') from None
  f.seek(0)
  f.truncate()
  f.write(f'host {socket.gethostname()}, pid {os.getpid()}\n')
  f.flush()
  return f


class StopOnSigterm:
  """`with StopOnSigterm() as stop: ... if stop(step): save and return` (call it after every step, on every
  process: the multi-process agreement counts the calls)."""

  def __enter__(self):
    self.requested, self.installed = False, False
    self.sync = jax.process_count() > 1
    if not self.sync and threading.current_thread() is threading.main_thread():  # Python allows no other
      self.previous, self.installed = signal.signal(signal.SIGTERM, self._handle), True
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __call__(self, step: int) -> bool:
    if self.sync:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def __exit__(self, *exc):
    if self.installed:  # None: a handler installed outside Python, which cannot be put back; the default then
      signal.signal(signal.SIGTERM, self.previous if self.previous is not None else signal.SIG_DFL)


class NonFiniteError(FloatingPointError):
  """A NaN/inf loss or gradient under config.nonfinite='stop', or too many of them skipped under 'skip'."""


def check_finite(config, state, manager, seen, abstract_state):
  """The run's count of NaN/inf steps (their updates were not applied). config.nonfinite='stop' ends the run at
  the first one, before any checkpoint holds a later step; 'skip' warns and goes on (see Saves.save)."""
  count = int(state.nonfinite_steps)
  if count > seen:
    first = int(state.first_nonfinite_step)
    if config.get('nonfinite', 'stop') == 'stop':
      raise NonFiniteError(f'loss or gradients are NaN/inf at step {first}; '
                           f'{last_checkpoint(manager, state, abstract_state)}; --config.nonfinite=skip skips such '
                           f'steps instead')
    logging.warning('skipped %d steps with NaN/inf loss or gradients (the first at step %d)', count, first)
  return count


def last_checkpoint(manager, state, abstract_state):
  """For a run that ends without saving: whether its last checkpoint is intact, checked (checkpoint.check_latest)
  once pending saves have landed. The run's own state is freed first: it is not saved, and the checkpoint is read
  back into the devices' memory beside it otherwise."""
  manager.wait_until_finished()
  for x in jax.tree.leaves(state):
    if not x.is_deleted():
      x.delete()
  return checkpoint.check_latest(manager, abstract_state)


class Saves:
  """The run's checkpoints. Under config.nonfinite='skip', a state whose steps since the last save (or the start
  of this run) were mostly skipped (more than config.nonfinite_max_skipped of them) is not saved: the run ends
  with an error instead, as under 'stop', since one that learns nothing is not a success; fewer skipped steps are
  named in a warning."""

  def __init__(self, config, manager, abstract_state, step, nonfinite):
    self.config, self.manager, self.abstract_state = config, manager, abstract_state
    self.since, self.skipped_before = step, nonfinite

  def save(self, step, state, data_iter, nonfinite, force=False):
    skipped, steps = nonfinite - self.skipped_before, step - self.since
    if skipped:
      limit = self.config.get('nonfinite_max_skipped', 0.5)
      if skipped > limit * steps:
        raise NonFiniteError(f'{skipped} of the {steps} steps since step {self.since} had NaN/inf loss or gradients '
                             f'and were skipped (more than config.nonfinite_max_skipped={limit}): stopped without '
                             f'saving step {step}; {last_checkpoint(self.manager, state, self.abstract_state)}')
      if jax.process_index() == 0:
        print(f'jssl: warning: checkpoint {step} holds {skipped} of the {steps} steps since step {self.since} skipped '
              f'(NaN/inf loss or gradients; not applied)', file=sys.stderr, flush=True)
    checkpoint.save(self.manager, step, state, data_iter, force=force)
    self.since, self.skipped_before = step, nonfinite

  def preempted(self, step, state, data_iter, nonfinite):
    """SIGTERM: this step's checkpoint (unless it was just saved), landed before the run exits."""
    if self.manager.latest_step() != step:
      self.save(step, state, data_iter, nonfinite, force=True)
    self.manager.wait_until_finished()
