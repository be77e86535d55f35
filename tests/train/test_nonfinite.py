"""NaN/inf steps: never applied; config.nonfinite='stop' ends the run naming the step before a checkpoint can hold
it, 'skip' goes on and counts them."""
import json
import os

from tests.conftest import run_python

SMALL = ['--config.backbone.kwargs.num_filters=8', '--config.model.neck_hid_channels=32',
         '--config.model.neck_out_channels=16', '--config.batch_size=32', '--config.eval.at_end=False']

# The SimCLR demo with its loss poisoned (NaN) at the given 1-based steps.
POISONED = r'''
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jssl.config import load_config_file
from jssl.train import loop
from tests.conftest import apply_overrides
workdir, mode, bad_steps = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
c = load_config_file('configs/simclr.py:demo')
apply_overrides(c, {'backbone.kwargs.num_filters': 8, 'model.neck_hid_channels': 32, 'model.neck_out_channels': 16,
                    'batch_size': 32, 'total_steps': 10, 'log_every': 1, 'checkpoint.every': 4,
                    'eval.at_end': False, 'nonfinite': mode})
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
except loop.NonFiniteError as e:
  print('STOPPED', e)
'''


def poisoned(tmp_path, mode, bad_steps):
  return run_python(['-c', POISONED, str(tmp_path / 'work'), mode, json.dumps(bad_steps)]).stdout


def checkpoint_steps(workdir):
  return sorted(int(p) for p in os.listdir(workdir / 'checkpoints') if p.isdigit())


def test_a_nonfinite_step_changes_nothing_but_the_step(tmp_path):
  assert 'UNCHANGED' in poisoned(tmp_path, 'unit', [3])


def test_stop_names_the_step_and_the_last_checkpoint_stays_the_last_good_one(tmp_path):
  out = poisoned(tmp_path, 'stop', [6])
  line = [l for l in out.splitlines() if l.startswith('STOPPED')][0]
  assert 'NaN/inf at step 6' in line and 'last checkpoint (step 4)' in line, line
  assert checkpoint_steps(tmp_path / 'work') == [4]   # stopped at the step-6 log, before step 8 was saved
  assert 'step 5/10' in out and 'step 6/10' not in out


def test_skip_goes_on_and_counts(tmp_path):
  out = poisoned(tmp_path, 'skip', [3, 7])
  assert 'COUNT 2 3' in out
  assert 'step 2/10' in out and 'skipped' not in [l for l in out.splitlines() if 'step 2/10' in l][0]
  assert [l for l in out.splitlines() if 'step 10/10' in l][0].endswith('skipped 2 non-finite steps')
  assert checkpoint_steps(tmp_path / 'work')[-1] == 10


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
