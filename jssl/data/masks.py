"""Mask generators that run on device inside the train step, from the step's PRNG key."""
import jax
import jax.numpy as jnp


def random_masking(key, batch_size: int, num_patches: int, mask_ratio: float):
  """MAE's per-sample random masking.

  Returns (ids_keep [B, K], mask [B, N] with 1 = masked, ids_restore [B, N]) where
  K = int(N * (1 - mask_ratio)) patches stay visible in every sample. `ids_restore` un-shuffles the
  [visible; masked] token order back to the patch grid (used by the decoder).
  """
  num_keep = int(num_patches * (1 - mask_ratio))
  noise = jax.random.uniform(key, (batch_size, num_patches))
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  ids_keep = ids_shuffle[:, :num_keep]
  mask = jnp.ones((batch_size, num_patches), jnp.float32).at[:, :num_keep].set(0.)
  mask = jnp.take_along_axis(mask, ids_restore, axis=1)
  return ids_keep, mask, ids_restore
