"""Shuffle-BN without GPUs to shuffle across (the key encoder of MoCo v1/v2, DenseCL, InterCLR).

The reference computes keys with per-GPU BatchNorm over a batch shuffled across GPUs, so a key's BN statistics never
come from the same images as its query's (otherwise the model "cheats" through intra-batch statistics). Here it is
explicit and independent of the device count: permute the global batch with a key from the step's rng, split it into
`groups` groups (8 = the reference's 8 GPUs), normalize each group with its own statistics (vmap of the train-mode
encoder over the group axis), and un-permute the outputs.
"""
import jax
import jax.numpy as jnp


def check_groups(groups: int, batch_size: int):
  """The config's shuffle-BN groups against its batch: one line naming both fields."""
  if groups < 1 or batch_size % groups:
    raise ValueError(f'config.model.shuffle_bn_groups ({groups}) must divide config.batch_size ({batch_size})')


def shuffled_group_bn(encode, images, groups, rng, with_aux=False):
  """encode(images) with BatchNorm statistics per group of a randomly permuted batch.

  encode: [n, ...] -> pytree of [n, ...] arrays, a train-mode forward whose BN normalizes over its whole input
  (with_aux: -> (that pytree, a pytree of per-group values)). Returns the outputs in the original order (row i
  belongs to images[i]); with_aux, also the per-group values stacked [groups, ...].
  """
  b = images.shape[0]
  if groups < 1 or b % groups:
    raise ValueError(f'shuffle-BN groups ({groups}) must divide the global batch size {b}')
  perm = jax.random.permutation(rng, b)
  grouped = images[perm].reshape(groups, b // groups, *images.shape[1:])
  out = jax.vmap(encode)(grouped)
  out, aux = out if with_aux else (out, None)
  inverse = jnp.argsort(perm)
  out = jax.tree.map(lambda o: o.reshape(b, *o.shape[2:])[inverse], out)
  return (out, aux) if with_aux else out


def key_forward(net, variables, images, groups, rng):
  """A key encoder's forward with shuffle-BN, without gradient: `net` applied with `variables` in train mode.
  Returns (outputs in the batch's order, batch_stats after the forward: each group's update, averaged over the
  groups; the reference keeps GPU 0's)."""
  variables = jax.lax.stop_gradient(variables)

  def encode(x):
    out, state = net.apply(variables, x, train=True, mutable=['batch_stats'])
    return out, state['batch_stats']
  out, stats = shuffled_group_bn(encode, images, groups, rng, with_aux=True)
  return jax.lax.stop_gradient(out), jax.tree.map(lambda s: s.mean(axis=0), stats)
