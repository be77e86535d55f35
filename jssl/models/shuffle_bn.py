"""Shuffle-BN without GPUs to shuffle across (MoCo v1/v2, DenseCL, InterCLR's key encoder).

The reference computes keys with per-GPU BatchNorm over a batch shuffled across GPUs, so a key's BN statistics never
come from the same images as its query's (otherwise the model "cheats" through intra-batch statistics). Here it is
explicit and independent of the device count: permute the global batch with a key from the step's rng, split it into
`groups` groups (8 = the reference's 8 GPUs), normalize each group with its own statistics (vmap of the train-mode
encoder over the group axis), and un-permute the outputs.
"""
import jax
import jax.numpy as jnp


def shuffled_group_bn(encode, images, groups, rng):
  """encode(images) with BatchNorm statistics per group of a randomly permuted batch.

  encode: [n, ...] -> pytree of [n, ...] arrays, a train-mode forward whose BN normalizes over its whole input.
  Returns the outputs in the original order (row i belongs to images[i]).
  """
  b = images.shape[0]
  if groups < 1 or b % groups:
    raise ValueError(f'shuffle-BN groups ({groups}) must divide the global batch size {b}')
  perm = jax.random.permutation(rng, b)
  grouped = images[perm].reshape(groups, b // groups, *images.shape[1:])
  out = jax.vmap(encode)(grouped)
  inverse = jnp.argsort(perm)
  return jax.tree.map(lambda o: o.reshape(b, *o.shape[2:])[inverse], out)
