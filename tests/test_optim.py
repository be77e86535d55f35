import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jssl import optim


def cfg(**kw):
  return ml_collections.ConfigDict(kw)


def test_decay_mask_excludes_norms_biases_and_named():
  params = {'conv': {'kernel': jnp.ones((3, 3, 4, 4))}, 'bn': {'scale': jnp.ones(4), 'bias': jnp.ones(4)},
            'pos_embed': jnp.ones((1, 5, 4)), 'fc': {'kernel': jnp.ones((4, 4)), 'bias': jnp.ones(4)}}
  mask = optim.decay_mask(params, no_decay_names=('pos_embed',))
  assert mask == {'conv': {'kernel': True}, 'bn': {'scale': False, 'bias': False}, 'pos_embed': False,
                  'fc': {'kernel': True, 'bias': False}}


def test_warmup_cosine_schedule_values():
  s = optim.build_schedule(cfg(lr=1.0), cfg(name='cosine', warmup_epochs=2, warmup_start_factor=0.1, min_lr=0.01),
                           steps_per_epoch=5, total_steps=30)
  np.testing.assert_allclose(s(0), 0.1, rtol=1e-6)
  np.testing.assert_allclose(s(5), 0.1 + 0.9 * 5 / 10, rtol=1e-6)
  np.testing.assert_allclose(s(10), 1.0, rtol=1e-6)
  for step in (15, 22, 29):  # cosine from 1.0 to 0.01 over the 20 steps after warmup
    expected = 0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * (step - 10) / 20))
    np.testing.assert_allclose(s(step), expected, rtol=1e-5)


def test_step_schedule_matches_torch_multisteplr_and_counts_from_the_start_with_warmup():
  import torch
  s = optim.build_schedule(cfg(lr=0.03), cfg(name='step', milestones=(4, 6), gamma=0.1, warmup_epochs=0.),
                           steps_per_epoch=5, total_steps=40)
  opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.03)
  ref = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[20, 30], gamma=0.1)  # milestones in iterations
  for step in range(40):
    np.testing.assert_allclose(s(step), opt.param_groups[0]['lr'], rtol=1e-6, err_msg=str(step))
    opt.step()
    ref.step()
  warm = optim.build_schedule(cfg(lr=1.), cfg(name='step', milestones=(4,), gamma=0.5, warmup_epochs=2.,
                                              warmup_start_factor=0.), steps_per_epoch=5, total_steps=40)
  np.testing.assert_allclose([warm(5), warm(10), warm(19), warm(20)], [0.5, 1., 1., 0.5], rtol=1e-6)
  import pytest
  with pytest.raises(ValueError, match='config.schedule.milestones'):
    optim.build_schedule(cfg(lr=1.), cfg(name='step', milestones=(), warmup_epochs=0.), 5, 40)


def test_lars_excludes_1d_params_from_adaptation_and_decay():
  params = {'w': jnp.full((4, 4), 2.0), 'b': jnp.full((4,), 2.0)}
  grads = {'w': jnp.full((4, 4), 0.5), 'b': jnp.full((4,), 0.5)}
  tx = optim.build_optimizer(cfg(name='lars', lr=0.1, momentum=0.0, weight_decay=0.1), optax.constant_schedule(0.1),
                             params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # bias: plain SGD step, no decay, no trust ratio
  np.testing.assert_allclose(updates['b'], -0.1 * 0.5)
  # weight: g + wd w, scaled by eta |w| / |g + wd w|
  g = 0.5 + 0.1 * 2.0
  trust = 0.001 * np.linalg.norm(np.full((4, 4), 2.0)) / np.linalg.norm(np.full((4, 4), g))
  np.testing.assert_allclose(updates['w'], -0.1 * trust * g, rtol=1e-5)


def test_adamw_mask_and_accumulation():
  params = {'w': jnp.ones((2, 2)), 'cls_token': jnp.ones((1, 1, 2))}
  c = cfg(name='adamw', lr=0.1, betas=(0.9, 0.95), weight_decay=0.5, no_decay_names=('cls_token',),
          grad_accum_steps=2)
  tx = optim.build_optimizer(c, optax.constant_schedule(0.1), params)
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  u1, state = tx.update(zeros, state, params)
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(u1))  # first micro-step: no update
  u2, state = tx.update(zeros, state, params)
  np.testing.assert_allclose(u2['w'], -0.1 * 0.5)        # decoupled weight decay only
  np.testing.assert_allclose(u2['cls_token'], 0.)        # excluded from decay


