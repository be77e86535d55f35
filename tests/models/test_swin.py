"""SwinTransformer vs timm with copied weights, plus dtype/remat/drop path."""
import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')

import jax
import jax.numpy as jnp
import numpy as np

from jssl.convert import swin as swin_convert
from jssl.models import build_backbone
from jssl.models.swin import SwinTransformer, shifted_window_mask
from tests.parity import assert_close

# 32 px / patch 4 = 8x8 -> 4x4: stage 0 has 4 windows and shifts (masked),
# stage 1's map equals the window, so it is one window without shift.
SMALL = dict(img_size=32, embed_dim=32, depths=(2, 2), num_heads=(2, 4),
             window_size=4)
# SimMIM's window 6: 48 px -> 12x12 -> 6x6.
WINDOW6 = dict(img_size=48, embed_dim=32, depths=(2, 2), num_heads=(2, 4),
               window_size=6)
# 40 px -> 10x10 (padded to 12 for window 4) -> 5x5 (padded) -> 3x3 (window
# shrinks to 3): timm's padding and shrinking rules.
PADDED = dict(img_size=40, embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 4),
              window_size=4)


def make_timm(config):
  """Small timm Swin with every parameter randomised (biases, LN too)."""
  torch.manual_seed(0)
  model = timm.models.swin_transformer.SwinTransformer(**config, num_classes=0)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def load_timm(model, torch_model):
  """jssl variables from a timm model through the key map (no jit'd init)."""
  x = jnp.zeros((1, model.img_size, model.img_size, 3))
  template = jax.eval_shape(model.init, jax.random.key(0), x)
  state_dict = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  return swin_convert.from_torch(state_dict, 'timm', template, {'name': 'swin'})


def random_images(batch=2, size=32, seed=0):
  x = np.random.RandomState(seed).randn(batch, 3, size, size).astype(np.float32)
  return x, jnp.asarray(x.transpose(0, 2, 3, 1))


@pytest.mark.parametrize('config', [SMALL, WINDOW6, PADDED],
                         ids=['shift_and_small_map', 'window6', 'padded'])
def test_matches_timm(config):
  torch_model = make_timm(config)
  last = len(config['depths']) - 1
  model = SwinTransformer(**config, out_indices=(last,))
  variables = load_timm(model, torch_model)
  x, x_nhwc = random_images(size=config['img_size'])
  with torch.no_grad():
    expected = torch_model.forward_features(torch.from_numpy(x)).numpy()
  (out,) = jax.jit(model.apply)(variables, x_nhwc)
  assert out.shape == expected.shape
  assert_close(out, expected)
  # Same (window, shift) per stage as timm's blocks.
  timm_windows = [(s.blocks[1].window_size[0], s.blocks[1].shift_size[0])
                  for s in torch_model.layers]
  assert model.stage_windows() == timm_windows


def test_stage_windows_follow_timm_rules():
  assert SwinTransformer(**SMALL).stage_windows() == [(4, 2), (4, 0)]
  assert SwinTransformer(**PADDED).stage_windows() == [(4, 2), (4, 2), (3, 0)]
  # Swin-T at 224: 56, 28, 14, 7 with window 7; SimMIM Swin-B at 192: 48..6.
  assert SwinTransformer().stage_windows() == [(7, 3)] * 3 + [(7, 0)]
  assert SwinTransformer(img_size=192, window_size=6).stage_windows() == (
      [(6, 3)] * 3 + [(6, 0)])


def test_mask_matches_timm():
  block = timm.models.swin_transformer.SwinTransformerBlock(
      dim=8, input_resolution=(8, 8), num_heads=2, window_size=4, shift_size=2)
  np.testing.assert_array_equal(shifted_window_mask(8, 8, 4, 2),
                                block.attn_mask.numpy())


