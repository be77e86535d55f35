import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.maskfeat import get_config
from jssl import losses, optim
from jssl.methods import maskfeat
from jssl.models.hog import hog_features


def tiny_config(size=224, patch=16, pool=8, window=16, depth=1):
  """A 32-wide ViT on a 14 x 14 patch grid (the reference's HOGGenerator hard-wires 14 patches per side)."""
  c = get_config('demo')
  c.backbone.kwargs.update({'img_size': size, 'patch_size': patch, 'embed_dim': 32, 'depth': depth,
                            'num_heads': 2})
  c.data.views[0]['size'] = size
  c.model.update({'num_masking_patches': 78, 'min_num_patches': 15, 'hog_pool': pool, 'hog_window': window})
  return c


def images(n=2, size=224, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, size, size, 3)), jnp.float32)


def test_configs():
  c = get_config()
  assert c.method == 'maskfeat' and c.batch_size == 2048 and c.epochs == 300 and c.dtype == 'bfloat16'
  assert (c.optimizer.name, c.optimizer.lr, c.optimizer.betas, c.optimizer.weight_decay) == (
      'adamw', 2e-4 * 8, (0.9, 0.999), 0.05)
  assert c.optimizer.grad_clip_norm == 0.02 and c.optimizer.no_decay_names == ('mask_token',)
  assert (c.schedule.warmup_epochs, c.schedule.warmup_start_factor, c.schedule.min_lr) == (30, 1e-6, 1e-6)
  assert (c.model.num_masking_patches, c.model.min_num_patches) == (78, 15)  # MaskFeatMaskGenerator: int(0.4 * 196)
  assert (c.model.hog_nbins, c.model.hog_pool, c.model.hog_window) == (9, 8, 16)
  assert c.data.views[0]['scale'] == (0.5, 1.0) and c.data.views[0]['interpolation'] == 'bicubic'
  with pytest.raises(ValueError, match='valid: demo'):
    get_config('nope')


def test_init_and_weight_decay_are_the_references():
  c = tiny_config(size=32, patch=8, pool=4, window=8)
  c.model.update({'num_masking_patches': 4, 'min_num_patches': 1})
  c.backbone.kwargs.embed_dim = 256
  params, _, _ = jax.jit(maskfeat.Method(c).init)(jax.random.key(0), {'views': (images(size=32),)})
  # MaskFeatViT's init: every linear / conv kernel truncated normal 0.02 (jssl's ViT default is Xavier uniform,
  # std ~0.05 here), cut at +-2 absolute as torch's trunc_normal_; the neck's too, with zero bias
  bb = params['backbone']
  for kernel in (bb['blocks_0']['attn']['qkv']['kernel'], bb['blocks_0']['mlp']['fc1']['kernel'],
                 bb['patch_embed']['proj']['kernel'], params['neck']['fc']['kernel']):
    assert abs(float(np.std(kernel)) - 0.02) < 1e-3 and np.abs(kernel).max() > 0.06  # not cut at 2 std
  assert np.all(np.asarray(params['neck']['fc']['bias']) == 0)
  assert params['neck']['fc']['kernel'].shape == (256, 3 * 9 * 2 * 2) and bb['mask_token'].shape == (1, 1, 256)
  # the reference's paramwise_cfg: bias / norm / flat (1-D) decay mult 0 and the mask_token key; pos_embed and
  # cls_token (3-D, their custom keys are commented out in the reference config) do decay
  mask = optim.decay_mask(params, c.optimizer.no_decay_names)
  decays = mask['backbone']
  assert not decays['mask_token'] and decays['pos_embed'] and decays['cls_token']
  assert decays['patch_embed']['proj']['kernel'] and not decays['patch_embed']['proj']['bias']
  assert not decays['norm']['scale'] and not decays['blocks_0']['norm1']['bias']
  assert mask['neck']['fc']['kernel'] and not mask['neck']['fc']['bias']


