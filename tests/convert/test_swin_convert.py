"""Swin key maps: jssl <-> timm / mmpretrain state dicts, strict and exact."""
import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jssl.convert.errors import ConversionError
from jssl.convert.swin import (FORMATS, from_torch, merge_permutation,
                               resize_rel_pos_table, to_torch)
from jssl.models.swin import SwinTransformer
from tests.parity import assert_close, assert_trees_equal, images, load_into, torch_state

# 8x8 -> 4x4 maps, window 4: shifted+masked stage 0, one-window stage 1, and
# one patch merging between them (the channel order that differs).
DEPTHS, HEADS = (2, 2), (2, 4)
CONFIG = dict(img_size=32, embed_dim=32, depths=DEPTHS, num_heads=HEADS,
              window_size=4)
ARCH = dict(name='swin_test', **CONFIG)


def make_model(out_indices=(1,), **kwargs):
  return SwinTransformer(**{**CONFIG, **kwargs}, out_indices=out_indices)


# One compiled forward of the default test model, shared across tests.
MODEL = make_model()
APPLY = jax.jit(MODEL.apply)


def template(model):
  x = jnp.zeros((1, model.img_size, model.img_size, 3))
  return jax.eval_shape(model.init, jax.random.key(0), x)


def random_variables(model, seed=0):
  """Random values for every param, drawn in numpy from the eval_shape tree."""
  rng = np.random.RandomState(seed)
  flat = traverse_util.flatten_dict(template(model)['params'])
  flat = {path: (0.1 * rng.randn(*leaf.shape) + (path[-1] == 'scale'))
          .astype(np.float32) for path, leaf in flat.items()}
  return {'params': traverse_util.unflatten_dict(flat)}


def make_timm(window_size=4):
  return timm.models.swin_transformer.SwinTransformer(
      **{**CONFIG, 'window_size': window_size}, num_classes=0).eval()


def make_mmpretrain(out_indices=(1,), **kwargs):
  backbones = pytest.importorskip('mmpretrain.models.backbones')
  model = backbones.SwinTransformer(
      arch=dict(embed_dims=32, depths=list(DEPTHS), num_heads=list(HEADS)),
      img_size=32, window_size=4, out_indices=out_indices, **kwargs)
  model.eval()
  return model


def randomize(torch_model, seed=0):
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in torch_model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return torch_model


def torch_features(torch_model, x):
  """NHWC features of the last stage, normed."""
  with torch.no_grad():
    if hasattr(torch_model, 'forward_features'):  # timm, NHWC already
      return torch_model.forward_features(torch.from_numpy(x)).numpy()
    return torch_model(torch.from_numpy(x))[-1].numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope='module')
def jssl_case():
  """Random jssl variables and their eval-mode output (one jit per module)."""
  variables = random_variables(MODEL)
  x, x_nhwc = images()
  (out,) = APPLY(variables, x_nhwc)
  return MODEL, variables, x, np.asarray(out)


@pytest.mark.parametrize('fmt', FORMATS)
def test_export_loads_strictly_and_matches(jssl_case, fmt):
  model, variables, x, out = jssl_case
  torch_model = make_timm() if fmt == 'timm' else make_mmpretrain()
  state_dict = to_torch(variables, fmt, ARCH)
  load_into(torch_model, state_dict)
  assert_close(out, torch_features(torch_model, x))


