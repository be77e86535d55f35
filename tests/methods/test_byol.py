import jax
import jax.numpy as jnp
import numpy as np
import torch

from configs.byol import get_config
from jssl import losses
from jssl.methods import byol
from tests import parity

SMALL = {'backbone.kwargs.num_filters': 8, 'model.neck_hid_channels': 32, 'model.neck_out_channels': 16,
         'model.pred_hid_channels': 24}


def np_normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def test_cosine_similarity_loss_is_normalized_mse_and_stops_target_gradient():
  rng = np.random.default_rng(0)
  p, z = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
  expected = np.mean(np.sum(np.square(np_normalize(p) - np_normalize(z)), axis=-1))  # = 2 - 2 cos
  np.testing.assert_allclose(losses.cosine_similarity_loss(jnp.asarray(p), jnp.asarray(z)), expected, rtol=1e-5)
  np.testing.assert_allclose(expected, np.mean(2 - 2 * np.sum(np_normalize(p) * np_normalize(z), -1)), rtol=1e-10)
  g_pred, g_target = jax.grad(losses.cosine_similarity_loss, argnums=(0, 1))(jnp.asarray(p, jnp.float32),
                                                                              jnp.asarray(z, jnp.float32))
  assert np.abs(g_pred).max() > 0 and np.abs(g_target).max() == 0


def small_method(total_steps=10, base_momentum=None):
  c = get_config('demo')
  c.backbone.kwargs.num_filters = 8
  c.model.neck_hid_channels = 16
  c.model.neck_out_channels = 8
  c.model.pred_hid_channels = 12
  if base_momentum is not None:
    c.model.base_momentum = base_momentum
  return byol.Method(c, total_steps=total_steps)


def views(n=4, size=32, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.normal(size=(n, size, size, 3)) + shift, jnp.float32) for shift in (0., 0.3))