def test_unknown_optimizer_error():
  import pytest
  with pytest.raises(ValueError, match="unknown optimizer 'adam'; valid: adamw, lars, sgd"):
    optim.build_optimizer(cfg(name='adam'), optax.constant_schedule(0.1), {'w': jnp.ones((2, 2))})


def test_fixed_lr_names_keep_the_base_lr_while_the_rest_follows_the_schedule():
  # SGD without momentum or decay: the update is -lr * g, so it shows the lr each group got at each step
  params = {'backbone': {'w': jnp.ones((2, 2))}, 'head': {'w': jnp.ones((2, 2)), 'b': jnp.ones(2)}}
  schedule = optax.linear_schedule(1.0, 0.0, 4)
  tx = optim.build_optimizer(cfg(name='sgd', lr=1.0, momentum=0.0, weight_decay=0.0, fixed_lr_names=('head',)),
                             schedule, params)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for step, lr in [(0, 1.0), (1, 0.75), (2, 0.5)]:
    updates, state = tx.update(grads, state, params)
    np.testing.assert_allclose(updates['backbone']['w'], -lr, err_msg=str(step))
    np.testing.assert_allclose(updates['head']['w'], -1.0, err_msg=str(step))
    np.testing.assert_allclose(updates['head']['b'], -1.0, err_msg=str(step))


def test_fixed_lr_names_with_lars_masks_and_weight_decay():
  params = {'backbone': {'w': jnp.full((2, 2), 2.0), 'b': jnp.ones(2)}, 'head': {'w': jnp.full((2, 2), 2.0)}}
  tx = optim.build_optimizer(cfg(name='lars', lr=0.1, momentum=0.9, weight_decay=0.1, fixed_lr_names=('head',)),
                             optax.constant_schedule(0.1), params)
  plain = optim.build_optimizer(cfg(name='lars', lr=0.1, momentum=0.9, weight_decay=0.1),
                                optax.constant_schedule(0.1), params)
  grads = jax.tree.map(lambda x: 0.5 * jnp.ones_like(x), params)
  # with a constant schedule both groups see the same lr: identical to the optimizer without groups
  u, _ = tx.update(grads, tx.init(params), params)
  u_plain, _ = plain.update(grads, plain.init(params), params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u, u_plain)


def test_lr_mult_names_scale_the_lr_of_those_parameters_only():
  # LARS with momentum: the update is linear in the lr, so a 10x lr multiplier gives 10x the update of the
  # plain optimizer for the named parameters, step after step (momentum trace included), and 1x elsewhere
  params = {'backbone': {'w': jnp.full((2, 2), 2.0), 'b': jnp.ones(2)}, 'head': {'w': jnp.full((2, 3), 1.5)}}
  schedule = optax.linear_schedule(0.2, 0.0, 5)
  tx = optim.build_optimizer(cfg(name='lars', lr=0.2, momentum=0.9, weight_decay=0.1, lr_mult_names=('head',),
                                 lr_mult=10.), schedule, params)
  plain = optim.build_optimizer(cfg(name='lars', lr=0.2, momentum=0.9, weight_decay=0.1), schedule, params)
  state, state_plain = tx.init(params), plain.init(params)
  for step in range(3):
    grads = jax.tree.map(lambda x: (step + 1) * 0.3 * jnp.ones_like(x), params)
    u, state = tx.update(grads, state, params)
    u_plain, state_plain = plain.update(grads, state_plain, params)
    np.testing.assert_allclose(u['head']['w'], 10 * u_plain['head']['w'], rtol=1e-6, err_msg=str(step))
    np.testing.assert_allclose(u['backbone']['w'], u_plain['backbone']['w'], rtol=1e-6, err_msg=str(step))
    np.testing.assert_allclose(u['backbone']['b'], u_plain['backbone']['b'], rtol=1e-6, err_msg=str(step))
  assert np.abs(u_plain['head']['w']).max() > 0


