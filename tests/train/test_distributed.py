"""Two real processes joined by jax.distributed on localhost run demo steps through the real entry point
(per-process data shards, global batches, cross-process BatchNorm and NT-Xent); one process fed the same global
batches ends with the same parameters."""
import glob
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, run_python

# Records every host-local batch the run consumes, then runs jssl.main as the user would.
MULTI = r'''
import os, sys
import numpy as np
from jssl.data import loader
record_dir, real_to_global, count = sys.argv[1], loader.to_global, [0]
def recording_to_global(batch, mesh, *a, **k):
  np.savez(os.path.join(record_dir, f'p{os.environ.get("JAX_PROCESS_ID", "0")}_s{count[0]}.npz'),
           index=batch['index'], **{f'v{i}': v for i, v in enumerate(batch['views'])})
  count[0] += 1
  return real_to_global(batch, mesh, *a, **k)
loader.to_global = recording_to_global
from absl import app
from jssl import main
from jssl.config import parse_flags
import jax
sys.argv = ['jssl.main'] + sys.argv[2:]
app.run(main.main, flags_parser=parse_flags)
'''

# Replays the recorded global batches (process 0's half, then process 1's) on one process.
SINGLE = r'''
import glob, os, sys
import jax, numpy as np
from jssl.config import load_config_file
from jssl.data.loader import to_global
from jssl.train.loop import Trainer
from jssl import checkpoint
record_dir, workdir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = load_config_file('configs/simclr.py:demo')
for arg in sys.argv[4:]:
  key, value = arg[len('--config.'):].split('=')
  node = c
  for k in key.split('.')[:-1]:
    node = node[k]
  node[key.split('.')[-1]] = type(node[key.split('.')[-1]])(eval(value))
trainer = Trainer(c, None)
state = trainer.init_state(jax.random.PRNGKey(c.seed))
for s in range(steps):
  parts = [np.load(os.path.join(record_dir, f'p{p}_s{s}.npz')) for p in (0, 1)]
  views = tuple(np.concatenate([p[f'v{i}'] for p in parts]) for i in range(2))
  state, _ = trainer.train_step(state, to_global({'views': views}, trainer.mesh))
multi, step = checkpoint.restore_params(workdir, trainer.abstract_state)
assert step == steps, step
for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(multi.params)):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-5)
print('AGREE')
'''

# a gentle lr: the comparison is of the arithmetic, not of how a chaotic early phase amplifies round-off
OVERRIDES = ['--config.backbone.kwargs.num_filters=8', '--config.model.neck_hid_channels=32',
             '--config.model.neck_out_channels=16', '--config.batch_size=32', '--config.total_steps=4',
             '--config.optimizer.lr=0.03', '--config.checkpoint.every=4', '--config.log_every=2', '--config.eval.at_end=False']


def free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path):
  record, workdir = tmp_path / 'record', tmp_path / 'work'
  record.mkdir()
  port = free_port()
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1',
             JAX_COORDINATOR_ADDRESS=f'localhost:{port}', JAX_NUM_PROCESSES='2')
  procs = [subprocess.Popen([sys.executable, '-c', MULTI, str(record), '--config=configs/simclr.py:demo',
                             f'--workdir={workdir}', *OVERRIDES], cwd=ROOT, env=dict(env, JAX_PROCESS_ID=str(i)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  assert 'step 4/4' in outs[0][0] and 'step 4/4' not in outs[1][0]  # only process 0 prints progress
  # each process read its own half of the data
  for s in range(4):
    i0, i1 = (np.load(record / f'p{p}_s{s}.npz')['index'] for p in (0, 1))
    assert len(i0) == len(i1) == 16 and not set(i0) & set(i1)
  proc = run_python(['-c', SINGLE, str(record), str(workdir), '4', *OVERRIDES[:6]])
  assert 'AGREE' in proc.stdout
