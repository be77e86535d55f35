"""The momentum-target pieces (jssl/parts/ema.py): the EMA, the cosine schedule, EmaTarget's storage and buffers."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl.parts.ema import EmaTarget, cosine_momentum, ema_update


def test_ema_update_by_hand():
  target = {'w': np.array([1., 2.]), 'bn': {'mean': np.array([0.])}}
  online = {'w': np.array([3., 4.]), 'bn': {'mean': np.array([10.])}}
  out = ema_update(target, online, 0.9)
  np.testing.assert_allclose(out['w'], [1.2, 2.2])
  np.testing.assert_allclose(out['bn']['mean'], [1.0])


def test_cosine_momentum_schedule():
  # MMSelfSup's MomentumUpdateHook: m = 1 - (1 - m0) * (cos(pi * k / K) + 1) / 2
  for k in (0, 25, 50, 99, 100):
    expected = 1 - (1 - 0.996) * (np.cos(np.pi * k / 100) + 1) / 2
    np.testing.assert_allclose(cosine_momentum(k, 100, 0.996), expected, rtol=1e-6)


def test_ema_target_holds_the_parts_and_follows_mmengine_buffers():
  class Net(nn.Module):  # backbone (a BatchNorm) -> neck -> head; the target: backbone + neck
    def setup(self):
      self.backbone, self.neck, self.head = nn.BatchNorm(momentum=0.5), nn.Dense(2), nn.Dense(2)

    def __call__(self, x, train=True):
      return self.head(self.project(x, train))

    def project(self, x, train=True):
      return self.neck(self.backbone(x, use_running_average=not train))

  net = Net()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)) + 2., jnp.float32)
  variables = net.init(jax.random.key(0), x, train=False)
  params, model_state = variables['params'], {'batch_stats': variables['batch_stats']}
  ema = EmaTarget(0.9, parts=('backbone', 'neck'), schedule='cosine', total_steps=10)
  target = ema.init(params, model_state)
  assert sorted(target) == ['batch_stats', 'params'] and sorted(target['params']) == ['backbone', 'neck']
  assert list(target['batch_stats']) == ['backbone']  # the parts without BatchNorm have no statistics
  np.testing.assert_allclose(ema.momentum(10), 1.)
  np.testing.assert_allclose(ema.momentum(3), cosine_momentum(3, 10, 0.9))
  # update: params only, with m(step)
  moved = jax.tree.map(lambda p: p + 1., params)
  new = ema.update(target, moved, 3)
  m = float(ema.momentum(3))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b + (1 - m), rtol=1e-6), new['params'],
               target['params'])
  assert new['batch_stats'] is target['batch_stats']
  # the online statistics, then the target's own train-mode forward moves them (update_buffers=False)
  online_stats = {'batch_stats': jax.tree.map(lambda s: s + 5., model_state['batch_stats'])}
  run = ema.with_online_stats(new, online_stats)
  online_mean = np.asarray(online_stats['batch_stats']['backbone']['mean'])
  np.testing.assert_array_equal(run['batch_stats']['backbone']['mean'], online_mean)
  out, after = ema.forward(net, run, x, method=Net.project)
  np.testing.assert_allclose(after['batch_stats']['backbone']['mean'], 0.5 * (online_mean + np.asarray(x).mean(0)),
                             rtol=1e-5)
  assert after['params'] is run['params'] and out.shape == (8, 2)
  with pytest.raises(ValueError, match="valid: constant, cosine"):
    EmaTarget(0.9, schedule='linear')
  assert EmaTarget(0.99).momentum(7) == 0.99 and EmaTarget(0.99).init(params, {}) == {'params': params}