def test_no_momentum_names_use_plain_sgd_while_the_rest_keeps_momentum():
  params = {'backbone': {'w': jnp.ones((2, 2))}, 'head': {'w': jnp.ones((2, 2))}}
  tx = optim.build_optimizer(cfg(name='sgd', lr=0.1, momentum=0.9, weight_decay=0.0, no_momentum_names=('head',)),
                             optax.constant_schedule(0.1), params)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for step in range(3):
    updates, state = tx.update(grads, state, params)
  # constant gradient 1: with momentum 0.9 the third update is -0.1 * (1 + 0.9 + 0.81); without it -0.1
  np.testing.assert_allclose(updates['backbone']['w'], -0.1 * 2.71, rtol=1e-6)
  np.testing.assert_allclose(updates['head']['w'], -0.1, rtol=1e-6)


def test_sgd_decay_mult_matches_torch_param_groups():
  """MMSelfSup's paramwise custom_keys={'neck': dict(decay_mult=5.)}: torch SGD with a second param group at 5x wd."""
  import torch
  rng = np.random.default_rng(0)
  params = {'backbone': {'w': jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)},
            'neck': {'fc': {'kernel': jnp.asarray(rng.normal(size=(2, 2)), jnp.float32)},
                     'bn': {'bias': jnp.asarray(rng.normal(size=(2,)), jnp.float32)}}}
  grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
  c = cfg(name='sgd', lr=0.1, momentum=0.9, weight_decay=1e-2, exclude_1d_from_decay=False, decay_mult={'neck': 5.})
  tx = optim.build_optimizer(c, 0.1, params)
  state, p = tx.init(params), params
  names = [('backbone', 'w'), ('neck', 'fc', 'kernel'), ('neck', 'bn', 'bias')]
  get = lambda tree, path: tree[path[0]][path[1]] if len(path) == 2 else tree[path[0]][path[1]][path[2]]
  tp = {n: torch.nn.Parameter(torch.tensor(np.asarray(get(params, n)))) for n in names}
  opt = torch.optim.SGD([{'params': [tp[names[0]]]}, {'params': [tp[n] for n in names[1:]], 'weight_decay': 5e-2}],
                        lr=0.1, momentum=0.9, weight_decay=1e-2)
  for _ in range(3):
    updates, state = tx.update(grads, state, p)
    p = optax.apply_updates(p, updates)
    for n in names:
      tp[n].grad = torch.tensor(np.asarray(get(grads, n)))
    opt.step()
  for n in names:
    np.testing.assert_allclose(get(p, n), tp[n].detach().numpy(), rtol=1e-5, atol=1e-7, err_msg=str(n))
  import pytest
  with pytest.raises(ValueError, match='config.optimizer.decay_mult'):
    optim.build_optimizer(cfg(name='lars', lr=0.1, momentum=0.9, weight_decay=1e-6, decay_mult={'neck': 5.}), 0.1,
                          params)


# --- layer-wise lr decay and the fine-tune recipes' weight decay vs mmpretrain's layer-decay constructor

def recipe_paramwise_cfg(recipe):
  """paramwise_cfg of an mmpretrain fine-tune config (its _base_ schedule merged in, as mmengine does)."""
  import os
  import mmpretrain
  from mmengine.config import Config
  path = os.path.join(os.path.dirname(mmpretrain.__file__), '.mim', 'configs', recipe)
  return Config.fromfile(path).optim_wrapper.paramwise_cfg


