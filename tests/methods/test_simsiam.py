import jax
import jax.numpy as jnp
import numpy as np

from configs.simsiam import get_config
from jssl import losses, optim
from jssl.methods import simsiam
from tests import parity

SMALL = {'backbone.kwargs.num_filters': 8, 'model.neck_hid_channels': 32, 'model.neck_out_channels': 32,
         'model.pred_hid_channels': 16}


def np_neg_cos(p, z):
  return -np.mean(np.sum(p * z, -1) / (np.linalg.norm(p, axis=-1) * np.linalg.norm(z, axis=-1)))


def test_negative_cosine_similarity_against_numpy_and_stop_gradient():
  rng = np.random.default_rng(0)
  p, z = rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=(6, 5)).astype(np.float32)
  np.testing.assert_allclose(losses.negative_cosine_similarity(p, z), np_neg_cos(p, z), rtol=1e-5)
  g_pred, g_target = jax.grad(losses.negative_cosine_similarity, argnums=(0, 1))(jnp.asarray(p), jnp.asarray(z))
  assert np.abs(g_pred).max() > 0 and np.abs(g_target).max() == 0


def test_simsiam_loss_and_predictor_lr_stays_fixed_while_backbone_lr_decays():
  c = get_config('demo')
  c.backbone.kwargs.num_filters = 8
  c.backbone.kwargs.stage_sizes = (1, 1, 1, 1)  # fast to compile
  c.model.neck_hid_channels = 16
  c.model.neck_out_channels = 16
  c.model.pred_hid_channels = 8
  method = simsiam.Method(c)
  rng = np.random.default_rng(0)
  v1 = jnp.asarray(rng.normal(size=(4, 16, 16, 3)), jnp.float32)
  v2 = jnp.asarray(rng.normal(size=(4, 16, 16, 3)), jnp.float32)
  batch = {'views': (v1, v2)}
  params, model_state, method_state = jax.jit(method.init)(jax.random.key(0), batch)
  # projector: 3 fcs, last BN without affine; predictor 16 -> 8 -> 16, last fc with bias, no last BN
  assert set(params['neck']) == {'fc0', 'bn0', 'fc1', 'bn1', 'fc2'} and 'bn2' in model_state['batch_stats']['neck']
  assert set(params['head']) == {'fc0', 'bn0', 'fc1'} and set(params['head']['fc1']) == {'kernel', 'bias'}

  (loss, (_, new_model_state, _)), grads = jax.jit(jax.value_and_grad(method.loss, has_aux=True))(
      params, model_state, method_state, batch, jax.random.key(1), 0)

  @jax.jit
  def by_hand():  # each view on its own through the network (per-view BN)
    (z1, p1), s1 = method.net.apply({'params': params, **model_state}, v1, train=True, mutable=['batch_stats'])
    (z2, p2), _ = method.net.apply({'params': params, **s1}, v2, train=True, mutable=['batch_stats'])
    return z1, p1, z2, p2

  z1, p1, z2, p2 = (np.asarray(x, np.float64) for x in by_hand())
  np.testing.assert_allclose(loss, 0.5 * (np_neg_cos(p1, z2) + np_neg_cos(p2, z1)), rtol=1e-5, atol=1e-6)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert method.extract(params, new_model_state, v1).shape == (4, 8 * 8)

  # SGD momentum 0.9, weight decay 1e-4 on everything; the predictor ('head') at the fixed base lr
  total = 4
  schedule = optim.build_schedule(c.optimizer, c.schedule, steps_per_epoch=1, total_steps=total)
  tx = optim.build_optimizer(c.optimizer, schedule, params)
  state = tx.init(params)
  base = c.optimizer.lr
  trace = jax.tree.map(jnp.zeros_like, params)
  for step in (0, 1):  # same gradients, params held fixed: trace_t = g + wd * w + 0.9 * trace_{t-1}
    updates, state = tx.update(grads, state, params)
    trace = jax.tree.map(lambda t, g, w: g + 1e-4 * w + 0.9 * t, trace, grads, params)
    lr = base * 0.5 * (1 + np.cos(np.pi * step / total))
    for path, expected_lr in [(('backbone', 'conv1', 'kernel'), lr), (('neck', 'fc0', 'kernel'), lr),
                              (('head', 'fc0', 'kernel'), base), (('head', 'fc1', 'bias'), base)]:
      u, t = updates, trace
      for k in path:
        u, t = u[k], t[k]
      np.testing.assert_allclose(u, -expected_lr * np.asarray(t), rtol=1e-5, atol=1e-9, err_msg=f'{step} {path}')
  assert lr < base  # the backbone's lr has decayed by the second step


def test_simsiam_loss_and_gradient_match_mmpretrain():
  """Same weights, same views: mmpretrain's SimSiam loss and first-conv gradient."""
  from mmpretrain.registry import MODELS
  c = get_config('demo')
  c.backbone.kwargs.num_filters = 8
  c.model.neck_hid_channels = 16
  c.model.neck_out_channels = 16
  c.model.pred_hid_channels = 8
  method = simsiam.Method(c)
  rng = np.random.default_rng(0)
  v1, v2 = (jnp.asarray(rng.normal(size=(8, 64, 64, 3)) + shift, jnp.float32) for shift in (0., 0.3))
  batch = {'views': (v1, v2)}
  params, model_state, method_state = jax.jit(method.init)(jax.random.key(0), batch)
  # perturbed: biases, BN shifts and the zero-init residual BN scales away from their init values
  params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(5), x.shape), params)
  (loss, _), grads = jax.jit(jax.value_and_grad(method.loss, has_aux=True))(
      params, model_state, method_state, batch, jax.random.key(1), 0)

  bn = dict(type='BN1d')
  model = MODELS.build(dict(
      type='SimSiam', backbone=parity.mmpretrain_resnet('resnet18', {'num_filters': 8}, zero_init_residual=True),
      neck=dict(type='NonLinearNeck', in_channels=64, hid_channels=16, out_channels=16, num_layers=3,
                with_last_bn_affine=False, with_avg_pool=True, norm_cfg=bn),
      head=dict(type='LatentPredictHead', loss=dict(type='CosineSimilarityLoss'),
                predictor=dict(type='NonLinearNeck', in_channels=16, hid_channels=8, out_channels=16,
                               with_avg_pool=False, with_last_bn=False, with_last_bias=True, norm_cfg=bn))))
  parity.load_online_network(model, params, model_state['batch_stats'], {'num_filters': 8})
  ref = model.loss([parity.nhwc_to_torch(v1), parity.nhwc_to_torch(v2)], [])['loss']
  ref.backward()
  np.testing.assert_allclose(float(loss), ref.item(), rtol=1e-4, atol=1e-5)
  g_ref = parity.first_conv_grad_to_jssl(model.backbone.conv1.weight.grad)
  g = np.asarray(grads['backbone']['conv1']['kernel'])
  assert np.abs(g_ref).max() > 0
  np.testing.assert_allclose(g, g_ref, rtol=1e-3, atol=1e-4 * np.abs(g_ref).max())
  # the predictor's last fc (with bias) too
  np.testing.assert_allclose(grads['head']['fc1']['bias'], model.head.predictor.fc1.bias.grad.numpy(),
                             rtol=1e-3, atol=1e-6)


# tests/methods/test_every_method.py: 1 vs 8 devices, kill-and-resume and the demo, made small by these
DEVICES = {**SMALL, 'data.views.0.size': 16}
RESUME = {**SMALL, 'batch_size': 64, 'total_steps': 30}