def test_out_indices_and_feature_dim():
  model = SwinTransformer(**SMALL, out_indices=(0, 1))
  assert model.feature_dim == 64
  x = jnp.zeros((2, 32, 32, 3))
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  assert {'norm0', 'norm'} <= set(shapes['params'])
  outs = jax.eval_shape(model.apply, shapes, x)
  assert [o.shape for o in outs] == [(2, 8, 8, 32), (2, 4, 4, 64)]
  with pytest.raises(ValueError, match='out_indices'):
    SwinTransformer(**SMALL, out_indices=(3,)).init(jax.random.key(0), x)


def test_registry_and_simmim_swin_base_shapes():
  tiny = build_backbone('swin_tiny')
  assert (tiny.embed_dim, tiny.depths, tiny.num_heads) == (
      96, (2, 2, 6, 2), (3, 6, 12, 24))
  assert tiny.feature_dim == 768
  assert build_backbone('swin_small').depths == (2, 2, 18, 2)
  assert build_backbone('swin_large').feature_dim == 1536
  base = build_backbone('swin_base', img_size=192, window_size=6)
  assert base.feature_dim == 1024
  x = jnp.zeros((1, 192, 192, 3))
  shapes = jax.eval_shape(base.init, jax.random.key(0), x)
  table = shapes['params']['layers_0']['blocks_0']['attn'][
      'relative_position_bias_table']
  assert table.shape == (121, 4)
  (out,) = jax.eval_shape(base.apply, shapes, x)
  assert out.shape == (1, 6, 6, 1024)


def test_remat_and_bf16():
  torch_model = make_timm(SMALL)
  model = SwinTransformer(**SMALL, out_indices=(1,))
  variables = load_timm(model, torch_model)
  _, x = random_images()
  (expected,) = jax.jit(model.apply)(variables, x)

  remat = SwinTransformer(**SMALL, out_indices=(1,), remat=True)
  (out,) = jax.jit(remat.apply)(variables, x)
  assert_close(out, expected, rtol=1e-6)

  # training: same drop-path draws and gradients with remat (layers.remat_call) as without
  def loss(remat, key=3):
    m = SwinTransformer(**SMALL, out_indices=(1,), drop_path_rate=0.5, remat=remat)
    return lambda v: jnp.sum(m.apply(v, x, train=True, rngs={'dropout': jax.random.key(key)})[0] ** 2)
  value, grads = jax.jit(jax.value_and_grad(loss(False)))(variables)
  remat_value, remat_grads = jax.jit(jax.value_and_grad(loss(True)))(variables)
  assert_close(remat_value, value, rtol=1e-6)
  assert abs(float(loss(True, key=4)(variables)) - float(value)) > 1e-3 * abs(float(value))  # the draws matter
  jax.tree.map(lambda a, b: assert_close(a, b, rtol=1e-5), remat_grads, grads)

  bf16 = SwinTransformer(**SMALL, out_indices=(1,), dtype=jnp.bfloat16)
  (out,) = jax.jit(bf16.apply)(variables, x)
  assert out.dtype == jnp.bfloat16
  assert_close(out, expected, rtol=0.1)


def test_drop_path_only_in_train():
  torch_model = make_timm(SMALL)
  model = SwinTransformer(**SMALL, out_indices=(1,), drop_path_rate=0.5)
  variables = load_timm(model, torch_model)
  x_nchw, x = random_images()
  with torch.no_grad():  # eval: drop path is the identity, as in timm
    expected = torch_model.forward_features(torch.from_numpy(x_nchw)).numpy()
  (out,) = jax.jit(model.apply)(variables, x)
  assert_close(out, expected)
  train = jax.jit(lambda v, key: model.apply(v, x, train=True,
                                             rngs={'dropout': key}))
  (train_a,), (train_b,) = train(variables, jax.random.key(1)), train(
      variables, jax.random.key(2))
  assert np.abs(np.asarray(train_a) - np.asarray(train_b)).max() > 1e-3


# --- SimMIM: mask token and pad_small_map vs mmpretrain ----------------------

