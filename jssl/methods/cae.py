"""CAE (Chen et al. 2022, "Context Autoencoder for Self-Supervised Representation Learning").

Per image, a BEiT block mask hides M of the N patches. The encoder (a ViT) sees only the visible patches; a
latent regressor predicts the masked patches' representations from them (mask queries cross-attending to the
visible tokens, the masked positions as queries' positions); a decoder maps those predictions to the DALL-E
tokenizer's token ids of the masked patches. A teacher, the momentum copy of the encoder, encodes the masked
patches alone; the regressor's predictions are aligned with its latents:

    loss = CE(decoder logits, dalle tokens of the masked patches) + lambd * MSE(latent_pred, sg(teacher latents))

As mmpretrain 1.2's `CAE` (+ CAEPretrainViT, CAENeck, CAEHead, CAELoss, the `DALL-E` target generator):
- The mask: BEiTMaskGenerator on the 14 x 14 grid, 75 patches (min 16 per block), drawn on device from the step's
  key. Patches keep row-major order on both sides (the reference's x[~mask] / x[mask]).
- Encoder: fixed 2-D sin-cos positions (the cls row zero), q/v biases, layer scale 0.1, final LayerNorm; init as
  CAEPretrainViT (the ViT's init_mode='cae' unless config.backbone.kwargs names another): Linears Xavier-uniform,
  patch projection truncated normal (0.02), cls token truncated normal (0.02). The sin-cos table is jssl's (MAE's), a channel permutation of mmpretrain's: an equivalent model.
- Teacher (`method_state['target']`, jssl/parts/ema.py: {'params': {'backbone': ...}}, the reference's `teacher`):
  at init a copy of the encoder. The reference encodes the targets with the teacher and then, in the same
  iteration and before the optimizer step, updates it: teacher <- m * teacher + (1 - m) * encoder, so the targets
  of iteration i come from the encoder of iteration i - 1 (m = base_momentum = 0 in the recipe). `loss` does the
  same (it returns the updated teacher in method_state); `after_step` has nothing to do.
- Tokenizer: the frozen DALL-E encoder (jssl/models/dalle.py) on the 112-px resize of the same crop (the view's
  `second_size`), pixels mapped to DALL-E's range as TwoNormDataPreprocessor (mean -31.875, std 318.75 on 0..255);
  argmax of its logits. Its weights live in method_state (never in params, so never optimized or decayed).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jssl.data.masks import block_masking
from jssl.methods import base
from jssl.models import build_backbone, dalle
from jssl.models.necks import CAENeck
from jssl.models.vit import VisionTransformer
from jssl.parts.ema import EmaTarget


class CAENet(nn.Module):
  """Params named as in MMSelfSup: `backbone` (the ViT encoder) and `neck` (regressor + decoder)."""
  backbone: nn.Module
  neck: nn.Module
  feature: str = 'cls'

  def __call__(self, images, ids_keep, ids_masked, train: bool = True):
    tokens = self.backbone(images, train=train, ids_keep=ids_keep)
    pos = jnp.asarray(self.backbone.sincos_table(cls_token=False))  # the encoder's own table
    return self.neck(tokens[:, 1:], pos[ids_masked], pos[ids_keep], train=train)

  def features(self, images):
    tokens = self.backbone(images, train=False)
    return tokens[:, 0] if self.feature == 'cls' else tokens[:, 1:].mean(axis=1)


def cae_loss(logits, target, latent_pred, latent_target, lambd):
  """mmpretrain's CAELoss: (cross entropy of the decoder's logits [B, M, V] against the token ids [B, M],
  lambd * mean squared error of latent_pred against the teacher's latents [B, M, D]), both means over all."""
  main = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), target).mean()
  align = jnp.mean((latent_pred.astype(jnp.float32) - jax.lax.stop_gradient(latent_target).astype(jnp.float32))
                   ** 2)
  return main, lambd * align


