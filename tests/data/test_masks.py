import jax
import numpy as np

from jssl.data.masks import random_masking


def test_random_masking_counts_and_consistency():
  b, n = 5, 49
  for ratio in (0.75, 0.5, 0.9):
    ids_keep, mask, ids_restore = map(np.asarray, random_masking(jax.random.key(3), b, n, ratio))
    keep = int(n * (1 - ratio))
    assert ids_keep.shape == (b, keep)
    np.testing.assert_array_equal(mask.sum(1), n - keep)           # exactly n - keep masked per sample
    for i in range(b):
      assert len(set(ids_keep[i])) == keep
      np.testing.assert_array_equal(mask[i, ids_keep[i]], 0)      # kept patches are the unmasked ones
      np.testing.assert_array_equal(np.sort(ids_restore[i]), np.arange(n))


def test_random_masking_differs_per_sample_and_key():
  _, m1, _ = random_masking(jax.random.key(0), 4, 16, 0.75)
  _, m2, _ = random_masking(jax.random.key(1), 4, 16, 0.75)
  m1, m2 = np.asarray(m1), np.asarray(m2)
  assert not np.array_equal(m1, m2)
  assert len({tuple(r) for r in m1}) > 1