def torch_maskfeat(c):
  from tests.parity import build_mmpretrain
  k = c.backbone.kwargs
  model = build_mmpretrain(dict(
      type='MaskFeat',
      backbone=dict(type='MaskFeatViT', arch=dict(embed_dims=k.embed_dim, num_layers=k.depth, num_heads=k.num_heads,
                                                  feedforward_channels=4 * k.embed_dim),
                    img_size=k.img_size, patch_size=k.patch_size),
      neck=dict(type='LinearNeck', in_channels=k.embed_dim, out_channels=108, norm_cfg=None),
      head=dict(type='MIMHead', loss=dict(type='PixelReconstructionLoss', criterion='L2')),
      target_generator=dict(type='HOGGenerator', nbins=c.model.hog_nbins, pool=c.model.hog_pool,
                            gaussian_window=c.model.hog_window)))
  return model


# the reference's own sizes (16-px patches, 8-px cells, window 16) and small ones (4-px patches, 2-px cells,
# window 8) on the 14 x 14 grid the reference's HOG reshape needs
@pytest.mark.parametrize('size,patch,pool,window', [(224, 16, 8, 16), (56, 4, 2, 8)])
def test_loss_matches_mmpretrain_maskfeat(size, patch, pool, window):
  torch = pytest.importorskip('torch')
  pytest.importorskip('mmpretrain')
  from mmpretrain.structures import DataSample
  from jssl.convert import vit as vit_convert
  from tests.parity import assert_grads_close, dense_state, nhwc_to_torch, tensors
  c = tiny_config(size, patch, pool, window, depth=2)
  method = maskfeat.Method(c)
  x = images(n=2, size=size)
  batch = {'views': (x,)}
  params, model_state, method_state = jax.jit(method.init)(jax.random.key(0), batch)
  params['backbone']['mask_token'] = jax.random.normal(jax.random.key(5), (1, 1, 32))  # not ~0: it matters
  params['neck']['fc']['bias'] = 0.1 * jax.random.normal(jax.random.key(6), (108,))
  rng = jax.random.key(3)
  (loss, _), grads = jax.jit(jax.value_and_grad(
      lambda p: method.loss(p, model_state, method_state, batch, rng, 0), has_aux=True))(params)

  model = torch_maskfeat(c)
  arch = {'name': c.backbone.name, **dict(c.backbone.kwargs), 'mask_token': True}
  state = {f'backbone.{k}': v for k, v in
           tensors(vit_convert.to_torch({'params': params['backbone']}, 'mmpretrain', arch)).items()}
  state.update(dense_state(params['neck']['fc'], 'neck.fc'))
  missing, unexpected = model.load_state_dict(state, strict=False)
  assert not unexpected and all(k.startswith('target_generator.') for k in missing), (missing, unexpected)
  mask = np.array(jax.jit(method.masks, static_argnums=1)(jax.random.split(rng)[0], 2)).reshape(2, 14, 14)  # the step's mask
  samples = [DataSample().set_mask(torch.from_numpy(m)) for m in mask]
  ref_loss = model.loss(nhwc_to_torch(x), samples)['loss']
  ref_loss.backward()
  np.testing.assert_allclose(loss, ref_loss.item(), rtol=1e-4)
  assert_grads_close(grads['backbone']['mask_token'].ravel(), model.backbone.mask_token.grad.numpy().ravel())
  assert_grads_close(grads['neck']['fc']['kernel'], model.neck.fc.weight.grad.numpy().T)


