"""Save, kill, resume: a run killed mid-way (no clean-up, like kill -9) and restarted on its workdir ends with
exactly the params of an uninterrupted run (params, optimizer, BN state, step, RNG and data order restored)."""
import numpy as np
import pytest

from tests.conftest import run_python

SCRIPT = r'''
import os, sys
import jax, numpy as np
from jssl.config import load_config_file
from jssl.train import loop

workdir, kill_after = sys.argv[1], int(sys.argv[2])
c = load_config_file('configs/simclr.py:demo')
c.backbone.kwargs.num_filters = 8
c.model.update({'neck_hid_channels': 32, 'neck_out_channels': 16})
c.batch_size = 64           # 22 steps per epoch of digits: the run crosses an epoch boundary
c.total_steps = 30
c.checkpoint.every = 4
c.log_every = 5
c.eval.at_end = False
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
np.savez(os.path.join(workdir, 'final_params.npz'),
         *[np.asarray(x) for x in jax.tree.leaves((state.params, state.model_state, state.opt_state))])
'''


def final_leaves(workdir):
  with np.load(workdir / 'final_params.npz') as f:
    return [f[k] for k in sorted(f.files, key=lambda k: int(k.split('_')[1]))]


@pytest.mark.slow
def test_killed_run_resumes_to_identical_params(tmp_path):
  full, killed = tmp_path / 'full', tmp_path / 'killed'
  run_python(['-c', SCRIPT, str(full), '0'])
  proc = run_python(['-c', SCRIPT, str(killed), '15'], check=False)
  assert proc.returncode == 137, proc.stderr[-2000:]
  steps = sorted(int(p.name) for p in (killed / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps and max(steps) < 30
  proc = run_python(['-c', SCRIPT, str(killed), '0'])
  assert 'resumed from step' in proc.stdout
  a, b = final_leaves(full), final_leaves(killed)
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
