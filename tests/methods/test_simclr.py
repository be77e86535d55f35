import jax
import jax.numpy as jnp
import numpy as np

from configs.simclr import get_config
from jssl import losses
from jssl.methods import simclr
from tests import parity
from tests.conftest import apply_overrides


def test_simclr_loss_is_nt_xent_of_projections_and_bn_spans_both_views():
  method = simclr.Method(apply_overrides(get_config('demo'), {**SMALL, 'model.neck_hid_channels': 16,
                                                               'model.neck_out_channels': 8}))
  v1, v2 = parity.random_views(4)[1]['views']
  params, model_state, method_state = jax.jit(method.init)(jax.random.key(0), {'views': (v1, v2)})
  loss, (metrics, new_model_state, _) = jax.jit(method.loss)(params, model_state, method_state, {'views': (v1, v2)},
                                                    jax.random.key(1), 0)
  z, _ = method.net.apply({'params': params, **model_state}, jnp.concatenate([v1, v2]), train=True,
                          mutable=['batch_stats'])
  np.testing.assert_allclose(loss, losses.nt_xent(z[:4], z[4:], 0.1), rtol=1e-5)  # one jit vs two: rounding
  # one forward over both views: BN running stats moved, from statistics of all 8 images
  stem_mean = new_model_state['batch_stats']['backbone']['bn1']['mean']
  assert not np.allclose(stem_mean, 0)
  features = method.extract(params, new_model_state, v1)
  assert features.shape == (4, 8 * 8)
  grads = jax.jit(jax.grad(lambda p: method.loss(p, model_state, method_state, {'views': (v1, v2)}, jax.random.key(1),
                                         0)[0]))(params)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_simclr_matches_mmpretrain_loss_and_first_conv_gradient():
  """Same weights and views in mmpretrain 1.2's SimCLR (world size 1): loss and the gradient of the stem conv."""
  c = apply_overrides(get_config('demo'), SMALL)
  method = simclr.Method(c)
  (v1, v2), batch = parity.random_views(6)
  params, model_state, method_state = method.init(jax.random.key(0), batch)
  loss_fn = lambda p: method.loss(p, model_state, method_state, batch, jax.random.key(1), 0)[0]
  loss, grads = jax.value_and_grad(loss_fn)(params)

  ref = parity.build_mmpretrain(dict(
      type='SimCLR', backbone=parity.mmpretrain_resnet('resnet18', c.backbone.kwargs),
      neck=dict(type='NonLinearNeck', in_channels=64, hid_channels=32, out_channels=16, num_layers=2,
                with_avg_pool=True, norm_cfg=dict(type='BN1d')),
      head=dict(type='ContrastiveHead', loss=dict(type='CrossEntropyLoss'), temperature=0.1)))
  parity.load_backbone_and_neck(ref, params, model_state['batch_stats'], 'resnet18', c.backbone.kwargs)
  parity.assert_loss_and_stem_grad_match(ref, (v1, v2), loss, grads)


# tests/methods/test_every_method.py: 1 vs 8 devices, kill-and-resume and the demo, made small by these
SMALL = {'backbone.kwargs.num_filters': 8, 'model.neck_hid_channels': 32, 'model.neck_out_channels': 16}
DEVICES = SMALL
# batch 64: 22 steps per epoch of digits, so the 30-step run crosses an epoch boundary
RESUME = {**SMALL, 'batch_size': 64, 'total_steps': 30}
