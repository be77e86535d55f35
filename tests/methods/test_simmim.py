import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.simmim import get_config
from jssl import losses, optim
from jssl.methods import simmim
from jssl.models.necks import SimMIMLinearDecoder

# the parity model: a 2-stage Swin, 16 wide, 4-px patches of 32-px images (8 x 8 -> 4 x 4 maps, window 4: one
# shifted stage, one single-window stage), decoder stride 8; masks of 8-px blocks (10 of 16)
TINY = {'img_size': 32, 'patch_size': 4, 'embed_dim': 16, 'depths': (2, 2), 'num_heads': (2, 4),
        'window_size': 4, 'drop_path_rate': 0.0, 'out_indices': (1,)}


def tiny_config():
  c = get_config('demo')
  c.backbone.kwargs = TINY
  return c


def tiny_images(n=3, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, 32, 32, 3)), jnp.float32)


def test_configs():
  c = get_config()
  assert c.method == 'simmim' and c.batch_size == 2048 and c.epochs == 100 and c.dtype == 'bfloat16'
  assert c.backbone.name == 'swin_base' and c.backbone.kwargs.window_size == 6 and c.backbone.kwargs.img_size == 192
  assert (c.optimizer.name, c.optimizer.lr, c.optimizer.betas, c.optimizer.weight_decay) == (
      'adamw', 8e-4, (0.9, 0.999), 0.05)
  assert c.optimizer.grad_clip_norm == 5.0
  assert c.schedule.warmup_epochs == 10 and c.schedule.min_lr == pytest.approx(4e-5)
  assert c.schedule.warmup_start_factor == pytest.approx(0.005)
  assert c.data.views[0]['size'] == 192 and c.data.views[0]['scale'] == (0.67, 1.0)
  assert (c.model.mask_patch_size, c.model.mask_ratio) == (32, 0.6)
  long = get_config('800e')
  assert long.epochs == 800 and long.optimizer.lr == 4e-4 and long.schedule.name == 'step'
  assert long.schedule.milestones == (700,) and long.schedule.warmup_start_factor == pytest.approx(0.005)
  large = get_config('swin_l')
  assert large.backbone.name == 'swin_large' and large.backbone.kwargs.window_size == 12
  assert large.backbone.kwargs.pad_small_map and large.epochs == 800
  with pytest.raises(ValueError, match='valid: 800e, demo, swin_l'):
    get_config('nope')


def test_weight_decay_groups_are_the_references():
  """MMSelfSup's custom_keys: no decay where the name has 'norm' or 'bias' (relative_position_bias_table too) or
  'absolute_pos_embed'; the mask token and the decoder's kernel decay."""
  c = get_config()
  method = simmim.Method(c)
  shapes = jax.eval_shape(method.init, jax.random.key(0), {'views': (jnp.zeros((1, 192, 192, 3)),)})[0]
  mask = optim.decay_mask(shapes, c.optimizer.no_decay_names)
  bb = mask['backbone']
  assert bb['mask_token'] and mask['neck']['decoder']['kernel'] and not mask['neck']['decoder']['bias']
  assert not bb['layers_0']['blocks_0']['attn']['relative_position_bias_table']
  assert bb['layers_0']['blocks_0']['attn']['qkv']['kernel'] and not bb['layers_0']['blocks_0']['attn']['qkv']['bias']
  assert not bb['norm']['scale'] and not bb['layers_1']['downsample']['norm']['bias']
  assert bb['layers_1']['downsample']['reduction']['kernel']


