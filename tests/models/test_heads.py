"""ClsHead, MultiPooling and MultiClsHead against torch's pools, BatchNorm2d and Linear with the same weights."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl.models import build_backbone
from jssl.models.heads import ClsHead, MultiClsHead, MultiPooling, adaptive_avg_pool

torch = pytest.importorskip('torch')

# ResNet-50's outputs 0..4 at 224 px (spatial sizes), with few channels to stay fast
SHAPES = [(112, 112), (56, 56), (28, 28), (14, 14), (7, 7)]


def to_torch(x):
  return torch.from_numpy(np.asarray(x, np.float32).transpose(0, 3, 1, 2).copy())


def feats(channels=3, seed=0):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=(2, h, w, channels)), jnp.float32) for h, w in SHAPES]


@pytest.mark.parametrize('size_in,size_out', [(7, 3), (14, 4), (13, 6), (12, 12), (5, 2)])
def test_adaptive_avg_pool_equals_torch(size_in, size_out):
  x = np.random.default_rng(0).normal(size=(2, size_in, size_in + 1, 3)).astype(np.float32)
  ref = torch.nn.AdaptiveAvgPool2d(size_out)(to_torch(x)).numpy().transpose(0, 2, 3, 1)
  got = adaptive_avg_pool(jnp.asarray(x), size_out)
  assert got.shape == ref.shape == (2, size_out, size_out, 3)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('pool_type', ['adaptive', 'specified'])
def test_multi_pooling_equals_torch_and_gives_the_reference_sizes(pool_type):
  xs = feats()
  pooled = MultiPooling(pool_type, (0, 1, 2, 3, 4)).apply({}, xs)
  params = [dict(kernel_size=10, stride=10, padding=4), dict(kernel_size=16, stride=8, padding=0),
            dict(kernel_size=13, stride=5, padding=0), dict(kernel_size=8, stride=3, padding=0),
            dict(kernel_size=6, stride=1, padding=0)]
  for i, (x, got) in enumerate(zip(xs, pooled)):
    size = [12, 6, 4, 3, 2][i]
    pool = torch.nn.AdaptiveAvgPool2d(size) if pool_type == 'adaptive' else torch.nn.AvgPool2d(**params[i])
    ref = pool(to_torch(x)).numpy().transpose(0, 2, 3, 1)
    assert got.shape == ref.shape == (2, size, size, 3)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='pool_type'):
    MultiPooling('max', (0,)).apply({}, xs[:1])


def test_multi_cls_head_equals_torch_and_resnet50_dims():
  """BN (train mode, batch statistics) -> flatten in (C, H, W) order -> fc, per stage, as MMSelfSup's MultiClsHead."""
  xs = feats(seed=1)
  head = MultiClsHead(num_classes=5, pool_type='specified')
  variables = head.init(jax.random.key(0), xs)
  scores, _ = head.apply(variables, xs, train=True, mutable=['batch_stats'])
  params = variables['params']
  for i, (x, got) in enumerate(zip(xs, scores)):
    bn = torch.nn.BatchNorm2d(3)
    bn.weight.data = torch.tensor(np.asarray(params[f'norm{i}']['scale']))
    fc = torch.nn.Linear(params[f'fc{i}']['kernel'].shape[0], 5)
    fc.weight.data = torch.tensor(np.asarray(params[f'fc{i}']['kernel']).T.copy())
    fc.bias.data = torch.tensor(np.asarray(params[f'fc{i}']['bias']))
    pool = MultiPooling('specified', (i,)).apply({}, [x])[0]
    ref = fc(bn(to_torch(pool)).flatten(1)).detach().numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
    assert abs(np.asarray(params[f'fc{i}']['kernel']).std() - 0.01) < 0.002
  # on ResNet-50's real outputs at 224 px the fcs see the reference's POOL_DIMS
  backbone = build_backbone('resnet50', out_indices=(0, 1, 2, 3, 4))
  outs = jax.eval_shape(lambda: backbone.init_with_output(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))[0])
  for pool_type in ('adaptive', 'specified'):
    shapes = jax.eval_shape(lambda: MultiClsHead(num_classes=1000, pool_type=pool_type, norm_affine=False).init(
        jax.random.key(0), [jnp.zeros(o.shape) for o in outs]))['params']
    assert [shapes[f'fc{i}']['kernel'].shape[0] for i in range(5)] == [9216, 9216, 8192, 9216, 8192]
    assert 'norm0' not in shapes  # affine=False: no BN parameters, only statistics


def test_cls_head_pools_and_inits():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3, 3, 16)), jnp.float32)
  head = ClsHead(num_classes=4, with_avg_pool=True, init_std=0.01)
  params = head.init(jax.random.key(0), x)['params']
  np.testing.assert_allclose(head.apply({'params': params}, x),
                             x.mean((1, 2)) @ params['fc_cls']['kernel'] + params['fc_cls']['bias'], rtol=1e-5)
  assert not params['fc_cls']['bias'].any()


def test_finetune_and_linprobe_heads_equal_torch():
  """MAEFinetuneHead / MaskFeatFinetuneHead (a linear layer) with label-smoothed CE, and MAELinprobeHead
  (BatchNorm1d(affine=False, eps=1e-6) in train mode, then linear), against torch with the same weights."""
  from jssl import losses
  from jssl.models.heads import FinetuneHead, MAELinprobeHead
  rng = np.random.default_rng(0)
  x = rng.normal(2., 3., size=(6, 16)).astype(np.float32)
  labels = np.array([0, 3, 4, 1, 4, 2])
  head = FinetuneHead(num_classes=5, init_std=0.02)
  params = head.init(jax.random.key(0), x)['params']
  kernel = np.asarray(params['head']['kernel'])
  assert 0.01 < kernel.std() < 0.03 and np.abs(kernel).max() <= 0.04 + 1e-6 and not np.asarray(params['head']['bias']).any()
  params = jax.tree.map(lambda p: p + rng.normal(size=p.shape).astype(np.float32), params)
  logits = head.apply({'params': params}, x)
  linear = torch.nn.Linear(16, 5)
  linear.weight.data = torch.from_numpy(np.asarray(params['head']['kernel']).T.copy())
  linear.bias.data = torch.from_numpy(np.array(params['head']['bias']))
  ref = linear(torch.from_numpy(x))
  np.testing.assert_allclose(logits, ref.detach().numpy(), rtol=1e-5, atol=1e-5)
  ref_loss = torch.nn.functional.cross_entropy(ref, torch.from_numpy(labels), label_smoothing=0.1)
  np.testing.assert_allclose(losses.label_smoothing_cross_entropy(logits, labels, 0.1), ref_loss.item(), rtol=1e-5)

  probe = MAELinprobeHead(num_classes=5)
  variables = probe.init(jax.random.key(1), x)
  assert set(variables['params']) == {'head'}  # the BatchNorm has no affine parameters
  out, updates = probe.apply(variables, x, train=True, mutable=['batch_stats'])
  bn = torch.nn.BatchNorm1d(16, affine=False, eps=1e-6)
  linear.weight.data = torch.from_numpy(np.asarray(variables['params']['head']['kernel']).T.copy())
  linear.bias.data = torch.from_numpy(np.array(variables['params']['head']['bias']))
  ref = linear(bn(torch.from_numpy(x)))
  np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-4, atol=1e-5)
  # running statistics: Flax keeps the biased batch variance where torch keeps the unbiased one
  np.testing.assert_allclose(updates['batch_stats']['bn']['var'], 0.9 + 0.1 * x.var(0), rtol=1e-5)
