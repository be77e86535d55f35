import jax
import jax.numpy as jnp
import numpy as np

from configs.mae import get_config
from jssl import losses
from jssl.data.masks import random_masking
from jssl.methods import mae


def tiny_config():
  c = get_config('demo')
  c.backbone.kwargs.update({'depth': 1, 'img_size': 16, 'patch_size': 4})
  c.data.views[0]['size'] = 16
  c.model.update({'decoder_embed_dim': 32, 'decoder_depth': 1, 'decoder_num_heads': 2})
  return c


def official_patchify(imgs_nchw, p):
  """The official MAE patchify on NCHW arrays (einsum 'nchpwq->nhwpqc')."""
  n, c, h, w = imgs_nchw.shape
  x = imgs_nchw.reshape(n, c, h // p, p, w // p, p)
  x = np.einsum('nchpwq->nhwpqc', x)
  return x.reshape(n, (h // p) * (w // p), p * p * c)


def test_patchify_matches_official_and_roundtrips():
  x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
  patches = mae.patchify(jnp.asarray(x), 4)
  np.testing.assert_array_equal(patches, official_patchify(x.transpose(0, 3, 1, 2), 4))
  np.testing.assert_array_equal(mae.unpatchify(patches, 4), x)


def test_norm_pix_targets():
  x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype(np.float32)
  t = np.asarray(mae.pixel_targets(jnp.asarray(x), 4, norm_pix=True))
  p = official_patchify(x.transpose(0, 3, 1, 2), 4)
  expected = (p - p.mean(-1, keepdims=True)) / np.sqrt(p.var(-1, ddof=1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(t, expected, rtol=1e-5, atol=1e-5)


def test_loss_is_on_masked_patches_only():
  c = tiny_config()
  method = mae.Method(c)
  images = jnp.asarray(np.random.default_rng(2).normal(size=(3, 16, 16, 3)), jnp.float32)
  params, model_state, method_state = jax.jit(method.init)(jax.random.key(0), {'views': (images,)})
  rng = jax.random.key(7)
  loss, _ = jax.jit(method.loss, static_argnums=5)(params, model_state, method_state, {'views': (images,)}, rng, 0)
  # recompute with the same mask: the loss is the masked mean, not the mean over every patch
  mask_rng, dropout_rng = jax.random.split(rng)
  ids_keep, mask, ids_restore = random_masking(mask_rng, 3, method.num_patches, c.model.mask_ratio)
  assert int(mask.sum()) == 3 * (method.num_patches - int(method.num_patches * 0.25))
  pred = jax.jit(lambda p: method.net.apply({'params': p}, images, ids_keep, ids_restore, train=True,
                                            rngs={'dropout': dropout_rng}))(params)
  target = mae.pixel_targets(images, 4, True)
  np.testing.assert_allclose(loss, losses.masked_mse(pred, target, mask), rtol=1e-6)
  all_patches = losses.masked_mse(pred, target, jnp.ones_like(mask))
  assert abs(float(loss) - float(all_patches)) > 1e-4
  # changing the target pixels of visible patches leaves the loss unchanged
  visible = 1 - mask
  shifted = images + 5. * mae.unpatchify(jnp.broadcast_to(visible[..., None], target.shape), 4)
  loss_shifted_target = losses.masked_mse(pred, mae.pixel_targets(shifted, 4, True), mask)
  np.testing.assert_allclose(loss_shifted_target, loss, rtol=1e-6)


def test_encoder_sees_only_visible_patches():
  c = tiny_config()
  method = mae.Method(c)
  images = jnp.zeros((2, 16, 16, 3))
  params, _, _ = method.init(jax.random.key(0), {'views': (images,)})
  ids_keep, _, _ = random_masking(jax.random.key(1), 2, method.num_patches, 0.75)
  tokens = method.net.apply({'params': params}, images, train=False, ids_keep=ids_keep,
                            method=lambda m, x, train, ids_keep: m.backbone(x, train=train, ids_keep=ids_keep))
  assert tokens.shape == (2, 1 + 4, 192)  # cls + 25% of 16 patches, no mask tokens in the encoder


def test_decoder_attention_head_chunks_must_divide_heads():
  import pytest
  c = tiny_config()
  c.model.decoder_attention_head_chunks = 3
  with pytest.raises(ValueError, match=r'^config.model.decoder_attention_head_chunks=3 must divide '
                                       r'config.model.decoder_num_heads=2$'):
    mae.Method(c)


# tests/methods/test_every_method.py: 1 vs 8 devices, kill-and-resume and the demo, made small by these
# remat on, as in the ViT-L/H configs: its backward (jssl/models/layers.py remat_call) is checked sharded too
DEVICES = {'backbone.kwargs.depth': 2, 'backbone.kwargs.img_size': 16, 'data.views.0.size': 16,
           'model.decoder_embed_dim': 32, 'model.decoder_depth': 1, 'model.decoder_num_heads': 2, 'remat': True}
DEVICE_MESHES = ('dp8', 'fsdp')
RESUME = {**DEVICES, 'remat': False, 'batch_size': 64, 'total_steps': 30}
