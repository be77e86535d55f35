"""NaN/inf steps: never applied; config.nonfinite='stop' ends the run naming the step before a checkpoint can hold
it and whether the last checkpoint is intact (checked), 'skip' goes on and counts them, but stops before saving a
state whose steps since the last checkpoint were mostly skipped."""
import json
import os

from tests.conftest import NO_EVALS_ARGS, run_python

SMALL = ['--config.backbone.kwargs.num_filters=8', '--config.model.neck_hid_channels=32',
         '--config.model.neck_out_channels=16', '--config.batch_size=32', *NO_EVALS_ARGS]

# The SimCLR demo with its loss poisoned (NaN) at the given 1-based steps.
POISONED = r'''
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jssl.config import load_config_file
from jssl.train import guard, loop
from tests.conftest import NO_EVALS, apply_overrides
workdir, mode, bad_steps = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
c = load_config_file('configs/simclr.py:demo')
apply_overrides(c, {'backbone.kwargs.num_filters': 8, 'model.neck_hid_channels': 32, 'model.neck_out_channels': 16,
                    'batch_size': 32, 'total_steps': 10, 'log_every': 1, 'checkpoint.every': 4,
                    **NO_EVALS, 'nonfinite': mode})
trainer = loop.Trainer(c, workdir)
real_loss = trainer.method.loss
def poisoned_loss(params, model_state, method_state, batch, rng, step):
  loss, aux = real_loss(params, model_state, method_state, batch, rng, step)
  return jnp.where(jnp.isin(step + 1, jnp.asarray(bad_steps)), jnp.nan, loss), aux
trainer.method.loss = poisoned_loss
if mode == 'unit':  # one good step, one bad step: the bad one changes nothing but the step and the counters
  trainer.config.nonfinite = 'skip'
  state = trainer.init_state(jax.random.PRNGKey(0))
  it = iter(trainer.make_loader())
  from jssl.data.loader import to_global
  for _ in range(bad_steps[0] - 1):
    state, _ = trainer.train_step(state, to_global(next(it), trainer.mesh))
  before = [np.array(x, copy=True) for x in jax.tree.leaves((state.params, state.opt_state, state.model_state))]
  state, metrics = trainer.train_step(state, to_global(next(it), trainer.mesh))
  after = [np.array(x, copy=True) for x in jax.tree.leaves((state.params, state.opt_state, state.model_state))]
  assert all(np.array_equal(a, b) for a, b in zip(before, after))
  assert int(state.step) == bad_steps[0]   # (metrics['loss'] is the method's own, unpoisoned, here)
  assert int(state.nonfinite_steps) == 1 and int(state.first_nonfinite_step) == bad_steps[0]
  state, _ = trainer.train_step(state, to_global(next(it), trainer.mesh))  # the next good step applies again
  assert not all(np.array_equal(a, np.asarray(b)) for a, b in zip(after, jax.tree.leaves(state.params)))
  print('UNCHANGED')
  sys.exit(0)
try:
  state, _ = trainer.run()
  print('COUNT', int(state.nonfinite_steps), int(state.first_nonfinite_step))
except guard.NonFiniteError as e:
  print('STOPPED', e)
'''


def poisoned(tmp_path, mode, bad_steps, stderr=False):
  proc = run_python(['-c', POISONED, str(tmp_path / 'work'), mode, json.dumps(bad_steps)])
  return (proc.stdout, proc.stderr) if stderr else proc.stdout


def checkpoint_steps(workdir):
  return sorted(int(p) for p in os.listdir(workdir / 'checkpoints') if p.isdigit())


def test_a_nonfinite_step_changes_nothing_but_the_step(tmp_path):
  assert 'UNCHANGED' in poisoned(tmp_path, 'unit', [3])


def test_stop_names_the_step_and_the_last_checkpoint_stays_the_last_good_one(tmp_path):
  out = poisoned(tmp_path, 'stop', [6])
  line = [l for l in out.splitlines() if l.startswith('STOPPED')][0]
  assert 'NaN/inf at step 6' in line and 'last checkpoint (step 4)' in line, line
  assert 'is intact (read back, its arrays match their checksums)' in line, line
  assert checkpoint_steps(tmp_path / 'work') == [4]   # stopped at the step-6 log, before step 8 was saved
  assert 'step 5/10' in out and 'step 6/10' not in out


def test_skip_goes_on_and_counts(tmp_path):
  out, err = poisoned(tmp_path, 'skip', [3, 7], stderr=True)
  assert 'COUNT 2 3' in out
  assert 'step 2/10' in out and 'skipped' not in [l for l in out.splitlines() if 'step 2/10' in l][0]
  assert [l for l in out.splitlines() if 'step 10/10' in l][0].endswith('skipped 2 non-finite steps')
  assert checkpoint_steps(tmp_path / 'work')[-1] == 10
  # each checkpoint that holds skipped steps says so, once
  assert [l for l in err.splitlines() if l.startswith('jssl: warning: checkpoint')] == [
      f'jssl: warning: checkpoint {s} holds 1 of the 4 steps since step {s - 4} skipped (NaN/inf loss or gradients; '
      f'not applied)' for s in (4, 8)]


