import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import torch

from configs.barlowtwins import get_config
from jssl import losses, optim
from jssl.methods import barlowtwins
from tests.conftest import apply_overrides


def numpy_cross_correlation_loss(z1, z2, lambd):
  n, d = z1.shape
  bn = lambda z: (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)  # np.var is the biased variance
  a, b = bn(z1.astype(np.float64)), bn(z2.astype(np.float64))
  loss = 0.
  for i in range(d):
    for j in range(d):
      c_ij = sum(a[k, i] * b[k, j] for k in range(n)) / n
      loss += (1 - c_ij) ** 2 if i == j else lambd * c_ij ** 2
  return loss


def test_cross_correlation_loss_matches_numpy_and_mmpretrain_head():
  rng = np.random.default_rng(0)
  z1 = rng.normal(size=(12, 6)).astype(np.float32) * 3 + 1
  z2 = (z1 + rng.normal(size=(12, 6))).astype(np.float32)
  got = losses.cross_correlation_loss(jnp.asarray(z1), jnp.asarray(z2), 0.0051)
  np.testing.assert_allclose(got, numpy_cross_correlation_loss(z1, z2, 0.0051), rtol=1e-5)
  # an independent lambda weighs the off-diagonal sum only
  on_diag = losses.cross_correlation_loss(jnp.asarray(z1), jnp.asarray(z2), 0.)
  np.testing.assert_allclose(losses.cross_correlation_loss(jnp.asarray(z1), jnp.asarray(z2), 1.),
                             numpy_cross_correlation_loss(z1, z2, 1.), rtol=1e-5)
  assert 0 < on_diag < got
  # the reference head on one process (world size 1: its per-GPU BN is the global BN)
  from mmpretrain.models.heads import LatentCrossCorrelationHead
  head = LatentCrossCorrelationHead(in_channels=6, loss=dict(type='CrossCorrelationLoss', lambd=0.0051)).train()
  ref = head.loss(torch.from_numpy(z1), torch.from_numpy(z2)).item()
  np.testing.assert_allclose(got, ref, rtol=1e-5)


def small_method():
  c = get_config('demo')
  c.backbone.kwargs.num_filters = 8
  c.model.neck_hid_channels = 16
  c.model.neck_out_channels = 8
  return barlowtwins.Method(c)