class Method(base.Method):
  def __init__(self, config, total_steps=0, steps_per_epoch=0, num_records=0):
    del total_steps, steps_per_epoch, num_records  # m is constant; no per-image state
    dtype = base.compute_dtype(config)
    m = config.model
    self.lambd = m.lambd
    self.ema = EmaTarget(m.base_momentum, parts=('backbone',))  # the teacher: a momentum copy of the encoder
    self.mask_cfg = dict(num_masking_patches=m.num_masking_patches, min_num_patches=m.min_num_patches,
                         max_num_patches=m.get('max_num_patches') or None, min_aspect=m.min_aspect)
    kwargs = {'remat': config.get('remat', False), 'init_mode': 'cae', **config.backbone.get('kwargs', {})}
    encoder = build_backbone(config.backbone.name, dtype=dtype, **kwargs)
    if not isinstance(encoder, VisionTransformer) or encoder.pos_embed != 'sincos' or encoder.output != 'tokens':
      raise ValueError("config.backbone: CAE needs a ViT with pos_embed='sincos' and output='tokens' (the "
                       "regressor reads the encoder's fixed positions)")
    self.grid = encoder.grid_size
    view = config.data.views[0]
    if view['size'] != encoder.img_size or (view.get('second_size') or 0) != 8 * self.grid:
      raise ValueError(f"config.data.views[0]: CAE needs size = config.backbone.kwargs.img_size "
                       f"({encoder.img_size}) and second_size = 8 x the {self.grid} x {self.grid} patch grid "
                       f"({8 * self.grid}: the DALL-E tokenizer downsamples 8x); got size {view['size']}, "
                       f"second_size {view.get('second_size')}")
    self.mean = jnp.asarray(config.data.mean, jnp.float32)
    self.std = jnp.asarray(config.data.std, jnp.float32)
    path = m.tokenizer_path
    if path == 'random':  # demos and tests only: a fixed-seed random tokenizer, said so in the config
      r = m.random_tokenizer
      self.tokenizer = dalle.random_params(r.n_hid, r.n_blk_per_group, r.vocab_size)
    else:
      self.tokenizer = dalle.load_tokenizer(path)
    vocab = dalle.encoder_for(self.tokenizer).vocab_size
    neck = CAENeck(num_classes=vocab, regressor_depth=m.regressor_depth, decoder_depth=m.decoder_depth,
                   num_heads=m.neck_num_heads, mlp_ratio=m.neck_mlp_ratio, layer_scale_init=m.neck_layer_scale_init,
                   dtype=dtype, remat=config.get('remat', False))
    self.net = CAENet(backbone=encoder, neck=neck, feature=m.get('feature', 'cls'))

  def mask(self, rng, batch_size):
    """[B, N] float32 BEiT block mask, 1 = masked, exactly num_masking_patches per row."""
    return block_masking(rng, batch_size, self.grid, self.grid, **self.mask_cfg).reshape(batch_size, -1)

  def split(self, mask):
    """(ids_keep [B, N - M], ids_masked [B, M]), each ascending: row-major order, as the reference's x[~mask]."""
    ids = jnp.argsort(mask, axis=1, stable=True)
    num_keep = mask.shape[1] - self.mask_cfg['num_masking_patches']
    return ids[:, :num_keep], ids[:, num_keep:]

  def init(self, rng, batch):
    images = batch['views'][0]
    # any mask of the right count gives the shapes (drawing a block mask would only lengthen the init's compile)
    ids = jnp.broadcast_to(jnp.arange(self.grid ** 2), (images.shape[0], self.grid ** 2))
    ids_keep, ids_masked = jnp.split(ids, [self.grid ** 2 - self.mask_cfg['num_masking_patches']], axis=1)
    params, model_state = self.init_net(rng, images, ids_keep, ids_masked)
    tokenizer = jax.tree.map(jnp.asarray, self.tokenizer)
    return params, model_state, {'target': self.ema.init(params, model_state), 'tokenizer': tokenizer}

  def targets(self, tokenizer, view):
    """Token ids [B, N] of the tokenizer's view (normalized with config.data.mean/std like every view)."""
    return dalle.tokens(tokenizer, dalle.map_pixels(view.astype(jnp.float32) * self.std + self.mean))

  def loss(self, params, model_state, method_state, batch, rng, step):
    images, tokenizer_view = batch['views'][:2]
    mask_rng, dropout_rng = jax.random.split(rng)
    ids_keep, ids_masked = self.split(self.mask(mask_rng, images.shape[0]))
    (logits, latent_pred), model_state = self.forward(params, model_state, images, ids_keep, ids_masked,
                                                      rngs={'dropout': dropout_rng})
    # the teacher encodes the masked patches alone; its latents (cls dropped) are the regressor's targets
    teacher = method_state['target']
    latent_target = self.net.backbone.apply({'params': teacher['params']['backbone']}, images, train=False,
                                            ids_keep=ids_masked)[:, 1:]
    target = jnp.take_along_axis(self.targets(method_state['tokenizer'], tokenizer_view), ids_masked, axis=1)
    main, align = cae_loss(logits, target, latent_pred, jax.lax.stop_gradient(latent_target), self.lambd)
    loss = main + align
    # the reference's momentum_update, in the same iteration, with the encoder before this step's update
    teacher = self.ema.update(teacher, jax.lax.stop_gradient(params), step)
    metrics = {'loss': loss, 'main': main, 'align': align}
    return loss, (metrics, model_state, {**method_state, 'target': teacher})
