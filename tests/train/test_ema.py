import numpy as np

from jssl.train.ema import cosine_momentum, ema_update


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