def test_barlowtwins_loss_forwards_each_view_separately():
  method = small_method()
  rng = np.random.default_rng(0)
  v1 = jnp.asarray(rng.normal(size=(6, 16, 16, 3)), jnp.float32)
  v2 = jnp.asarray(rng.normal(size=(6, 16, 16, 3)) + 0.5, jnp.float32)
  batch = {'views': (v1, v2)}
  params, model_state, method_state = jax.jit(method.init)(jax.random.key(0), batch)
  # the reference's projector: no biases, BN only between the fcs
  neck = params['neck']
  assert sorted(neck) == ['bn0', 'bn1', 'fc0', 'fc1', 'fc2'] and all(list(neck[f'fc{i}']) == ['kernel'] for i in range(3))
  loss, (metrics, new_model_state, new_method_state) = jax.jit(method.loss)(
      params, model_state, method_state, batch, jax.random.key(1), 0)

  apply = lambda state, x: method.net.apply({'params': params, **state}, x, train=True, mutable=['batch_stats'])
  z1, state1 = apply(model_state, v1)
  z2, state2 = apply(state1, v2)
  np.testing.assert_allclose(loss, losses.cross_correlation_loss(z1, z2, 0.0051), rtol=1e-5)
  np.testing.assert_allclose(metrics['loss'], loss)
  # running statistics: momentum 0.9 update with view 1's batch statistics, then with view 2's
  for a, b in zip(jax.tree.leaves(new_model_state), jax.tree.leaves(state2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # per-view BN differs from one forward over both views (SimCLR's way): the views are shifted differently
  z_joint, _ = apply(model_state, jnp.concatenate([v1, v2]))
  assert not np.allclose(z_joint[:6], z1, atol=1e-3)
  assert new_method_state == {} and method.after_step(params, new_method_state, 0) == {}
  assert method.extract(params, new_model_state, v1).shape == (6, 8 * 8)
  grads = jax.jit(jax.grad(lambda p: method.loss(p, model_state, method_state, batch, jax.random.key(1), 0)[0]))(params)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert all(np.abs(g).sum() > 0 for g in jax.tree.leaves(grads['neck']))
  # zero-init residuals (the reference's ResNet): last BN scale of each block is 0 at init
  assert np.all(params['backbone']['layer1_0']['bn2']['scale'] == 0)


def test_lars_excluded_lr_mult_scales_only_bn_and_bias_updates():
  params = {'fc': {'kernel': jnp.ones((3, 4)), 'bias': jnp.ones((4,))}, 'bn': {'scale': jnp.ones((4,))}}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  cfg = ml_collections.ConfigDict({'name': 'lars', 'lr': 1.6, 'momentum': 0.9, 'weight_decay': 1e-6})
  updates = {}
  for mult in (1., 0.024):
    cfg.excluded_lr_mult = mult
    tx = optim.build_optimizer(cfg, optax.constant_schedule(1.6), params)
    updates[mult], _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates[0.024]['fc']['kernel'], updates[1.]['fc']['kernel'])
  np.testing.assert_allclose(updates[0.024]['fc']['bias'], 0.024 * updates[1.]['fc']['bias'], rtol=1e-6)
  np.testing.assert_allclose(updates[0.024]['bn']['scale'], -0.024 * 1.6 * 0.5 * np.ones(4), rtol=1e-6)


def test_barlowtwins_matches_mmpretrain_loss_and_first_conv_gradient():
  """Same weights and views in mmpretrain 1.2's BarlowTwins (world size 1): loss and the stem conv's gradient."""
  from tests import parity
  c = apply_overrides(get_config('demo'), {'backbone.kwargs.num_filters': 8, 'model.neck_hid_channels': 16,
                                           'model.neck_out_channels': 16})
  method = barlowtwins.Method(c)
  (v1, v2), batch = parity.random_views(8)
  params, model_state, method_state = method.init(jax.random.key(0), batch)
  # zero-init residuals would hide the residual branches' gradients: give the last BN scales a value
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.5 if 'bn2' in str(path) and 'scale' in str(path) else x, params)
  loss_fn = lambda p: method.loss(p, model_state, method_state, batch, jax.random.key(1), 0)[0]
  loss, grads = jax.value_and_grad(loss_fn)(params)

  ref = parity.build_mmpretrain(dict(
      type='BarlowTwins', backbone=parity.mmpretrain_resnet('resnet18', c.backbone.kwargs),
      neck=dict(type='NonLinearNeck', in_channels=64, hid_channels=16, out_channels=16, num_layers=3,
                with_last_bn=False, with_last_bn_affine=False, with_avg_pool=True, norm_cfg=dict(type='BN1d')),
      head=dict(type='LatentCrossCorrelationHead', in_channels=16,
                loss=dict(type='CrossCorrelationLoss', lambd=0.0051))))
  # the head's BatchNorm1d (no affine) runs in train mode: its running statistics are never read
  parity.load_backbone_and_neck(ref, params, model_state['batch_stats'], 'resnet18', c.backbone.kwargs, allow_missing=('head.bn.running',))
  parity.assert_loss_and_stem_grad_match(ref, (v1, v2), loss, grads)


# tests/methods/test_every_method.py: 1 vs 8 devices, kill-and-resume and the demo, made small by these
SMALL = {'backbone.kwargs.num_filters': 8, 'model.neck_hid_channels': 32, 'model.neck_out_channels': 32,
         'data.views.0.size': 16}
DEVICES = SMALL
RESUME = {**SMALL, 'batch_size': 64, 'total_steps': 30}
