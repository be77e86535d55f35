"""Random erasing and Mixup / CutMix give the same batch whether it sits on 1 device or is split over 8
(Mixup / CutMix read the reversed batch, which crosses devices)."""
import pytest

from tests.conftest import run_python

SCRIPT = r'''
import jax, jax.numpy as jnp, numpy as np
from jssl.data import augment, mix
from jssl.train import sharding
fn = augment.build_augment([dict(type='RandomErasing', prob=0.5)])
x = np.random.default_rng(0).integers(0, 256, (16, 12, 12, 3), dtype=np.uint8)
labels = np.arange(16) % 5

def step(key, xs, ys):
  outs = []
  for i in range(4):  # a few keys, so that both Mixup and CutMix run
    images, targets = mix.mixup_cutmix(jax.random.fold_in(key, i), fn(jax.random.fold_in(key, 10 + i), xs), ys, 5)
    outs.append((images, targets))
  return outs

results = {}
for name, devices in [('one', jax.devices()[:1]), ('eight', jax.devices())]:
  mesh = sharding.make_mesh(devices=devices)
  xs, ys = (jax.device_put(v, sharding.batch_sharding(mesh)) for v in (x, labels))
  results[name] = jax.jit(step, out_shardings=sharding.replicated(mesh))(jax.random.PRNGKey(0), xs, ys)
diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
           for a, b in zip(jax.tree.leaves(results['one']), jax.tree.leaves(results['eight'])))
print('MAXDIFF', diff)
'''


@pytest.mark.slow
def test_erasing_and_mixing_are_sharding_invariant():
  proc = run_python(SCRIPT, devices=8)
  assert float(proc.stdout.split('MAXDIFF')[1]) < 1e-5