def random_variables(model, seed=0):
  """Random numpy values for every param of `model`, LayerNorm scales ~1."""
  from flax import traverse_util
  x = jnp.zeros((1, model.img_size, model.img_size, 3))
  flat = traverse_util.flatten_dict(
      jax.eval_shape(model.init, jax.random.key(0), x)['params'])
  rng = np.random.RandomState(seed)
  flat = {path: (0.1 * rng.randn(*leaf.shape) + (path[-1] == 'scale'))
          .astype(np.float32) for path, leaf in flat.items()}
  return {'params': traverse_util.unflatten_dict(flat)}


def mmpretrain_simmim_swin(variables, config, **kwargs):
  """mmpretrain's SimMIMSwinTransformer with `variables` loaded strictly."""
  simmim = pytest.importorskip('mmpretrain.models.selfsup.simmim')
  torch_model = simmim.SimMIMSwinTransformer(
      arch=dict(embed_dims=config['embed_dim'], depths=list(config['depths']),
                num_heads=list(config['num_heads'])),
      img_size=config['img_size'], drop_path_rate=0.,
      out_indices=(len(config['depths']) - 1,),
      stage_cfgs=dict(block_cfgs=dict(window_size=config['window_size'])),
      **kwargs)
  state = swin_convert.to_torch(variables, 'mmpretrain', {})
  torch_model.load_state_dict(
      {k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
  torch_model.eval()  # mmpretrain modules' eval() returns None
  return torch_model


def test_mask_token_matches_mmpretrain_simmim_swin():
  model = SwinTransformer(**SMALL, out_indices=(1,), mask_token=True)
  variables = random_variables(model)
  assert variables['params']['mask_token'].shape == (1, 1, 32)
  torch_model = mmpretrain_simmim_swin(variables, SMALL)
  x, x_nhwc = random_images()
  mask = np.zeros((2, 8, 8), np.float32)
  mask[0, :4, :4] = 1
  mask[1, 2:8, 4:] = 1
  mask[1, 0, 0] = 1
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(x), torch.from_numpy(mask))
    plain = torch_model(torch.from_numpy(x), None)
  (out,), (out_plain,) = jax.jit(lambda v, m: (
      model.apply(v, x_nhwc, mask=m), model.apply(v, x_nhwc)))(
          variables, jnp.asarray(mask))
  assert_close(out, expected[-1].numpy().transpose(0, 2, 3, 1))
  # no mask: the token is unused and the output is mmpretrain's unmasked one
  assert_close(out_plain, plain[-1].numpy().transpose(0, 2, 3, 1))
  assert np.abs(expected[-1].numpy() - plain[-1].numpy()).max() > 1e-2
  without = {'params': {k: v for k, v in variables['params'].items()
                        if k != 'mask_token'}}
  no_token = SwinTransformer(**SMALL, out_indices=(1,))
  with pytest.raises(ValueError, match='mask_token=True'):
    no_token.apply(without, x_nhwc, mask=jnp.asarray(mask))
  with pytest.raises(ValueError, match='patch grid'):
    model.apply(variables, x_nhwc, mask=jnp.zeros((2, 4, 4)))


def test_pad_small_map_matches_mmpretrain():
  """Window 6 on 8x8 -> 4x4 maps: both stages are zero-padded (to 12 and 6)
  before the shift of 3, as mmpretrain's pad_small_map=True."""
  config = dict(SMALL, window_size=6)
  model = SwinTransformer(**config, out_indices=(1,), pad_small_map=True)
  assert model.stage_windows() == [(6, 3), (6, 3)]
  variables = random_variables(model, seed=1)
  torch_model = mmpretrain_simmim_swin(
      {'params': {**variables['params'], 'mask_token': np.zeros((1, 1, 32),
                                                                 np.float32)}},
      config, pad_small_map=True)
  x, x_nhwc = random_images()
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(x), None)[-1].numpy()
  (out,) = jax.jit(model.apply)(variables, x_nhwc)
  assert_close(out, expected.transpose(0, 2, 3, 1))
