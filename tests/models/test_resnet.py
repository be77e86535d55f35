"""ResNet vs torchvision with copied weights."""
import pytest

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

import jax
import jax.numpy as jnp
import numpy as np

from jssl.models import backbone_feature_dim, build_backbone
from jssl.models.resnet import BasicBlock, Bottleneck, ResNet
from tests.parity import assert_close, randomize_bn


def torch_to_flax(torch_model):
  """torchvision state_dict -> {'params', 'batch_stats'} for jssl ResNet."""
  params, batch_stats = {}, {}
  for key, value in torch_model.state_dict().items():
    if key.startswith('fc.') or key.endswith('num_batches_tracked'):
      continue
    value = value.detach().numpy()
    *path, leaf = key.split('.')
    # layer1.0.downsample.1 -> layer1_0/downsample_bn
    path = '.'.join(path).replace('downsample.0', 'downsample_conv')
    path = path.replace('downsample.1', 'downsample_bn')
    path = path.replace('.', '_', 1) if path.startswith('layer') else path
    path = path.split('.')
    if leaf == 'weight' and value.ndim == 4:
      tree, leaf, value = params, 'kernel', value.transpose(2, 3, 1, 0)
    else:
      tree, leaf = {
          'weight': (params, 'scale'), 'bias': (params, 'bias'),
          'running_mean': (batch_stats, 'mean'),
          'running_var': (batch_stats, 'var')}[leaf]
    for p in path:
      tree = tree.setdefault(p, {})
    tree[leaf] = jnp.asarray(value)
  return {'params': params, 'batch_stats': batch_stats}


def torch_features(m, x):
  """Outputs 0 (stem, before max-pool) .. 4 of a torchvision ResNet."""
  x = m.relu(m.bn1(m.conv1(x)))
  outs = [x]
  x = m.maxpool(x)
  for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
    x = layer(x)
    outs.append(x)
  return outs


def build_pair(name, seed):
  torch.manual_seed(seed)
  torch_model = getattr(torchvision.models, name)(weights=None)
  randomize_bn(torch_model, seed)
  model = build_backbone(name, out_indices=(0, 1, 2, 3, 4))
  variables = torch_to_flax(torch_model)
  # The mapped tree must match the module's own tree exactly.
  expected = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, 64, 64, 3)))
  assert (jax.tree.map(jnp.shape, variables)
          == jax.tree.map(lambda s: s.shape, expected))
  return torch_model, model, variables


@pytest.mark.parametrize('name, channels', [
    ('resnet18', (64, 64, 128, 256, 512)),
    ('resnet50', (64, 256, 512, 1024, 2048)),
])
def test_matches_torchvision(name, channels):
  torch_model, model, variables = build_pair(name, seed=1)
  x = np.random.RandomState(0).randn(4, 3, 64, 64).astype(np.float32)
  x_nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))

  # Eval mode: BN uses the (random) running statistics.
  torch_model.eval()
  with torch.no_grad():
    expected = torch_features(torch_model, torch.from_numpy(x))
  outs = jax.jit(model.apply)(variables, x_nhwc)
  assert len(outs) == 5
  sizes = (32, 16, 8, 4, 2)
  for out, exp, c, s in zip(outs, expected, channels, sizes):
    assert out.shape == (4, s, s, c)
    assert_close(out, exp.numpy().transpose(0, 2, 3, 1))

  # Train mode: BN normalises with batch statistics and updates running ones.
  torch_model.train()
  with torch.no_grad():
    expected = torch_features(torch_model, torch.from_numpy(x))
  apply_train = jax.jit(
      lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))
  outs, new_state = apply_train(variables, x_nhwc)
  # Batch statistics of 4 images: the last stage normalizes each channel over 16 values, and dividing by their small
  # spread amplifies the convolutions' float32 round-off, which depends on the CPU (CI's read 1.1e-4 of the largest
  # activation for ResNet-50, this machine's less); statistics of the wrong axes or a missing update are off by O(1)
  for out, exp in zip(outs, expected):
    assert_close(out, exp.numpy().transpose(0, 2, 3, 1), rtol=5e-4)
  # momentum 0.9 (flax) == momentum 0.1 (torch) for the running mean.
  assert_close(new_state['batch_stats']['layer4_1']['bn2']['mean'],
               torch_model.layer4[1].bn2.running_mean.numpy(), rtol=1e-5)


