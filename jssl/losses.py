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


def masked_pixel_loss(pred, target, mask, criterion='L1'):
  """MMSelfSup's PixelReconstructionLoss(criterion, channel=C) on [B, H, W, C] images with a pixel mask [B, H, W]
  (1 = masked): the L1 / squared error summed over masked pixels and channels, divided by (masked pixels x C)."""
  diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
  error = jnp.abs(diff) if criterion == 'L1' else jnp.square(diff)
  mask = mask.astype(jnp.float32)[..., None]
  return jnp.sum(error * mask) / jnp.sum(mask) / pred.shape[-1]


def cross_correlation_loss(z1, z2, lambd, eps=1e-5):
  """Barlow Twins' redundancy reduction: sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2.

  C = bn(z1).T @ bn(z2) / N with bn = BatchNorm1d(affine=False) in train mode (per-dimension mean and biased
  variance over the batch, eps 1e-5), N the global batch: the paper's SyncBN + all-reduce of C. (MMSelfSup's
  LatentCrossCorrelationHead normalizes with a per-GPU BatchNorm1d before the all-reduce; global is the paper's.)
  """
  def bn(z):
    z = z.astype(jnp.float32)
    mean = z.mean(axis=0)
    return (z - mean) / jnp.sqrt(jnp.mean(jnp.square(z - mean), axis=0) + eps)

  c = bn(z1).T @ bn(z2) / z1.shape[0]
  on_diag = jnp.sum(jnp.square(jnp.diagonal(c) - 1.))
  off_diag = jnp.sum(jnp.square(jnp.where(jnp.eye(c.shape[0], dtype=bool), 0., c)))
  return on_diag + lambd * off_diag


def cosine_similarity_loss(pred, target):
  """BYOL's normalized MSE |p/|p| - z/|z||^2 = 2 - 2 cos(p, z), mean over the batch; no gradient to the target.

  MMSelfSup's CosineSimilarityLoss is -cos and BYOL sums 2 * (-cos) per direction: the same up to a constant."""
  target = jax.lax.stop_gradient(target)
  cos = jnp.sum(l2_normalize(pred.astype(jnp.float32)) * l2_normalize(target.astype(jnp.float32)), axis=-1)
  return jnp.mean(2. - 2. * cos)


def negative_cosine_similarity(pred, target):
  """SimSiam's D(p, stopgrad(z)) = -cos(p, z), mean over the batch."""
  target = jax.lax.stop_gradient(target)
  return -jnp.mean(jnp.sum(l2_normalize(pred.astype(jnp.float32)) * l2_normalize(target.astype(jnp.float32)),
                           axis=-1))


def contrastive_head_loss(pos, neg, temperature):
  """MMSelfSup's ContrastiveHead: cross-entropy over [pos, neg] / T with the positive at index 0, batch mean.
  pos: [B, 1] or [B]; neg: [B, K]."""
  logits = jnp.concatenate([pos.reshape(-1, 1), neg], axis=1) / temperature
  return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.zeros(logits.shape[0], jnp.int32)).mean()


def info_nce(q, k, queue, temperature):
  """MoCo's InfoNCE (MMSelfSup ContrastiveHead): logits [q.k, q.queue] / T, the positive at index 0.

  q, k: [N, D] are L2-normalized here; queue: [K, D] rows are already normalized keys of earlier batches.
  """
  q = l2_normalize(q.astype(jnp.float32))
  k = l2_normalize(k.astype(jnp.float32))
  return contrastive_head_loss(jnp.sum(q * k, axis=-1), q @ queue.astype(jnp.float32).T, temperature)


def swapped_prediction_loss(scores, codes, crops_for_assign, temperature):
  """SwAV's swapped prediction: for each crop `c` in `crops_for_assign` with codes q_c [B, K], the cross-entropy
  -sum_k q_c log softmax(scores_v / T) averaged over the batch and over every other crop v; then averaged over
  `crops_for_assign`. scores: [num_crops, B, K] prototype scores; codes: [len(crops_for_assign), B, K]."""
  num_crops = scores.shape[0]
  log_p = jax.nn.log_softmax(scores.astype(jnp.float32) / temperature, axis=-1)
  loss = 0.
  for i, crop in enumerate(crops_for_assign):
    q = jax.lax.stop_gradient(codes[i])
    subloss = sum(-jnp.mean(jnp.sum(q * log_p[v], axis=-1)) for v in range(num_crops) if v != crop)
    loss += subloss / (num_crops - 1)
  return loss / len(crops_for_assign)


def weighted_cross_entropy(logits, labels, class_weight=None):
  """torch's CrossEntropyLoss(weight=w): sum_i w[y_i] * ce_i / sum_i w[y_i]; the plain mean without weights."""
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), labels[:, None], axis=1)[:, 0]
  if class_weight is None:
    return jnp.mean(ce)
  w = class_weight[labels]
  return jnp.sum(w * ce) / jnp.sum(w)


def label_smoothing_cross_entropy(logits, labels, smoothing=0.1):
  """Mean cross-entropy against (1 - smoothing) * one_hot + smoothing / num_classes (MMSelfSup's LabelSmoothLoss,
  mode 'original'; torch's CrossEntropyLoss(label_smoothing=...))."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))
