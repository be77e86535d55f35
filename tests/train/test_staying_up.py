"""Staying up (docs/staying_up.md): each test provokes the fault on a real `python -m jssl.main` and checks the
outcome. SIGTERM (one process, or one of two jax.distributed processes) -> checkpoint at an agreed step, exit 0,
bitwise-exact resume; a second run on a locked workdir -> one-line error, exit 2, and no stale lock after kill -9;
a truncated latest checkpoint, or one with a flipped bit -> warning, set aside, resume from the step before; kill -9
while a checkpoint is written -> the restart says what it found and where it starts."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import NO_EVALS_ARGS, ROOT, run_python, subprocess_env
from tests.train.test_distributed import free_port

SMALL = ['--config=configs/simclr.py:demo', '--config.backbone.kwargs.num_filters=8',
         '--config.model.neck_hid_channels=32', '--config.model.neck_out_channels=16', '--config.batch_size=64',
         *NO_EVALS_ARGS, '--config.evals.knn.every=0', '--config.log_every=2']


def main_args(workdir, *args):
  return ['-m', 'jssl.main', f'--workdir={workdir}', *SMALL, *args]


def start(args, stderr_path, optimize=False, **env):
  """`python args...` in the background, as run_python would run it; stdout piped, stderr to a file."""
  return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=subprocess_env(1, optimize, **env),
                          stdout=subprocess.PIPE, stderr=open(stderr_path, 'w'), text=True)


def read_until(proc, prefix):
  """stdout lines up to and including the first that starts with `prefix`."""
  lines = []
  while not lines or not lines[-1].startswith(prefix):
    line = proc.stdout.readline()
    assert line, f'ended (rc {proc.wait()}) before printing a line starting with {prefix!r}: {lines}'
    lines.append(line)
  return lines


def finish(proc, lines=(), timeout=300):
  out = ''.join(lines) + proc.stdout.read()
  proc.wait(timeout=timeout)
  return out


def state_leaves(workdir, step):
  import jax
  import orbax.checkpoint as ocp
  with ocp.StandardCheckpointer() as c:
    return [np.asarray(x) for x in jax.tree.leaves(c.restore(workdir / 'checkpoints' / str(step) / 'state'))]


def assert_equal_leaves(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def steps_in(workdir, sub='checkpoints'):
  return sorted(int(p.name) for p in (workdir / sub).iterdir() if p.name.isdigit())


def preempted_step(out, workdir):
  lines = [l for l in out.splitlines() if l.startswith('preempted at step')]
  assert len(lines) == 1, out
  step = int(lines[0].split()[3].rstrip(':'))
  assert lines[0] == (f'preempted at step {step}: checkpoint saved in {workdir / "checkpoints" / str(step)}; '
                      f'run the same command again to resume')
  return step


@pytest.mark.slow  # three runs of the demo: 2-2.5 min on 2 shared CPU cores
def test_sigterm_saves_exits_0_and_resumes_exactly(tmp_path):
  args = lambda w: main_args(w, '--config.total_steps=40', '--config.checkpoint.every=100')  # no periodic save
  work, full = tmp_path / 'work', tmp_path / 'full'
  proc = start(args(work), tmp_path / 'err', optimize=True)  # 120 steps in all: the code's speed matters
  lines = read_until(proc, 'step ')
  printed = int(lines[-1].split()[1].split('/')[0])
  proc.send_signal(signal.SIGTERM)
  out = finish(proc, lines)
  assert proc.returncode == 0, (tmp_path / 'err').read_text()[-3000:]
  step = preempted_step(out, work)
  assert printed <= step < 40 and steps_in(work) == [step]  # the step in flight finished, then it stopped
  out = run_python(args(work), optimize=True).stdout
  assert f'resumed from step {step}' in out and 'step 40/40' in out
  run_python(args(full), optimize=True)
  assert_equal_leaves(state_leaves(work, 40), state_leaves(full, 40))


@pytest.mark.slow  # two jax.distributed processes: 2.5-3.5 min on 2 shared CPU cores
def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(tmp_path):
  work = tmp_path / 'work'
  env = dict(JAX_COORDINATOR_ADDRESS=f'localhost:{free_port()}', JAX_NUM_PROCESSES='2')
  procs = [start(main_args(work, '--config.total_steps=60', '--config.checkpoint.every=100'), tmp_path / f'err{i}',
                 JAX_PROCESS_ID=str(i), **env) for i in range(2)]
  lines = read_until(procs[0], 'step ')  # both are training: only process 0 prints
  procs[1].send_signal(signal.SIGTERM)  # the runtime tells process 0, and both agree on the step to stop at
  outs = [finish(procs[0], lines), finish(procs[1])]
  for i, p in enumerate(procs):
    assert p.returncode == 0, (tmp_path / f'err{i}').read_text()[-3000:]
  step = preempted_step(outs[0], work)
  assert step < 60 and steps_in(work) == [step]
  # each process saved its data position in that same step
  assert sorted(os.listdir(work / 'checkpoints' / str(step) / 'data_iter')) == [
      'commit_success.txt', 'process_0-of-2.json', 'process_1-of-2.json']


def test_sigterm_sets_the_stop_flag_and_the_handler_is_put_back():
  from jssl.train.guard import StopOnSigterm
  previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
  try:
    with StopOnSigterm() as stop:
      assert not stop(1)
      os.kill(os.getpid(), signal.SIGTERM)  # without the handler, SIG_IGN: the flag would stay down
      assert stop(2)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
  finally:
    signal.signal(signal.SIGTERM, previous)


HOLD = r'''
import sys, time
from jssl.train import guard
lock = guard.lock_workdir(sys.argv[1])
print('locked', flush=True)
time.sleep(float(sys.argv[2]))
'''


def test_second_run_on_a_locked_workdir_fails_and_kill_9_leaves_no_stale_lock(tmp_path):
  holder = start(['-c', HOLD, str(tmp_path), '600'], tmp_path / 'err')
  read_until(holder, 'locked')
  proc = run_python(main_args(tmp_path, '--config.total_steps=2'), check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith('jssl: error:')]
  assert len(errors) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert f'workdir {tmp_path} is in use' in errors[0] and f'pid {holder.pid}' in errors[0], errors[0]
  assert str(tmp_path / '.lock') in errors[0]
  assert not (tmp_path / 'checkpoints').exists()  # it stopped before writing anything
  holder.kill()  # SIGKILL: no clean-up runs, the kernel drops the lock
  holder.wait()
  assert 'locked' in run_python(['-c', HOLD, str(tmp_path), '0']).stdout


def test_unreadable_steps_are_set_aside_until_one_restores(tmp_path, capsys):
  import jax.numpy as jnp
  from jssl import checkpoint
  manager = checkpoint.make_manager(str(tmp_path), max_to_keep=5, async_save=False)
  for step in (1, 2, 3):
    checkpoint.save(manager, step, {'w': jnp.full((100,), float(step))})
  (tmp_path / 'checkpoints' / '3' / 'state' / 'manifest.ocdbt').unlink()  # a deleted file
  data = max((tmp_path / 'checkpoints' / '2' / 'state').rglob('d/*'), key=lambda p: p.stat().st_size)
  os.truncate(data, 10)  # a truncated one
  abstract = {'w': jnp.zeros((100,))}
  # evaluation / export: read-only, the workdir stays as it is
  state, step = checkpoint.restore_params(str(tmp_path), abstract)
  assert step == 1 and steps_in(tmp_path) == [1, 2, 3]
  np.testing.assert_array_equal(state['w'], np.ones(100))
  assert capsys.readouterr().err.count('could not be restored') == 2
  # training: moved aside, the next save of the same step does not collide
  state, step = checkpoint.restore(manager, abstract)
  assert step == 1 and steps_in(tmp_path) == [1] and steps_in(tmp_path, 'checkpoints_corrupt') == [2, 3]
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 2 and err[0].startswith(f'jssl: warning: checkpoint {tmp_path / "checkpoints" / "3"} could '
                                             f'not be restored (') and 'checkpoints_corrupt/3' in err[0]
  checkpoint.save(manager, 2, {'w': jnp.full((100,), 2.)})
  state, step = checkpoint.restore(manager, abstract)
  assert step == 2 and float(state['w'][0]) == 2.
  # a config that does not match the run (here another shape): every step fails, so none is moved
  with pytest.raises(checkpoint.CheckpointError, match=f'no checkpoint in {tmp_path / "checkpoints"} could be '
                     r'restored into this config \(step 2: .*nothing was moved'):
    checkpoint.restore(manager, {'w': jnp.zeros((50,))})
  assert steps_in(tmp_path) == [1, 2]
  (tmp_path / 'checkpoints' / '2' / 'state' / 'manifest.ocdbt').unlink()  # the same step going bad twice
  state, step = checkpoint.restore(manager, abstract)
  assert step == 1 and sorted(os.listdir(tmp_path / 'checkpoints_corrupt')) == ['2', '2.1', '3']
  (tmp_path / 'checkpoints' / '1' / 'state' / 'manifest.ocdbt').unlink()
  with pytest.raises(checkpoint.CheckpointError, match='nothing was moved'):
    checkpoint.restore(manager, abstract)
  assert steps_in(tmp_path) == [1]  # the only one, unreadable: left for the user to look at
  manager.close()


@pytest.mark.heavy  # two runs of the demo; in CI test_unreadable_steps_are_set_aside_until_one_restores provokes the same
def test_truncated_latest_checkpoint_is_set_aside_and_the_previous_restored(tmp_path, capsys):
  args = main_args(tmp_path, '--config.total_steps=12', '--config.checkpoint.every=4')
  run_python(args)
  assert steps_in(tmp_path) == [4, 8, 12]
  expected = state_leaves(tmp_path, 12)
  data = max((tmp_path / 'checkpoints' / '12' / 'state').rglob('d/*'), key=lambda p: p.stat().st_size)
  os.truncate(data, 1000)  # e.g. the disk filled up while it was written
  proc = run_python(args)
  warnings = [l for l in proc.stderr.splitlines() if l.startswith('jssl: warning:')]
  assert len(warnings) == 1 and f'checkpoint {tmp_path / "checkpoints" / "12"} could not be restored' in \
      warnings[0], proc.stderr[-3000:]
  assert proc.stderr.splitlines() == warnings, proc.stderr[-3000:]  # no traceback of the reads left behind
  assert 'resumed from step 8' in proc.stdout and 'step 12/12' in proc.stdout
  assert steps_in(tmp_path, 'checkpoints_corrupt') == [12] and steps_in(tmp_path) == [4, 8, 12]
  assert_equal_leaves(state_leaves(tmp_path, 12), expected)  # steps 9..12 again, exactly

  # evaluation / export read the workdir without changing it: they warn and take the step before
  from jssl import checkpoint
  from jssl.config import load_config_file
  from jssl.train.loop import Trainer
  from tests.conftest import apply_overrides
  (tmp_path / 'checkpoints' / '12' / 'state' / 'manifest.ocdbt').unlink()
  config = apply_overrides(load_config_file('configs/simclr.py:demo'), {
      'backbone.kwargs.num_filters': 8, 'model.neck_hid_channels': 32, 'model.neck_out_channels': 16,
      'batch_size': 64, 'total_steps': 12})
  _, step = checkpoint.restore_params(str(tmp_path), Trainer(config, str(tmp_path)).abstract_state)
  assert step == 8 and steps_in(tmp_path) == [4, 8, 12]
  assert f'checkpoint {tmp_path / "checkpoints" / "12"} could not be restored' in capsys.readouterr().err


def test_a_flipped_bit_in_the_optimizer_state_is_detected_and_the_step_before_restored(tmp_path):
  """The issue's case: bits flipped on disk in the newest checkpoint's optimizer state restored without a word (the
  run then went non-finite at every rerun). Now the restart names the array, sets the step aside and recomputes it
  from the one before, exactly."""
  from tests.test_checkpoint import flip_a_bit
  args = main_args(tmp_path, '--config.total_steps=8', '--config.checkpoint.every=4')
  run_python(args)
  assert steps_in(tmp_path) == [4, 8]
  expected = state_leaves(tmp_path, 8)
  name = 'opt_state.3.trace.backbone.layer4_1.conv1.kernel'  # LARS's momentum
  assert flip_a_bit(tmp_path / 'checkpoints' / '8', name) == [name.replace('.', '/')]  # orbax alone reads it back
  proc = run_python(args)
  warnings = [l for l in proc.stderr.splitlines() if l.startswith('jssl: warning:')]
  assert warnings == [f'jssl: warning: checkpoint {tmp_path / "checkpoints" / "8"} could not be restored (checksum '
                      f'mismatch: {name.replace(".", "/")} differs from what was saved); moved to '
                      f'{tmp_path / "checkpoints_corrupt" / "8"}, an older step restored'], proc.stderr[-3000:]
  assert 'resumed from step 4' in proc.stdout and 'step 8/8' in proc.stdout
  assert steps_in(tmp_path, 'checkpoints_corrupt') == [8] and steps_in(tmp_path) == [4, 8]
  assert_equal_leaves(state_leaves(tmp_path, 8), expected)


# `python -m jssl.main ARGS`, SIGKILLed by itself in the middle of its first checkpoint write: its data are written
# into orbax's temporary directory, which is not yet renamed to the step's
KILLED_WHILE_SAVING = r'''
import os, runpy, signal, sys
import orbax.checkpoint as ocp
async def killed(self, *args, **kwargs):
  os.kill(os.getpid(), signal.SIGKILL)
ocp.path.atomicity.AtomicRenameTemporaryPath.finalize = killed
sys.argv = ['jssl.main', *sys.argv[1:]]
runpy.run_module('jssl.main', run_name='__main__')
'''


def test_kill_9_while_a_checkpoint_is_written_says_what_it_found_and_where_it_starts(tmp_path):
  args = main_args(tmp_path, '--config.total_steps=4', '--config.checkpoint.every=4')[1:]  # without '-m'
  proc = run_python(['-c', KILLED_WHILE_SAVING, *args[1:]], check=False)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  unfinished = tmp_path / 'checkpoints' / '4.orbax-checkpoint-tmp'
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == [unfinished.name]
  proc = run_python(['-m', *args])
  warnings = [l for l in proc.stderr.splitlines() if l.startswith('jssl: warning:')]
  assert warnings == [f'jssl: warning: {unfinished}: an unfinished write of step 4, left by a run killed while '
                      f'saving it; it is not used and is removed; no complete checkpoint exists, so the run starts '
                      f'from step 0'], proc.stderr[-3000:]
  assert 'resumed from' not in proc.stdout and 'step 2/4' in proc.stdout
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['4']