def test_loss_is_on_masked_patches_only():
  c = tiny_config(size=32, patch=4, pool=2, window=8)
  c.model.update({'num_masking_patches': 25, 'min_num_patches': 4})
  method = maskfeat.Method(c)
  x = images(n=3, size=32, seed=2)
  params, model_state, method_state = jax.jit(method.init)(jax.random.key(0), {'views': (x,)})
  rng = jax.random.key(7)
  loss, _ = jax.jit(lambda p: method.loss(p, model_state, method_state, {'views': (x,)}, rng, 0))(params)
  mask_rng, dropout_rng = jax.random.split(rng)
  mask = jax.jit(method.masks, static_argnums=1)(mask_rng, 3)
  assert mask.shape == (3, 64) and np.all(np.asarray(mask.sum(1)) == 25)
  predict = jax.jit(lambda images: method.net.apply({'params': params}, images, mask, train=True,
                                                    rngs={'dropout': dropout_rng}))
  pred = np.asarray(predict(x))
  target = np.asarray(hog_features(x, pool=2, window=8, patch_size=4))
  assert pred.shape == target.shape == (3, 64, 108)
  # by hand: squared error averaged over the 108 HOG dims of a patch, then over the 75 masked patches
  per_patch = ((pred.astype(np.float64) - target) ** 2).mean(-1)
  m = np.asarray(mask, bool)
  np.testing.assert_allclose(loss, per_patch[m].mean(), rtol=1e-5)
  assert abs(per_patch[m].mean() - per_patch.mean()) > 1e-3 * per_patch.mean()
  # HOG targets of visible patches do not enter: the loss on another image's targets there is the same
  other = np.asarray(hog_features(images(n=3, size=32, seed=9), pool=2, window=8, patch_size=4))
  mixed = np.where(m[..., None], target, other)
  np.testing.assert_allclose(losses.masked_mse(pred, mixed, mask), loss, rtol=1e-6)
  # and the masked inputs are really hidden: the prediction at a masked patch ignores that patch's pixels
  patch = np.zeros((3, 8, 8), bool)
  b, i = 0, int(np.argmax(m[0]))
  patch[b, i // 8, i % 8] = True
  shifted = x + 3. * jnp.repeat(jnp.repeat(jnp.asarray(patch, jnp.float32), 4, 1), 4, 2)[..., None]
  np.testing.assert_allclose(predict(shifted), pred, rtol=1e-5, atol=1e-6)
  assert not np.allclose(predict(x + 3. * (1 - patch.repeat(4, 1).repeat(4, 2)[..., None])), pred, atol=1e-3)


def test_bad_config_is_named():
  c = tiny_config(size=32, patch=4, pool=2, window=8)
  c.model.num_masking_patches = 50
  with pytest.raises(ValueError, match='config.model.num_masking_patches'):
    maskfeat.Method(c)
  c = tiny_config(size=32, patch=4, pool=3, window=8)
  c.model.num_masking_patches = 25
  with pytest.raises(ValueError, match='config.model.hog_window / hog_pool'):
    maskfeat.Method(c)


def test_extract_features():
  c = tiny_config(size=32, patch=4, pool=2, window=8)
  c.model.update({'num_masking_patches': 25, 'min_num_patches': 4})
  x = images(n=2, size=32)
  for feature in ('cls', 'mean'):
    c.model.feature = feature
    method = maskfeat.Method(c)
    params, model_state, _ = jax.jit(method.init)(jax.random.key(0), {'views': (x,)})
    tokens = method.net.apply({'params': params}, x, method=lambda m, x: m.backbone(x, train=False))
    expected = tokens[:, 0] if feature == 'cls' else tokens[:, 1:].mean(1)
    np.testing.assert_allclose(method.extract(params, model_state, x), expected, rtol=1e-6)


# tests/methods/test_every_method.py: 1 vs 8 devices, kill-and-resume and the demo, made small by these
SMALL = {'backbone.kwargs.img_size': 16, 'backbone.kwargs.patch_size': 4, 'data.views.0.size': 16,
         'model.hog_pool': 2, 'model.hog_window': 8, 'model.num_masking_patches': 6, 'model.min_num_patches': 2}
DEVICES = {**SMALL, 'backbone.kwargs.depth': 2}  # 192 wide, as MAE's case: big enough for the fsdp mesh to shard
# block masks from the step's rng
RESUME = {**SMALL, 'backbone.kwargs.depth': 2, 'backbone.kwargs.embed_dim': 32, 'backbone.kwargs.num_heads': 2,
          'batch_size': 64, 'total_steps': 30}
