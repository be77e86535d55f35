"""ViT key maps vs timm (ViT, Beit) and mmpretrain (VisionTransformer,
BEiTViT); official MAE / MoCo v3 checkpoints use timm names."""
import re

import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')

import jax
import jax.numpy as jnp
import numpy as np

from jssl.convert import vit as convert
from jssl.convert.errors import ConversionError
from jssl.models import build_backbone
from jssl.models.layers import get_2d_sincos_pos_embed
from tests.parity import assert_close, assert_trees_equal, images, load_into, torch_state

SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)
MM_ARCH = dict(embed_dims=64, num_layers=2, num_heads=4,
               feedforward_channels=256)


def arch_of(**kwargs):
  return {'name': 'vit_small', **SMALL, **kwargs}


def template_of(arch):
  model = build_backbone(**{k: v for k, v in arch.items()
                            if k != 'interpolate_pos_embed'})
  size = arch['img_size']
  return model, jax.eval_shape(model.init, jax.random.key(0),
                               jnp.zeros((1, size, size, 3)))


def randomized(torch_model):
  """Every parameter perturbed (biases, LN, gammas, rel-pos tables too)."""
  torch.manual_seed(0)
  with torch.no_grad():
    for p in torch_model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  torch_model.eval()
  return torch_model


def timm_vit(**kwargs):
  return randomized(timm.models.vision_transformer.VisionTransformer(
      img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
      num_classes=0, **kwargs))


def timm_beit(**kwargs):
  from timm.models.beit import Beit
  return randomized(Beit(
      img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
      num_classes=0, use_abs_pos_emb=False, use_rel_pos_bias=True,
      init_values=0.1, **kwargs))


def check_parity(arch, fmt, make_torch, torch_forward):
  """torch -> import -> same features; export -> strict load into a fresh
  torch model -> same features; export/import round trip exact."""
  model, template = template_of(arch)
  x, x_nhwc = images()
  torch_model = make_torch()
  with torch.no_grad():
    expected = torch_forward(torch_model, torch.from_numpy(x)).numpy()
  variables = convert.from_torch(torch_state(torch_model), fmt, template,
                                 arch)
  out = jax.jit(model.apply)(variables, x_nhwc)
  assert out.shape == expected.shape
  assert_close(out, expected)

  state_dict = convert.to_torch(variables, fmt, arch)
  fresh = make_torch()
  with torch.no_grad():
    for p in fresh.parameters():
      p.zero_()  # so a key left unloaded would show
  load_into(fresh, state_dict)
  with torch.no_grad():
    assert_close(torch_forward(fresh, torch.from_numpy(x)).numpy(), expected)
  assert_trees_equal(convert.from_torch(state_dict, fmt, template, arch),
                     variables)
  return variables


@pytest.mark.parametrize('layer_scale_init', [None, 0.1])
def test_timm_parity(layer_scale_init):
  check_parity(arch_of(layer_scale_init=layer_scale_init), 'timm',
               lambda: timm_vit(init_values=layer_scale_init),
               lambda m, x: m.forward_features(x))


def test_timm_fc_norm_mean_output():
  # timm global_pool='avg' + fc_norm drops `norm`: MAE fine-tuning's layout.
  check_parity(arch_of(output='mean', use_fc_norm=True), 'timm',
               lambda: timm_vit(global_pool='avg', fc_norm=True),
               lambda m, x: m.forward_head(m.forward_features(x),
                                           pre_logits=True))


def mmpretrain_vit(**kwargs):
  from mmpretrain.models.backbones import VisionTransformer
  return randomized(VisionTransformer(arch=MM_ARCH, img_size=32, patch_size=8,
                                      **kwargs))


def test_mmpretrain_parity():
  check_parity(arch_of(layer_scale_init=0.1), 'mmpretrain',
               lambda: mmpretrain_vit(out_type='raw',
                                      layer_scale_init_value=0.1),
               lambda m, x: m(x)[-1])


def test_mmpretrain_avg_featmap_is_mean_with_fc_norm():
  # mmpretrain's ln2 after averaging patch tokens == jssl fc_norm.
  check_parity(arch_of(output='mean', use_fc_norm=True), 'mmpretrain',
               lambda: mmpretrain_vit(out_type='avg_featmap',
                                      final_norm=False),
               lambda m, x: m(x)[-1])


