import jax.numpy as jnp
import numpy as np
import pytest

from jssl.train.queue import enqueue


def test_enqueue_replaces_oldest_rows_and_wraps():
  queue, ptr = jnp.zeros((6, 2)), jnp.zeros((), jnp.int32)
  for i in range(4):
    queue, ptr = enqueue(queue, ptr, jnp.full((2, 2), i + 1.))
  # rows 0-1 held batch 1, then batch 4 overwrote them after the wrap; rows 2-3 batch 2, rows 4-5 batch 3
  np.testing.assert_array_equal(queue, np.array([[4, 4], [4, 4], [2, 2], [2, 2], [3, 3], [3, 3]]))
  assert int(ptr) == 2
  with pytest.raises(ValueError, match='multiple'):
    enqueue(jnp.zeros((5, 2)), ptr, jnp.ones((2, 2)))
