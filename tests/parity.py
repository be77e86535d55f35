"""Helpers for parity tests against mmpretrain 1.2: copy jssl variables into the reference's torch modules.

    torch_model.backbone.load_state_dict(resnet_state(params['backbone'], model_state['batch_stats']['backbone'],
                                                      'resnet18', {'num_filters': 8}))
    MODELS.build(mmpretrain_resnet("resnet18", {"num_filters": 8}))  # matching mmpretrain backbone config

Note: mmpretrain modules' .train() / .eval() return None (call them on their own line).
"""
import numpy as np
import torch

from jssl.convert import resnet as resnet_convert


def tensors(flat):
  return {k: torch.from_numpy(np.array(v, np.float32) if np.asarray(v).dtype.kind == 'f' else np.array(v))
          for k, v in flat.items()}


def resnet_state(params, batch_stats, name, kwargs=None):
  """A jssl ResNet's variables as the state dict of mmpretrain's ResNet (OIHW convs)."""
  variables = {'params': params, 'batch_stats': batch_stats}
  arch = {'name': name, **dict(kwargs or {})}
  return tensors(resnet_convert.to_torch(variables, 'mmpretrain', arch))


def mmpretrain_resnet(name, kwargs=None, zero_init_residual=False):
  """mmpretrain backbone config of the same ResNet (depth from the name, width from num_filters)."""
  kwargs = dict(kwargs or {})
  width = kwargs.get('num_filters', 64)
  return dict(type='ResNet', depth=int(name.replace('resnet', '')), stem_channels=width, base_channels=width,
              out_indices=(3,), zero_init_residual=zero_init_residual, norm_cfg=dict(type='BN'))


def dense_state(p, prefix):
  """Flax Dense {'kernel' [in, out], 'bias'} -> torch Linear '{prefix}.weight' [out, in], '{prefix}.bias'."""
  out = {f'{prefix}.weight': np.asarray(p['kernel']).T}
  if 'bias' in p:
    out[f'{prefix}.bias'] = np.asarray(p['bias'])
  return tensors(out)


def bn_state(p, stats, prefix):
  """Flax BatchNorm params (scale/bias, if affine) + batch_stats (mean/var) -> torch BatchNorm names."""
  out = {f'{prefix}.running_mean': np.asarray(stats['mean']), f'{prefix}.running_var': np.asarray(stats['var'])}
  if p and 'scale' in p:
    out[f'{prefix}.weight'] = np.asarray(p['scale'])
  if p and 'bias' in p:
    out[f'{prefix}.bias'] = np.asarray(p['bias'])
  return tensors(out)


def nhwc_to_torch(x):
  return torch.from_numpy(np.asarray(x, np.float32).transpose(0, 3, 1, 2).copy())


def first_conv_grad_to_jssl(torch_grad):
  """Gradient of a torch conv weight (OIHW) in the jssl layout (HWIO), to compare first-layer gradients."""
  return torch_grad.detach().numpy().transpose(2, 3, 1, 0)


def nonlinear_neck_state(params, batch_stats, prefix='neck'):
  """jssl NonLinearNeck (fc{i}, bn{i}) -> mmpretrain NonLinearNeck: the same module names, torch layouts."""
  out = {}
  for name, p in params.items():
    if name.startswith('fc'):
      out.update(dense_state(p, f'{prefix}.{name}'))
  for name, stats in batch_stats.items():
    out.update(bn_state(params.get(name), stats, f'{prefix}.{name}'))
  return out


def build_mmpretrain(cfg):
  """An mmpretrain model from its config dict, in train mode."""
  from mmengine.registry import init_default_scope
  init_default_scope('mmpretrain')
  from mmpretrain.registry import MODELS
  model = MODELS.build(cfg)
  model.train()
  return model


def assert_grads_close(got, ref, rtol=1e-4):
  """Gradients agree: |got - ref| / |ref| <= rtol over the whole tensor, and each element within rtol of the largest
  (elementwise relative error is meaningless for entries that cancel to ~0 in fp32)."""
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  assert got.shape == ref.shape, (got.shape, ref.shape)
  assert np.linalg.norm(got - ref) <= rtol * np.linalg.norm(ref), np.linalg.norm(got - ref) / np.linalg.norm(ref)
  np.testing.assert_allclose(got, ref, rtol=0, atol=10 * rtol * np.abs(ref).max())
  assert np.abs(ref).max() > 0


def load_backbone_and_neck(ref, params, batch_stats, backbone_name, backbone_kwargs, allow_missing=()):
  """Copies a jssl BackboneNeck (ResNet + NonLinearNeck) into an mmpretrain algorithm's backbone and neck; every
  reference key must be filled except num_batches_tracked and those starting with `allow_missing`."""
  state = {**{f'backbone.{k}': v for k, v in resnet_state(params['backbone'], batch_stats['backbone'], backbone_name,
                                                          backbone_kwargs).items()},
           **nonlinear_neck_state(params['neck'], batch_stats['neck'])}
  missing, unexpected = ref.load_state_dict(state, strict=False)
  assert not unexpected and all(k.endswith('num_batches_tracked') or k.startswith(tuple(allow_missing))
                                for k in missing), (missing, unexpected)


def assert_loss_and_stem_grad_match(ref, views, loss, grads):
  """mmpretrain's loss on the same NHWC views equals `loss` (1e-4 relative), and its stem conv's gradient equals
  jssl's grads['backbone']['conv1']['kernel']."""
  ref_loss = ref.loss([nhwc_to_torch(v) for v in views], None)['loss']
  ref_loss.backward()
  np.testing.assert_allclose(loss, ref_loss.item(), rtol=1e-4)
  assert_grads_close(grads['backbone']['conv1']['kernel'], first_conv_grad_to_jssl(ref.backbone.conv1.weight.grad))