def mmpretrain_groups(backbone_cfg, head_in, paramwise_cfg):
  """{param name: (lr multiplier, decays)} of mmpretrain's ImageClassifier(backbone, LinearClsHead) under the
  layer-decay constructor, base lr 1."""
  from mmpretrain.engine.optimizers import LearningRateDecayOptimWrapperConstructor
  from mmpretrain.registry import MODELS
  from mmpretrain.utils import register_all_modules
  register_all_modules()
  model = MODELS.build(dict(type='ImageClassifier', backbone=backbone_cfg, neck=dict(type='GlobalAveragePooling'),
                            head=dict(type='LinearClsHead', num_classes=3, in_channels=head_in)))
  constructor = LearningRateDecayOptimWrapperConstructor(
      dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1., weight_decay=0.05)), paramwise_cfg)
  groups = constructor(model).optimizer.param_groups
  return {g['param_name']: (g['lr'], g['weight_decay'] > 0) for g in groups}


def jssl_groups(model, kind, rate, torch_name):
  """The same for jssl's {'backbone': model's params, 'head'}, names through the converter's map `torch_name`."""
  import flax.traverse_util
  size = model.img_size
  backbone = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))['params']
  params = {'backbone': backbone, 'head': {'kernel': jax.ShapeDtypeStruct((model.feature_dim, 3), jnp.float32),
                                           'bias': jax.ShapeDtypeStruct((3,), jnp.float32)}}
  scales = flax.traverse_util.flatten_dict(optim.layer_decay_scales(params, rate, kind))
  decays = flax.traverse_util.flatten_dict(optim.decay_mask(params, optim.FINETUNE_NO_DECAY_NAMES))
  names = {('head', 'kernel'): 'head.fc.weight', ('head', 'bias'): 'head.fc.bias'}
  names.update({('backbone',) + p: 'backbone.' + torch_name(backbone, p)
                for p in flax.traverse_util.flatten_dict(backbone)})
  return {names[p]: (scales[p], bool(decays[p])) for p in scales}


def vit_torch_name(module):
  from jssl.convert import vit as vit_convert
  return lambda backbone, path: vit_convert.torch_key(path, 'mmpretrain', module.rel_pos_bias)


def swin_torch_name(backbone, path):
  from jssl.convert import swin as swin_convert
  return swin_convert._torch_name(path, 'mmpretrain', swin_convert._num_stages(backbone))


VIT_MM = dict(arch=dict(embed_dims=32, num_layers=4, num_heads=2, feedforward_channels=128), img_size=32,
              patch_size=16, out_type='avg_featmap', final_norm=False)
VIT_JSSL = dict(img_size=32, patch_size=16, embed_dim=32, depth=4, num_heads=2, output='mean', use_fc_norm=True)
SWIN_DEPTHS = (2, 1, 3, 2)  # unequal, so that a wrong cumulative block count shows


def layer_decay_cases():
  from jssl.models.swin import SwinTransformer
  from jssl.models.vit import VisionTransformer
  vit = VisionTransformer(**VIT_JSSL)
  beit = VisionTransformer(**VIT_JSSL, rel_pos_bias=True, qkv_bias='qv', layer_scale_init=0.1)
  swin = SwinTransformer(img_size=64, embed_dim=16, depths=SWIN_DEPTHS, num_heads=(1, 1, 1, 1), window_size=2,
                         use_abs_pos_embed=True)
  return {
      'mae_vit': ('mae/benchmarks/vit-base-p16_8xb128-coslr-100e_in1k.py', 'vit', vit, vit_torch_name(vit),
                  dict(type='VisionTransformer', **VIT_MM), 32),
      'cae_beit': ('cae/benchmarks/beit-base-p16_8xb128-coslr-100e_in1k.py', 'vit', beit, vit_torch_name(beit),
                   dict(type='BEiTViT', **VIT_MM, use_abs_pos_emb=True, use_rel_pos_bias=True,
                        use_shared_rel_pos_bias=False, layer_scale_init_value=0.1), 32),
      'simmim_swin': ('simmim/benchmarks/swin-base-w7_8xb256-coslr-100e_in1k.py', 'swin', swin, swin_torch_name,
                      dict(type='SwinTransformer', arch=dict(embed_dims=16, depths=list(SWIN_DEPTHS),
                                                             num_heads=[1, 1, 1, 1]),
                           img_size=64, window_size=2, use_abs_pos_embed=True), 128),
  }