def test_maskfeat_mask_token_mmpretrain_only():
  """MaskFeatViT's mask_token: exported / imported under its own name for mmpretrain; refused for timm; an
  mmpretrain MaskFeat checkpoint still loads into a ViT without the token (fine-tuning / eval)."""
  from mmpretrain.models.selfsup.maskfeat import MaskFeatViT
  torch_model = randomized(MaskFeatViT(arch=MM_ARCH, img_size=32, patch_size=8))
  x, x_nhwc = images()
  mask = np.zeros((2, 16), np.float32)
  mask[:, [1, 6, 7]] = 1
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(x), torch.from_numpy(mask)).numpy()
  arch = arch_of(mask_token=True)
  model, template = template_of(arch)
  variables = convert.from_torch(torch_state(torch_model), 'mmpretrain', template, arch)
  assert_close(jax.jit(model.apply)(variables, x_nhwc, mask=jnp.asarray(mask)), expected)
  exported = convert.to_torch(variables, 'mmpretrain', arch)
  np.testing.assert_array_equal(exported['mask_token'], torch_model.mask_token.detach().numpy())
  with pytest.raises(ConversionError, match="'mask_token': timm's VisionTransformer has no mask token"):
    convert.to_torch(variables, 'timm', arch)
  plain, plain_template = template_of(arch_of())
  loaded = convert.from_torch(torch_state(torch_model), 'mmpretrain', plain_template, arch_of())
  assert 'mask_token' not in loaded['params']
  with torch.no_grad():
    assert_close(jax.jit(plain.apply)(loaded, x_nhwc), torch_model(torch.from_numpy(x), None)[-1].numpy())


BEIT_ARCH = dict(rel_pos_bias=True, pos_embed='none', qkv_bias='qv',
                 layer_scale_init=0.1, output='mean', use_fc_norm=True)


def test_relative_position_bias_vs_timm_beit():
  variables = check_parity(
      arch_of(**BEIT_ARCH), 'timm', timm_beit,
      lambda m, x: m.forward_head(m.forward_features(x), pre_logits=True))
  attn = variables['params']['blocks_0']['attn']
  assert attn['relative_position_bias_table'].shape == (7 * 7 + 3, 4)
  assert set(attn) == {'qkv', 'proj', 'q_bias', 'v_bias',
                       'relative_position_bias_table'}


def test_relative_position_bias_vs_mmpretrain_beit():
  from mmpretrain.models.backbones import BEiTViT
  make = lambda: randomized(BEiTViT(
      arch=MM_ARCH, img_size=32, patch_size=8, use_abs_pos_emb=False,
      use_rel_pos_bias=True, use_shared_rel_pos_bias=False,
      layer_scale_init_value=0.1, out_type='avg_featmap', final_norm=False))
  check_parity(arch_of(**BEIT_ARCH), 'mmpretrain', make,
               lambda m, x: m(x)[-1])
  # Its persistent relative_position_index is checked, not loaded.
  arch = arch_of(**BEIT_ARCH)
  state_dict = torch_state(make())
  state_dict['layers.1.attn.relative_position_index'][0, 0] += 1
  with pytest.raises(ConversionError, match=re.escape(
      "'layers.1.attn.relative_position_index': differs")):
    convert.from_torch(state_dict, 'mmpretrain', template_of(arch)[1], arch)


def with_sincos(torch_vit):
  """jssl's fixed (MAE) sin-cos table in the torch model's pos_embed."""
  with torch.no_grad():
    torch_vit.pos_embed.copy_(torch.from_numpy(np.asarray(get_2d_sincos_pos_embed(64, 4))[None]))
  return torch_vit


CAE_ARCH = dict(pos_embed='sincos', qkv_bias='qv', layer_scale_init=0.1,
                output='tokens')


def test_cae_backbone_vs_mmpretrain_cae_vit():
  """CAE's encoder (configs/cae.py: q/v biases, layer scale, sin-cos
  positions) uses BEiT's gamma_1 / gamma_2 names in mmpretrain's CAEPretrainViT."""
  from mmpretrain.models.selfsup.cae import CAEPretrainViT
  make = lambda: with_sincos(randomized(CAEPretrainViT(
      arch=MM_ARCH, img_size=32, patch_size=8, layer_scale_init_value=0.1,
      out_type='raw', final_norm=True)))
  variables = check_parity(arch_of(**CAE_ARCH), 'mmpretrain', make,
                           lambda m, x: m(x, None)[0])
  names = convert.to_torch(variables, 'mmpretrain', arch_of(**CAE_ARCH))
  assert {'layers.0.gamma_1', 'layers.1.gamma_2'} <= set(names)


def test_cae_backbone_vs_timm_beit_with_absolute_positions():
  from timm.models.beit import Beit
  make = lambda: randomized(Beit(
      img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
      num_classes=0, use_abs_pos_emb=True, use_rel_pos_bias=False,
      init_values=0.1, global_pool='token'))
  arch = arch_of(**CAE_ARCH)
  check_parity(arch, 'timm', lambda: with_sincos(make()), lambda m, x: m.forward_features(x))