def test_decoder_is_torch_conv_and_pixel_shuffle():
  torch = pytest.importorskip('torch')
  r, channels = 4, 16
  x = np.random.default_rng(0).normal(size=(2, 3, 5, channels)).astype(np.float32)
  decoder = SimMIMLinearDecoder(encoder_stride=r)
  variables = decoder.init(jax.random.key(0), jnp.asarray(x))
  kernel = np.asarray(variables['params']['decoder']['kernel'])  # [1, 1, C, r * r * 3]
  bias = np.asarray(variables['params']['decoder']['bias'])
  assert kernel.shape == (1, 1, channels, r * r * 3)
  # torch's default conv init: U(-1/sqrt(C), 1/sqrt(C)) for weight and bias
  assert 0.2 < np.abs(kernel).max() <= 0.25 and 0.15 < np.abs(bias).max() <= 0.25
  conv = torch.nn.Conv2d(channels, r * r * 3, 1)
  with torch.no_grad():
    conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1)))
    conv.bias.copy_(torch.from_numpy(bias))
    expected = torch.nn.PixelShuffle(r)(conv(torch.from_numpy(x.transpose(0, 3, 1, 2)))).numpy()
  out = decoder.apply(variables, jnp.asarray(x))
  assert out.shape == (2, 12, 20, 3)
  np.testing.assert_allclose(out, expected.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope='module')