@pytest.mark.parametrize('fmt', FORMATS)
def test_import_matches_and_round_trips(jssl_case, fmt):
  model, _, x, _ = jssl_case
  torch_model = randomize(make_timm() if fmt == 'timm' else make_mmpretrain())
  state_dict = torch_state(torch_model)
  variables = from_torch(state_dict, fmt, template(model), ARCH)
  (out,) = APPLY(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert_close(out, torch_features(torch_model, x))

  exported = to_torch(variables, fmt, ARCH)
  assert exported.keys() == state_dict.keys()
  for key in state_dict:
    np.testing.assert_array_equal(exported[key], state_dict[key], err_msg=key)
  assert_trees_equal(from_torch(exported, fmt, template(model), ARCH),
                     variables)


def test_merge_channel_order_differs_between_formats(jssl_case):
  _, variables, _, _ = jssl_case
  timm_sd = to_torch(variables, 'timm', ARCH)
  mm_sd = to_torch(variables, 'mmpretrain', ARCH)
  timm_w = timm_sd['layers.1.downsample.reduction.weight']
  mm_w = mm_sd['stages.0.downsample.reduction.weight']
  # timm block 1 (channels C..2C) is the (row 1, col 0) neighbour, which
  # mmcv's Unfold puts at c * 4 + 2.
  c = 32
  np.testing.assert_array_equal(mm_w[:, 2::4], timm_w[:, c:2 * c])
  np.testing.assert_array_equal(mm_w[:, np.argsort(merge_permutation(c))],
                                timm_w)


def test_mmpretrain_intermediate_norms():
  model = make_model(out_indices=(0, 1))
  torch_model = randomize(make_mmpretrain(out_indices=(0, 1)))
  variables = from_torch(torch_state(torch_model), 'mmpretrain',
                         template(model), ARCH)
  assert {'norm0', 'norm'} <= set(variables['params'])
  x, x_nhwc = images()
  outs = jax.jit(model.apply)(variables, x_nhwc)
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(x))
  for out, exp in zip(outs, expected):
    assert_close(out, exp.numpy().transpose(0, 2, 3, 1))
  with pytest.raises(ConversionError, match='norm0'):
    to_torch(variables, 'timm', ARCH)


def test_mmpretrain_absolute_pos_embed():
  model = make_model(use_abs_pos_embed=True)
  torch_model = randomize(make_mmpretrain(use_abs_pos_embed=True))
  variables = from_torch(torch_state(torch_model), 'mmpretrain',
                         template(model), ARCH)
  x, x_nhwc = images()
  (out,) = jax.jit(model.apply)(variables, x_nhwc)
  assert_close(out, torch_features(torch_model, x))
  with pytest.raises(ConversionError, match='absolute_pos_embed'):
    to_torch(variables, 'timm', ARCH)


@pytest.mark.heavy  # the key map is checked in CI on small Swins; full-size ViT-B stays in CI (test_vit_convert)
def test_full_size_swin_tiny_timm():
  torch_model = timm.create_model('swin_tiny_patch4_window7_224',
                                  pretrained=False, num_classes=0).eval()
  randomize(torch_model)
  model = SwinTransformer()
  arch = dict(name='swin_tiny')
  state_dict = torch_state(torch_model)
  variables = from_torch(state_dict, 'timm', template(model), arch)
  x, x_nhwc = images(224)
  x, x_nhwc = x[:1], x_nhwc[:1]
  (out,) = jax.jit(model.apply)(variables, x_nhwc)
  assert out.shape == (1, 7, 7, 768)
  assert_close(out, torch_features(torch_model, x))
  exported = to_torch(variables, 'timm', arch)
  assert exported.keys() == state_dict.keys()
  for key in state_dict:
    np.testing.assert_array_equal(exported[key], state_dict[key], err_msg=key)


@pytest.mark.parametrize('src,dst', [(7, 6), (6, 7)])
def test_rel_pos_table_resize_matches_torch_bicubic(src, dst):
  # The official Swin / SimMIM repos resize with F.interpolate(bicubic).
  # (timm's resize_rel_pos_bias_table and mmpretrain's use a BEiT-style
  # geometric grid instead, so they are not the reference here.)
  heads = 3
  table = np.random.RandomState(0).randn((2 * src - 1)**2, heads)
  table = table.astype(np.float32)
  grid = torch.from_numpy(table).T.reshape(1, heads, 2 * src - 1, 2 * src - 1)
  expected = torch.nn.functional.interpolate(
      grid, size=(2 * dst - 1, 2 * dst - 1), mode='bicubic',
      align_corners=False)
  expected = expected.reshape(heads, -1).T.numpy()
  resized = resize_rel_pos_table(table, dst)
  assert resized.shape == ((2 * dst - 1)**2, heads)
  np.testing.assert_allclose(resized, expected, rtol=1e-5, atol=1e-5)
  assert resize_rel_pos_table(table, src) is table


