"""Save, kill, resume: a run killed mid-way (no clean-up, like kill -9) and restarted on its workdir ends with
exactly the params of an uninterrupted run (params, optimizer, BN state, method state such as queues / EMA
targets / memory banks, step, RNG and data order restored).

tests/methods/test_every_method.py calls `assert_resume_exact(tmp_path, config, overrides)` for every method of the
registry, with the overrides its test file gives (MoCo v2's, killed three times, and DeepCluster's, mid-epoch, in
CI)."""
import json

import numpy as np

from tests.conftest import run_python

# Killed (kill_at > 0) right after the train step that reaches global step kill_at, once the checkpoint before it is
# committed (orbax saves in the background; waiting makes the resume point known). Nothing else is flushed or closed.
SCRIPT = r'''
import json, os, sys, time
import jax, numpy as np
from jssl.config import load_config_file
from tests.conftest import apply_overrides
from jssl.train import loop

workdir, kill_at, config_path, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
c = load_config_file(config_path)
apply_overrides(c, overrides)
c.checkpoint.every = 4
c.log_every = 5
c.evals.knn.at_end = c.evals.quick_linear.at_end = False
trainer = loop.Trainer(c, workdir)
if kill_at:
  step_fn = trainer.train_step
  committed = os.path.join(workdir, 'checkpoints', str((kill_at - 1) // c.checkpoint.every * c.checkpoint.every))
  def killing_step(state, batch):
    out = step_fn(state, batch)
    if int(out[0].step) == kill_at:
      for _ in range(600):
        if os.path.isdir(committed):  # orbax renames its temporary directory to the step once the save is complete
          break
        time.sleep(0.1)
      os._exit(137)  # no checkpoint flush, no clean-up: as abrupt as kill -9
    return out
  trainer.train_step = killing_step
state, _ = trainer.run()
np.savez(os.path.join(workdir, 'final_state.npz'), *[np.asarray(x) for x in jax.tree.leaves(
    (state.params, state.model_state, state.opt_state, state.method_state, state.rng))])
'''
EVERY = 4  # SCRIPT's checkpoint interval


def final_leaves(workdir):
  with np.load(workdir / 'final_state.npz') as f:
    return [f[k] for k in sorted(f.files, key=lambda k: int(k.split('_')[1]))]


def assert_resume_exact(tmp_path, config_path, overrides, kill_at=(15,)):
  """`overrides` must set total_steps and a batch size. The run is killed after each global step in `kill_at`
  (increasing, each past a checkpoint the previous launch writes; checkpoints every 4 steps), resumed each time from
  its last checkpoint, and must end bitwise equal to an uninterrupted run."""
  args = lambda workdir, kill: ['-c', SCRIPT, str(workdir), str(kill), config_path, json.dumps(overrides)]
  full, killed = tmp_path / 'full', tmp_path / 'killed'
  run_python(args(full, 0), optimize=True)
  resumed_from = None
  for kill in kill_at:
    resume = (kill - 1) // EVERY * EVERY  # the killed step's own checkpoint is never written
    assert (resumed_from or 0) < resume and kill < overrides['total_steps'], kill_at
    proc = run_python(args(killed, kill), check=False, optimize=True)
    assert proc.returncode == 137, proc.stderr[-2000:]
    if resumed_from is not None:
      assert f'resumed from step {resumed_from} ' in proc.stdout
    resumed_from = resume
  proc = run_python(args(killed, 0), optimize=True)
  assert f'resumed from step {resumed_from} ' in proc.stdout
  a, b = final_leaves(full), final_leaves(killed)
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
