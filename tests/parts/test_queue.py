import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl.parts import queue as fifo
from jssl.parts.queue import enqueue


def test_enqueue_replaces_oldest_rows_and_wraps():
  queue, ptr = jnp.zeros((6, 2)), jnp.zeros((), jnp.int32)
  for i in range(4):
    queue, ptr = enqueue(queue, ptr, jnp.full((2, 2), i + 1.))
  # rows 0-1 held batch 1, then batch 4 overwrote them after the wrap; rows 2-3 batch 2, rows 4-5 batch 3
  np.testing.assert_array_equal(queue, np.array([[4, 4], [4, 4], [2, 2], [2, 2], [3, 3], [3, 3]]))
  assert int(ptr) == 2
  with pytest.raises(ValueError, match='multiple'):
    enqueue(jnp.zeros((5, 2)), ptr, jnp.ones((2, 2)))


def test_queue_state_starts_unit_and_pushes_with_its_pointer():
  q = fifo.init(jax.random.key(0), 6, 3)
  np.testing.assert_allclose(np.linalg.norm(q['keys'], axis=1), 1., rtol=1e-6)
  assert int(q['ptr']) == 0 and q['ptr'].dtype == jnp.int32
  keys = jnp.arange(6.).reshape(2, 3)
  pushed = fifo.push(fifo.push(q, keys), keys + 10.)
  np.testing.assert_array_equal(pushed['keys'][:4], np.concatenate([keys, keys + 10.]))
  np.testing.assert_array_equal(pushed['keys'][4:], q['keys'][4:])
  assert int(pushed['ptr']) == 4
  with pytest.raises(ValueError, match=r'^config.model.queue_len \(6\) must be a multiple of config.batch_size \(4\)$'):
    fifo.check_length(6, 4)
