"""Relative Location (Doersch et al. 2015, "context prediction"): a 3 x 3 grid of patches is cut from each image, and
for each of the 8 neighbours the network classifies where it lies relative to the centre patch (8 classes), from
the concatenated pooled backbone features of the pair: [neighbour, centre] -> RelativeLocNeck -> ClsHead.

The host does Resize + RandomCrop (255 px in the reference); the device does grayscale (p=0.66) and normalization
(config.data.augment), then here: the grid of cells (255 // 3 = 85 px), one random patch per cell (64 px, i.e. a
jitter of up to 21 px, drawn per image and per cell from the step's key), and the pairs. Labels follow the raster
order of the neighbours, skipping the centre: 0 1 2 / 3 . 4 / 5 6 7 (as MMSelfSup 0.x and the paper).

The backbone runs once on the 8N neighbours and once on the N centres, in that order, as MMSelfSup runs it on the
neighbours and on the 8x repeated centres: BatchNorm statistics of 8 identical copies equal those of one, so the
loss and gradients are the reference's at 9N instead of 16N patch forwards; the running statistics are updated
twice per step, as there. Batches are image-major (an image's 8 pairs side by side), so patches stay on the device
of their image; BatchNorm over the global batch is SyncBN.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jssl.methods import base
from jssl.models import build_backbone
from jssl.models.heads import ClsHead
from jssl.models.necks import RelativeLocNeck, global_avg_pool

GRID = 3
CENTRE = 4                                     # raster index of the centre cell
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)          # raster indices of the cells labelled 0..7


def patch_grid(key, images, patch_size):
  """[B, H, W, C] -> [B, 9, patch, patch, C]: cell (r, c) of the 3 x 3 grid of (H // 3)-px cells, raster order,
  holds a patch_size crop at an offset uniform in [0, cell - patch_size] per axis, drawn per image and cell."""
  cell = images.shape[1] // GRID
  if images.shape[1] != images.shape[2] or patch_size > cell:
    raise ValueError(f'config.model.patch_size: {patch_size} px patches need square views with 3 cells of at least '
                     f'that size, got {images.shape[1]}x{images.shape[2]} views')
  offsets = jax.random.randint(key, (images.shape[0], GRID * GRID, 2), 0, cell - patch_size + 1)
  cells = jnp.stack(jnp.meshgrid(jnp.arange(GRID), jnp.arange(GRID), indexing='ij'), -1).reshape(GRID * GRID, 2)
  corners = cells * cell + offsets                                   # [B, 9, 2] (top, left)

  def crop(image, corner):
    return jax.lax.dynamic_slice(image, (corner[0], corner[1], 0), (patch_size, patch_size, image.shape[-1]))

  return jax.vmap(jax.vmap(crop, in_axes=(None, 0)))(images, corners)


def pairs(patches):
  """[B, 9, p, p, C] -> neighbours [8B, p, p, C] (image-major), centres [B, p, p, C], labels [8B]."""
  neighbours = patches[:, jnp.array(NEIGHBOURS)]
  labels = jnp.tile(jnp.arange(len(NEIGHBOURS), dtype=jnp.int32), patches.shape[0])
  return neighbours.reshape(-1, *patches.shape[2:]), patches[:, CENTRE], labels


class RelativeLocNet(base.BackboneNet):
  """backbone on neighbours and centres -> [neighbour, centre] pooled features -> neck -> head.
  Params: {'backbone': ..., 'neck': ..., 'head': ...}."""
  neck: nn.Module
  head: nn.Module

  def __call__(self, neighbours, centres, train: bool = True):
    pooled = lambda x: global_avg_pool(self.backbone(x, train=train)[-1])
    neighbour_features = pooled(neighbours)                         # [8B, C]
    centre_features = jnp.repeat(pooled(centres), neighbours.shape[0] // centres.shape[0], axis=0)
    return self.head(self.neck(jnp.concatenate([neighbour_features, centre_features], -1), train=train))


class Method(base.Method):
  def __init__(self, config, total_steps=0, steps_per_epoch=0, num_records=0):
    del total_steps, steps_per_epoch, num_records  # no schedule or per-image state inside the method
    dtype = base.compute_dtype(config)
    m = config.model
    self.patch_size = m.patch_size
    self.net = RelativeLocNet(
        backbone=build_backbone(config.backbone.name, dtype=dtype, **config.backbone.get('kwargs', {})),
        neck=RelativeLocNeck(out_channels=m.neck_out_channels, dropout_rate=m.neck_dropout, dtype=dtype),
        head=ClsHead(num_classes=len(NEIGHBOURS), init_std=m.head_init_std, dtype=dtype))

  def init(self, rng, batch):
    neighbours, centres, _ = pairs(patch_grid(jax.random.key(0), batch['views'][0], self.patch_size))
    return (*self.init_net(rng, neighbours, centres), {})

  def loss(self, params, model_state, method_state, batch, rng, step):
    patch_rng, dropout_rng = jax.random.split(rng)
    neighbours, centres, labels = pairs(patch_grid(patch_rng, batch['views'][0], self.patch_size))
    logits, model_state = self.forward(params, model_state, neighbours, centres, rngs={'dropout': dropout_rng})
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracy = (logits.argmax(-1) == labels).mean()
    return loss, ({'loss': loss, 'accuracy': accuracy}, model_state, method_state)
