"""MaskFeat (Wei et al. 2022): replace ~40% of the patch embeddings by a learned mask token in BEiT-style blocks,
encode the whole grid with a ViT, map every patch token linearly to the HOG descriptor of its patch, and regress
the HOG of the masked patches (MSE). The mask comes from the step's PRNG key and the HOG targets are computed from
the (normalized) input images inside the step, so neither needs host work.

As mmpretrain's MaskFeat: MaskFeatViT (the ViT with a mask token, truncated-normal 0.02 init of every linear and
conv weight: its init_mode='maskfeat' unless config.backbone.kwargs names another), LinearNeck 768 -> 108 (truncated normal 0.02, bias 0) applied to each token, HOGGenerator targets
(9 bins, 8-px cells, Gaussian window 16) and PixelReconstructionLoss L2: the MSE averaged over the 108 channels of
each patch, then over the masked patches.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl import losses
from jssl.data.masks import block_masking
from jssl.methods import base
from jssl.models import build_backbone
from jssl.models.hog import hog_features
from jssl.models.necks import LinearNeck
from jssl.models.vit import VisionTransformer, token_features

# torch's trunc_normal_(std=0.02) cuts at +-2 absolute, i.e. +-100 std: in effect N(0, 0.02^2)
trunc_normal = nn.initializers.truncated_normal(0.02, lower=-100., upper=100.)


class MaskFeatNet(nn.Module):
  """Params as in mmpretrain: `backbone` (the ViT with its mask_token) and `neck` (the linear HOG predictor)."""
  backbone: nn.Module
  neck: nn.Module
  feature: str = 'cls'

  def __call__(self, images, mask, train: bool = True):
    tokens = self.backbone(images, train=train, mask=mask)  # [B, 1 + N, D], the whole grid
    return self.neck(tokens[:, 1:], train=train)  # [B, N, HOG dims]; the reference drops the cls prediction too

  def features(self, images):
    return token_features(self.backbone(images, train=False), self.feature)


class Method(base.Method):
  def __init__(self, config, total_steps=0, steps_per_epoch=0, num_records=0):
    del total_steps, steps_per_epoch, num_records  # no schedule or per-image state inside the method
    dtype = base.compute_dtype(config)
    m = config.model
    kwargs = {'remat': config.get('remat', False), 'init_mode': 'maskfeat', **config.backbone.get('kwargs', {}),
              'mask_token': True}
    encoder = build_backbone(config.backbone.name, dtype=dtype, **kwargs)
    if not isinstance(encoder, VisionTransformer) or encoder.output != 'tokens' or encoder.use_fc_norm:
      raise ValueError(f"config.backbone: MaskFeat needs a ViT returning all tokens (output='tokens'), got "
                       f"'{config.backbone.name}' {dict(config.backbone.get('kwargs', {}))}")
    if m.feature not in ('cls', 'mean'):
      raise ValueError(f"config.model.feature: 'cls' or 'mean', got '{m.feature}'")
    self.patch_size = encoder.patch_size
    image_size = config.data.views[0]['size']
    self.grid = image_size // self.patch_size
    self.num_masking_patches = m.num_masking_patches
    self.min_num_patches = m.min_num_patches
    reachable = (self.grid - 1) ** 2  # BEiT's blocks never touch the last row / column
    if not 0 < self.num_masking_patches <= reachable:
      raise ValueError(f'config.model.num_masking_patches: must be in 1..{reachable} for the {self.grid} x '
                       f'{self.grid} patch grid, got {self.num_masking_patches}')
    self.hog = dict(nbins=m.hog_nbins, pool=m.hog_pool, window=m.hog_window, patch_size=self.patch_size)
    if image_size % m.hog_window or self.patch_size % m.hog_pool:
      raise ValueError(f'config.model.hog_window / hog_pool: the image size ({image_size}) must be a multiple of '
                       f'the Gaussian window ({m.hog_window}) and the patch size ({self.patch_size}) of the cell '
                       f'({m.hog_pool})')
    hog_dims = 3 * m.hog_nbins * (self.patch_size // m.hog_pool) ** 2
    neck = LinearNeck(out_channels=hog_dims, with_avg_pool=False, kernel_init=trunc_normal, dtype=dtype)
    self.net = MaskFeatNet(backbone=encoder, neck=neck, feature=m.feature)

  def masks(self, key, batch_size):
    """[B, N] block masks (1 = masked), row-major over the patch grid like the tokens."""
    mask = block_masking(key, batch_size, self.grid, self.grid, self.num_masking_patches,
                         min_num_patches=self.min_num_patches)
    return mask.reshape(batch_size, self.grid * self.grid)

  def init(self, rng, batch):
    images = batch['views'][0]
    mask = jnp.zeros((images.shape[0], self.grid * self.grid), jnp.float32)
    params, model_state = self.init_net(rng, images, mask)
    return params, model_state, {}

  def loss(self, params, model_state, method_state, batch, rng, step):
    images = batch['views'][0]
    mask_rng, dropout_rng = jax.random.split(rng)
    mask = self.masks(mask_rng, images.shape[0])
    pred, model_state = self.forward(params, model_state, images, mask, rngs={'dropout': dropout_rng})
    target = hog_features(images, **self.hog)  # of the normalized images, as the reference (no gradient needed)
    loss = losses.masked_mse(pred, target, mask)
    return loss, ({'loss': loss}, model_state, method_state)