@pytest.mark.parametrize('case', ['mae_vit', 'cae_beit', 'simmim_swin'])
def test_layer_decay_and_finetune_weight_decay_match_mmpretrain(case):
  pytest.importorskip('mmpretrain')
  recipe, kind, model, torch_name, mm_backbone, head_in = layer_decay_cases()[case]
  paramwise_cfg = recipe_paramwise_cfg(recipe)
  rate = paramwise_cfg.layer_decay_rate
  expected = mmpretrain_groups(mm_backbone, head_in, paramwise_cfg)
  got = jssl_groups(model, kind, rate, torch_name)
  assert sorted(got) == sorted(expected)
  for name, (lr, decays) in expected.items():
    np.testing.assert_allclose(got[name][0], lr, rtol=1e-12, err_msg=name)
    assert got[name][1] == decays, name
  # every layer id occurs: L + 2 distinct multipliers (stem ... head)
  num_blocks = sum(SWIN_DEPTHS) if kind == 'swin' else model.depth
  assert len({round(lr, 12) for lr, _ in expected.values()}) == num_blocks + 2


def tiny_vit_tree(rng):
  """A 2-block ViT-named tree with a head, random values."""
  shapes = {'backbone': {'patch_embed': {'proj': {'kernel': (2, 2, 3, 4), 'bias': (4,)}}, 'cls_token': (1, 1, 4),
                         'pos_embed': (1, 3, 4), 'blocks_0': {'mlp': {'fc1': {'kernel': (4, 4), 'bias': (4,)}}},
                         'blocks_1': {'norm1': {'scale': (4,)}, 'attn': {'qkv': {'kernel': (4, 12)}}},
                         'fc_norm': {'scale': (4,)}},
            'head': {'kernel': (4, 3), 'bias': (3,)}}
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                      is_leaf=lambda x: isinstance(x, tuple))


def test_layer_decay_scales_by_hand():
  params = tiny_vit_tree(np.random.default_rng(0))
  r = 0.65
  expected = {'backbone': {'patch_embed': {'proj': {'kernel': r**3, 'bias': r**3}}, 'cls_token': r**3,
                           'pos_embed': r**3, 'blocks_0': {'mlp': {'fc1': {'kernel': r**2, 'bias': r**2}}},
                           'blocks_1': {'norm1': {'scale': r}, 'attn': {'qkv': {'kernel': r}}},
                           'fc_norm': {'scale': 1.}},
              'head': {'kernel': 1., 'bias': 1.}}
  scales = optim.layer_decay_scales(params, r, 'vit')
  assert jax.tree.structure(scales) == jax.tree.structure(expected)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), scales, expected)
  # Swin: stem 0, blocks counted across stages, a patch merging at the id of the block before it, the rest L + 1
  swin = {'patch_embed': {'proj': {'kernel': 0}}, 'absolute_pos_embed': 0,
          'layers_0': {'blocks_0': {'w': 0}, 'blocks_1': {'w': 0}},
          'layers_1': {'downsample': {'reduction': {'kernel': 0}}, 'blocks_0': {'w': 0}}, 'norm': {'scale': 0}}
  ids, last = optim.layer_ids(swin, 'swin')
  assert last == 4
  assert ids == {'patch_embed': {'proj': {'kernel': 0}}, 'absolute_pos_embed': 4,
                 'layers_0': {'blocks_0': {'w': 1}, 'blocks_1': {'w': 2}},
                 'layers_1': {'downsample': {'reduction': {'kernel': 2}}, 'blocks_0': {'w': 3}}, 'norm': {'scale': 4}}


