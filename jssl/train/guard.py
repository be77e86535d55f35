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
import threading

import jax
from absl import logging


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