def test_skip_stops_before_saving_a_state_whose_steps_were_mostly_skipped(tmp_path):
  out = poisoned(tmp_path, 'skip', [5, 6, 7])  # 3 of the 4 steps after the step-4 checkpoint
  line = [l for l in out.splitlines() if l.startswith('STOPPED')][0]
  assert line == (f'STOPPED 3 of the 4 steps since step 4 had NaN/inf loss or gradients and were skipped (more than '
                  f'config.nonfinite_max_skipped=0.5): stopped without saving step 8; the last checkpoint (step 4) in '
                  f'{tmp_path / "work" / "checkpoints"} is intact (read back, its arrays match their checksums)'), line
  assert checkpoint_steps(tmp_path / 'work') == [4] and not (tmp_path / 'work' / 'results.json').exists()


def test_stop_checks_the_last_checkpoint_before_calling_it_intact(tmp_path):
  """The end of a failed run says which checkpoint a rerun resumes from as a fact: read back and checked."""
  import jax
  import pytest
  from jssl import checkpoint
  from jssl.config import load_config_file
  from jssl.train import guard, loop
  from tests.conftest import apply_overrides
  from tests.test_checkpoint import flip_a_bit
  config = apply_overrides(load_config_file('configs/simclr.py:demo'), {
      'backbone.kwargs.num_filters': 8, 'model.neck_hid_channels': 32, 'model.neck_out_channels': 16,
      'batch_size': 32, 'total_steps': 10})
  trainer = loop.Trainer(config, str(tmp_path), num_records=320)
  manager = checkpoint.make_manager(str(tmp_path), async_save=False)
  diverged = lambda: trainer.init_state(jax.random.PRNGKey(0)).replace(nonfinite_steps=jax.numpy.int32(1),
                                                                       first_nonfinite_step=jax.numpy.int32(5))
  for step in (2, 4):
    checkpoint.save(manager, step, trainer.init_state(jax.random.PRNGKey(step)))
  with pytest.raises(guard.NonFiniteError, match=r'at step 5; the last checkpoint \(step 4\) in .* is intact \(read '
                     r'back, its arrays match their checksums\); --config.nonfinite=skip'):
    trainer.check_finite(diverged(), manager, 0)
  # the disk damaged it while the run went on
  name = 'params.backbone.layer4_1.conv1.kernel'
  assert flip_a_bit(tmp_path / 'checkpoints' / '4', name) == [name.replace('.', '/')]
  with pytest.raises(guard.NonFiniteError) as e:
    trainer.check_finite(diverged(), manager, 0)
  assert (f'the last checkpoint (step 4) in {tmp_path / "checkpoints"} is damaged (checksum mismatch: '
          f'{name.replace(".", "/")} differs from what was saved); step 2 is intact') in str(e.value), str(e.value)
  flip_a_bit(tmp_path / 'checkpoints' / '2', name)
  with pytest.raises(guard.NonFiniteError, match=r'and so is every older one: no checkpoint in .* is intact; '):
    trainer.check_finite(diverged(), manager, 0)
  assert checkpoint_steps(tmp_path) == [2, 4]  # nothing moved: the next run does that
  manager.close()


def test_diverging_run_ends_with_one_line_naming_the_step(tmp_path):
  """A real divergence through the entry point: lr 1e30 makes the first update overflow."""
  workdir = tmp_path / 'work'
  proc = run_python(['-m', 'jssl.main', '--config=configs/simclr.py:demo', f'--workdir={workdir}', *SMALL,
                     '--config.total_steps=6', '--config.log_every=2', '--config.optimizer.lr=1e30'], check=False)
  assert proc.returncode == 1, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('jssl: error: loss or gradients are NaN/inf at step 2;') and 'nonfinite=skip' in last, last
  assert 'Traceback' not in proc.stderr
  assert not (workdir / 'checkpoints').exists() or not checkpoint_steps(workdir)


def test_diverging_run_under_skip_ends_with_an_error_not_a_chance_level_model(tmp_path):
  """The same divergence under nonfinite=skip: every step after the first is skipped, so the run learns nothing;
  it ends at its final checkpoint with exit 1, and writes neither that checkpoint nor results.json."""
  workdir = tmp_path / 'work'
  proc = run_python(['-m', 'jssl.main', '--config=configs/simclr.py:demo', f'--workdir={workdir}', *SMALL,
                     '--config.total_steps=6', '--config.log_every=2', '--config.optimizer.lr=1e30',
                     '--config.nonfinite=skip'], check=False)
  assert proc.returncode == 1, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last == (f'jssl: error: 5 of the 6 steps since step 0 had NaN/inf loss or gradients and were skipped (more '
                  f'than config.nonfinite_max_skipped=0.5): stopped without saving step 6; no checkpoint was written '
                  f'in {workdir / "checkpoints"}'), last
  assert 'Traceback' not in proc.stderr
  assert not checkpoint_steps(workdir) and not (workdir / 'results.json').exists()
