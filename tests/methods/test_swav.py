import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs.swav import get_config
from jssl import losses
from jssl.data.loader import to_global
from jssl.methods import swav
from jssl.train.loop import Trainer
from tests import parity
from tests.conftest import apply_overrides

SMALL = {'backbone.kwargs.num_filters': 8, 'model.neck_hid_channels': 32, 'model.neck_out_channels': 16,
         'model.num_prototypes': 10}


def test_swapped_prediction_loss_by_hand():
  rng = np.random.default_rng(1)
  scores = rng.normal(size=(4, 3, 5)).astype(np.float32)  # 4 crops, batch 3, 5 prototypes
  codes = rng.dirichlet(np.ones(5), size=(2, 3)).astype(np.float32)
  got = losses.swapped_prediction_loss(jnp.asarray(scores), jnp.asarray(codes), (0, 1), 0.1)
  expected = 0.
  for i, crop in enumerate((0, 1)):
    for v in range(4):
      if v == crop:
        continue
      for b in range(3):
        logits = scores[v, b].astype(np.float64) / 0.1
        log_p = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
        expected -= (codes[i, b] * log_p).sum() / 3 / 3 / 2
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def small_method(batch_size=6, queue_length=0, epoch_queue_starts=0, freeze=0, steps_per_epoch=3):
  c = get_config('demo')
  c.backbone.kwargs.num_filters = 8
  c.model.neck_hid_channels = 32
  c.model.neck_out_channels = 16
  c.model.num_prototypes = 10
  c.model.queue_length = queue_length
  c.model.epoch_queue_starts = epoch_queue_starts
  c.model.freeze_prototypes_iters = freeze
  c.batch_size = batch_size
  return swav.Method(c, steps_per_epoch=steps_per_epoch)


def make_views(seed, bs=6, sizes=(16, 16, 8, 8)):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.normal(size=(bs, s, s, 3)), jnp.float32) for s in sizes)


def mmpretrain_swav(params, model_state, queue_length=0, bs=6):
  from mmengine.registry import init_default_scope
  init_default_scope('mmpretrain')
  from mmpretrain.registry import MODELS
  torch.manual_seed(0)
  model = MODELS.build(dict(
      type='SwAV', backbone=parity.mmpretrain_resnet('resnet18', {'num_filters': 8}),
      neck=dict(type='SwAVNeck', in_channels=64, hid_channels=32, out_channels=16, norm_cfg=dict(type='BN1d')),
      head=dict(type='SwAVHead', loss=dict(type='SwAVLoss', feat_dim=16, epsilon=0.05, temperature=0.1,
                                           num_crops=[2, 2], num_prototypes=10))))
  stats = model_state['batch_stats']
  model.backbone.load_state_dict(parity.resnet_state(params['backbone'], stats['backbone'], 'resnet18',
                                                     {'num_filters': 8}))
  neck = {**parity.dense_state(params['neck']['fc0'], 'projection_neck.0'),
          **parity.bn_state(params['neck']['bn0'], stats['neck']['bn0'], 'projection_neck.1'),
          **parity.dense_state(params['neck']['fc1'], 'projection_neck.3')}
  missing, unexpected = model.neck.load_state_dict(neck, strict=False)
  assert not unexpected and all(k.startswith('norm.') or k.endswith('num_batches_tracked') for k in missing)
  with torch.no_grad():
    model.head.loss_module.prototypes.weight.copy_(torch.from_numpy(np.array(params['prototypes']['kernel']).T))
  if queue_length:  # what SwAVHook.before_train_epoch does at the start epoch (world size 1)
    model.head.loss_module.queue = torch.zeros(2, queue_length, 16)
    model.head.loss_module.use_queue = False
  model.train()
  return model


def torch_loss_and_grads(model, views):
  model.zero_grad()
  loss = model.loss([parity.nhwc_to_torch(v) for v in views], [])['loss']
  loss.backward()
  return (loss.item(), parity.first_conv_grad_to_jssl(model.backbone.conv1.weight.grad),
          model.head.loss_module.prototypes.weight.grad.numpy().T.copy())


