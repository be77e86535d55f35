"""jssl.evaluate.features: ResNet stages pooled as MMSelfSup's feature extraction (against torch's AvgPool2d /
AdaptiveAvgPool2d of the backbone's own maps, flattened (C, H, W)), ViT cls / mean and Swin stages against the
backbones' outputs, one compiled program for every split, the Sobel input and the workdir's normalization."""
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl import pretrained
from jssl.config import IMAGENET_MEAN, IMAGENET_STD
from jssl.data.transforms import ResizeCenterCrop
from jssl.evaluate import features, knn
from jssl.models import build_backbone
from jssl.train.sharding import make_mesh

torch = pytest.importorskip('torch')


class ListSource:
  def __init__(self, images):
    self.images = images

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    return {'image': self.images[i], 'label': np.int32(i % 3), 'index': np.int64(i)}


def random_variables(name, kwargs, seed=0):
  template = pretrained.backbone_template(name, kwargs)
  rng = np.random.default_rng(seed)
  variables = jax.tree.map(lambda s: (rng.normal(size=s.shape) * 0.2).astype(np.float32), template)
  if 'batch_stats' in template:
    variables['batch_stats'] = jax.tree.map(lambda s: (np.abs(rng.normal(size=s.shape)) + 0.5).astype(np.float32),
                                            template['batch_stats'])
  return variables


def normalized(images):
  return (images.astype(np.float32) / 255. - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)


def torch_flat(x):
  return x.reshape(x.shape[0], -1).numpy()


def test_resnet_stages_pool_as_torch_at_224():
  kwargs = {'num_filters': 8}
  variables = random_variables('resnet18', kwargs)
  images = np.random.default_rng(1).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
  maps = build_backbone('resnet18', out_indices=(0, 1, 2, 3, 4), **kwargs).apply(variables, normalized(images))
  maps = [torch.from_numpy(np.asarray(m).transpose(0, 3, 1, 2).copy()) for m in maps]
  # MMSelfSup's 'specified' pools (kernel, stride, padding) and 'adaptive' sizes, and the global average
  specified = [(10, 10, 4), (16, 8, 0), (13, 5, 0), (8, 3, 0), (6, 1, 0)]
  references = {
      'specified': [torch_flat(torch.nn.functional.avg_pool2d(m, k, s, p)) for m, (k, s, p) in zip(maps, specified)],
      'adaptive': [torch_flat(torch.nn.functional.adaptive_avg_pool2d(m, n)) for m, n in zip(maps, (12, 6, 4, 3, 2))],
      'avg': [m.mean(dim=(2, 3)).numpy() for m in maps]}
  for pool, expected in references.items():
    out, labels, stages = features.extract_pretrained(('resnet18', kwargs, variables), {'x': ListSource(images)},
                                                      ResizeCenterCrop(224, 224), stages='all', pool=pool,
                                                      batch_size=2)
    assert stages == ('feat1', 'feat2', 'feat3', 'feat4', 'feat5')
    np.testing.assert_array_equal(labels['x'], [0, 1, 2])
    for stage, reference in zip(stages, expected):
      assert out['x'][stage].dtype == np.float32
      np.testing.assert_allclose(out['x'][stage], reference, rtol=1e-4, atol=1e-5, err_msg=f'{pool} {stage}')
  assert [r.shape[1] for r in references['specified']] == [12 * 12 * 8, 6 * 6 * 8, 4 * 4 * 16, 3 * 3 * 32, 2 * 2 * 64]


def test_resnet50_feature_dims_at_224():
  """The ~9k dimensions per stage of MMSelfSup's MultiExtractProcess for ResNet-50 (shapes only)."""
  template = pretrained.backbone_template('resnet50')
  for pool, dims in (('specified', [9216, 9216, 8192, 9216, 8192]), ('avg', [64, 256, 512, 1024, 2048])):
    stages, extractor = features.stage_extractor('resnet50', {}, 'all', pool)
    assert list(features.feature_dims(extractor, template, (224, 224, 3)).values()) == dims
  with pytest.raises(ValueError, match=r"stage feat2: the pooling leaves no features at 32x32 px .* use pool "
                                       r"'adaptive' or 'avg'"):
    features.feature_dims(features.stage_extractor('resnet50', {}, 'all', 'specified')[1], template, (32, 32, 3))


def test_vit_and_swin_stages():
  images = np.random.default_rng(2).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  source = {'x': ListSource(images)}
  vit = {'img_size': 32, 'patch_size': 8, 'embed_dim': 16, 'depth': 1, 'num_heads': 2}
  variables = random_variables('vit_tiny', vit)
  out, _, stages = features.extract_pretrained(('vit_tiny', vit, variables), source, ResizeCenterCrop(32, 32),
                                               stages='all', batch_size=4)
  assert stages == ('cls', 'mean')
  for stage in stages:
    expected = build_backbone('vit_tiny', output=stage, **vit).apply(variables, normalized(images))
    np.testing.assert_allclose(out['x'][stage], expected, rtol=1e-5, atol=1e-5)
  default = features.extract_pretrained(('vit_tiny', vit, variables), source, ResizeCenterCrop(32, 32),
                                        batch_size=4, preprocessing={'feature': 'mean'})[2]
  assert default == ('mean',)  # the method's feature (config.model.feature) is a ViT's default stage

  swin = {'img_size': 32, 'embed_dim': 8, 'depths': (1, 1), 'num_heads': (1, 2), 'window_size': 4,
          'out_indices': (0, 1)}
  variables = random_variables('swin_tiny', swin)
  out, _, stages = features.extract_pretrained(('swin_tiny', swin, variables), source, ResizeCenterCrop(32, 32),
                                               stages='all', batch_size=4)
  assert stages == ('feat1', 'feat2')
  maps = build_backbone('swin_tiny', **swin).apply(variables, normalized(images))
  for stage, m in zip(stages, maps):
    np.testing.assert_allclose(out['x'][stage], np.asarray(m).mean(axis=(1, 2)), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="pool 'specified' is MMSelfSup's ResNet pooling; a SwinTransformer takes"):
    features.stage_extractor('swin_tiny', swin, 'all', 'specified')
  with pytest.raises(ValueError, match="stages: unknown stage 'feat3'; valid: feat1, feat2, all"):
    features.stage_extractor('swin_tiny', swin, 'feat3')


