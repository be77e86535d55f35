"""Mixup / CutMix on device for fine-tuning, as timm's `Mixup(mode='batch')` in the MAE / BEiT / CAE fine-tuning
recipes (mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=1.0, label_smoothing=0.1).

One draw per batch: with probability `prob` the batch is mixed, by CutMix with probability `switch_prob` (when
both alphas are > 0), else by Mixup; lambda ~ Beta(alpha, alpha) of the chosen one. The batch is mixed with
itself reversed (x[::-1]), as timm does. CutMix pastes a box of the reversed batch whose sides are
sqrt(1 - lambda) of the image's, centred at a uniform pixel and clipped to the image; lambda is then corrected to
1 - box area / image area. Targets are timm's `mixup_target`: one-hot with label smoothing folded in
(1 - smoothing + smoothing / classes on the label, smoothing / classes elsewhere), mixed with the same lambda.

mmpretrain's ports (`train_cfg.augments=[Mixup(alpha=0.8), CutMix(alpha=1.0)]`) differ in small ways: they mix
with a random permutation of the batch instead of its reverse; RandomBatchAugment picks Mixup or CutMix with
equal chance and always mixes (prob 1); its CutMix box ends at centre + cut // 2 (timm: + (cut + 1) // 2); label
smoothing sits in the loss (LabelSmoothLoss 'original' on the mixed one-hot, which gives the same targets).

Everything is jnp with static shapes: `mixup_cutmix` jits; `sample_params` + `mix_images` / `mix_targets` split
the random draws from their use (tests feed fixed lambdas and boxes).
"""
import jax
import jax.numpy as jnp


def cutmix_box(lam, center_y, center_x, height, width):
  """timm's rand_bbox for a drawn centre: a box of sides int(size * sqrt(1 - lam)) around (center_y, center_x),
  clipped to the image. Returns int32 [4] (top, bottom, left, right), bottom/right exclusive."""
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = (height * ratio).astype(jnp.int32)
  cut_w = (width * ratio).astype(jnp.int32)
  top = jnp.clip(center_y - cut_h // 2, 0, height)
  bottom = jnp.clip(center_y + (cut_h + 1) // 2, 0, height)
  left = jnp.clip(center_x - cut_w // 2, 0, width)
  right = jnp.clip(center_x + (cut_w + 1) // 2, 0, width)
  return jnp.stack([top, bottom, left, right]).astype(jnp.int32)


def box_lam(box, height, width):
  """timm's lambda correction: 1 - box area / image area."""
  area = (box[1] - box[0]) * (box[3] - box[2])
  return 1.0 - area.astype(jnp.float32) / (height * width)


def sample_params(key, height, width, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=1.0,
                  correct_lam=True):
  """timm Mixup._params_per_batch + cutmix_bbox_and_lam: returns (lam, box, use_cutmix).

  lam is float32 [] (1 where the batch is left alone; for CutMix the corrected lambda if correct_lam), box int32
  [4] (top, bottom, left, right; meaningful only when use_cutmix), use_cutmix bool [].
  """
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    raise ValueError(f'mixup_cutmix needs mixup_alpha > 0 or cutmix_alpha > 0, got {mixup_alpha}, {cutmix_alpha}')
  apply_key, switch_key, lam_key, y_key, x_key = jax.random.split(key, 5)
  apply = jax.random.uniform(apply_key) < prob
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(switch_key) < switch_prob
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  # one Beta draw with the chosen alpha (a Beta sampler is costly to compile; two would double it)
  alpha = jnp.where(use_cutmix, cutmix_alpha, mixup_alpha)
  lam = jax.random.beta(lam_key, alpha, alpha)
  box = cutmix_box(lam, jax.random.randint(y_key, (), 0, height), jax.random.randint(x_key, (), 0, width),
                   height, width)
  if correct_lam:
    lam = jnp.where(use_cutmix, box_lam(box, height, width), lam)
  use_cutmix = use_cutmix & apply
  return jnp.where(apply, lam, 1.0).astype(jnp.float32), box, use_cutmix


def mix_images(images, lam, box, use_cutmix):
  """Mixes the batch [B, H, W, C] with its reverse: the box pasted from it (CutMix) or lam * x + (1 - lam) * x[::-1]."""
  reversed_images = images[::-1]
  rows = jnp.arange(images.shape[1])[:, None]
  cols = jnp.arange(images.shape[2])[None, :]
  in_box = (rows >= box[0]) & (rows < box[1]) & (cols >= box[2]) & (cols < box[3])
  cut = jnp.where(in_box[None, :, :, None], reversed_images, images)
  mixed = (images * lam + reversed_images * (1.0 - lam)).astype(images.dtype)
  return jnp.where(use_cutmix, cut, mixed)


def mix_targets(labels, num_classes, lam, label_smoothing=0.1):
  """timm's mixup_target: smoothed one-hot targets [B, num_classes] mixed with their reverse by lam."""
  off_value = label_smoothing / num_classes
  on_value = 1.0 - label_smoothing + off_value
  targets = jnp.where(jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_), on_value, off_value)
  targets = targets.astype(jnp.float32)
  return targets * lam + targets[::-1] * (1.0 - lam)


def mixup_cutmix(key, images, labels, num_classes, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=1.0,
                 label_smoothing=0.1, correct_lam=True):
  """timm Mixup(mode='batch') on a batch of normalized images [B, H, W, C] and int labels [B].

  Returns (mixed images, soft targets [B, num_classes] float32 summing to 1). Draw `key` once per global batch:
  the whole batch shares lambda and box.
  """
  lam, box, use_cutmix = sample_params(key, images.shape[1], images.shape[2], mixup_alpha, cutmix_alpha,
                                       switch_prob, prob, correct_lam)
  return mix_images(images, lam, box, use_cutmix), mix_targets(labels, num_classes, lam, label_smoothing)
