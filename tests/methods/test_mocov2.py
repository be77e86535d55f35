"""MoCo v1 / v2: parity with mmpretrain 1.2's `MoCo` (loss, first-conv gradient, queue, key encoder), shuffle-BN
groups, configs, 8 devices vs 1, demo (exact resume after three kills: tests/train/test_resume.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.mocov1 import get_config as get_config_v1
from configs.mocov2 import get_config as get_config_v2
from jssl import losses
from jssl.methods import mocov2
from jssl.methods.base import build_method
from tests import parity

BATCH = 8


def small(config, groups=1, queue_len=16):
  config.batch_size = BATCH
  config.backbone.name = 'resnet18'
  config.backbone.kwargs.num_filters = 8
  config.model.neck_hid_channels = 16
  config.model.neck_out_channels = 8
  config.model.queue_len = queue_len
  config.model.shuffle_bn_groups = groups
  return config


def setup(config):
  method = build_method(config)
  rng = np.random.default_rng(0)
  v1 = jnp.asarray(rng.normal(size=(BATCH, 32, 32, 3)), jnp.float32)
  v2 = jnp.asarray(rng.normal(size=(BATCH, 32, 32, 3)) * 0.8 + 0.1, jnp.float32)
  batch = {'views': (v1, v2)}
  params, model_state, method_state = jax.jit(method.init)(jax.random.key(0), batch)
  return method, batch, params, model_state, method_state


def torch_moco(config, params, model_state, queue):
  """mmpretrain's MoCo with the jssl method's weights and queue."""
  import torch
  m = config.model
  width = 8 * config.backbone.kwargs.num_filters
  neck = (dict(type='LinearNeck', in_channels=width, out_channels=m.neck_out_channels, gap_dim=2,
               norm_cfg=None)  # MMSelfSup's LinearNeck: avgpool -> fc
          if m.neck == 'linear' else
          dict(type='MoCoV2Neck', in_channels=width, hid_channels=m.neck_hid_channels,
               out_channels=m.neck_out_channels, with_avg_pool=True))
  model = parity.build_mmpretrain(dict(
      type='MoCo', queue_len=m.queue_len, feat_dim=m.neck_out_channels, momentum=1. - m.momentum,
      backbone=parity.mmpretrain_resnet(config.backbone.name, config.backbone.kwargs), neck=neck,
      head=dict(type='ContrastiveHead', loss=dict(type='CrossEntropyLoss'), temperature=m.temperature)))
  model.backbone.load_state_dict(parity.resnet_state(params['backbone'], model_state['batch_stats']['backbone'],
                                                     config.backbone.name, config.backbone.kwargs))
  model.neck.load_state_dict(neck_state(params['neck'], m.neck))
  with torch.no_grad():  # the reference's queue starts random too: the same random rows
    model.queue.copy_(torch.from_numpy(np.asarray(queue).T.copy()))
  return model


def neck_state(p, neck):
  if neck == 'linear':
    return parity.dense_state(p['fc'], 'fc')
  return {**parity.dense_state(p['fc0'], 'mlp.0'), **parity.dense_state(p['fc1'], 'mlp.2')}


@pytest.mark.parametrize('version', ['mocov2', 'mocov1'])
def test_matches_mmpretrain_moco(version):
  import torch
  config = small(get_config_v2() if version == 'mocov2' else get_config_v1())
  method, batch, params, model_state, method_state = setup(config)
  model = torch_moco(config, params, model_state, method_state['queue']['keys'])
  v1, v2 = (parity.nhwc_to_torch(v) for v in batch['views'])

  rng = jax.random.key(1)
  (loss, (_, new_model_state, new_method_state)), grads = jax.jit(jax.value_and_grad(method.loss, has_aux=True))(
      params, model_state, method_state, batch, rng, 0)
  ref_loss = model.loss([v1, v2], None)['loss']
  ref_loss.backward()
  np.testing.assert_allclose(loss, ref_loss.item(), rtol=1e-4)
  # T = 0.07 (v1) magnifies float32 differences of the two frameworks
  parity.assert_grads_close(grads['backbone']['conv1']['kernel'],
                            parity.first_conv_grad_to_jssl(model.backbone.conv1.weight.grad), rtol=1e-3)

  # the queue: this batch's keys in rows 0..7, the pointer moved on
  np.testing.assert_allclose(new_method_state['queue']['keys'], model.queue.numpy().T, rtol=1e-4, atol=1e-5)
  assert int(new_method_state['queue']['ptr']) == int(model.queue_ptr) == BATCH
  # the key encoder's running BN means: copied from the query encoder, then moved by the key batch (var: Flax
  # updates with the biased batch variance, torch with the unbiased one)
  ref_k = model.encoder_k.module[0].state_dict()
  got_k = parity.resnet_state(new_method_state['target']['params']['backbone'],
                              new_method_state['target']['batch_stats']['backbone'], config.backbone.name,
                              config.backbone.kwargs)
  for name, value in got_k.items():
    if name.endswith('running_mean'):
      np.testing.assert_allclose(value.numpy(), ref_k[name].numpy(), rtol=1e-4, atol=1e-5, err_msg=name)

  # one momentum update towards new query parameters (the reference does it at the start of the next step)
  new_params = jax.tree.map(lambda p, g: p - 0.5 * g - 0.01, params, grads)
  target = method.after_step(new_params, new_method_state, 0)['target']
  model.backbone.load_state_dict(parity.resnet_state(new_params['backbone'], new_model_state['batch_stats']['backbone'],
                                                     config.backbone.name, config.backbone.kwargs))
  model.neck.load_state_dict(neck_state(new_params['neck'], config.model.neck))
  model.encoder_k.update_parameters(torch.nn.Sequential(model.backbone, model.neck))
  ref_k = model.encoder_k.module[0].state_dict()
  got_k = parity.resnet_state(target['params']['backbone'], target['batch_stats']['backbone'],
                              config.backbone.name, config.backbone.kwargs)
  for name, value in got_k.items():
    if not name.endswith(('running_mean', 'running_var', 'num_batches_tracked')):
      np.testing.assert_allclose(value.numpy(), ref_k[name].numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
  ref_neck = model.encoder_k.module[1].state_dict()
  for name, value in neck_state(target['params']['neck'], config.model.neck).items():
    np.testing.assert_allclose(value.numpy(), ref_neck[name].numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
  # the EMA itself: 0.999 * old + 0.001 * new
  for t, o, n in zip(jax.tree.leaves(method_state['target']['params']), jax.tree.leaves(new_params),
                     jax.tree.leaves(target['params'])):
    np.testing.assert_allclose(n, 0.999 * t + 0.001 * o, rtol=1e-5, atol=1e-7)


def test_shuffle_bn_groups_are_separate_batches():
  config = small(get_config_v2(), groups=2)
  method, batch, params, model_state, method_state = setup(config)
  target, v2, rng = method_state['target'], batch['views'][1], jax.random.key(5)
  keys, stats = jax.jit(method.key_forward)(target, v2, rng)
  perm = np.asarray(jax.random.permutation(rng, BATCH))
  expected = np.zeros_like(keys)
  group_stats = []
  for g in range(2):  # each group of 4 permuted images through the encoder alone, BN over those 4
    idx = perm[4 * g:4 * g + 4]
    out, state = method.net.apply(target, v2[idx], train=True, mutable=['batch_stats'])
    expected[idx] = losses.l2_normalize(out)
    group_stats.append(state['batch_stats'])
  np.testing.assert_allclose(keys, expected, rtol=1e-3, atol=1e-4)
  for got, a, b in zip(jax.tree.leaves(stats), *(jax.tree.leaves(s) for s in group_stats)):
    np.testing.assert_allclose(got, (a + b) / 2, rtol=1e-4, atol=1e-5)
  plain = method.net.apply(target, v2, train=True, mutable=['batch_stats'])[0]
  assert not np.allclose(keys, losses.l2_normalize(plain), atol=1e-3)  # group statistics differ from the batch's
  np.testing.assert_allclose(np.linalg.norm(keys, axis=1), 1., rtol=1e-5)


def test_configs():
  v2, v1 = get_config_v2(), get_config_v1()
  method = mocov2.Method(small(get_config_v2('demo'), groups=4))
  assert method.groups == 4
  assert (v2.model.neck, v2.model.temperature, v2.model.momentum, v2.model.queue_len) == ('mocov2', 0.2, 0.999, 65536)
  assert (v1.model.neck, v1.model.temperature, v1.method) == ('linear', 0.07, 'mocov1')
  assert v1.schedule.name == 'step' and tuple(v1.schedule.milestones) == (120, 160)
  assert v2.schedule.name == 'cosine' and v2.optimizer.lr == 0.03 and v2.batch_size == 256
  assert v2.model.shuffle_bn_groups == v1.model.shuffle_bn_groups == 8
  assert [a['type'] for a in v2.data.augment] == ['ColorJitter', 'RandomGrayscale', 'GaussianBlur']
  assert [a['type'] for a in v1.data.augment] == ['RandomGrayscale', 'ColorJitter']
  bad = small(get_config_v2())
  bad.model.neck = 'nonlinear'
  with pytest.raises(ValueError, match='config.model.neck'):
    mocov2.Method(bad)
  bad = small(get_config_v2(), groups=3)
  with pytest.raises(ValueError, match='shuffle_bn_groups'):
    mocov2.Method(bad)
  bad = small(get_config_v2(), queue_len=12)
  with pytest.raises(ValueError, match='queue_len'):
    mocov2.Method(bad)


SMALL = {'backbone.kwargs.num_filters': 8, 'model.neck_hid_channels': 32, 'model.neck_out_channels': 16,
         'model.queue_len': 64, 'model.shuffle_bn_groups': 4, 'data.views.0.size': 16}


# tests/methods/test_every_method.py: 1 vs 8 devices, kill-and-resume and the demo, made small by these
# shuffle-BN groups come from a permutation of the global batch, not from devices: 4 groups of 4 on 1 device, on
# 8 devices and on the 2 x 4 fsdp mesh
DEVICES = SMALL
# a queue with its pointer and an EMA key encoder besides params, optimizer and BN state. Batch 64 is 22 steps per
# epoch of digits. Killed after step 5 (just after the step-4 checkpoint), 11 (just before the step-12 one) and 23
# (past the epoch boundary at 22: the run resumes at 20 and crosses it again).
RESUME = {**SMALL, 'data.views.0.size': 32, 'batch_size': 64, 'total_steps': 30}
RESUME_KILL_AT = (5, 11, 23)