def test_mae_sincos_pos_embed_is_checked_not_loaded():
  arch = arch_of(pos_embed='sincos')
  table = get_2d_sincos_pos_embed(64, 4)[None]

  def make():
    m = timm_vit()
    with torch.no_grad():
      m.pos_embed.copy_(torch.from_numpy(table))
    return m
  variables = check_parity(arch, 'mae', make,
                           lambda m, x: m.forward_features(x))
  assert 'pos_embed' not in variables['params']
  exported = convert.to_torch(variables, 'mae', arch)
  np.testing.assert_array_equal(exported['pos_embed'], table)

  state_dict = torch_state(timm_vit())  # a learned, random pos_embed
  with pytest.raises(ConversionError, match=re.escape(
      "'pos_embed': differs from both fixed sin-cos tables (MAE's, and MoCo v3's / mmpretrain's); use "
      "pos_embed='learned'")):
    convert.from_torch(state_dict, 'mae', template_of(arch)[1], arch)
  assert convert.checkpoint_kwargs(torch_state(make()), 'mae', arch) == (
      {'sincos_layout': 'mae'}, "pos_embed: MAE's sin-cos table (sincos_layout='mae')")


def mmpretrain_sincos_vit(cls_name):
  """mmpretrain's MAEViT / MoCoV3ViT with the sin-cos table their init_weights writes (MoCo v3's
  build_2d_sincos_position_embedding) and every other parameter random."""
  if cls_name == 'MAEViT':
    from mmpretrain.models.selfsup.mae import MAEViT as cls
  else:
    from mmpretrain.models.selfsup.mocov3 import MoCoV3ViT as cls
  model = cls(arch=MM_ARCH, img_size=32, patch_size=8, out_type='raw')
  model.init_weights()
  torch.manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name != 'pos_embed':
        p.add_(0.1 * torch.randn_like(p))
  model.eval()  # (MoCoV3ViT.train returns None)
  return model


@pytest.mark.parametrize('cls_name', ['MAEViT', 'MoCoV3ViT'])
def test_mmpretrain_mae_and_mocov3_sincos_tables_import(cls_name):
  """mmpretrain's sin-cos table has the channel halves swapped vs MAE's: found by checkpoint_kwargs, refused by a
  backbone of MAE's layout with the sincos_layout to set, and with sincos_layout='mocov3' the features are
  mmpretrain's; the export writes that table, which a fresh mmpretrain model loads strictly."""
  from mmpretrain.models.utils import build_2d_sincos_position_embedding
  state_dict = torch_state(mmpretrain_sincos_vit(cls_name))
  mm_table = build_2d_sincos_position_embedding(4, 64, cls_token=True).numpy()
  np.testing.assert_array_equal(state_dict['pos_embed'], mm_table)
  mae_table = get_2d_sincos_pos_embed(64, 4)[None]
  np.testing.assert_allclose(mm_table, np.concatenate([mae_table[..., 32:], mae_table[..., :32]], -1), atol=1e-6)

  mae_layout = arch_of(pos_embed='sincos')
  assert convert.checkpoint_kwargs(state_dict, 'mmpretrain', mae_layout) == (
      {'sincos_layout': 'mocov3'}, "pos_embed: MoCo v3's / mmpretrain's sin-cos table (sincos_layout='mocov3')")
  refused = re.escape("'pos_embed': is MoCo v3's / mmpretrain's sin-cos table, the backbone's is MAE's "
                      "(sincos_layout='mae'); set sincos_layout='mocov3'")
  with pytest.raises(ConversionError, match=refused):
    convert.from_torch(state_dict, 'mmpretrain', template_of(mae_layout)[1], mae_layout)
  at_48 = {**mae_layout, 'img_size': 48, 'interpolate_pos_embed': True}  # also when the table is resized away
  with pytest.raises(ConversionError, match=refused):
    convert.from_torch(state_dict, 'mmpretrain', template_of(at_48)[1], at_48)

  arch = arch_of(pos_embed='sincos', sincos_layout='mocov3')
  forward = (lambda m, x: m(x, None)[-1]) if cls_name == 'MAEViT' else (lambda m, x: m(x)[-1])
  variables = check_parity(arch, 'mmpretrain', lambda: mmpretrain_sincos_vit(cls_name), forward)
  assert 'pos_embed' not in variables['params']
  np.testing.assert_allclose(convert.to_torch(variables, 'mmpretrain', arch)['pos_embed'], mm_table, atol=1e-6)


