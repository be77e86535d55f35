"""Save, kill, resume: a run killed mid-way (no clean-up, like kill -9) and restarted on its workdir ends with
exactly the params of an uninterrupted run (params, optimizer, BN state, method state such as queues / EMA
targets / memory banks, step, RNG and data order restored).

Each method's own test file calls `assert_resume_exact(tmp_path, config, overrides)`."""
import json

import numpy as np
import pytest

from tests.conftest import run_python

SCRIPT = r'''
import json, os, sys
import jax, numpy as np
from jssl.config import load_config_file
from tests.conftest import apply_overrides
from jssl.train import loop

workdir, kill_after, config_path, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
c = load_config_file(config_path)
apply_overrides(c, overrides)
c.checkpoint.every = 4
c.log_every = 5
c.eval.at_end = False
c.eval.every = 0
trainer = loop.Trainer(c, workdir)
if kill_after:
  step_fn, calls = trainer.train_step, [0]
  def killing_step(state, batch):
    out = step_fn(state, batch)
    calls[0] += 1
    if calls[0] == kill_after:
      jax.block_until_ready(out)
      os._exit(137)  # no checkpoint flush, no clean-up: as abrupt as kill -9
    return out
  trainer.train_step = killing_step
state, _ = trainer.run()
np.savez(os.path.join(workdir, 'final_state.npz'), *[np.asarray(x) for x in jax.tree.leaves(
    (state.params, state.model_state, state.opt_state, state.method_state, state.rng))])
'''


def final_leaves(workdir):
  with np.load(workdir / 'final_state.npz') as f:
    return [f[k] for k in sorted(f.files, key=lambda k: int(k.split('_')[1]))]


def assert_resume_exact(tmp_path, config_path, overrides, kill_after=15):
  """`overrides` must set total_steps (> kill_after) and a batch size; the killed run resumes from the last
  checkpoint (every 4 steps) and must end bitwise equal to the uninterrupted one."""
  args = lambda workdir, kill: ['-c', SCRIPT, str(workdir), str(kill), config_path, json.dumps(overrides)]
  full, killed = tmp_path / 'full', tmp_path / 'killed'
  run_python(args(full, 0))
  proc = run_python(args(killed, kill_after), check=False)
  assert proc.returncode == 137, proc.stderr[-2000:]
  steps = sorted(int(p.name) for p in (killed / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps and max(steps) < overrides['total_steps']
  proc = run_python(args(killed, 0))
  assert 'resumed from step' in proc.stdout
  a, b = final_leaves(full), final_leaves(killed)
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


@pytest.mark.heavy  # MoCo v2's test runs this same case (batch 64, 30 steps) with a queue and an EMA encoder too
def test_killed_run_resumes_to_identical_params(tmp_path):
  # batch 64: 22 steps per epoch of digits, so the 30-step run crosses an epoch boundary
  assert_resume_exact(tmp_path, 'configs/simclr.py:demo', {
      'backbone.kwargs.num_filters': 8, 'model.neck_hid_channels': 32, 'model.neck_out_channels': 16,
      'batch_size': 64, 'total_steps': 30})
