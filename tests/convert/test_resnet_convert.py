"""ResNet key maps vs torchvision / mmpretrain models and detectron2 names."""
import re

import pytest

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

import jax
import jax.numpy as jnp
import numpy as np

from jssl.convert import resnet as convert
from jssl.convert.errors import ConversionError
from jssl.models import build_backbone
from tests.parity import assert_close, assert_trees_equal, load_into, randomize_bn, torch_state

ALL_OUTPUTS = (0, 1, 2, 3, 4)


def template_of(model, size=64):
  return jax.eval_shape(model.init, jax.random.key(0),
                        jnp.zeros((1, size, size, 3)))


def random_variables(template, seed=0):
  """Random jssl ResNet variables (He-scaled convs, non-trivial BN)."""
  rng = np.random.RandomState(seed)

  def leaf(path, s):
    name = path[-1].key
    if name == 'kernel':
      return rng.randn(*s.shape) * np.sqrt(2 / np.prod(s.shape[:-1]))
    if name == 'scale':
      return 1 + 0.2 * rng.randn(*s.shape)
    if name == 'var':
      return 0.5 + rng.rand(*s.shape)
    return 0.2 * rng.randn(*s.shape)  # bias, mean
  return jax.tree_util.tree_map_with_path(
      lambda p, s: leaf(p, s).astype(np.float32), template)


def torchvision_model(name):
  torch.manual_seed(0)
  model = getattr(torchvision.models, name)(weights=None)
  model.fc = torch.nn.Identity()  # not part of the backbone
  return randomize_bn(model)


def torchvision_features(m, x):
  """Stem (before the max-pool) and stages 1..4, NHWC."""
  with torch.no_grad():
    x = m.relu(m.bn1(m.conv1(torch.from_numpy(x))))
    outs = [x]
    x = m.maxpool(x)
    for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
      x = layer(x)
      outs.append(x)
  return [o.numpy().transpose(0, 2, 3, 1) for o in outs]


def mmpretrain_features(m, x):
  """Stages 1..4 of an mmpretrain ResNet built with out_indices=(0,1,2,3)."""
  with torch.no_grad():
    return [o.numpy().transpose(0, 2, 3, 1) for o in m(torch.from_numpy(x))]


def check_parity(name, fmt, make_torch, torch_features, size=64,
                 first_output=0):
  """Export -> strict torch load -> same features; torch -> import -> same
  features; jssl -> torch -> jssl exact."""
  model = build_backbone(name, out_indices=ALL_OUTPUTS)
  template = template_of(model, size)
  apply = jax.jit(model.apply)
  x = np.random.RandomState(0).randn(2, 3, size, size).astype(np.float32)
  x_nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
  arch = {'name': name}

  # jssl -> torch.
  variables = random_variables(template)
  state_dict = convert.to_torch(variables, fmt, arch)
  torch_model = make_torch()
  load_into(torch_model, state_dict)
  outs = apply(variables, x_nhwc)[first_output:]
  expected = torch_features(torch_model, x)
  assert len(outs) == len(expected)
  for out, exp in zip(outs, expected):
    assert_close(out, exp)
  assert_trees_equal(convert.from_torch(state_dict, fmt, template, arch),
                     variables)

  # torch -> jssl.
  torch_model = make_torch()
  imported = convert.from_torch(torch_state(torch_model), fmt, template, arch)
  for out, exp in zip(apply(imported, x_nhwc)[first_output:],
                      torch_features(torch_model, x)):
    assert_close(out, exp)


# ResNet-50 itself: test_full_size_resnet50_torchvision.
@pytest.mark.parametrize('name', ['resnet18', 'resnext50_32x4d'])
def test_torchvision_parity(name):
  check_parity(name, 'torchvision', lambda: torchvision_model(name),
               torchvision_features)


def test_mmpretrain_resnet50_v1d_parity():
  from mmpretrain.models.backbones import ResNetV1d
  # 72 px: stage 3 sees a 9x9 map, so the avg-down pool has ceil-mode
  # partial windows (count_include_pad=False).
  make = lambda: randomize_bn(ResNetV1d(depth=50, out_indices=(0, 1, 2, 3)))
  check_parity('resnet50_v1d', 'mmpretrain', make, mmpretrain_features,
               size=72, first_output=1)