def tiny_run():
  """One jit'd loss + gradients of the tiny model, its mask and prediction, shared by the tests below."""
  c = tiny_config()
  method = simmim.Method(c)
  images = tiny_images()
  params, model_state, method_state = jax.jit(method.init)(jax.random.key(0), {'views': (images,)})
  # a mask token far from the patch embeddings (its init is ~0.02)
  params['backbone']['mask_token'] = jnp.asarray(np.random.default_rng(1).normal(size=(1, 1, 16)), jnp.float32)
  rng = jax.random.key(3)
  loss_fn = lambda p: method.loss(p, model_state, method_state, {'views': (images,)}, rng, 0)
  (loss, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  mask = method.mask(jax.random.split(rng)[0], 3)  # the loss's split of the step key

  def forward(net, x, m):  # the masked latent, the prediction and the kNN features in one compile
    latent = net.backbone(x, mask=m)[-1]
    return latent, net.neck(latent), net.features(x)
  latent, pred, features = jax.jit(lambda p, m: method.net.apply({'params': p}, images, m, method=forward))(
      params, mask)
  return dict(c=c, images=images, params=params, loss=loss, grads=grads, mask=np.asarray(mask),
              latent=np.asarray(latent), pred=np.asarray(pred), features=np.asarray(features))


def test_loss_is_l1_on_masked_pixels_only(tiny_run):
  r = tiny_run
  mask, pred, images = r['mask'], r['pred'], np.asarray(r['images'])
  assert mask.shape == (3, 8, 8) and mask.sum() == 3 * 10 * 4  # 10 of 16 blocks of 2 x 2 tokens
  # by hand: the mean |pred - image| over the masked pixels (each token is 4 x 4 pixels) and channels
  pixels = np.kron(mask, np.ones((4, 4)))[..., None]
  error = np.abs(pred - images)
  np.testing.assert_allclose(r['loss'], (error * pixels).sum() / (pixels.sum() * 3), rtol=1e-5)
  assert abs(float(r['loss']) - error.mean()) > 1e-3
  # errors on visible pixels do not count; on masked ones they do
  pixel_mask = jnp.asarray(pixels[..., 0])
  moved = lambda where: losses.masked_pixel_loss(jnp.asarray(pred + 5. * where), jnp.asarray(images), pixel_mask)
  np.testing.assert_allclose(moved(1 - pixels), r['loss'], rtol=1e-5)
  assert float(moved(pixels)) > float(r['loss']) + 1.


def mmpretrain_simmim(c):
  """mmpretrain's SimMIM with the same tiny Swin, decoder and loss."""
  from tests.parity import build_mmpretrain
  k = c.backbone.kwargs
  stride = k.patch_size * 2 ** (len(k.depths) - 1)
  return build_mmpretrain(dict(
      type='SimMIM',
      backbone=dict(type='SimMIMSwinTransformer', arch=dict(embed_dims=k.embed_dim, depths=list(k.depths),
                                                            num_heads=list(k.num_heads)),
                    img_size=k.img_size, drop_path_rate=0., out_indices=(len(k.depths) - 1,),
                    stage_cfgs=dict(block_cfgs=dict(window_size=k.window_size))),
      neck=dict(type='SimMIMLinearDecoder', in_channels=k.embed_dim * 2 ** (len(k.depths) - 1),
                encoder_stride=stride),
      head=dict(type='SimMIMHead', patch_size=k.patch_size,
                loss=dict(type='PixelReconstructionLoss', criterion='L1', channel=3))))


def test_parity_with_mmpretrain_simmim(tiny_run):
  torch = pytest.importorskip('torch')
  pytest.importorskip('mmpretrain')
  from mmpretrain.structures import DataSample
  from jssl.convert import swin as swin_convert
  from tests.parity import nhwc_to_torch, tensors
  r = tiny_run
  params = r['params']
  model = mmpretrain_simmim(r['c'])
  state = {f'backbone.{k}': v for k, v in tensors(swin_convert.to_torch(
      {'params': params['backbone']}, 'mmpretrain', {})).items()}
  dec = params['neck']['decoder']
  state.update(tensors({'neck.decoder.0.weight': np.asarray(dec['kernel']).transpose(3, 2, 0, 1),
                        'neck.decoder.0.bias': np.asarray(dec['bias'])}))
  model.load_state_dict(state, strict=True)

  samples = []
  for m in r['mask']:
    sample = DataSample()
    sample.mask = torch.from_numpy(m).bool()  # SimMIMMaskGenerator's mask: bool
    samples.append(sample)
  images = nhwc_to_torch(r['images'])
  ref_loss = model.loss(images, samples)['loss']
  ref_loss.backward()
  np.testing.assert_allclose(r['loss'], ref_loss.item(), rtol=1e-4)
  # gradients of the mask token (through every block) and of the decoder
  g_token = np.asarray(r['grads']['backbone']['mask_token']).ravel()
  ref_token = model.backbone.mask_token.grad.numpy().ravel()
  np.testing.assert_allclose(g_token, ref_token, rtol=1e-3, atol=1e-4 * np.abs(ref_token).max())
  g_dec = np.asarray(r['grads']['neck']['decoder']['kernel'])[0, 0].T
  ref_dec = model.neck.decoder[0].weight.grad.numpy()[:, :, 0, 0]
  np.testing.assert_allclose(g_dec, ref_dec, rtol=1e-3, atol=1e-4 * np.abs(ref_dec).max())
  # the masked forward of the backbone
  with torch.no_grad():
    ref_latent = model.backbone(images, torch.from_numpy(r['mask']))[-1].numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(r['latent'], ref_latent, rtol=1e-4, atol=1e-4 * np.abs(ref_latent).max())
  # kNN features: the pooled last stage of the unmasked forward (the reference's extract_feat)
  model.eval()
  with torch.no_grad():
    ref_feat = model.extract_feat(images)[-1].mean(dim=(2, 3)).numpy()
  np.testing.assert_allclose(r['features'], ref_feat, rtol=1e-4, atol=1e-4 * np.abs(ref_feat).max())


def test_remat_gives_the_same_loss(tiny_run):
  r = tiny_run
  c = tiny_config()
  c.remat = True
  method = simmim.Method(c)
  loss = jax.jit(lambda p: method.loss(p, {}, {}, {'views': (r['images'],)}, jax.random.key(3), 0)[0])(r['params'])
  np.testing.assert_allclose(loss, r['loss'], rtol=1e-6)


def test_bad_mask_patch_size():
  c = tiny_config()
  c.model.mask_patch_size = 6
  with pytest.raises(ValueError, match='config.model.mask_patch_size'):
    simmim.Method(c)


# small enough for CI: a 2-stage Swin of 1 block each on 16-px images; its 64 x 256 fc1 is big enough to be sharded
SMALL = {'backbone.kwargs.embed_dim': 32, 'backbone.kwargs.depths': [1, 1], 'backbone.kwargs.num_heads': [2, 4],
         'backbone.kwargs.out_indices': [1], 'backbone.kwargs.patch_size': 2, 'backbone.kwargs.img_size': 16,
         'data.views.0.size': 16}


# tests/methods/test_every_method.py: 1 vs 8 devices, kill-and-resume and the demo, made small by these
DEVICES = SMALL
RESUME = {**SMALL, 'batch_size': 32, 'total_steps': 20}
