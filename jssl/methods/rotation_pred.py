"""Rotation Prediction (Gidaris et al. 2018): every image is shown in its four right-angle rotations and the network
classifies which rotation it sees (4 classes) with a linear head on the pooled last backbone stage.

The rotations run on the device, after the host's random-resized crop + flip: jnp.rot90 on the NHWC batch is an
exact pixel permutation, and rotating after the per-channel normalization is the same as before it. Rotation k
turns the image k x 90 degrees counter-clockwise as displayed (rows top to bottom), label k -- torch.rot90(img, k,
dims=(1, 2)) on CHW, as MMSelfSup 0.x and the paper's code. The samples are image-major (an image's four rotations
side by side, as MMSelfSup's RotationPredDataPreprocessor stacks them), so each device rotates its own images;
BatchNorm over the global 4N samples is SyncBN.
"""
import flax.linen as nn
import jax.numpy as jnp
import optax

from jssl.methods import base
from jssl.models import build_backbone
from jssl.models.heads import ClsHead

NUM_ROTATIONS = 4


def rotations(images):
  """[B, H, W, C] -> ([4B, H, W, C], labels [4B]): each image at 0, 90, 180, 270 degrees counter-clockwise."""
  if images.shape[1] != images.shape[2]:
    raise ValueError(f'rotation prediction needs square views, got {images.shape[1]}x{images.shape[2]}; '
                     'config.data.views sizes are square crops')
  rotated = jnp.stack([jnp.rot90(images, k, axes=(1, 2)) for k in range(NUM_ROTATIONS)], axis=1)
  labels = jnp.tile(jnp.arange(NUM_ROTATIONS, dtype=jnp.int32), images.shape[0])
  return rotated.reshape(-1, *images.shape[1:]), labels


class BackboneClsHead(base.BackboneNet):
  """backbone -> ClsHead (pool + linear) on the last stage. Params: {'backbone': ..., 'head': ...}."""
  head: nn.Module

  def __call__(self, images, train: bool = True):
    return self.head(self.backbone(images, train=train)[-1])


class Method(base.Method):
  def __init__(self, config, total_steps=0, steps_per_epoch=0, num_records=0):
    del total_steps, steps_per_epoch, num_records  # no schedule or per-image state inside the method
    dtype = base.compute_dtype(config)
    self.net = BackboneClsHead(
        backbone=build_backbone(config.backbone.name, dtype=dtype, **config.backbone.get('kwargs', {})),
        head=ClsHead(num_classes=NUM_ROTATIONS, with_avg_pool=True, init_std=config.model.head_init_std,
                     dtype=dtype))

  def loss(self, params, model_state, method_state, batch, rng, step):
    images, labels = rotations(batch['views'][0])
    logits, model_state = self.forward(params, model_state, images)
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracy = (logits.argmax(-1) == labels).mean()
    return loss, ({'loss': loss, 'accuracy': accuracy}, model_state, method_state)
