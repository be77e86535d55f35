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
  """jssl NonLinearNeck (fc{i}, bn{i}) -> mmpretrain NonLinearNeck: the same module names, torch layouts, under
  `prefix` ('': the neck module's own state dict)."""
  key = lambda name: f'{prefix}.{name}' if prefix else name
  out = {}
  for name, p in params.items():
    if name.startswith('fc'):
      out.update(dense_state(p, key(name)))
  for name, stats in batch_stats.items():
    out.update(bn_state(params.get(name), stats, key(name)))
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


# --- comparing a jssl backbone with its PyTorch twin (the converters' and backbones' parity tests) ---------------
def randomize_bn(torch_model, seed=0):
  """Non-trivial BN affine params and running stats, so that BN is really tested; returns the model, in eval mode."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in torch_model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        n = m.num_features
        m.weight.copy_(1 + 0.2 * torch.randn(n, generator=gen))
        m.bias.copy_(0.2 * torch.randn(n, generator=gen))
        m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
        m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
  torch_model.eval()  # mmpretrain's train() returns None, so no chaining
  return torch_model


def torch_state(torch_model):
  return {k: v.numpy() for k, v in torch_model.state_dict().items()}


def load_into(torch_model, state_dict):
  torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)


def images(size=32):
  """2 random images: (NCHW for torch, NHWC for jssl)."""
  import jax.numpy as jnp
  x = np.random.RandomState(0).randn(2, 3, size, size).astype(np.float32)
  return x, jnp.asarray(x.transpose(0, 2, 3, 1))


def assert_close(actual, expected, rtol=1e-4):
  """The largest difference within rtol of the largest reference value."""
  expected = np.asarray(expected)
  err = np.max(np.abs(np.asarray(actual, np.float32) - expected))
  assert err <= rtol * np.max(np.abs(expected)), (err, np.abs(expected).max())


def assert_trees_equal(a, b):
  import jax
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def random_views(batch, size=32, seed=0, num=2):
  """`num` views of `batch` random float32 images [batch, size, size, 3] (NumPy) and the method's batch of them."""
  import jax.numpy as jnp
  rng = np.random.default_rng(seed)
  views = tuple(rng.normal(size=(batch, size, size, 3)).astype(np.float32) for _ in range(num))
  return views, {'views': tuple(jnp.asarray(v) for v in views)}


def load_online_network(model, params, batch_stats, backbone_kwargs):
  """BYOL's / SimSiam's online network (a ResNet-18, its NonLinearNeck projector, the head's predictor) into the
  mmpretrain model, which is left in train mode."""
  model.backbone.load_state_dict(resnet_state(params['backbone'], batch_stats['backbone'], 'resnet18',
                                              backbone_kwargs))
  model.neck.load_state_dict(nonlinear_neck_state(params['neck'], batch_stats['neck'], prefix=''))
  model.head.predictor.load_state_dict(nonlinear_neck_state(params['head'], batch_stats['head'], prefix=''))
  model.train()
