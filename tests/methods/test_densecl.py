"""DenseCL: the neck, the dense matching, the loss and its warmup, queues and momentum update; parity with
mmpretrain 1.2's DenseCL (world size 1 = one shuffle-BN group); 8 devices, resume and the demo."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs.densecl import get_config
from jssl import losses
from jssl.methods import densecl
from jssl.models.necks import DenseCLNeck
from tests import parity

SMALL = {'backbone.kwargs.num_filters': 8, 'model.neck_hid_channels': 32, 'model.neck_out_channels': 16}


def small_config(size=64, batch=8, queue_len=32, groups=1, warmup=0):
  c = get_config('demo')
  c.backbone.kwargs.num_filters = 8
  c.model.neck_hid_channels = 32
  c.model.neck_out_channels = 16
  c.model.queue_len = queue_len
  c.model.shuffle_bn_groups = groups
  c.model.loss_lambda_warmup = warmup
  c.model.momentum = 0.999
  c.batch_size = batch
  c.data.views[0]['size'] = size
  return c


def views(batch=8, size=64, seed=0):
  rng = np.random.default_rng(seed)
  v1 = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
  v2 = (0.7 * v1 + 0.5 * rng.normal(size=v1.shape)).astype(np.float32)  # related views: matching is not random
  return v1, v2


def test_neck_outputs_and_grid_pooling():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, 6)), jnp.float32)
  neck = DenseCLNeck(hid_channels=8, out_channels=5)
  variables = neck.init(jax.random.key(0), x)
  g, dense, mean = neck.apply(variables, x)
  assert g.shape == (2, 5) and dense.shape == (2, 16, 5) and mean.shape == (2, 5)
  np.testing.assert_allclose(mean, dense.mean(axis=1), rtol=1e-6)
  p = variables['params']
  # location (h, w) is row h * W + w: the 1x1 convs applied to that feature vector
  h, w = 2, 3
  hidden = np.maximum(np.asarray(x[:, h, w]) @ np.asarray(p['conv0']['kernel'][0, 0]) + np.asarray(p['conv0']['bias']), 0)
  np.testing.assert_allclose(dense[:, h * 4 + w], hidden @ np.asarray(p['conv1']['kernel'][0, 0]) + p['conv1']['bias'],
                             rtol=1e-5, atol=1e-6)
  pooled = DenseCLNeck(hid_channels=8, out_channels=5, num_grid=2)
  _, dense2, _ = pooled.apply(variables, x)
  assert dense2.shape == (2, 4, 5)
  with pytest.raises(ValueError, match='num_grid'):
    DenseCLNeck(hid_channels=8, out_channels=5, num_grid=3).apply(variables, x)


def test_match_dense_keys_is_argmax_of_backbone_cosine():
  rng = np.random.default_rng(1)
  qb, kb = rng.normal(size=(3, 4, 6)), rng.normal(size=(3, 4, 6)) * rng.uniform(0.5, 3, size=(3, 4, 1))
  kg = rng.normal(size=(3, 4, 5))
  index, matched = densecl.match_dense_keys(jnp.asarray(qb), jnp.asarray(kb), jnp.asarray(kg))
  for b in range(3):
    for s in range(4):
      cos = [qb[b, s] @ kb[b, t] / np.linalg.norm(qb[b, s]) / np.linalg.norm(kb[b, t]) for t in range(4)]
      assert index[b, s] == int(np.argmax(cos))
      np.testing.assert_allclose(matched[b, s], kg[b, index[b, s]], rtol=1e-6)


def run_loss(method, params, model_state, method_state, v1, v2, step=0):
  batch = {'views': (jnp.asarray(v1), jnp.asarray(v2))}
  fn = jax.jit(jax.value_and_grad(method.loss, has_aux=True))
  return fn(params, model_state, method_state, batch, jax.random.key(3), step)


def test_loss_queues_warmup_and_momentum_update():
  c = small_config(size=48, warmup=5)
  method = densecl.Method(c)
  v1, v2 = views(size=48)
  params, model_state, state = jax.jit(method.init)(jax.random.key(0), {'views': (jnp.asarray(v1),) * 2})
  assert sorted(state) == ['queue', 'queue2', 'target']
  assert sorted(state['queue']) == sorted(state['queue2']) == ['keys', 'ptr']
  np.testing.assert_allclose(np.linalg.norm(state['queue']['keys'], axis=1), 1., rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state['target']['params']), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  jax.tree.map(np.testing.assert_array_equal, state['target']['batch_stats'], model_state['batch_stats'])

  (loss, (metrics, _, new_state)), grads = run_loss(method, params, model_state, state, v1, v2, step=4)
  # warmup: lambda 0, the loss is the global InfoNCE and no gradient reaches the dense branch
  assert float(metrics['loss_lambda']) == 0.
  np.testing.assert_allclose(loss, metrics['loss_single'], rtol=1e-6)
  assert all(np.all(g == 0) for g in jax.tree.leaves(grads['neck']['conv0']))
  assert np.abs(grads['neck']['fc0']['kernel']).sum() > 0
  (loss5, (metrics5, _, _)), grads5 = run_loss(method, params, model_state, state, v1, v2, step=5)
  assert float(metrics5['loss_lambda']) == 0.5
  np.testing.assert_allclose(loss5, 0.5 * metrics5['loss_single'] + 0.5 * metrics5['loss_dense'], rtol=1e-6)
  np.testing.assert_allclose(metrics5['loss_dense'], metrics['loss_dense'], rtol=1e-6)
  assert np.abs(grads5['neck']['conv0']['kernel']).sum() > 0

  # both queues: this batch's keys at rows 0..7, the pointers move on by the batch
  out, key_stats = method.net.apply({'params': params, **model_state}, jnp.asarray(v2), train=True,
                                    mutable=['batch_stats'])
  _, k, _, k2 = out  # one shuffle group: BN over the whole batch, as without shuffling
  np.testing.assert_allclose(new_state['queue']['keys'][:8], losses.l2_normalize(k), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new_state['queue2']['keys'][:8], losses.l2_normalize(k2), rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(new_state['queue']['keys'][8:], state['queue']['keys'][8:])
  assert int(new_state['queue']['ptr']) == 8 and int(new_state['queue2']['ptr']) == 8
  # the key encoder's BN statistics: the query encoder's after its forward on v1, moved by the key forward on v2
  _, query_state = method.forward(params, model_state, jnp.asarray(v1))
  _, key_state = method.net.apply({'params': params, **query_state}, jnp.asarray(v2), train=True,
                                  mutable=['batch_stats'])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               new_state['target']['batch_stats'], key_state['batch_stats'])

  # momentum update towards the new parameters
  new_params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads5)
  updated = method.after_step(new_params, new_state, 5)
  for t, p0, p1 in zip(jax.tree.leaves(updated['target']['params']), jax.tree.leaves(params),
                       jax.tree.leaves(new_params)):
    np.testing.assert_allclose(t, 0.999 * p0 + 0.001 * p1, rtol=1e-6, atol=1e-7)
  assert method.extract(params, model_state, jnp.asarray(v1)).shape == (8, 64)


def torch_densecl(method, params, model_state, c):
  """mmpretrain's DenseCL with the jssl variables copied in (queues too)."""
  from mmpretrain.registry import MODELS
  from mmpretrain.utils import register_all_modules
  register_all_modules()
  m = c.model
  model = MODELS.build(dict(
      type='DenseCL', queue_len=m.queue_len, feat_dim=m.neck_out_channels, momentum=1. - m.momentum,
      loss_lambda=m.loss_lambda,
      backbone=parity.mmpretrain_resnet('resnet18', {'num_filters': 8}),
      neck=dict(type='DenseCLNeck', in_channels=64, hid_channels=m.neck_hid_channels,
                out_channels=m.neck_out_channels, num_grid=None),
      head=dict(type='ContrastiveHead', loss=dict(type='CrossEntropyLoss'), temperature=m.temperature)))
  load_query_encoder(model, params, model_state)
  return model