def test_mmpretrain_names_of_resnet_and_resnext():
  from mmpretrain.models.backbones import ResNet, ResNeXt
  for name, torch_model in [('resnet18', ResNet(depth=18)),
                            ('resnext50_32x4d', ResNeXt(depth=50))]:
    template = template_of(build_backbone(name))
    state_dict = torch_state(torch_model)
    variables = convert.from_torch(state_dict, 'mmpretrain', template,
                                   {'name': name})
    exported = convert.to_torch(variables, 'mmpretrain', {'name': name})
    assert set(exported) == set(state_dict)
    for k in state_dict:
      np.testing.assert_array_equal(exported[k], state_dict[k])


def detectron2_names_resnet50():
  """detectron2's ResNet-50 parameter names, written out independently."""
  norm = ('weight', 'bias', 'running_mean', 'running_var')
  names = ['stem.conv1.weight'] + [f'stem.conv1.norm.{n}' for n in norm]
  for stage, blocks in zip((2, 3, 4, 5), (3, 4, 6, 3)):
    for b in range(blocks):
      convs = ('conv1', 'conv2', 'conv3') + (('shortcut',) if b == 0 else ())
      for c in convs:
        names.append(f'res{stage}.{b}.{c}.weight')
        names += [f'res{stage}.{b}.{c}.norm.{n}' for n in norm]
  return names


def test_detectron2_resnet50_names_and_parity():
  expected = detectron2_names_resnet50()
  counts = {'stem': 5, 'res2': 50, 'res3': 65, 'res4': 95, 'res5': 50}
  assert len(expected) == len(set(expected)) == sum(counts.values()) == 265

  template = template_of(build_backbone('resnet50'))
  arch = {'name': 'resnet50'}
  variables = random_variables(template)
  state_dict = convert.to_torch(variables, 'detectron2', arch)
  assert set(state_dict) == set(expected)
  for prefix, count in counts.items():
    assert sum(k.startswith(prefix + '.') for k in state_dict) == count
  assert state_dict['res2.0.conv2.weight'].shape == (64, 64, 3, 3)  # OIHW
  assert state_dict['res5.0.shortcut.weight'].shape == (2048, 1024, 1, 1)
  assert_trees_equal(
      convert.from_torch(state_dict, 'detectron2', template, arch), variables)

  # A torchvision file renamed the way MoCo's convert-pretrain-to-detectron2
  # does it imports to the same variables as the torchvision file.
  tv = torch_state(torchvision_model('resnet50'))
  d2 = {}
  for k, v in tv.items():
    if k.endswith('num_batches_tracked'):
      continue  # detectron2's FrozenBatchNorm2d has none
    if 'layer' not in k:
      k = 'stem.' + k
    for t in (1, 2, 3, 4):
      k = k.replace(f'layer{t}', f'res{t + 1}')
    for t in (1, 2, 3):
      k = k.replace(f'bn{t}', f'conv{t}.norm')
    k = k.replace('downsample.0', 'shortcut').replace('downsample.1',
                                                      'shortcut.norm')
    d2[k] = v
  assert_trees_equal(convert.from_torch(d2, 'detectron2', template, arch),
                     convert.from_torch(tv, 'torchvision', template, arch))


def test_resnet18_detectron2_basic_block_names():
  template = template_of(build_backbone('resnet18'))
  state_dict = convert.to_torch(random_variables(template), 'detectron2',
                                {'name': 'resnet18'})
  weights = sorted(k for k in state_dict if k.endswith('.weight')
                   and '.norm.' not in k)
  assert weights[:6] == ['res2.0.conv1.weight', 'res2.0.conv2.weight',
                         'res2.1.conv1.weight', 'res2.1.conv2.weight',
                         'res3.0.conv1.weight', 'res3.0.conv2.weight']
  assert 'res3.0.shortcut.weight' in state_dict
  assert 'res2.0.shortcut.weight' not in state_dict  # 64 -> 64, stride 1
  assert len(weights) == 1 + 16 + 3


