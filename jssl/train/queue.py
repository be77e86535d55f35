"""A FIFO queue of feature vectors as one global array (MoCo's negative keys, DenseCL, InterCLR, ...).

The queue is [K, D] with an int32 pointer; each step the global batch's keys replace rows ptr .. ptr + B - 1
and the pointer moves on by B, wrapping at K. As in the reference, K must be a multiple of the global batch
so that a write never straddles the end."""
import jax
import jax.numpy as jnp


def enqueue(queue, ptr, keys):
  """(queue with rows ptr .. ptr + B - 1 replaced by keys, (ptr + B) mod K)."""
  size, batch = queue.shape[0], keys.shape[0]
  if size % batch:
    raise ValueError(f'queue length {size} must be a multiple of the global batch size {batch}')
  queue = jax.lax.dynamic_update_slice(queue, keys.astype(queue.dtype), (ptr, jnp.zeros_like(ptr)))
  return queue, (ptr + batch) % size
