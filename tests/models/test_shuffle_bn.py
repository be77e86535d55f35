import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl.models.shuffle_bn import shuffled_group_bn


def test_each_group_is_normalized_with_its_own_statistics_and_rows_come_back_in_order():
  bn = nn.BatchNorm(use_running_average=False, use_scale=False, use_bias=False, epsilon=0.)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(12, 3)) * 4 + 1, jnp.float32)
  variables = bn.init(jax.random.key(0), x)
  encode = lambda images: bn.apply(variables, images, mutable=['batch_stats'])[0]
  rng = jax.random.key(3)
  out = shuffled_group_bn(encode, x, 3, rng)
  perm = np.asarray(jax.random.permutation(rng, 12))
  expected = np.zeros((12, 3), np.float32)
  for g in range(3):
    rows = perm[g * 4:(g + 1) * 4]
    xs = np.asarray(x)[rows]
    expected[rows] = (xs - xs.mean(0)) / xs.std(0)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
  # one group is plain BatchNorm over the whole batch, whatever the permutation
  np.testing.assert_allclose(shuffled_group_bn(encode, x, 1, rng), encode(x), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='groups'):
    shuffled_group_bn(encode, x, 5, rng)
