"""MAE (He et al. 2021): mask 75% of the patches at random per sample, encode only the visible ones with a
ViT, decode all positions with a light transformer, and regress the (per-patch normalized) pixels of the masked
patches. The mask comes from the step's PRNG key, so it is reproducible and needs no host work."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl import losses
from jssl.data.masks import random_masking
from jssl.methods import base
from jssl.models import build_backbone
from jssl.models.necks import MAEDecoder
from jssl.models.vit import token_features


def patchify(images, patch_size):
  """[B, H, W, C] -> [B, N, p*p*C] in row-major patch order, pixels ordered (p, q, c) like the official MAE."""
  b, h, w, c = images.shape
  p = patch_size
  x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches, patch_size, channels=3):
  b, n, _ = patches.shape
  g = int(round(n ** 0.5))
  p = patch_size
  x = patches.reshape(b, g, g, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, g * p, g * p, channels)


def pixel_targets(images, patch_size, norm_pix):
  target = patchify(images.astype(jnp.float32), patch_size)
  if norm_pix:  # per-patch normalization: the variant MAE reports as better representations
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, keepdims=True, ddof=1)  # unbiased, as torch.var in the official code
    target = (target - mean) / jnp.sqrt(var + 1e-6)
  return target


class MAENet(nn.Module):
  """Params are named as in MMSelfSup: `backbone` (the ViT encoder) and `neck` (the decoder)."""
  backbone: nn.Module
  neck: nn.Module
  feature: str = 'cls'

  def __call__(self, images, ids_keep, ids_restore, train: bool = True):
    tokens = self.backbone(images, train=train, ids_keep=ids_keep)
    return self.neck(tokens, ids_restore, train=train)

  def features(self, images):
    return token_features(self.backbone(images, train=False), self.feature)


class Method(base.Method):
  def __init__(self, config, total_steps=0, steps_per_epoch=0, num_records=0):
    del total_steps, steps_per_epoch, num_records  # no schedule or per-image state inside the method
    dtype = base.compute_dtype(config)
    m = config.model
    self.mask_ratio = m.mask_ratio
    self.norm_pix = m.norm_pix
    self.patch_size = config.backbone.kwargs.patch_size
    image_size = config.data.views[0]['size']
    self.num_patches = (image_size // self.patch_size) ** 2
    chunks = m.get('decoder_attention_head_chunks', 1)
    if chunks < 1 or m.decoder_num_heads % chunks:
      raise ValueError(f'config.model.decoder_attention_head_chunks={chunks} must divide '
                       f'config.model.decoder_num_heads={m.decoder_num_heads}')
    kwargs = {'remat': config.get('remat', False), **config.backbone.get('kwargs', {})}
    encoder = build_backbone(config.backbone.name, dtype=dtype, **kwargs)
    decoder = MAEDecoder(num_patches=self.num_patches, patch_size=self.patch_size,
                         decoder_embed_dim=m.decoder_embed_dim, decoder_depth=m.decoder_depth,
                         decoder_num_heads=m.decoder_num_heads, dtype=dtype, remat=config.get('remat', False),
                         attention_head_chunks=chunks)
    self.net = MAENet(backbone=encoder, neck=decoder, feature=m.get('feature', 'cls'))

  def init(self, rng, batch):
    images = batch['views'][0]
    ids_keep, _, ids_restore = random_masking(jax.random.key(0), images.shape[0], self.num_patches, self.mask_ratio)
    return (*self.init_net(rng, images, ids_keep, ids_restore), {})

  def loss(self, params, model_state, method_state, batch, rng, step):
    images = batch['views'][0]
    mask_rng, dropout_rng = jax.random.split(rng)
    ids_keep, mask, ids_restore = random_masking(mask_rng, images.shape[0], self.num_patches, self.mask_ratio)
    pred, model_state = self.forward(params, model_state, images, ids_keep, ids_restore, rngs={'dropout': dropout_rng})
    loss = losses.masked_mse(pred, pixel_targets(images, self.patch_size, self.norm_pix), mask)
    return loss, ({'loss': loss}, model_state, method_state)