def test_one_compile_for_every_split_and_padding():
  kwargs = {'num_filters': 8}
  variables = random_variables('resnet18', kwargs)
  images = np.random.default_rng(3).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
  mesh = make_mesh()
  stages, extractor = features.stage_extractor('resnet18', kwargs, 'feat1,feat5', 'avg', mesh=mesh)
  transform = ResizeCenterCrop(32, 32)
  whole, labels = knn.extract_features(extractor, variables, ListSource(images), transform, 4, mesh)
  part, _ = knn.extract_features(extractor, variables, ListSource(images[:5]), transform, 4, mesh)
  assert extractor._cache_size() == 1  # 7 and 5 records, padded batches of 4: one program
  assert whole['feat5'].shape == (7, 64) and whole['feat1'].shape == (7, 8)
  np.testing.assert_allclose(part['feat5'], whole['feat5'][:5], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(labels, np.arange(7) % 3)
  half = features.extract_pretrained(('resnet18', kwargs, variables), {'x': ListSource(images)}, transform,
                                     'feat5', 'avg', batch_size=4, dtype='bfloat16')[0]
  assert half['x']['feat5'].dtype == np.float32
  np.testing.assert_allclose(half['x']['feat5'], whole['feat5'], rtol=0.1, atol=0.05)


def test_workdir_preprocessing_and_sobel(tmp_path):
  """A workdir's config.data mean/std and config.model.with_sobel (DeepCluster) are how its images are fed."""
  from jssl.models.layers import sobel
  (tmp_path / 'config.json').write_text(json.dumps({
      'data': {'mean': [0.5, 0.5, 0.5], 'std': [0.25, 0.25, 0.25]}, 'model': {'with_sobel': True},
      'backbone': {'name': 'resnet18', 'kwargs': {'num_filters': 8, 'in_channels': 2}}}))
  pre = features.pretrained_preprocessing(str(tmp_path))
  assert pre == {'mean': (0.5, 0.5, 0.5), 'std': (0.25, 0.25, 0.25), 'with_sobel': True, 'feature': None}
  kwargs = {'num_filters': 8, 'in_channels': 2}
  variables = random_variables('resnet18', kwargs)
  images = np.random.default_rng(4).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  out, _, _ = features.extract_pretrained(('resnet18', kwargs, variables), {'x': ListSource(images)},
                                          ResizeCenterCrop(32, 32), 'feat5', 'avg', batch_size=2, preprocessing=pre)
  x = jnp.asarray((images / 255. - 0.5) / 0.25, jnp.float32)
  expected = build_backbone('resnet18', **kwargs).apply(variables, sobel(x))[0].mean(axis=(1, 2))
  np.testing.assert_allclose(out['x']['feat5'], expected, rtol=1e-5, atol=1e-5)
  assert features.pretrained_preprocessing(str(tmp_path / 'nothing'))['mean'] == IMAGENET_MEAN


def test_imported_backbone_path(tmp_path):
  kwargs = {'num_filters': 8}
  variables = random_variables('resnet18', kwargs)
  pretrained.save_imported_backbone(str(tmp_path / 'r18'), 'resnet18', kwargs, variables)
  images = np.random.default_rng(5).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  args = ({'x': ListSource(images)}, ResizeCenterCrop(32, 32), 'feat4', 'adaptive')
  from_path = features.extract_pretrained(str(tmp_path / 'r18'), *args, batch_size=2)[0]
  from_tuple = features.extract_pretrained(('resnet18', kwargs, variables), *args, batch_size=2)[0]
  np.testing.assert_array_equal(from_path['x']['feat4'], from_tuple['x']['feat4'])
  two_devices = types.SimpleNamespace(size=2)  # only its size is read before the check
  with pytest.raises(ValueError, match='batch_size 3 is not a multiple of the 2 devices'):
    features.extract_pretrained(str(tmp_path / 'r18'), *args, batch_size=3, mesh=two_devices)


def test_resize_squash_equals_torchvision():
  """MMSelfSup's VOC07 extraction: Resize(256) then Resize((224, 224)) (torchvision on the PIL image)."""
  T = pytest.importorskip('torchvision.transforms')
  from PIL import Image
  from jssl.data.transforms import ResizeSquash
  image = np.random.default_rng(6).integers(0, 256, (37, 53, 3), dtype=np.uint8)
  expected = T.Compose([T.Resize(30), T.Resize((24, 24))])(Image.fromarray(image))
  np.testing.assert_array_equal(ResizeSquash(30, 24).map({'image': image})['image'], np.asarray(expected))
  expected = T.Resize((24, 24), interpolation=T.InterpolationMode.BICUBIC)(Image.fromarray(image))
  np.testing.assert_array_equal(ResizeSquash(0, 24, 'bicubic').map({'image': image})['image'], np.asarray(expected))