def test_byol_symmetric_loss_target_copy_and_cosine_momentum_ema():
  method = small_method(total_steps=10, base_momentum=0.99)  # the recipe's
  v1, v2 = views()
  batch = {'views': (v1, v2)}
  params, model_state, method_state = jax.jit(method.init)(jax.random.key(0), batch)
  target = method_state['target']['params']
  assert set(target) == {'backbone', 'neck'} and set(params) == {'backbone', 'neck', 'head'}
  assert set(method_state['target']['batch_stats']) == {'backbone', 'neck'}
  # projector: fc biases, no last bias, no last BN; predictor: 8 -> 12 -> 8
  assert set(params['neck']) == {'fc0', 'bn0', 'fc1'} and 'bias' in params['neck']['fc0']
  assert 'bias' not in params['neck']['fc1'] and params['head']['fc0']['kernel'].shape == (8, 12)
  jax.tree.map(np.testing.assert_array_equal, target['backbone'], params['backbone'])

  step = 3
  (loss, (metrics, new_model_state, new_method_state)), grads = jax.jit(
      jax.value_and_grad(method.loss, has_aux=True))(params, model_state, method_state, batch, jax.random.key(1), step)

  @jax.jit
  def by_hand():  # online predictions per view (BN per view), target projections in train mode
    p1, s1 = method.net.apply({'params': params, **model_state}, v1, train=True, mutable=['batch_stats'])
    p2, s2 = method.net.apply({'params': params, **s1}, v2, train=True, mutable=['batch_stats'])
    # the target from the online running statistics after both views, each target forward moving them
    t = {'params': target, 'batch_stats': {k: s2['batch_stats'][k] for k in byol.TARGET_PARTS}}
    z1, t1 = method.net.apply(t, v1, train=True, method=byol.BYOLNet.project, mutable=['batch_stats'])
    z2, t2 = method.net.apply({**t, **t1}, v2, train=True, method=byol.BYOLNet.project, mutable=['batch_stats'])
    return p1, p2, z1, z2, s2, t2

  *outputs, s2, t2 = by_hand()
  p1, p2, z1, z2 = (np.asarray(x, np.float64) for x in outputs)
  expected = np.mean(2 - 2 * np.sum(np_normalize(p1) * np_normalize(z2), -1)) + \
      np.mean(2 - 2 * np.sum(np_normalize(p2) * np_normalize(z1), -1))
  np.testing.assert_allclose(loss, expected, rtol=1e-4)  # XLA fuses the two programs differently
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), new_model_state['batch_stats'],
               s2['batch_stats'])
  # only after_step moves the target's params; its BN statistics: the online ones moved by its two forwards
  jax.tree.map(np.testing.assert_array_equal, new_method_state['target']['params'], target)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               new_method_state['target']['batch_stats'], t2['batch_stats'])

  momentum = lambda s: 1 - (1 - 0.99) * (np.cos(np.pi * s / 10) + 1) / 2
  np.testing.assert_allclose(metrics['momentum'], momentum(step), rtol=1e-6)
  # after step t: target <- m(t + 1) * target + (1 - m(t + 1)) * updated online params (the reference's update
  # at the start of step t + 1)
  m = momentum(step + 1)
  new_params = jax.tree.map(lambda x: x + 0.5, params)
  after = jax.jit(method.after_step)(new_params, new_method_state, step)['target']['params']
  np.testing.assert_allclose(after['neck']['fc0']['kernel'],
                             m * np.asarray(params['neck']['fc0']['kernel']) +
                             (1 - m) * np.asarray(new_params['neck']['fc0']['kernel']), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(after['backbone']['conv1']['kernel'],
                             np.asarray(params['backbone']['conv1']['kernel']) + (1 - m) * 0.5, rtol=1e-5, atol=1e-6)
  assert 'head' not in after
  # momentum ends at 1: the last update leaves the target where it is
  np.testing.assert_allclose(method.ema.momentum(10), 1.0)
  np.testing.assert_allclose(method.ema.momentum(0), 0.99, rtol=1e-7)
  last = jax.jit(method.after_step)(new_params, new_method_state, 9)['target']
  jax.tree.map(np.testing.assert_array_equal, last, new_method_state['target'])

  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert np.abs(grads['head']['fc1']['kernel']).max() > 0 and np.abs(grads['backbone']['conv1']['kernel']).max() > 0
  assert method.extract(params, new_model_state, v1).shape == (4, 8 * 8)


def mmpretrain_byol(method, params, model_state, base_momentum):
  from mmpretrain.registry import MODELS
  bn = dict(type='BN1d')
  model = MODELS.build(dict(
      type='BYOL', backbone=parity.mmpretrain_resnet('resnet18', {'num_filters': 8}),
      neck=dict(type='NonLinearNeck', in_channels=64, hid_channels=16, out_channels=8, with_bias=True,
                with_last_bn=False, with_avg_pool=True, norm_cfg=bn),
      head=dict(type='LatentPredictHead', loss=dict(type='CosineSimilarityLoss'),
                predictor=dict(type='NonLinearNeck', in_channels=8, hid_channels=12, out_channels=8, with_bias=True,
                               with_last_bn=False, with_avg_pool=False, norm_cfg=bn)),
      base_momentum=1 - base_momentum))  # mmpretrain's momentum is the online weight, 1 - m
  parity.load_online_network(model, params, model_state['batch_stats'], {'num_filters': 8})
  return model


def test_byol_loss_gradient_and_target_update_match_mmpretrain():
  """Same weights, same views: mmpretrain's BYOL loss (= ours - 4), first-conv gradient, the target's BN running
  means after its forwards, and one CosineEMA update of the target at a given step."""
  from mmengine.logging import MessageHub
  total, base_momentum = 20, 0.9  # a low momentum makes the update large enough to compare
  method = small_method(total_steps=total, base_momentum=base_momentum)
  v1, v2 = views(n=8, size=64)
  batch = {'views': (v1, v2)}
  params, model_state, method_state = jax.jit(method.init)(jax.random.key(0), batch)
  params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(5), x.shape), params)  # BN, biases != 0
  method_state = {'target': method.ema.init(params, model_state)}
  (loss, (_, _, new_method_state)), grads = jax.jit(jax.value_and_grad(method.loss, has_aux=True))(
      params, model_state, method_state, batch, jax.random.key(1), 0)

  model = mmpretrain_byol(method, params, model_state, base_momentum)
  ref = model.loss([parity.nhwc_to_torch(v1), parity.nhwc_to_torch(v2)], [])['loss']  # target <- online at step 0
  ref.backward()
  np.testing.assert_allclose(float(loss), ref.item() + 4., rtol=1e-5, atol=1e-5)
  # the target's buffers: the online ones, copied at the update, moved by the target's two forwards (running means:
  # Flax updates the variance with the biased batch variance, torch with the unbiased one)
  target = new_method_state['target']
  ref_target = model.target_net.module.state_dict()
  got_target = {**{f'0.{k}': v for k, v in parity.resnet_state(
      target['params']['backbone'], target['batch_stats']['backbone'], 'resnet18', {'num_filters': 8}).items()},
      **parity.nonlinear_neck_state(target['params']['neck'], target['batch_stats']['neck'], prefix='1')}
  means = [name for name in got_target if name.endswith('running_mean')]
  assert len(means) > 20 and '1.bn0.running_mean' in means
  for name in means:
    np.testing.assert_allclose(got_target[name].numpy(), ref_target[name].numpy(), rtol=1e-4, atol=1e-5,
                               err_msg=name)
  g_ref = parity.first_conv_grad_to_jssl(model.backbone.conv1.weight.grad)
  g = np.asarray(grads['backbone']['conv1']['kernel'])
  np.testing.assert_allclose(g, g_ref, rtol=1e-3, atol=1e-4 * np.abs(g_ref).max())
  assert np.abs(g_ref).max() > 0

  # the online network moves; the reference updates the target at the start of step s, we at the end of s - 1
  s = 7
  new_params = jax.tree.map(lambda x: x - 0.1 * jax.random.normal(jax.random.key(6), x.shape), params)
  after = jax.jit(method.after_step)(new_params, method_state, s - 1)['target']['params']
  model.backbone.load_state_dict(parity.resnet_state(new_params['backbone'], model_state['batch_stats']['backbone'],
                                                     'resnet18', {'num_filters': 8}))
  model.neck.load_state_dict(parity.nonlinear_neck_state(new_params['neck'], model_state['batch_stats']['neck'],
                                                         prefix=''))
  MessageHub.get_current_instance().update_info('max_iters', total)
  model.target_net.steps.fill_(s)  # a buffer: the number of updates so far
  with torch.no_grad():
    model.target_net.update_parameters(torch.nn.Sequential(model.backbone, model.neck))
  target_backbone, target_neck = model.target_net.module[0], model.target_net.module[1]
  pairs = [(after['backbone']['conv1']['kernel'], parity.first_conv_grad_to_jssl(target_backbone.conv1.weight)),
           (after['backbone']['bn1']['scale'], target_backbone.bn1.weight.detach().numpy()),
           (after['backbone']['layer4_1']['bn2']['bias'], target_backbone.layer4[1].bn2.bias.detach().numpy()),
           (after['neck']['fc0']['kernel'], target_neck.fc0.weight.detach().numpy().T),
           (after['neck']['fc0']['bias'], target_neck.fc0.bias.detach().numpy()),
           (after['neck']['fc1']['kernel'], target_neck.fc1.weight.detach().numpy().T)]
  for ours, theirs in pairs:
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
  # and the update is not trivial: the target sits strictly between old and new online weights
  old, new = np.asarray(params['neck']['fc0']['kernel']), np.asarray(new_params['neck']['fc0']['kernel'])
  assert 0.01 < np.abs(np.asarray(after['neck']['fc0']['kernel']) - old).max() < np.abs(new - old).max()


# tests/methods/test_every_method.py: 1 vs 8 devices, kill-and-resume and the demo, made small by these
DEVICES = {**SMALL, 'data.views.0.size': 16}
RESUME = {**SMALL, 'batch_size': 64, 'total_steps': 30}