def neck_state(p):
  conv = lambda q, prefix: parity.tensors({f'{prefix}.weight': np.asarray(q['kernel'])[0, 0].T[:, :, None, None],
                                           f'{prefix}.bias': np.asarray(q['bias'])})
  return {**parity.dense_state(p['fc0'], 'mlp.0'), **parity.dense_state(p['fc1'], 'mlp.2'),
          **conv(p['conv0'], 'mlp2.0'), **conv(p['conv1'], 'mlp2.2')}


def load_query_encoder(model, params, model_state):
  model.backbone.load_state_dict(parity.resnet_state(params['backbone'], model_state['batch_stats']['backbone'],
                                                     'resnet18', {'num_filters': 8}))
  model.neck.load_state_dict(neck_state(params['neck']))


def test_matches_mmpretrain_densecl():
  """Same weights, views and queues: global and dense losses, first-conv gradient, both queue updates; then one
  momentum update (after an SGD step on the query encoder) and a second step's losses and queues."""
  c = small_config(size=64, batch=8, queue_len=32, groups=1)
  method = densecl.Method(c)
  v1, v2 = views(size=64)
  params, model_state, state = jax.jit(method.init)(jax.random.key(0), {'views': (jnp.asarray(v1),) * 2})
  model = torch_densecl(method, params, model_state, c)
  model.queue.copy_(torch.from_numpy(np.asarray(state['queue']['keys']).T.copy()))
  model.queue2.copy_(torch.from_numpy(np.asarray(state['queue2']['keys']).T.copy()))
  model.train()

  # the feature map is 2x2 at 64 px: 4 dense locations per image
  (loss, (metrics, _, state1)), grads = run_loss(method, params, model_state, state, v1, v2)
  torch.manual_seed(0)  # the reference's key shuffle (any permutation: BN over the whole batch)
  ref = model.loss([parity.nhwc_to_torch(v1), parity.nhwc_to_torch(v2)], None)
  np.testing.assert_allclose(metrics['loss_single'] * 0.5, ref['loss_single'].item(), rtol=1e-4)
  np.testing.assert_allclose(metrics['loss_dense'] * 0.5, ref['loss_dense'].item(), rtol=1e-4)
  np.testing.assert_allclose(loss, (ref['loss_single'] + ref['loss_dense']).item(), rtol=1e-4)
  (ref['loss_single'] + ref['loss_dense']).backward()
  torch_grad = parity.first_conv_grad_to_jssl(model.backbone.conv1.weight.grad)
  jssl_grad = np.asarray(grads['backbone']['conv1']['kernel'])
  np.testing.assert_allclose(jssl_grad, torch_grad, rtol=1e-3, atol=1e-4 * np.abs(torch_grad).max())
  for name in ('queue', 'queue2'):  # unit keys of 16 values (~0.25 each): 1e-5 is float32 round-off on any CPU
    np.testing.assert_allclose(np.asarray(state1[name]['keys']), getattr(model, name).numpy().T, rtol=1e-4,
                               atol=1e-5)
    assert int(state1[name]['ptr']) == int(getattr(model, f'{name}_ptr')[0]) == 8

  # one optimizer step on the query encoder (the same new weights on both sides), then the momentum update
  new_params = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
  state2 = method.after_step(new_params, state1, 0)
  with torch.no_grad():
    load_query_encoder(model, new_params, model_state)
  model.zero_grad()
  (loss2, (metrics2, _, state3)), _ = run_loss(method, new_params, model_state, state2, v1, v2, step=1)
  ref2 = model.loss([parity.nhwc_to_torch(v1), parity.nhwc_to_torch(v2)], None)  # updates its key encoder first
  key_conv = model.encoder_k.module[0].conv1.weight.detach().numpy().transpose(2, 3, 1, 0)
  np.testing.assert_allclose(np.asarray(state2['target']['params']['backbone']['conv1']['kernel']), key_conv,
                             rtol=1e-5, atol=1e-7)
  key_fc = model.encoder_k.module[1].mlp[2].weight.detach().numpy().T
  np.testing.assert_allclose(np.asarray(state2['target']['params']['neck']['fc1']['kernel']), key_fc, rtol=1e-5,
                             atol=1e-7)
  assert not np.allclose(key_conv, np.asarray(new_params['backbone']['conv1']['kernel']))
  np.testing.assert_allclose(metrics2['loss_single'] * 0.5, ref2['loss_single'].item(), rtol=1e-4)
  np.testing.assert_allclose(metrics2['loss_dense'] * 0.5, ref2['loss_dense'].item(), rtol=1e-4)
  for name in ('queue', 'queue2'):
    np.testing.assert_allclose(np.asarray(state3[name]['keys']), getattr(model, name).numpy().T, rtol=1e-4,
                               atol=1e-5)
    assert int(state3[name]['ptr']) == 16


