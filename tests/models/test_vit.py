"""VisionTransformer vs timm with copied weights, plus MAE-specific pieces."""
import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')

import jax
import jax.numpy as jnp
import numpy as np

from jssl.models import build_backbone, backbone_feature_dim
from jssl.models.layers import DropPath, get_2d_sincos_pos_embed
from jssl.models.vit import VisionTransformer
from tests.parity import assert_close

CONFIG = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)


def make_timm(layer_scale_init=None, **kwargs):
  """Small timm ViT with every parameter randomised (biases, LN, ls too)."""
  torch.manual_seed(0)
  model = timm.models.vision_transformer.VisionTransformer(
      **CONFIG, num_classes=0, init_values=layer_scale_init, **kwargs)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def timm_to_flax(torch_model):
  """timm state_dict -> jssl params (blocks.0.attn.qkv -> blocks_0/attn/qkv)."""
  params = {}
  for key, value in torch_model.state_dict().items():
    value = value.detach().numpy()
    *path, leaf = key.replace('blocks.', 'blocks_').split('.')
    if leaf == 'weight' and value.ndim == 4:  # conv OIHW -> HWIO
      leaf, value = 'kernel', value.transpose(2, 3, 1, 0)
    elif leaf == 'weight' and value.ndim == 2:  # linear [out, in] -> [in, out]
      leaf, value = 'kernel', value.T
    elif leaf == 'weight':  # LayerNorm
      leaf = 'scale'
    tree = params
    for p in path:
      tree = tree.setdefault(p, {})
    tree[leaf] = jnp.asarray(value)
  return {'params': params}


def random_images(batch=2, size=32, seed=0):
  x = np.random.RandomState(seed).randn(batch, 3, size, size).astype(np.float32)
  return x, jnp.asarray(x.transpose(0, 2, 3, 1))


def assert_same_structure(model, variables, x):
  expected = jax.eval_shape(model.init, jax.random.key(0), x)
  assert (jax.tree.map(jnp.shape, variables)
          == jax.tree.map(lambda s: s.shape, expected))


@pytest.mark.parametrize('layer_scale_init', [None, 0.1])
def test_matches_timm(layer_scale_init):
  torch_model = make_timm(layer_scale_init)
  model = VisionTransformer(**CONFIG, layer_scale_init=layer_scale_init)
  variables = timm_to_flax(torch_model)
  x, x_nhwc = random_images()
  assert_same_structure(model, variables, x_nhwc)
  with torch.no_grad():
    expected = torch_model.forward_features(torch.from_numpy(x)).numpy()
  out = jax.jit(model.apply)(variables, x_nhwc)
  assert out.shape == (2, 17, 64)
  assert_close(out, expected)


def test_pos_embed_interpolation_matches_timm():
  # timm resamples the learned pos embed (bicubic, antialias) for other sizes.
  torch_model = make_timm(dynamic_img_size=True)
  model = VisionTransformer(**CONFIG)
  variables = timm_to_flax(torch_model)
  x, x_nhwc = random_images(size=48)
  with torch.no_grad():
    expected = torch_model.forward_features(torch.from_numpy(x)).numpy()
  out = jax.jit(model.apply)(variables, x_nhwc)
  assert out.shape == (2, 1 + 36, 64)
  assert_close(out, expected)


def test_ids_keep_matches_manual_timm():
  torch_model = make_timm()
  model = VisionTransformer(**CONFIG)
  variables = timm_to_flax(torch_model)
  x, x_nhwc = random_images()
  ids_keep = np.array([[3, 0, 9, 15], [12, 1, 2, 7]])

  with torch.no_grad():  # MAE's encoder: gather after adding pos embed.
    t = torch_model.patch_embed(torch.from_numpy(x))
    t = t + torch_model.pos_embed[:, 1:]
    index = torch.from_numpy(ids_keep)[..., None].expand(-1, -1, t.shape[-1])
    t = torch.gather(t, 1, index)
    cls = torch_model.cls_token + torch_model.pos_embed[:, :1]
    t = torch.cat([cls.expand(t.shape[0], -1, -1), t], dim=1)
    expected = torch_model.norm(torch_model.blocks(t)).numpy()

  out = jax.jit(model.apply)(variables, x_nhwc, ids_keep=jnp.asarray(ids_keep))
  assert out.shape == (2, 5, 64)
  assert_close(out, expected)


