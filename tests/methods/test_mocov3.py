import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.mocov3 import get_config
from jssl import optim
from jssl.methods import mocov3
from jssl.models.layers import get_2d_sincos_pos_embed
from jssl.parts.ema import cosine_momentum

# the parity model: a 2-block ViT, 32 wide, 2 heads, 8-px patches of 32-px images
TINY = {'img_size': 32, 'patch_size': 8, 'embed_dim': 32, 'depth': 2, 'num_heads': 2}


def tiny_config():
  c = get_config('demo')
  c.backbone.kwargs.update(TINY)
  c.model.update({'neck_hid_channels': 64, 'neck_out_channels': 16, 'pred_hid_channels': 48})
  return c


def tiny_batch(n=8, size=32, seed=0):
  rng = np.random.default_rng(seed)
  v1 = rng.normal(size=(n, size, size, 3)).astype(np.float32)
  v2 = (rng.normal(size=(n, size, size, 3)) * 0.8 + 0.3).astype(np.float32)
  return {'views': (jnp.asarray(v1), jnp.asarray(v2))}


def numpy_ctr(p, k, t):
  p = p / np.linalg.norm(p, axis=1, keepdims=True)
  k = k / np.linalg.norm(k, axis=1, keepdims=True)
  logits = p.astype(np.float64) @ k.T.astype(np.float64) / t
  logits -= logits.max(1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  return -2 * t * np.mean(np.diag(logp))


def test_contrastive_loss_matches_numpy():
  rng = np.random.default_rng(0)
  p, k = rng.normal(size=(10, 6)).astype(np.float32), rng.normal(size=(10, 6)).astype(np.float32)
  for t in (0.2, 1.0):
    np.testing.assert_allclose(mocov3.contrastive_loss(jnp.asarray(p), jnp.asarray(k), t), numpy_ctr(p, k, t),
                               rtol=1e-5)
  # no gradient reaches the keys
  gk = jax.grad(lambda k_: mocov3.contrastive_loss(jnp.asarray(p), k_, 0.2))(jnp.asarray(k))
  assert np.all(gk == 0)


def test_configs():
  c = get_config()
  assert c.method == 'mocov3' and c.batch_size == 4096 and c.epochs == 300
  assert (c.optimizer.name, c.optimizer.lr, c.optimizer.weight_decay) == ('adamw', 2.4e-3, 0.1)
  assert c.schedule.warmup_epochs == 40 and c.schedule.warmup_start_factor == 1e-4 and c.schedule.min_lr == 0
  assert c.model.temperature == 0.2 and c.model.base_momentum == 0.99
  assert c.backbone.kwargs.frozen_patch_embed and c.backbone.kwargs.pos_embed == 'sincos'
  assert c.data.views[0]['scale'] == (0.08, 1.0)
  assert [a[2]['prob'] for a in c.data.augment_per_view] == [1.0, 0.1]
  assert [a[3]['prob'] for a in c.data.augment_per_view] == [0.0, 0.2]
  s = get_config('vit_s')
  assert s.backbone.name == 'vit_small' and s.backbone.kwargs.num_heads == 12
  r = get_config('resnet50')
  assert r.optimizer.name == 'lars' and r.model.temperature == 1.0 and r.data.views[0]['scale'] == (0.2, 1.0)
  with pytest.raises(ValueError, match='valid: demo, resnet50, vit_s'):
    get_config('nope')


def test_mocov3_sincos_table_is_a_channel_permutation_of_jssl_table():
  """MoCo v3's build_2d_sincos_position_embedding (the official vits.py) vs jssl's (MAE's) table."""
  d, grid = 32, 4
  pos_dim = d // 4
  omega = 1. / 10000 ** (np.arange(pos_dim) / pos_dim)
  gw, gh = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing='ij')
  out_w, out_h = np.einsum('m,d->md', gw.ravel(), omega), np.einsum('m,d->md', gh.ravel(), omega)
  moco = np.concatenate([np.sin(out_w), np.cos(out_w), np.sin(out_h), np.cos(out_h)], axis=1)
  ours = get_2d_sincos_pos_embed(d, grid, cls_token=False)
  perm = [int(np.argmin(np.abs(ours - moco[:, [j]]).sum(0))) for j in range(d)]
  assert sorted(perm) == list(range(d))
  np.testing.assert_allclose(ours[:, perm], moco, atol=1e-6)
  # the permutation swaps the two channel halves: jssl's sincos_layout='mocov3' (mmpretrain's table too)
  assert perm == list(range(d // 2, d)) + list(range(d // 2))
  np.testing.assert_allclose(get_2d_sincos_pos_embed(d, grid, cls_token=False, layout='mocov3'), moco, atol=1e-6)


def test_init_structure_and_one_step_keeps_patch_embed():
  c = tiny_config()
  method = mocov3.Method(c, total_steps=10)
  batch = tiny_batch()
  params, model_state, method_state = jax.jit(method.init)(jax.random.key(0), batch)
  neck, head = params['neck'], params['head']
  assert sorted(neck) == ['bn0', 'bn1', 'fc0', 'fc1', 'fc2']  # last BN without affine: no params
  assert sorted(head) == ['bn0', 'fc0', 'fc1']
  assert all(list(neck[f'fc{i}']) == ['kernel'] for i in range(3))
  assert sorted(model_state['batch_stats']['neck']) == ['bn0', 'bn1', 'bn2']
  assert sorted(method_state['target']['params']) == ['backbone', 'neck']
  assert sorted(method_state['target']['batch_stats']) == ['neck']  # the ViT has no BatchNorm
  # MoCo v3's ViT init: cls token ~ N(0, 1e-6), q/k/v thirds Xavier-uniform on their own
  assert np.abs(params['backbone']['cls_token']).max() < 1e-5
  qkv = np.asarray(params['backbone']['blocks_0']['attn']['qkv']['kernel'])
  assert np.abs(qkv).max() <= np.sqrt(6 / 64) and np.abs(qkv).max() > np.sqrt(6 / 128)
  assert 'pos_embed' not in params['backbone']  # fixed sin-cos

  tx = optim.build_optimizer(c.optimizer, optim.build_schedule(c.optimizer, c.schedule, 2, 10), params)
  opt_state = tx.init(params)
  grads = jax.grad(lambda p: method.loss(p, model_state, method_state, batch, jax.random.key(1), 0)[0])(params)
  assert np.all(np.asarray(grads['backbone']['patch_embed']['proj']['kernel']) == 0)
  for _ in range(2):
    updates, opt_state = tx.update(grads, opt_state, params)
    new_params = jax.tree.map(lambda p, u: p + u, params, updates)
  # the patch embedding does not move (no gradient, no weight decay); everything else does
  np.testing.assert_array_equal(new_params['backbone']['patch_embed']['proj']['kernel'],
                                params['backbone']['patch_embed']['proj']['kernel'])
  np.testing.assert_array_equal(new_params['backbone']['patch_embed']['proj']['bias'],
                                params['backbone']['patch_embed']['proj']['bias'])
  assert not np.allclose(new_params['backbone']['blocks_0']['attn']['qkv']['kernel'], qkv)
  assert not np.allclose(new_params['backbone']['norm']['scale'], params['backbone']['norm']['scale'])


def test_momentum_update_uses_next_step_cosine_momentum():
  method = mocov3.Method(tiny_config(), total_steps=10)
  params, _, method_state = method.init(jax.random.key(0), tiny_batch())
  moved = jax.tree.map(lambda x: x + 1., params)
  new = method.after_step(moved, method_state, 3)
  m = float(cosine_momentum(4, 10, 0.99))
  np.testing.assert_allclose(m, 1 - 0.01 * (np.cos(np.pi * 4 / 10) + 1) / 2, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(new['target']['params']), jax.tree.leaves(method_state['target']['params'])):
    np.testing.assert_allclose(a, b + (1 - m), rtol=1e-5, atol=1e-6)
  assert 'head' not in new['target']['params']
  jax.tree.map(np.testing.assert_array_equal, new['target']['batch_stats'], method_state['target']['batch_stats'])


def torch_mocov3(c, total_steps):
  """mmpretrain's MoCoV3 with the same tiny ViT, projector, predictor and loss (BN1d: one process)."""
  from mmengine.logging import MessageHub
  from mmpretrain.registry import MODELS
  from mmpretrain.utils import register_all_modules
  register_all_modules()
  MessageHub.get_current_instance().update_info('max_iters', total_steps)
  m, k = c.model, c.backbone.kwargs
  t = m.temperature
  neck = lambda i, h, o, n, last_bn: dict(
      type='NonLinearNeck', in_channels=i, hid_channels=h, out_channels=o, num_layers=n, with_bias=False,
      with_last_bn=last_bn, with_last_bn_affine=False, with_last_bias=False, with_avg_pool=False,
      norm_cfg=dict(type='BN1d'))
  model = MODELS.build(dict(
      type='MoCoV3', base_momentum=1 - m.base_momentum,
      backbone=dict(type='MoCoV3ViT', arch=dict(embed_dims=k.embed_dim, num_layers=k.depth, num_heads=k.num_heads,
                                                feedforward_channels=4 * k.embed_dim),
                    img_size=k.img_size, patch_size=k.patch_size, stop_grad_conv1=True),
      neck=neck(k.embed_dim, m.neck_hid_channels, m.neck_out_channels, m.neck_num_layers, True),
      head=dict(type='MoCoV3Head', predictor=neck(m.neck_out_channels, m.pred_hid_channels, m.neck_out_channels, 2,
                                                  m.pred_with_last_bn),
                loss=dict(type='CrossEntropyLoss', loss_weight=2 * t), temperature=t)))
  model.init_weights()
  return model


def torch_state_of(params, model_state, c):
  """jssl params -> the state dict of mmpretrain's MoCoV3 base encoder (backbone, neck, head.predictor)."""
  from jssl.convert import vit as vit_convert
  from tests.parity import bn_state, dense_state, tensors
  arch = {'name': c.backbone.name, **dict(c.backbone.kwargs)}
  state = {f'backbone.{k}': v for k, v in
           tensors(vit_convert.to_torch({'params': params['backbone']}, 'mmpretrain', arch)).items()}
  for part, prefix in (('neck', 'neck'), ('head', 'head.predictor')):
    p, stats = params[part], model_state['batch_stats'][part]
    for name in p:
      if name.startswith('fc'):
        state.update(dense_state(p[name], f'{prefix}.{name}'))
    for name in stats:
      state.update(bn_state(p.get(name), stats[name], f'{prefix}.{name}'))
  return state


def test_parity_with_mmpretrain_mocov3():
  torch = pytest.importorskip('torch')
  pytest.importorskip('mmpretrain')
  from tests.parity import nhwc_to_torch
  c = tiny_config()
  total_steps = 10
  method = mocov3.Method(c, total_steps=total_steps)
  batch = tiny_batch()
  params, model_state, method_state = method.init(jax.random.key(0), batch)

  model = torch_mocov3(c, total_steps)
  state = torch_state_of(params, model_state, c)
  missing, unexpected = model.load_state_dict(state, strict=False)
  assert not unexpected
  # left out: the momentum encoder (copied from the base encoder at the first update) and BN counters
  assert all(k.startswith('momentum_encoder.') or k.endswith('num_batches_tracked') for k in missing), missing
  model.train()

  loss_fn = lambda p: method.loss(p, model_state, method_state, batch, jax.random.key(1), 0)
  (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  inputs = [nhwc_to_torch(v) for v in batch['views']]
  ref_loss = model.loss(inputs, None)['loss']
  ref_loss.backward()
  np.testing.assert_allclose(loss, ref_loss.item(), rtol=1e-5)

  # the first trained layers: cls token and the first block's qkv (the patch embedding is frozen in both)
  bb = model.backbone
  assert bb.patch_embed.projection.weight.grad is None
  assert np.all(np.asarray(grads['backbone']['patch_embed']['proj']['kernel']) == 0)
  g_qkv = grads['backbone']['blocks_0']['attn']['qkv']['kernel']
  ref_qkv = bb.layers[0].attn.qkv.weight.grad.numpy().T
  np.testing.assert_allclose(g_qkv, ref_qkv, rtol=1e-3, atol=1e-4 * np.abs(ref_qkv).max())
  g_cls = np.asarray(grads['backbone']['cls_token']).ravel()
  ref_cls = bb.cls_token.grad.numpy().ravel()
  np.testing.assert_allclose(g_cls, ref_cls, rtol=1e-3, atol=1e-4 * np.abs(ref_cls).max())
  g_fc = grads['head']['fc0']['kernel']
  np.testing.assert_allclose(g_fc, model.head.predictor.fc0.weight.grad.numpy().T, rtol=1e-3,
                             atol=1e-4 * np.abs(g_fc).max())

  # one momentum update after the same parameter change: jssl's after_step of iteration 0 is the reference's
  # update at the start of iteration 1 (steps == 1: m(1) of the cosine)
  new_params = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
  with torch.no_grad():
    for p in model.parameters():
      if p.grad is not None:
        p.sub_(0.5 * p.grad)
  new_state = method.after_step(new_params, method_state, 0)
  model.momentum_encoder.update_parameters(torch.nn.Sequential(model.backbone, model.neck))
  enc = model.momentum_encoder.module
  target = new_state['target']['params']
  ref_t_qkv = enc[0].layers[0].attn.qkv.weight.detach().numpy().T
  old_qkv = np.asarray(params['backbone']['blocks_0']['attn']['qkv']['kernel'])
  np.testing.assert_allclose(target['backbone']['blocks_0']['attn']['qkv']['kernel'], ref_t_qkv,
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(target['neck']['fc0']['kernel'], enc[1].fc0.weight.detach().numpy().T,
                             rtol=1e-5, atol=1e-7)
  # the cls token moved by a gradient step only (its init is ~1e-6): its target carries the gradients' round-off,
  # up to ~2e-6 of its largest entry (the gradients' own tolerance above is 1e-4 of theirs)
  ref_t_cls = enc[0].cls_token.detach().numpy().ravel()
  np.testing.assert_allclose(target['backbone']['cls_token'].ravel(), ref_t_cls, rtol=1e-4,
                             atol=1e-5 * np.abs(ref_t_cls).max())
  # and the update is m(1) of the cosine, not a copy: the reference's target moved by (1 - m) of the step
  m = float(cosine_momentum(1, total_steps, 0.99))
  step = np.asarray(new_params['backbone']['blocks_0']['attn']['qkv']['kernel']) - old_qkv
  moved = ref_t_qkv - old_qkv
  np.testing.assert_allclose(moved, (1 - m) * step, atol=1e-3 * np.abs(moved).max())
  assert np.abs(moved).max() > 1e-6 and 0.99 < m < 0.991


# the projector's 128 x 128 fc1 is big enough for the fsdp mesh to shard
SMALL = {'backbone.kwargs.embed_dim': 32, 'backbone.kwargs.depth': 2, 'backbone.kwargs.num_heads': 2,
         'model.neck_hid_channels': 128, 'model.neck_out_channels': 16, 'model.pred_hid_channels': 32}


# tests/methods/test_every_method.py: 1 vs 8 devices, kill-and-resume and the demo, made small by these
# The keys' bias in attention and the final norm's bias get an exactly-zero gradient (softmax and the projector's
# BN are invariant to them): AdamW (eps 1e-8) turns their round-off noise into +-lr steps that differ between
# meshes. eps 1e-3 keeps those noise steps negligible and still compares real AdamW updates.
DEVICES = {**SMALL, 'optimizer.eps': 1e-3}
METHOD_STATE_LEAVES = 1  # the momentum encoder
RESUME = {**SMALL, 'batch_size': 64, 'total_steps': 30}
