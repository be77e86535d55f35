"""The same global batch gives the same loss, gradients and step on 1 device, 8 data-parallel devices and a
2 x 4 data x fsdp mesh with sharded parameters (8 simulated CPU devices, in a subprocess)."""
import json

import numpy as np
import pytest

from tests.conftest import run_python

SCRIPT = r'''
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jssl.data.loader import to_global
from jssl.train.loop import Trainer

config_path, overrides = sys.argv[1], json.loads(sys.argv[2])
from jssl.config import load_config_file
c = load_config_file(config_path)
for key, value in overrides.items():  # dotted keys into the ConfigDict
  node = c
  for k in key.split('.')[:-1]:
    node = node[k] if not isinstance(node, list) else node[int(k)]
  last = key.split('.')[-1]
  if isinstance(node, list):
    node[int(last)] = value
  else:
    node[last] = value
c.batch_size = 16
rng = np.random.default_rng(0)
views = tuple(rng.integers(0, 256, (16, v['size'], v['size'], 3), dtype=np.uint8)
              for v in c.data.views for _ in range(v.get('num', 1)))
out = {}
for name, mesh, mode in [('one', dict(data=1, fsdp=1), 'replicate'), ('dp8', dict(data=8, fsdp=1), 'replicate'),
                         ('fsdp', dict(data=2, fsdp=4), 'fsdp')]:
  c.mesh.update(mesh)
  c.param_sharding = mode
  devices = jax.devices()[:1] if name == 'one' else jax.devices()
  trainer = Trainer(c, None, num_records=1600, devices=devices)
  state = trainer.init_state(jax.random.PRNGKey(0))
  batch = to_global({'views': views}, trainer.mesh)
  if name == 'fsdp':  # really sharded: some parameter lives in 4 pieces
    shards = [len({str(s.index) for s in x.addressable_shards}) for x in jax.tree.leaves(state.params)]
    assert max(shards) == 4, shards
  state, metrics = trainer.train_step(state, batch)
  state, metrics2 = trainer.train_step(state, batch)
  leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(state.params)]
  out[name] = {'loss': float(metrics['loss']), 'grad_norm': float(metrics['grad_norm']),
               'loss2': float(metrics2['loss']), 'params': [x.ravel()[:64].tolist() for x in leaves],
               'param_sums': [float(np.abs(x).sum()) for x in leaves]}
print('RESULT' + json.dumps(out))
'''


# config, overrides that make it small. One entry per method.
CASES = {
    'barlowtwins': ('configs/barlowtwins.py:demo', {'backbone.kwargs.num_filters': 8, 'model.neck_hid_channels': 32,
                                                    'model.neck_out_channels': 32, 'data.views.0.size': 16}),
    'simclr': ('configs/simclr.py:demo', {'backbone.kwargs.num_filters': 8, 'model.neck_hid_channels': 32,
                                          'model.neck_out_channels': 16}),
    'mae': ('configs/mae.py:demo', {'backbone.kwargs.depth': 2, 'backbone.kwargs.img_size': 16,
                                    'data.views.0.size': 16, 'model.decoder_embed_dim': 32,
                                    'model.decoder_depth': 1, 'model.decoder_num_heads': 2}),
}


@pytest.mark.slow
@pytest.mark.parametrize('method', sorted(CASES))
def test_eight_devices_and_fsdp_match_one_device(method):
  config_path, overrides = CASES[method]
  proc = run_python(['-c', SCRIPT, config_path, json.dumps(overrides)], devices=8)
  out = json.loads(proc.stdout.split('RESULT', 1)[1])
  ref = out['one']
  for name in ('dp8', 'fsdp'):
    got = out[name]
    np.testing.assert_allclose(got['loss'], ref['loss'], rtol=2e-5, err_msg=name)
    np.testing.assert_allclose(got['grad_norm'], ref['grad_norm'], rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(got['loss2'], ref['loss2'], rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(got['param_sums'], ref['param_sums'], rtol=1e-4, atol=1e-6, err_msg=name)
    for a, b in zip(got['params'], ref['params']):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5, err_msg=name)