def test_sincos_pos_embed_formula():
  # Independent loop over the MAE formula: the first half of the channels
  # encodes the column (w) index, the second half the row (h) index; each
  # half is [sin(p * w_k), cos(p * w_k)] with w_k = 10000^(-k / (D / 4)).
  dim, grid = 16, 3
  quarter = dim // 4
  expected = np.zeros((1 + grid * grid, dim))
  for row in range(grid):
    for col in range(grid):
      token = 1 + row * grid + col
      for half, pos in enumerate((col, row)):
        for k in range(quarter):
          omega = 1.0 / 10000**(k / quarter)
          expected[token, half * dim // 2 + k] = np.sin(pos * omega)
          expected[token, half * dim // 2 + quarter + k] = np.cos(pos * omega)
  actual = get_2d_sincos_pos_embed(dim, grid, cls_token=True)
  assert actual.shape == (10, 16) and actual.dtype == np.float32
  np.testing.assert_allclose(actual, expected, atol=1e-6)
  assert get_2d_sincos_pos_embed(dim, grid, cls_token=False).shape == (9, 16)
  # MoCo v3's / mmpretrain's layout: the row half first, then the column half
  swapped = np.concatenate([expected[:, dim // 2:], expected[:, :dim // 2]], axis=1)
  np.testing.assert_allclose(get_2d_sincos_pos_embed(dim, grid, layout='mocov3'), swapped, atol=1e-6)
  with pytest.raises(ValueError, match="unknown sin-cos layout 'moco'; valid: mae, mocov3"):
    get_2d_sincos_pos_embed(dim, grid, layout='moco')


@pytest.mark.parametrize('layout', ['mae', 'mocov3'])
def test_sincos_is_fixed_not_a_param(layout):
  torch_model = make_timm()
  with torch.no_grad():
    torch_model.pos_embed.copy_(torch.from_numpy(
        get_2d_sincos_pos_embed(64, 4, cls_token=True, layout=layout)[None]))
  variables = timm_to_flax(torch_model)
  del variables['params']['pos_embed']
  model = VisionTransformer(**CONFIG, pos_embed='sincos', sincos_layout=layout)
  x, x_nhwc = random_images()
  assert_same_structure(model, variables, x_nhwc)
  with torch.no_grad():
    expected = torch_model.forward_features(torch.from_numpy(x)).numpy()
  assert_close(jax.jit(model.apply)(variables, x_nhwc), expected)


def test_drop_path_and_remat():
  x = random_images()[1]
  model = VisionTransformer(**CONFIG, drop_path_rate=0.5)
  variables = timm_to_flax(make_timm())  # no RNG init: keeps compile short
  apply = jax.jit(lambda v, seed, train: model.apply(
      v, x, train=train, rngs={'dropout': jax.random.key(seed)}),
                  static_argnums=2)

  # Eval ignores the dropout rng; train mode with drop path does not.
  eval_a = apply(variables, 1, False)
  np.testing.assert_array_equal(eval_a, apply(variables, 2, False))
  train_a, train_b = apply(variables, 1, True), apply(variables, 2, True)
  assert not np.allclose(train_a, eval_a)
  assert not np.allclose(train_a, train_b)

  # Remat changes memory/compute, never values or param names.
  remat_model = model.clone(remat=True)
  assert_same_structure(remat_model, variables, x)
  loss = lambda m: lambda v: jnp.sum(m.apply(
      v, x, train=True, rngs={'dropout': jax.random.key(3)})**2)
  value, grads = jax.jit(jax.value_and_grad(loss(model)))(variables)
  remat_value, remat_grads = jax.jit(
      jax.value_and_grad(loss(remat_model)))(variables)
  np.testing.assert_allclose(remat_value, value, rtol=1e-5)
  # rtol: gradients of ~150 differ in the last bit when XLA fuses the recompute differently
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-5),
               remat_grads, grads)


def test_drop_path_is_per_sample():
  x = jnp.ones((1000, 4, 8))
  out = DropPath(0.25).apply({}, x, deterministic=False,
                             rngs={'dropout': jax.random.key(0)})
  per_sample = np.asarray(out).reshape(1000, -1)
  # Each sample is either dropped entirely or scaled by 1 / keep_prob.
  assert set(np.unique(per_sample)) <= {0.0, np.float32(1 / 0.75)}
  assert np.all(per_sample.min(1) == per_sample.max(1))
  assert 0.2 < np.mean(per_sample[:, 0] == 0) < 0.3


def test_registry_and_bfloat16():
  model = build_backbone('vit_small', img_size=32, depth=1)
  assert model.patch_size == 16 and model.num_heads == 6
  assert backbone_feature_dim('vit_base') == 768
  assert build_backbone('vit_tiny', patch_size=8).patch_size == 8
  model = build_backbone('vit_tiny', img_size=32, patch_size=8, depth=1,
                         dtype=jnp.bfloat16)
  out, variables = jax.eval_shape(lambda x: model.init_with_output(
      jax.random.key(0), x), jnp.zeros((2, 32, 32, 3)))
  assert out.shape == (2, 17, 192) and out.dtype == jnp.bfloat16
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(variables))


def test_output_modes_match_timm():
  torch_model = make_timm()
  variables = timm_to_flax(torch_model)
  x, x_nhwc = random_images()
  with torch.no_grad():
    tokens = torch_model.forward_features(torch.from_numpy(x)).numpy()
  expected = {'tokens': tokens, 'cls': tokens[:, 0], 'patch': tokens[:, 1:],
              'mean': tokens[:, 1:].mean(1)}
  for output, exp in expected.items():
    out = jax.jit(VisionTransformer(**CONFIG, output=output).apply)(
        variables, x_nhwc)
    assert out.shape == exp.shape, output
    assert_close(out, exp)
  with pytest.raises(ValueError, match="unknown output 'avg'"):
    jax.eval_shape(VisionTransformer(**CONFIG, output='avg').apply,
                   variables, x_nhwc)
  with pytest.raises(ValueError, match="use_fc_norm=True needs output='mean'"):
    jax.eval_shape(VisionTransformer(**CONFIG, use_fc_norm=True).apply,
                   variables, x_nhwc)


def test_fc_norm_matches_timm_global_pool_avg():
  torch_model = make_timm(global_pool='avg', fc_norm=True)
  variables = timm_to_flax(torch_model)
  assert 'norm' not in variables['params']  # timm: norm is Identity
  model = VisionTransformer(**CONFIG, output='mean', use_fc_norm=True)
  x, x_nhwc = random_images()
  assert_same_structure(model, variables, x_nhwc)
  with torch.no_grad():
    expected = torch_model.forward_head(
        torch_model.forward_features(torch.from_numpy(x)),
        pre_logits=True).numpy()
  out = jax.jit(model.apply)(variables, x_nhwc)
  assert out.shape == (2, 64)
  assert_close(out, expected)


def test_frozen_patch_embed_gets_no_gradient():
  variables = timm_to_flax(make_timm())
  x = random_images()[1]
  for frozen in (False, True):
    model = VisionTransformer(**CONFIG, frozen_patch_embed=frozen)
    grads = jax.jit(jax.grad(lambda v: jnp.sum(model.apply(v, x)**2)))(
        variables)['params']
    assert np.any(grads['patch_embed']['proj']['kernel']) != frozen
    assert np.any(grads['pos_embed']) and np.any(grads['blocks_0']['attn'][
        'qkv']['kernel'])


def test_rel_pos_bias_and_no_pos_embed_structure():
  model = VisionTransformer(**CONFIG, rel_pos_bias=True, pos_embed='none',
                            qkv_bias='qv')
  x = jnp.zeros((1, 32, 32, 3))
  params = jax.eval_shape(model.init, jax.random.key(0), x)['params']
  assert 'pos_embed' not in params
  attn = params['blocks_1']['attn']
  assert attn['relative_position_bias_table'].shape == (7 * 7 + 3, 4)
  assert attn['q_bias'].shape == attn['v_bias'].shape == (64,)
  assert 'bias' not in attn['qkv']
  with pytest.raises(ValueError, match='rel_pos_bias does not support '
                     'ids_keep'):
    jax.eval_shape(model.init, jax.random.key(0), x,
                   ids_keep=jnp.zeros((1, 4), jnp.int32))
  with pytest.raises(ValueError, match="qkv_bias must be True, False or 'qv'"):
    jax.eval_shape(VisionTransformer(**CONFIG, qkv_bias='k').init,
                   jax.random.key(0), x)


def test_relative_position_index_matches_timm():
  from timm.models.beit import gen_relative_position_index
  from jssl.models.layers import relative_position_index
  for window in ((4, 4), (3, 5)):
    np.testing.assert_array_equal(
        relative_position_index(window),
        gen_relative_position_index(window).numpy())


def test_vit_huge_registry():
  model = build_backbone('vit_huge')
  assert (model.patch_size, model.embed_dim, model.depth, model.num_heads) == (
      14, 1280, 32, 16)
  out = jax.eval_shape(lambda x: model.init_with_output(
      jax.random.key(0), x)[0], jnp.zeros((1, 224, 224, 3)))
  assert out.shape == (1, 257, 1280)


def test_mask_token_replaces_masked_patches_like_maskfeat_vit():
  """MaskFeatViT's masked forward (mmpretrain): x * (1 - mask) + mask_token * mask after the patch projection, then
  cls token and position embedding, blocks, final norm; written out on timm's modules with the same weights."""
  torch_model = make_timm()
  model = VisionTransformer(**CONFIG, mask_token=True)
  variables = timm_to_flax(torch_model)
  token = np.random.RandomState(1).randn(1, 1, 64).astype(np.float32)
  variables['params']['mask_token'] = jnp.asarray(token)
  x, x_nhwc = random_images()
  mask = np.zeros((2, 16), np.float32)
  mask[0, [0, 5, 6]] = 1
  mask[1, 3:11] = 1
  with torch.no_grad():
    t = torch_model.patch_embed(torch.from_numpy(x))
    m = torch.from_numpy(mask)[..., None]
    t = t * (1 - m) + torch.from_numpy(token) * m
    t = torch.cat([torch_model.cls_token.expand(2, -1, -1), t], dim=1) + torch_model.pos_embed
    expected = torch_model.norm(torch_model.blocks(t)).numpy()
  assert_same_structure(model, variables, x_nhwc)
  assert_close(jax.jit(model.apply)(variables, x_nhwc, mask=jnp.asarray(mask)), expected)
  # no mask: the token is unused and the encoder is the plain ViT
  assert_close(model.apply(variables, x_nhwc), VisionTransformer(**CONFIG).apply(timm_to_flax(torch_model), x_nhwc))
  with pytest.raises(ValueError, match='mask_token=True'):
    VisionTransformer(**CONFIG).apply(timm_to_flax(torch_model), x_nhwc, mask=jnp.asarray(mask))


def reference_init(mode, path, shape, patch_size):
  """The distribution of a leaf under the reference of `init_mode` (MAE's `initialize_weights`,
  MoCoV3ViT.init_weights, CAEPretrainViT's init_cfg, MaskFeatViT._init_weights; jssl's tokens: flax's
  truncated_normal(0.02), cut at +-2 std): ('constant', value) | ('uniform', bound) | ('normal', std) |
  ('truncated', std before the +-2 std cut)."""
  xavier = lambda fan_in, fan_out: ('uniform', (6. / (fan_in + fan_out)) ** 0.5)
  leaf = path[-1]
  if leaf in ('bias', 'q_bias', 'v_bias'):
    return ('constant', 0.)
  if leaf in ('scale', 'gamma'):
    return ('constant', 1. if leaf == 'scale' else 0.1)
  if path[0] == 'cls_token':
    return ('normal', 1e-6) if mode == 'moco_v3' else ('truncated', 0.02)
  if leaf != 'kernel':  # pos_embed, mask_token, relative_position_bias_table
    return ('truncated', 0.02)
  if mode == 'maskfeat':  # torch's trunc_normal_(std=0.02) cuts at +-2 absolute: a normal
    return ('normal', 0.02)
  if path[0] == 'patch_embed':
    return ('truncated', 0.02) if mode == 'cae' else xavier(3 * patch_size ** 2, shape[-1])
  if path[-2] == 'qkv' and mode == 'moco_v3':  # q, k and v on their own
    return xavier(shape[0], shape[1] // 3)
  return xavier(*shape)


@pytest.mark.parametrize('mode', ['mae', 'moco_v3', 'cae', 'maskfeat'])
def test_init_modes_draw_the_references_distributions(mode):
  """Each init_mode, leaf by leaf: constants exact; the sample std within 5 standard errors of the reference's;
  uniforms reach their bound and no further, truncated normals stop at 2 std, normals go past 3 std."""
  kwargs = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, mask_token=True,
                layer_scale_init=0.1, init_mode=mode)
  params = {}
  for variant in ({'qkv_bias': True}, {'qkv_bias': 'qv', 'rel_pos_bias': True}):
    model = VisionTransformer(**kwargs, **variant)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    params.update(jax.tree_util.tree_flatten_with_path(variables['params'])[0])
  for path, x in params.items():
    keys = tuple(k.key for k in path)
    kind, value = reference_init(mode, keys, x.shape, 8)
    x = np.asarray(x, np.float64).ravel()
    name = f"{mode} {'/'.join(keys)}"
    if kind == 'constant':
      np.testing.assert_array_equal(x, np.float32(value), err_msg=name)
      continue
    std = {'uniform': value / 3 ** 0.5, 'normal': value, 'truncated': 0.87962566 * value}[kind]
    assert abs(x.std() / std - 1) < 5 / (2 * x.size) ** 0.5, (name, x.std(), std)
    top = np.abs(x).max()
    if kind == 'uniform':
      assert 0.99 * value < top <= value, (name, top, value)
    elif kind == 'truncated':
      assert top <= 2 * value, (name, top, value)
    elif x.size > 1000:
      assert top > 3 * value, (name, top, value)
  with pytest.raises(ValueError, match="unknown init_mode 'timm'; valid: mae, moco_v3, cae, maskfeat"):
    VisionTransformer(**{**kwargs, 'init_mode': 'timm'}).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