def test_loss_gradients_and_queue_match_mmpretrain():
  bs = 6
  method = small_method(batch_size=bs, queue_length=2 * bs)
  views = [make_views(s, bs=bs, sizes=(16, 16, 8, 8)) for s in range(3)]
  params, model_state, method_state = jax.jit(method.init)(jax.random.key(0), {'views': views[0]})
  assert sorted(params) == ['backbone', 'neck', 'prototypes']
  assert method_state['queue'].shape == (2, 2 * bs, 16) and not np.any(method_state['queue'])
  np.testing.assert_allclose(np.linalg.norm(params['prototypes']['kernel'], axis=0), 1., rtol=1e-6)
  # un-normalized prototypes: both sides normalize them before the forward
  scale = jnp.asarray(np.random.default_rng(3).uniform(0.5, 2., size=(1, 10)), jnp.float32)
  params = {**params, 'prototypes': {'kernel': params['prototypes']['kernel'] * scale}}
  model = mmpretrain_swav(params, model_state, queue_length=2 * bs)
  step = jax.jit(jax.value_and_grad(method.loss, has_aux=True))
  for s in range(3):
    (loss, (metrics, new_model_state, new_state)), grads = step(params, model_state, method_state,
                                                                 {'views': views[s]}, jax.random.key(1), s)
    ref_loss, ref_conv1, ref_proto = torch_loss_and_grads(model, views[s])
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-4, err_msg=f'step {s}')
    np.testing.assert_allclose(metrics['loss'], loss)
    g = np.asarray(grads['backbone']['conv1']['kernel'])
    np.testing.assert_allclose(g, ref_conv1, rtol=1e-3, atol=1e-4 * np.abs(ref_conv1).max(), err_msg=f'step {s}')
    # the reference's gradient is w.r.t. the normalized prototypes; jssl passes it straight through
    np.testing.assert_allclose(grads['prototypes']['kernel'], ref_proto, rtol=1e-3,
                               atol=1e-4 * np.abs(ref_proto).max(), err_msg=f'step {s}')
    # the queue: newest embeddings first, as the reference's shift
    np.testing.assert_allclose(new_state['queue'], model.head.loss_module.queue.numpy(), rtol=1e-5, atol=1e-6)
    # used only once its last row has been written (step 2); then it changes the codes
    assert float(metrics['queue_in_use']) == (1. if s == 2 else 0.)
    method_state = new_state
    if s == 0:
      # the reference normalized its prototypes in place: the same as jssl's forward
      np.testing.assert_allclose(model.head.loss_module.prototypes.weight.detach().numpy().T,
                                 swav.unit_prototypes(params['prototypes']['kernel'], False, 0.), rtol=1e-6)
      # BN running means: backbone updated once per resolution group, neck once over all crops
      # (running variances differ by torch's unbiased n / (n - 1), a flax-vs-torch BatchNorm difference)
      np.testing.assert_allclose(new_model_state['batch_stats']['neck']['bn0']['mean'],
                                 model.neck.projection_neck[1].running_mean.numpy(), rtol=1e-4, atol=1e-6)
      np.testing.assert_allclose(new_model_state['batch_stats']['backbone']['bn1']['mean'],
                                 model.backbone.bn1.running_mean.numpy(), rtol=1e-4, atol=1e-6)
  queue, model.head.loss_module.queue = model.head.loss_module.queue, None
  assert abs(torch_loss_and_grads(model, views[2])[0] - float(loss)) > 1e-4  # the queue made a difference
  np.testing.assert_allclose(np.linalg.norm(queue.numpy(), axis=-1), 1., rtol=1e-5)  # L2-normalized embeddings


def test_queue_starts_at_its_epoch():
  bs = 6
  method = small_method(batch_size=bs, queue_length=2 * bs, epoch_queue_starts=2, steps_per_epoch=3)
  assert method.queue_start_step == 6
  views = make_views(0)
  params, model_state, method_state = jax.jit(method.init)(jax.random.key(0), {'views': views})
  loss = jax.jit(method.loss)
  state = method_state
  for s in (4, 5):  # epoch 1: no queue yet
    state = loss(params, model_state, state, {'views': views}, jax.random.key(1), s)[1][2]
    assert not np.any(state['queue'])
  state = loss(params, model_state, state, {'views': views}, jax.random.key(1), 6)[1][2]  # first step of epoch 2
  assert np.all(np.any(state['queue'][:, :bs] != 0, axis=-1)) and not np.any(state['queue'][:, bs:])
  # the queue length is rounded down to whole global batches, as the reference
  assert small_method(batch_size=bs, queue_length=2 * bs + 5).queue_length == 2 * bs