def test_loss_weight_warmup_matches_denseclhook():
  from mmpretrain.engine.hooks import DenseCLHook
  method = densecl.Method(small_config(warmup=1000))
  model = types.SimpleNamespace(loss_lambda=0.5)
  runner = types.SimpleNamespace(model=model, iter=0)
  hook = DenseCLHook(start_iters=1000)
  hook.before_train(runner)
  for it in (0, 1, 999, 1000, 1001, 5000):
    runner.iter = it
    hook.before_train_iter(runner, it)
    assert float(method.lambda_at(it)) == model.loss_lambda, it


def test_queue_and_shuffle_groups_that_do_not_fit_the_batch_are_named():
  """Caught when the method is built (before any step), one line naming the config fields."""
  with pytest.raises(ValueError, match=r'^config.model.queue_len \(36\) must be a multiple of config.batch_size '
                                       r'\(8\)$'):
    densecl.Method(small_config(queue_len=36))
  with pytest.raises(ValueError, match=r'^config.model.shuffle_bn_groups \(3\) must divide config.batch_size '
                                       r'\(8\)$'):
    densecl.Method(small_config(groups=3))


# tests/methods/test_every_method.py: 1 vs 8 devices, kill-and-resume and the demo, made small by these
DEVICES = {**SMALL, 'data.views.0.size': 48, 'model.loss_lambda_warmup': 1}
# 10 steps, killed after 6, resumed from the step-4 checkpoint (after the 3-step lambda warmup; the queues of 256
# wrap every 4 steps). A 30-step run killed after 15 once failed to resume bitwise, intermittently (docs: Open).
RESUME = {**SMALL, 'batch_size': 64, 'total_steps': 10, 'model.loss_lambda_warmup': 3}
RESUME_KILL_AT = (6,)