def test_import_other_window_needs_interpolate_rel_pos():
  # A window-7 table into the window-4 model (8x8 map so stage 1 keeps 4).
  state_dict = torch_state(randomize(make_timm(window_size=7)))
  model = make_model()
  key = 'layers.0.blocks.0.attn.relative_position_bias_table'
  with pytest.raises(ConversionError, match=key.replace('.', r'\.')):
    from_torch(state_dict, 'timm', template(model), ARCH)
  variables = from_torch(state_dict, 'timm', template(model),
                         {**ARCH, 'interpolate_rel_pos': True})
  table = variables['params']['layers_0']['blocks_0']['attn'][
      'relative_position_bias_table']
  np.testing.assert_array_equal(table, resize_rel_pos_table(state_dict[key], 4))


def test_buffers_are_accepted_and_ignored():
  model = make_model()
  state_dict = torch_state(randomize(make_timm()))
  # Checkpoints of older timm versions carry the (now non-persistent) buffers.
  state_dict['layers.0.blocks.1.attn_mask'] = np.zeros((4, 16, 16), np.float32)
  state_dict['layers.0.blocks.0.attn.relative_position_index'] = np.zeros(
      (16, 16), np.int64)
  from_torch(state_dict, 'timm', template(model), ARCH)


def test_bad_state_dicts_name_the_keys():
  model = make_model()
  state_dict = torch_state(randomize(make_timm()))
  tmpl = template(model)

  missing = dict(state_dict)
  del missing['layers.1.downsample.reduction.weight']
  with pytest.raises(ConversionError,
                     match=r'layers\.1\.downsample\.reduction\.weight'):
    from_torch(missing, 'timm', tmpl, ARCH)

  extra = dict(state_dict, **{'head.fc.weight': np.zeros((10, 64))})
  with pytest.raises(ConversionError, match=r'head\.fc\.weight'):
    from_torch(extra, 'timm', tmpl, ARCH)

  wrong = dict(state_dict)
  wrong['layers.0.blocks.0.mlp.fc1.weight'] = np.zeros((64, 32), np.float32)
  with pytest.raises(ConversionError,
                     match=r'layers\.0\.blocks\.0\.mlp\.fc1\.weight.*'
                     r'\(64, 32\).*\(128, 32\)'):
    from_torch(wrong, 'timm', tmpl, ARCH)

  # A timm state dict is not an mmpretrain one.
  with pytest.raises(ConversionError, match=r'stages\.0\.blocks\.0'):
    from_torch(state_dict, 'mmpretrain', tmpl, ARCH)
  with pytest.raises(ValueError, match='unknown format'):
    from_torch(state_dict, 'torchvision', tmpl, ARCH)


def test_simmim_mask_token():
  """mmpretrain's SimMIMSwinTransformer keeps the token as `mask_token`;
  timm has none."""
  model = make_model(mask_token=True)
  variables = random_variables(model)
  state = to_torch(variables, 'mmpretrain', ARCH)
  np.testing.assert_array_equal(state['mask_token'],
                                variables['params']['mask_token'])
  assert_trees_equal(from_torch(state, 'mmpretrain', template(model), ARCH),
                     variables)
  # timm's Swin has no token: the export is the rest, which timm loads strictly
  timm_state = to_torch(variables, 'timm', ARCH)
  assert 'mask_token' not in timm_state
  load_into(make_timm(), timm_state)
  with pytest.raises(ConversionError, match=r"missing keys \['mask_token'\]"):
    from_torch(timm_state, 'timm', template(model), ARCH)
  # a SimMIM checkpoint into a Swin without the token: the token is dropped
  plain = from_torch(state, 'mmpretrain', template(MODEL), ARCH)
  assert 'mask_token' not in plain['params']
  # a Swin with the token needs it in the checkpoint
  del state['mask_token']
  with pytest.raises(ConversionError, match=r"missing keys \['mask_token'\]"):
    from_torch(state, 'mmpretrain', template(model), ARCH)