def test_default_returns_last_stage_only():
  model = build_backbone('resnet50')
  out = jax.eval_shape(lambda x: model.init_with_output(
      jax.random.key(0), x)[0], jnp.zeros((2, 64, 64, 3)))
  assert len(out) == 1 and out[0].shape == (2, 2, 2, 2048)
  assert model.feature_dim == 2048
  assert backbone_feature_dim('resnet18') == 512
  assert backbone_feature_dim('resnet50') == 2048


def test_bfloat16_compute_float32_params():
  model = build_backbone('resnet18', dtype=jnp.bfloat16)
  out, variables = jax.eval_shape(lambda x: model.init_with_output(
      jax.random.key(0), x), jnp.zeros((2, 32, 32, 3)))
  assert out[0].dtype == jnp.bfloat16
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(variables))


def test_init_and_zero_init_residual():
  # Small nets and the rbg PRNG keep compilation (mostly of the RNG) fast.
  x = jnp.zeros((1, 32, 32, 3))
  key = jax.random.key(0, impl='rbg')
  init = lambda model: jax.jit(model.init)(key, x)['params']
  params = init(ResNet(stage_sizes=(1, 1), block_cls=Bottleneck,
                       out_indices=(2,), zero_init_residual=True))
  for i in (1, 2):
    block = params[f'layer{i}_0']
    np.testing.assert_array_equal(block['bn3']['scale'], 0.0)
    np.testing.assert_array_equal(block['bn3']['bias'], 0.0)
    np.testing.assert_array_equal(block['bn1']['scale'], 1.0)
    np.testing.assert_array_equal(block['downsample_bn']['scale'], 1.0)
  # Kaiming normal, fan_out: std = sqrt(2 / (64 * 7 * 7)).
  std = np.std(np.asarray(params['conv1']['kernel']))
  np.testing.assert_allclose(std, np.sqrt(2 / (64 * 49)), rtol=0.05)

  params = init(ResNet(stage_sizes=(1, 1), block_cls=BasicBlock,
                       out_indices=(2,), zero_init_residual=True))
  np.testing.assert_array_equal(params['layer2_0']['bn2']['scale'], 0.0)
  np.testing.assert_array_equal(params['layer2_0']['bn1']['scale'], 1.0)


def test_unknown_backbone():
  # The message lists every registered name, sorted.
  with pytest.raises(ValueError, match="unknown backbone 'resnet99'; valid: "
                     r'.*resnet101, resnet101_v1d, resnet152, .*'
                     r'resnext50_32x4d, .*vit_huge, vit_large'):
    build_backbone('resnet99')


def random_variables(model, size=32, seed=0):
  """Random weights + non-trivial BN stats from shapes only (no init)."""
  template = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, size, size, 3)))
  rng = np.random.RandomState(seed)

  def leaf(path, s):
    name = path[-1].key
    value = {'kernel': lambda: rng.randn(*s.shape) * np.sqrt(
                 2 / np.prod(s.shape[:-1])),
             'scale': lambda: 1 + 0.2 * rng.randn(*s.shape),
             'var': lambda: 0.5 + rng.rand(*s.shape)}.get(
                 name, lambda: 0.2 * rng.randn(*s.shape))()
    return jnp.asarray(value, jnp.float32)
  return jax.tree_util.tree_map_with_path(leaf, template)


def train_step(model, variables, x):
  """(grads, new batch_stats, outputs) of one train-mode forward/backward."""
  def loss(params):
    outs, state = model.apply({'params': params,
                               'batch_stats': variables['batch_stats']},
                              x, train=True, mutable=['batch_stats'])
    return sum(jnp.sum(o**2) for o in outs), (state['batch_stats'], outs)
  grads, (stats, outs) = jax.jit(jax.grad(loss, has_aux=True))(
      variables['params'])
  return grads, stats, outs


def nonzero(tree):
  return any(np.any(np.asarray(l)) for l in jax.tree.leaves(tree))


