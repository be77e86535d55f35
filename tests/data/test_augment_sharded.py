"""On-device augmentation gives the same images whether the batch sits on 1 device or is split over 8
(a regression test: a gather by traced index in the color-jitter order once broke this for some samples)."""
import pytest

from tests.conftest import run_python

SCRIPT = r'''
import jax, jax.numpy as jnp, numpy as np
from jssl.data import augment
from jssl.train import sharding
ops = [dict(type='ColorJitter', brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, prob=0.8),
       dict(type='RandomGrayscale', prob=0.2), dict(type='GaussianBlur', sigma_min=0.1, sigma_max=2.0,
       kernel_size=3, prob=0.5), dict(type='Solarize', threshold=0.5, prob=0.2)]
fn = augment.build_augment(ops)
x = np.random.default_rng(0).integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
outs = {}
for name, devices in [('one', jax.devices()[:1]), ('eight', jax.devices())]:
  mesh = sharding.make_mesh(devices=devices)
  xs = jax.device_put(x, sharding.batch_sharding(mesh))
  f = jax.jit(lambda k, xs: jnp.stack([fn(jax.random.fold_in(k, i), xs) for i in range(6)]),
              out_shardings=sharding.replicated(mesh))
  outs[name] = np.asarray(f(jax.random.PRNGKey(0), xs))
print('MAXDIFF', float(np.abs(outs['one'] - outs['eight']).max()))
'''


@pytest.mark.slow
def test_augment_pipeline_is_sharding_invariant():
  proc = run_python(SCRIPT, devices=8)
  assert float(proc.stdout.split('MAXDIFF')[1]) < 1e-4
