"""SimMIM (Xie et al. 2021): replace a random 60% of the 32 x 32 blocks of the image by a learned mask token at
the Swin patch embedding, encode the whole (masked) image, predict every pixel from the last stage with one 1x1
conv + pixel shuffle, and regress the normalized input pixels with an L1 loss on the masked pixels only. The mask
comes from the step's PRNG key (no host work); MMSelfSup draws it in the data pipeline."""
import flax.linen as nn
import jax

from jssl import losses
from jssl.data.masks import simmim_masking
from jssl.methods import base
from jssl.models import build_backbone
from jssl.models.necks import SimMIMLinearDecoder


class SimMIMNet(base.BackboneNet):
  """Params are named as in MMSelfSup: `backbone` (Swin with a mask token) and `neck` (the linear decoder)."""
  neck: nn.Module

  def __call__(self, images, mask, train: bool = True):
    return self.neck(self.backbone(images, train=train, mask=mask)[-1])


class Method(base.Method):
  def __init__(self, config, total_steps=0, steps_per_epoch=0, num_records=0):
    del total_steps, steps_per_epoch, num_records  # no schedule or per-image state inside the method
    m = config.model
    kwargs = {'remat': config.get('remat', False), **config.backbone.get('kwargs', {}), 'mask_token': True}
    encoder = build_backbone(config.backbone.name, dtype=base.compute_dtype(config), **kwargs)
    self.image_size = config.data.views[0]['size']
    self.patch_size = encoder.patch_size
    self.mask_patch_size, self.mask_ratio = m.mask_patch_size, m.mask_ratio
    if self.image_size % self.mask_patch_size or self.mask_patch_size % self.patch_size:
      raise ValueError(f'config.model.mask_patch_size: {self.mask_patch_size} must divide the image size '
                       f'{self.image_size} and be a multiple of the patch size {self.patch_size}')
    # the last stage's stride: the decoder shuffles its map back to the full image
    decoder = SimMIMLinearDecoder(encoder_stride=self.patch_size * 2 ** (len(encoder.depths) - 1),
                                  dtype=base.compute_dtype(config))
    self.net = SimMIMNet(backbone=encoder, neck=decoder)

  def mask(self, rng, batch_size):
    """[B, H / patch, W / patch], 1 = masked (the reference's SimMIMMaskGenerator)."""
    return simmim_masking(rng, batch_size, self.image_size, self.mask_patch_size, self.patch_size, self.mask_ratio)

  def init(self, rng, batch):
    images = batch['views'][0]
    return (*self.init_net(rng, images, self.mask(jax.random.key(0), images.shape[0])), {})

  def loss(self, params, model_state, method_state, batch, rng, step):
    images = batch['views'][0]  # normalized: also the regression target
    mask_rng, dropout_rng = jax.random.split(rng)
    mask = self.mask(mask_rng, images.shape[0])
    pred, model_state = self.forward(params, model_state, images, mask, rngs={'dropout': dropout_rng})
    # SimMIMHead: the token mask upsampled by the model patch size to a pixel mask
    pixel_mask = mask.repeat(self.patch_size, axis=1).repeat(self.patch_size, axis=2)
    loss = losses.masked_pixel_loss(pred, images, pixel_mask, 'L1')
    return loss, ({'loss': loss}, model_state, method_state)
