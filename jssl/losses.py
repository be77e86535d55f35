"""Losses shared by the methods. Each works on global arrays: under jit over a Mesh, a loss over the whole
batch is the cross-device version (MMSelfSup's GatherLayer + all-reduce) without any explicit collective."""
import jax
import jax.numpy as jnp
import optax


def l2_normalize(x, axis=-1, eps=1e-12):
  # torch.nn.functional.normalize semantics: x / max(|x|, eps)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


def nt_xent(z1, z2, temperature):
  """SimCLR's normalized-temperature cross entropy over 2N samples.

  Each of the 2N embeddings has one positive (its other view) and 2N - 2 negatives (all other embeddings,
  itself excluded); the loss is the mean over all 2N anchors. Equals MMSelfSup's ContrastiveHead fed by SimCLR.
  """
  z = l2_normalize(jnp.concatenate([z1, z2], axis=0).astype(jnp.float32))
  n = z1.shape[0]
  logits = z @ z.T / temperature
  logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
  positives = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(0, n)])
  return optax.softmax_cross_entropy_with_integer_labels(logits, positives).mean()


def masked_mse(pred, target, mask):
  """Mean over masked positions (mask == 1) of the per-position mean squared error (MAE's loss)."""
  per_position = jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)), axis=-1)
  return jnp.sum(per_position * mask) / jnp.maximum(jnp.sum(mask), 1.)