def changed(a, b):
  return not all(np.array_equal(x, y) for x, y in
                 zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# One block per stage keeps compilation short.
TINY = dict(stage_sizes=(1, 1, 1, 1), block_cls=BasicBlock, out_indices=(0, 4))


def test_frozen_stages():
  model = ResNet(**TINY, frozen_stages=1)
  variables = random_variables(model)
  x = jnp.asarray(np.random.RandomState(0).randn(4, 32, 32, 3), jnp.float32)
  grads, stats, _ = train_step(model, variables, x)
  old = variables['batch_stats']
  for name in ('conv1', 'bn1', 'layer1_0'):
    assert not nonzero(grads[name]), name  # no gradient into frozen parts
  for name in ('bn1', 'layer1_0'):
    assert not changed(stats[name], old[name]), name  # BN in eval mode
  for name in ('layer2_0', 'layer3_0', 'layer4_0'):
    assert nonzero(grads[name]) and changed(stats[name], old[name]), name
  with pytest.raises(ValueError, match=r'frozen_stages 5 must be in \[-1, 4\]'):
    jax.eval_shape(build_backbone('resnet18', frozen_stages=5).init,
                   jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_norm_eval():
  model = ResNet(**TINY, norm_eval=True)
  variables = random_variables(model)
  x = jnp.asarray(np.random.RandomState(0).randn(4, 32, 32, 3), jnp.float32)
  grads, stats, outs = train_step(model, variables, x)
  assert not changed(stats, variables['batch_stats'])
  for out, expected in zip(outs, jax.jit(model.apply)(variables, x)):
    assert_close(out, expected, rtol=1e-5)  # train == eval outputs
  assert nonzero(grads['conv1']) and nonzero(grads['layer1_0'])


def test_resnext_and_v1d_structure():
  model = build_backbone('resnext50_32x4d')
  shapes = jax.tree.map(lambda s: s.shape, jax.eval_shape(
      model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params'])
  # torchvision: width = int(64 * 4 / 64) * 32 = 128, grouped 3x3.
  assert shapes['layer1_0']['conv2']['kernel'] == (3, 3, 4, 128)
  assert shapes['layer4_0']['conv3']['kernel'] == (1, 1, 1024, 2048)
  assert build_backbone('resnext101_32x8d').width_per_group == 8

  model = build_backbone('resnet50_v1d', out_indices=(0, 1))
  out, variables = jax.eval_shape(lambda x: model.init_with_output(
      jax.random.key(0), x), jnp.zeros((1, 64, 64, 3)))
  params = variables['params']
  assert 'conv1' not in params
  assert [params[f'stem_{i}_conv']['kernel'].shape for i in range(3)] == [
      (3, 3, 3, 32), (3, 3, 32, 32), (3, 3, 32, 64)]
  assert out[0].shape == (1, 32, 32, 64)  # stem, before the max-pool
  with pytest.raises(ValueError, match='BasicBlock supports only groups=1'):
    jax.eval_shape(build_backbone('resnet18', groups=2).init,
                   jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize('name', ['resnet50', 'resnet101_v1d', 'resnet152'])
def test_layer_ids_are_mmpretrain_get_layer_depth(name):
  """Layer-wise lr decay of a ResNet: every param's id and the layer count are mmpretrain's ResNet.get_layer_depth
  of its mmpretrain name (the converter's)."""
  pytest.importorskip('mmpretrain')
  import flax.traverse_util
  from mmpretrain.models.backbones import ResNet as MMResNet
  from jssl.convert.resnet import torch_module
  module = build_backbone(name, num_filters=4)
  params = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  ids, last = ResNet.layer_ids(params)
  depth = {6: 50, 23: 101, 36: 152}[module.stage_sizes[2]]
  reference = MMResNet(depth=depth, deep_stem=module.deep_stem, avg_down=module.avg_down)
  leaf = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}
  for path, i in flax.traverse_util.flatten_dict(ids).items():
    torch_name = f'backbone.{torch_module(path[:-1], "mmpretrain", module.avg_down)}.{leaf[path[-1]]}'
    assert reference.get_layer_depth(torch_name, 'backbone.') == (i, last + 1), torch_name
  assert reference.get_layer_depth('head.fc.weight', 'backbone.') == (last, last + 1)  # the head: multiplier 1
  resnet18 = jax.eval_shape(build_backbone('resnet18').init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match='config.optimizer.layer_decay: mmpretrain numbers the layers of ResNets '
                                       'whose stages 2 and 3 have 4 and 6, .* blocks, not 2 and 2'):
    ResNet.layer_ids(resnet18['params'])