def test_mocov3_frozen_patch_embed_timm_names():
  # MoCo v3's encoder (module.base_encoder. stripped, head.* filtered by the
  # framework) is a timm ViT; its fixed sin-cos pos_embed loads as learned.
  arch = arch_of(frozen_patch_embed=True, output='cls')
  variables = check_parity(arch, 'mocov3', timm_vit,
                           lambda m, x: m.forward_features(x)[:, 0])
  model, _ = template_of(arch)
  x = images()[1]
  grads = jax.jit(jax.grad(lambda v: jnp.sum(model.apply(v, x)**2)))(variables)
  assert not np.any(grads['params']['patch_embed']['proj']['kernel'])
  assert np.any(grads['params']['cls_token'])


def test_pos_embed_of_another_grid():
  state_dict = torch_state(timm_vit())  # 4x4 grid
  arch = arch_of(img_size=48)  # 6x6 grid
  model, template = template_of(arch)
  with pytest.raises(ConversionError, match=re.escape(
      "'pos_embed': checkpoint shape (1, 17, 64) != expected (1, 37, 64) "
      '(another patch grid; set interpolate_pos_embed')):
    convert.from_torch(state_dict, 'timm', template, arch)
  variables = convert.from_torch(state_dict, 'timm', template,
                                 {**arch, 'interpolate_pos_embed': True})
  pos_embed = variables['params']['pos_embed']
  assert pos_embed.shape == (1, 37, 64)
  np.testing.assert_array_equal(pos_embed[:, 0], state_dict['pos_embed'][:, 0])
  # The 4x4 corners stay put relative to the 6x6 corners only approximately;
  # check against jax's bicubic resize of the grid instead.
  grid = jax.image.resize(state_dict['pos_embed'][0, 1:].reshape(4, 4, 64),
                          (6, 6, 64), 'bicubic')
  np.testing.assert_allclose(pos_embed[0, 1:], grid.reshape(36, 64),
                             atol=1e-6)


@pytest.fixture(scope='module')
def timm_checkpoint():
  return torch_state(timm_vit())


def test_missing_key(timm_checkpoint):
  _, template = template_of(arch_of())
  state_dict = dict(timm_checkpoint)
  del state_dict['blocks.1.mlp.fc2.bias']
  with pytest.raises(ConversionError,
                     match=r'^missing keys: blocks\.1\.mlp\.fc2\.bias$'):
    convert.from_torch(state_dict, 'timm', template, arch_of())


def test_unexpected_key(timm_checkpoint):
  _, template = template_of(arch_of())
  state_dict = dict(timm_checkpoint, **{'blocks.0.attn.k_bias': np.zeros(64)})
  with pytest.raises(ConversionError,
                     match=r'^unexpected keys: blocks\.0\.attn\.k_bias$'):
    convert.from_torch(state_dict, 'timm', template, arch_of())


def test_shape_mismatch(timm_checkpoint):
  _, template = template_of(arch_of())
  state_dict = dict(timm_checkpoint,
                    **{'blocks.0.attn.qkv.weight': np.zeros((96, 64))})
  with pytest.raises(ConversionError, match=re.escape(
      "'blocks.0.attn.qkv.weight': checkpoint shape (96, 64) != expected "
      '(192, 64)')):
    convert.from_torch(state_dict, 'timm', template, arch_of())
  with pytest.raises(ConversionError, match="unknown format 'deit'"):
    convert.from_torch(timm_checkpoint, 'deit', template, arch_of())


def test_vit_huge_names():
  from jssl.convert.keymap import torch_shape, unflatten_get
  model, template = template_of({'name': 'vit_huge', 'img_size': 224})
  assert model.patch_size == 14 and model.depth == 32
  # Shapes from the key map alone: no 2.5 GB of arrays.
  entries, _ = convert.key_map(template, 'timm', model)
  shapes = {e.torch_key: torch_shape(
      unflatten_get(template[e.collection], e.path).shape, e.layout)
            for e in entries}
  assert shapes['pos_embed'] == (1, 257, 1280)
  assert shapes['blocks.31.attn.qkv.weight'] == (3840, 1280)
  assert shapes['blocks.31.mlp.fc1.weight'] == (5120, 1280)
  assert shapes['patch_embed.proj.weight'] == (1280, 3, 14, 14)
  assert len(shapes) == 4 + 32 * 12 + 2


@pytest.mark.slow
def test_full_size_vit_base_patch16_224_timm():
  torch_model = randomized(timm.create_model('vit_base_patch16_224',
                                             pretrained=False, num_classes=0))
  arch = {'name': 'vit_base'}
  model, template = template_of({**arch, 'img_size': 224})
  variables = convert.from_torch(torch_state(torch_model), 'timm', template,
                                 arch)
  x = np.random.RandomState(0).randn(1, 3, 224, 224).astype(np.float32)
  with torch.no_grad():
    expected = torch_model.forward_features(torch.from_numpy(x)).numpy()
  out = model.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert out.shape == (1, 197, 768)
  assert_close(out, expected)
  load_into(torch_model, convert.to_torch(variables, 'timm', arch))