def test_multicrop_runs_backbone_once_per_resolution_group():
  views = make_views(0, sizes=(32, 32, 16, 16, 16, 32))
  groups = swav.resolution_groups(views)
  assert [g.shape for g in groups] == [(12, 32, 32, 3), (18, 16, 16, 3), (6, 32, 32, 3)]
  np.testing.assert_array_equal(groups[1][6:12], views[3])


def tiny_trainer(freeze):
  c = apply_overrides(get_config('demo'), {**SMALL, 'data.views.0.size': 16, 'data.views.1.size': 8})
  c.batch_size = 8
  c.model.queue_length = 0
  c.model.freeze_prototypes_iters = freeze
  return Trainer(c, None, num_records=80, devices=jax.devices()[:1]), c


@pytest.mark.heavy  # ~60 s (SwAV's multi-crop step compiles slowly); the loss and queue parity tests stay in CI
def test_frozen_prototypes_do_not_move_under_lars():
  trainer, c = tiny_trainer(freeze=2)
  assert c.optimizer.name == 'lars' and c.optimizer.weight_decay > 0
  state = trainer.init_state(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  views = tuple(rng.integers(0, 256, (8, v['size'], v['size'], 3), dtype=np.uint8)
                for v in c.data.views for _ in range(v['num']))
  batch = to_global({'views': views}, trainer.mesh)
  kernels, necks = [np.asarray(state.params['prototypes']['kernel'])], [np.asarray(state.params['neck']['fc1']['kernel'])]
  for _ in range(3):
    state, metrics = trainer.train_step(state, batch)
    assert np.isfinite(metrics['loss'])
    kernels.append(np.asarray(state.params['prototypes']['kernel']))
    necks.append(np.asarray(state.params['neck']['fc1']['kernel']))
  # steps 0 and 1 frozen: bitwise unchanged (no gradient, no weight decay, no momentum); step 2 trains them
  np.testing.assert_array_equal(kernels[1], kernels[0])
  np.testing.assert_array_equal(kernels[2], kernels[0])
  assert np.abs(kernels[3] - kernels[0]).max() > 1e-6
  assert all(np.abs(necks[i + 1] - necks[i]).max() > 0 for i in range(3))  # the rest trains meanwhile
  # a plain zero gradient would not do: LARS turns the weight decay alone into a 1e-3 x lr relative shrink
  tx = trainer.tx
  zero = jax.tree.map(jnp.zeros_like, state.params)
  updates, _ = tx.update(zero, tx.init(state.params), state.params)
  assert np.abs(np.asarray(updates['prototypes']['kernel'])).max() > 1e-5


def test_unknown_variant_is_one_line_error():
  with pytest.raises(ValueError, match="unknown variant 'x'; valid: demo"):
    get_config('x')
  c = get_config()
  assert c.model.queue_length == 3840 and c.model.num_prototypes == 3000 and c.optimizer.lr == 0.6
  assert [v['num'] for v in c.data.views] == [2, 6] and [v['size'] for v in c.data.views] == [224, 96]


# tests/methods/test_every_method.py: 1 vs 8 devices, kill-and-resume and the demo, made small by these
# queue from step 0, one batch long: written at step 1, used at step 2; prototypes frozen for step 1 only
DEVICES = {**SMALL, 'data.views.0.size': 16, 'data.views.1.size': 8, 'model.queue_length': 16,
           'model.epoch_queue_starts': 0, 'model.freeze_prototypes_iters': 1}
# batch 64 on digits: 22 steps per epoch; the queue starts at epoch 0 and fills in 2 steps, prototypes unfreeze at
# step 20: all of it crosses the kill at step 15 and the resume
RESUME = {**SMALL, 'data.views.0.size': 16, 'data.views.1.size': 8, 'model.queue_length': 128,
          'model.epoch_queue_starts': 0, 'model.freeze_prototypes_iters': 20, 'batch_size': 64, 'total_steps': 24}
