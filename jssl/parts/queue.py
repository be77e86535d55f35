"""FIFO queues of keys: MoCo v1/v2's negatives, DenseCL's two queues, InterCLR's intra-image branch.

A queue is {'keys': [K, D] float32, 'ptr': int32 scalar} in method_state: mmpretrain's `queue` buffer (stored
[D, K] there) and its `queue_ptr`. Each step the global batch's keys replace rows ptr .. ptr + B - 1 and the
pointer moves on by B, wrapping at K. As in the reference, K must be a multiple of the global batch so that a
write never straddles the end. The first keys are random unit vectors, as the reference's (randn, normalized)."""
import jax
import jax.numpy as jnp

from jssl.losses import l2_normalize


def check_length(length: int, batch_size: int):
  """The config's queue length against its batch: one line naming both fields."""
  if length % batch_size:
    raise ValueError(f'config.model.queue_len ({length}) must be a multiple of config.batch_size ({batch_size})')


def init(rng, length: int, dim: int):
  return {'keys': l2_normalize(jax.random.normal(rng, (length, dim), jnp.float32)), 'ptr': jnp.zeros((), jnp.int32)}


def push(queue, keys):
  """The queue with the batch's keys [B, D] in place of its oldest B."""
  new_keys, ptr = enqueue(queue['keys'], queue['ptr'], keys)
  return {'keys': new_keys, 'ptr': ptr}


def enqueue(queue, ptr, keys):
  """(queue with rows ptr .. ptr + B - 1 replaced by keys, (ptr + B) mod K)."""
  size, batch = queue.shape[0], keys.shape[0]
  if size % batch:
    raise ValueError(f'queue length {size} must be a multiple of the global batch size {batch}')
  queue = jax.lax.dynamic_update_slice(queue, keys.astype(queue.dtype), (ptr, jnp.zeros_like(ptr)))
  return queue, (ptr + batch) % size
