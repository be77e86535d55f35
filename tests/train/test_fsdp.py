"""FSDP divides the memory of the training state: on 8 simulated CPU devices (in a subprocess) the compiled train
step of a small ViT (MAE) and a small ResNet (SimCLR) takes, per device, the state's bytes over the fsdp axis size
for every leaf `fsdp_spec` shards, and all of it with replicated parameters (XLA's compiled memory analysis, no
step run). That the sharded step computes the same losses and parameters is tests/train/test_sharding.py's."""
import json

import numpy as np
import pytest

from tests.conftest import run_python
from tests.methods import test_mae, test_simclr

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
# (heavy: the ResNet; the rule is the same code, and its FSDP step is checked in CI by tests/methods/test_every_method.py)
def test_fsdp_divides_state_memory_per_device(method):
  config_path, overrides = f'configs/{method}.py:demo', {'mae': test_mae, 'simclr': test_simclr}[method].DEVICES
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



REMAT_SCRIPT = r"""
import json, sys
import jax, numpy as np
from jssl.bench import cpu_memory_scheduler
cpu_memory_scheduler()  # before the backend starts, as `jssl.bench --memory_only` does
from jssl.config import load_config_file
from jssl.train.loop import Trainer, example_batch
from tests.conftest import apply_overrides
c = load_config_file('configs/mae.py:demo')
apply_overrides(c, json.loads(sys.argv[1]))
trainer = Trainer(c, None, num_records=1600)
batch = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=trainer.batch_sharding),
                     example_batch(c))
temp = trainer.train_step.lower(trainer.abstract_state, batch).compile().memory_analysis().temp_size_in_bytes
params = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(trainer.abstract_state.params))
print('RESULT' + json.dumps([temp, params]))
"""


@pytest.mark.slow  # 23 s: one 8-device compile
def test_remat_fsdp_step_holds_one_block_at_a_time():
  """MAE's FSDP train step with remat, 16 images on each of 8 simulated devices: XLA's temporaries per device
  are about one block's activations per image (plus every block's saved input), not every block's. Before
  `remat_call` (jssl/models/layers.py) XLA:CPU recomputed all blocks first and deferred the weight gradients:
  61.2 MB here; 29.2 MB after."""
  enc_depth, dec_depth, images = 2, 2, 16
  overrides = {'remat': True, 'param_sharding': 'fsdp', 'mesh.data': 1, 'mesh.fsdp': 8, 'batch_size': 8 * images,
               'backbone.kwargs.depth': enc_depth, 'model.decoder_depth': dec_depth}
  proc = run_python(['-c', REMAT_SCRIPT, json.dumps(overrides)], devices=8)
  temp, param_bytes = json.loads(proc.stdout.split('RESULT', 1)[1])
  # configs/mae.py:demo, float32: encoder ViT-Tiny (D=192, 3 heads) on 32x32 images in 4x4 patches, 75% masked:
  # T=1+16 tokens; decoder D=128, 4 heads, T=1+64 tokens.
  f32 = 4
  saved = f32 * (enc_depth * 17 * 192 + dec_depth * 65 * 128)  # each block's input, kept for its recompute
  # every value one block computes per token: qkv 3D, attention output D, projection D, two norms 2D, two residual
  # sums 2D, MLP hidden before and after GELU 8D (17D), plus the attention logits and probabilities (2 x heads x T)
  block = lambda t, d, h: f32 * t * (17 * d + 2 * h * t)
  one_block = max(block(17, 192, 3), block(65, 128, 4))  # the decoder's: 0.70 MB
  io = f32 * (32 * 32 * 3 + 2 * 64 * 48)  # the augmented image, the pixel targets and the prediction
  # the backward of a block holds its recomputed values, their cotangents and XLA's temporaries: room for 3 blocks
  per_image = saved + 3 * one_block + io  # 2.23 MB
  # plus, per step, the gathered weights of a block and the full gradients before their reduce-scatter: at most
  # twice the (fp32) parameters, 10.6 MB here
  bound = images * per_image + 2 * param_bytes  # 46.3 MB
  assert temp < bound, (temp, bound)