def test_adamw_with_layer_decay_matches_torch_adamw_per_group_lr():
  """Scaling the AdamW update by s == torch AdamW at lr * s (decoupled decay included), under a schedule, with a
  frozen parameter (a masked subtree) in the tree."""
  import flax.traverse_util
  import torch
  rng = np.random.default_rng(0)
  params = tiny_vit_tree(rng)
  rate, base_lr, wd = 0.65, 0.01, 0.05
  c = cfg(name='adamw', lr=base_lr, betas=(0.9, 0.999), weight_decay=wd,
          no_decay_names=optim.FINETUNE_NO_DECAY_NAMES, layer_decay=rate, layer_decay_kind='vit',
          frozen_names=('pos_embed',))
  factor = lambda step: 1. - 0.2 * step
  tx = optim.build_optimizer(c, lambda step: base_lr * factor(step), params)
  flat = flax.traverse_util.flatten_dict(params)
  # hand-written reference: lr multiplier (layer id 0 / 1 / 2 / 3 of L = 2 blocks) and weight decay per leaf
  depth_of = {'patch_embed': 3, 'cls_token': 3, 'blocks_0': 2, 'blocks_1': 1, 'fc_norm': 0}
  decays = {('backbone', 'patch_embed', 'proj', 'kernel'), ('backbone', 'blocks_0', 'mlp', 'fc1', 'kernel'),
            ('backbone', 'blocks_1', 'attn', 'qkv', 'kernel'), ('head', 'kernel')}
  trained = [p for p in flat if p[-1] != 'pos_embed']
  tp = {p: torch.nn.Parameter(torch.tensor(np.asarray(flat[p]))) for p in trained}
  groups = [{'params': [tp[p]], 'lr': base_lr * rate ** (depth_of[p[1]] if p[0] == 'backbone' else 0),
             'weight_decay': wd if p in decays else 0.} for p in trained]
  opt = torch.optim.AdamW(groups, lr=base_lr, betas=(0.9, 0.999), eps=1e-8)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
  state, p_jax = tx.init(params), params
  for _ in range(3):
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    updates, state = tx.update(grads, state, p_jax)
    p_jax = optax.apply_updates(p_jax, updates)
    flat_grads = flax.traverse_util.flatten_dict(grads)
    for p in trained:
      tp[p].grad = torch.tensor(np.asarray(flat_grads[p]))
    opt.step()
    sched.step()
  got = flax.traverse_util.flatten_dict(p_jax)
  for p in trained:
    np.testing.assert_allclose(got[p], tp[p].detach().numpy(), rtol=1e-5, atol=1e-7, err_msg=str(p))
  np.testing.assert_array_equal(got[('backbone', 'pos_embed')], flat[('backbone', 'pos_embed')])


def test_layer_decay_config_errors():
  params = tiny_vit_tree(np.random.default_rng(0))
  base = dict(name='adamw', lr=0.1, betas=(0.9, 0.999), weight_decay=0.05, layer_decay=0.75)
  with pytest.raises(ValueError, match="config.optimizer.layer_decay_kind: unknown kind 'convnext'; valid: vit, swin"):
    optim.build_optimizer(cfg(**base, layer_decay_kind='convnext'), 0.1, params)
  with pytest.raises(ValueError, match='config.optimizer.layer_decay_kind'):
    optim.build_optimizer(cfg(**base), 0.1, params)
  with pytest.raises(ValueError, match="config.optimizer.layer_decay: the params have no 'backbone' subtree"):
    optim.build_optimizer(cfg(**base, layer_decay_kind='vit'), 0.1, params['backbone'])
  with pytest.raises(ValueError, match=r'config.optimizer.layer_decay: expected a rate in \(0, 1\]'):
    optim.build_optimizer(cfg(**{**base, 'layer_decay': 1.5}, layer_decay_kind='vit'), 0.1, params)
  # 1.0 (or absent) is off: the same updates as without the fields
  on = optim.build_optimizer(cfg(**{**base, 'layer_decay': 1.}, layer_decay_kind='unused'), 0.1, params)
  off = optim.build_optimizer(cfg(**{k: v for k, v in base.items() if k != 'layer_decay'}), 0.1, params)
  grads = jax.tree.map(jnp.ones_like, params)
  jax.tree.map(np.testing.assert_array_equal, on.update(grads, on.init(params), params)[0],
               off.update(grads, off.init(params), params)[0])