@pytest.fixture(scope='module')
def resnet18_checkpoint():
  template = template_of(build_backbone('resnet18'))
  variables = random_variables(template)
  return template, convert.to_torch(variables, 'torchvision',
                                    {'name': 'resnet18'})


def test_missing_key(resnet18_checkpoint):
  template, state_dict = resnet18_checkpoint
  state_dict = dict(state_dict)
  del state_dict['layer3.1.bn2.running_var']
  with pytest.raises(ConversionError,
                     match=r"^missing keys: layer3\.1\.bn2\.running_var$"):
    convert.from_torch(state_dict, 'torchvision', template,
                       {'name': 'resnet18'})


def test_missing_and_unexpected_keys_in_one_message(resnet18_checkpoint):
  template, state_dict = resnet18_checkpoint
  state_dict = dict(state_dict, **{'layer1.0.conv3.weight': np.zeros(1)})
  del state_dict['conv1.weight']
  with pytest.raises(ConversionError, match=re.escape(
      'missing keys: conv1.weight; unexpected keys: layer1.0.conv3.weight')):
    convert.from_torch(state_dict, 'torchvision', template,
                       {'name': 'resnet18'})


def test_shape_mismatch(resnet18_checkpoint):
  template, state_dict = resnet18_checkpoint
  state_dict = dict(state_dict,
                    **{'layer2.0.conv1.weight': np.zeros((128, 32, 3, 3))})
  with pytest.raises(ConversionError, match=re.escape(
      "'layer2.0.conv1.weight': checkpoint shape (128, 32, 3, 3) != "
      'expected (128, 64, 3, 3)')):
    convert.from_torch(state_dict, 'torchvision', template,
                       {'name': 'resnet18'})


def test_num_batches_tracked_optional(resnet18_checkpoint):
  template, state_dict = resnet18_checkpoint
  assert state_dict['bn1.num_batches_tracked'].dtype == np.int64
  old_style = {k: v for k, v in state_dict.items()
               if not k.endswith('num_batches_tracked')}
  assert_trees_equal(
      convert.from_torch(old_style, 'torchvision', template,
                         {'name': 'resnet18'}),
      convert.from_torch(state_dict, 'torchvision', template,
                         {'name': 'resnet18'}))


def test_bad_format_and_v1d_outside_mmpretrain():
  template = template_of(build_backbone('resnet18_v1d'))
  with pytest.raises(ConversionError, match="torchvision has no ResNet-D"):
    convert.to_torch(template, 'torchvision', {'name': 'resnet18_v1d'})
  with pytest.raises(ConversionError, match="detectron2 has no ResNet-D"):
    convert.from_torch({}, 'detectron2', template, {'name': 'resnet18_v1d'})
  with pytest.raises(ConversionError, match="unknown format 'caffe'; valid: "
                     'torchvision, mmpretrain, detectron2, mocov3'):
    convert.to_torch(template, 'caffe', {'name': 'resnet18_v1d'})
  with pytest.raises(ConversionError, match="ResNet variables need "
                     "'batch_stats'"):
    convert.to_torch({'params': template['params']}, 'mmpretrain',
                     {'name': 'resnet18_v1d'})


@pytest.mark.heavy  # the key map is checked in CI on small ResNets; full-size ViT-B stays in CI (test_vit_convert)
def test_full_size_resnet50_torchvision():
  name = 'resnet50'
  model = build_backbone(name)
  template = template_of(model, 224)
  torch_model = torchvision_model(name)
  variables = convert.from_torch(torch_state(torch_model), 'torchvision',
                                 template, {'name': name})
  x = np.random.RandomState(0).randn(1, 3, 224, 224).astype(np.float32)
  out, = model.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert out.shape == (1, 7, 7, 2048)
  assert_close(out, torchvision_features(torch_model, x)[-1])
  exported = convert.to_torch(variables, 'torchvision', {'name': name})
  load_into(torchvision_model(name), exported)
