"""The same global batch gives the same loss, gradients and step on 1 device and on 8 simulated CPU devices (in a
subprocess): a 2 x 4 data x fsdp mesh with the batch over all 8 devices and sharded parameters, and for SimCLR
also 8 data-parallel devices with replicated parameters.

tests/methods/test_every_method.py calls `assert_devices_match(config, overrides)` for every method of the registry,
with the overrides its test file gives; the evaluators' tests call it too."""
import json

import numpy as np

from tests.conftest import run_python

SCRIPT = r'''
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jssl.data.loader import to_global
from jssl.train.loop import Trainer

config_path, overrides, meshes = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3].split(',')
from jssl.config import load_config_file
from tests.conftest import apply_overrides
c = load_config_file(config_path)
apply_overrides(c, overrides)
c.batch_size = 16
rng = np.random.default_rng(0)
from jssl.data.transforms import view_sizes  # every view, CAE's second size of a crop included
views = tuple(rng.integers(0, 256, (16, size, size, 3), dtype=np.uint8) for size in view_sizes(c.data.views))
host_batch = {'views': views, 'index': np.arange(16, dtype=np.int64) * 3, 'label': np.arange(16, dtype=np.int32) % 4}
out = {}
for name, mesh, mode in [('one', dict(data=1, fsdp=1), 'replicate'), ('dp8', dict(data=8, fsdp=1), 'replicate'),
                         ('fsdp', dict(data=2, fsdp=4), 'fsdp')]:
  if name != 'one' and name not in meshes:
    continue
  c.mesh.update(mesh)
  c.param_sharding = mode
  devices = jax.devices()[:1] if name == 'one' else jax.devices()
  trainer = Trainer(c, None, num_records=1600, devices=devices)
  state = trainer.init_state(jax.random.PRNGKey(0))
  batch = to_global(host_batch, trainer.mesh)
  if name == 'fsdp':  # really sharded: some parameter lives in 4 pieces
    shards = [len({str(s.index) for s in x.addressable_shards}) for x in jax.tree.leaves(state.params)]
    assert max(shards) == 4, shards
  state, metrics = trainer.train_step(state, batch)
  state, metrics2 = trainer.train_step(state, batch)
  leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(state.params)]
  # queues, EMA targets, memory banks: what crosses devices outside the gradient
  method_leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(state.method_state)]
  out[name] = {'loss': float(metrics['loss']), 'grad_norm': float(metrics['grad_norm']),
               'loss2': float(metrics2['loss']), 'params': [x.ravel()[:64].tolist() for x in leaves],
               'param_sums': [float(np.abs(x).sum()) for x in leaves],
               'method_state': [x.ravel()[:64].tolist() for x in method_leaves],
               'method_state_sums': [float(np.abs(x).sum()) for x in method_leaves]}
print('RESULT' + json.dumps(out))
'''


def assert_devices_match(config_path, overrides, meshes=('fsdp',), method_state_atol=1e-5):
  """Two steps of `config_path` (with `overrides`, dotted keys) on 1 device and on 8 devices give the same losses,
  gradient norms, params and method state. 'fsdp' is a 2 x 4 data x fsdp mesh: the batch is split over all 8
  devices and parameters 4 ways, so it covers 8-way data parallelism too; 'dp8' (8 devices, replicated
  parameters) adds the plain data-parallel layout, checked for SimCLR."""
  proc = run_python(['-c', SCRIPT, config_path, json.dumps(overrides), ','.join(meshes)], devices=8)
  out = json.loads(proc.stdout.split('RESULT', 1)[1])
  ref = out['one']
  assert sorted(out) == sorted(('one',) + tuple(meshes)), sorted(out)
  for name in meshes:
    got = out[name]
    np.testing.assert_allclose(got['loss'], ref['loss'], rtol=2e-5, err_msg=name)
    np.testing.assert_allclose(got['grad_norm'], ref['grad_norm'], rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(got['loss2'], ref['loss2'], rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(got['param_sums'], ref['param_sums'], rtol=1e-4, atol=1e-6, err_msg=name)
    for a, b in zip(got['params'], ref['params']):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(got['method_state_sums'], ref['method_state_sums'], rtol=1e-4, atol=1e-6,
                               err_msg=name + ' method_state')
    for a, b in zip(got['method_state'], ref['method_state']):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=method_state_atol, err_msg=name + ' method_state')
  return out
