"""FSDP divides the memory of the training state: on 8 simulated CPU devices (in a subprocess) the compiled train
step of a small ViT (MAE) and a small ResNet (SimCLR) takes, per device, the state's bytes over the fsdp axis size
for every leaf `fsdp_spec` shards, and all of it with replicated parameters (XLA's compiled memory analysis, no
step run). That the sharded step computes the same losses and parameters is tests/train/test_sharding.py's."""
import json

import numpy as np
import pytest

from tests.conftest import run_python
from tests.train.test_sharding import CASES

SCRIPT = r'''
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jssl.config import load_config_file
from jssl.train import sharding
from jssl.train.loop import Trainer, example_batch
from tests.conftest import apply_overrides

config_path, overrides = sys.argv[1], json.loads(sys.argv[2])
c = load_config_file(config_path)
apply_overrides(c, overrides)
c.batch_size = 16
out = []
for mode, data, fsdp in [('replicate', 8, 1), ('fsdp', 1, 8), ('fsdp', 2, 4)]:
  c.mesh.update(dict(data=data, fsdp=fsdp))
  c.param_sharding = mode
  trainer = Trainer(c, None, num_records=1600)
  batch = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=trainer.batch_sharding),
                       example_batch(c))
  compiled = trainer.train_step.lower(trainer.abstract_state, batch).compile()
  mem = compiled.memory_analysis()
  leaves = jax.tree.leaves(trainer.abstract_state)
  specs = [tuple(s.spec) for s in jax.tree.leaves(trainer.state_sharding)]
  # what the executable really takes: XLA may not drop or change a requested sharding
  got = [tuple(s.spec) for s in jax.tree.leaves(compiled.input_shardings[0][0])]
  out.append({'mode': mode, 'data': data, 'fsdp': fsdp, 'argument_bytes': mem.argument_size_in_bytes,
              'temp_bytes': mem.temp_size_in_bytes,
              'batch_bytes': sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(batch)) // 8,
              'leaves': [(list(x.shape), x.dtype.itemsize) for x in leaves],
              'specs': [[str(a) for a in s] for s in specs], 'compiled_specs': [[str(a) for a in s] for s in got]})
print('RESULT' + json.dumps(out))
'''


WIDER = {'mae': {'model.decoder_embed_dim': 128, 'model.decoder_num_heads': 4},
         'simclr': {'backbone.kwargs.num_filters': 32, 'model.neck_hid_channels': 256, 'model.neck_out_channels': 128}}


def state_bytes_per_device(leaves, fsdp):
  """By hand: a leaf `fsdp_spec` shards is split `fsdp` ways, one it leaves replicated (under the minimum size,
  or no dimension divisible) is whole on every device."""
  from jssl.train.sharding import fsdp_spec
  total = 0
  for shape, itemsize in leaves:
    nbytes = itemsize * int(np.prod(shape, dtype=np.int64))
    total += nbytes // fsdp if 'fsdp' in tuple(fsdp_spec(shape, fsdp)) else nbytes
  return total


@pytest.mark.slow
@pytest.mark.parametrize('method', ['mae', pytest.param('simclr', marks=pytest.mark.heavy)])  # a ViT and a ResNet
# (heavy: the ResNet; the rule is the same code, and its FSDP step is checked in CI by test_sharding.py)
def test_fsdp_divides_state_memory_per_device(method):
  config_path, overrides = CASES[method]
  # the demos' widths, so that large leaves hold most of the state as in real models
  overrides = {**overrides, **WIDER[method]}
  proc = run_python(['-c', SCRIPT, config_path, json.dumps(overrides)], devices=8)
  replicated, *sharded = json.loads(proc.stdout.split('RESULT', 1)[1])
  full = state_bytes_per_device(replicated['leaves'], 1)
  assert replicated['argument_bytes'] == full + replicated['batch_bytes']
  for run in sharded:
    f, name = run['fsdp'], f"data={run['data']} fsdp={run['fsdp']}"
    expected = state_bytes_per_device(run['leaves'], f)
    assert run['argument_bytes'] == expected + run['batch_bytes'], name
    # the small leaves left whole (biases, norms, BN statistics, here the patch embedding) cost little: close to
    # the fsdp factor (7.0 of 8 and 3.8 of 4 for these small models; test_large_vits_divide_by_fsdp for real ones)
    assert full / expected > 0.85 * f, (name, full / expected)
    for (shape, _), spec, compiled in zip(run['leaves'], run['specs'], run['compiled_specs']):
      if np.prod(shape) >= 2**14:  # every large leaf is split over 'fsdp' in the executable
        assert 'fsdp' in spec and compiled == spec, (name, shape, spec, compiled)


@pytest.mark.parametrize('variant', ['vit_l', 'vit_h'])
def test_large_vits_divide_by_fsdp(variant):
  """MAE ViT-L/16 and ViT-H/14's state (params + AdamW moments, from shapes only): on fsdp axes of 8 to 256
  devices every leaf of 2**14 or more elements has a divisible dimension, and what stays whole (biases, norms:
  under 0.2% of the state) is negligible; 8 devices hold 1/8 of it each."""
  import jax
  from jssl.config import load_config_file
  from jssl.train.loop import Trainer
  from jssl.train.sharding import fsdp_spec
  c = load_config_file(f'configs/mae.py:{variant}')
  assert (c.param_sharding, c.remat, c.mesh.data, c.mesh.fsdp) == ('fsdp', True, 1, -1)
  leaves = [(x.shape, x.dtype.itemsize) for x in jax.tree.leaves(Trainer(c, None, num_records=1281167).abstract_state)]
  full = state_bytes_per_device(leaves, 1)
  assert full > 3.5e9  # ViT-L with its decoder: 330M params x 3 (params, two moments) x 4 bytes
  for f in (8, 32, 256):
    assert all('fsdp' in tuple(fsdp_spec(s, f)) for s, _ in leaves if np.prod(s) >= 2**14), f
    whole = (f * state_bytes_per_device(leaves, f) - full) / (f - 1)  # bytes every device holds whole
    assert whole < 0.002 * full, (f, whole)
  assert full / state_bytes_per_device(leaves, 8) > 0.99 * 8
