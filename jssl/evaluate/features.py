"""Per-stage features of a pretrained backbone for every record of a source, pooled as MMSelfSup's benchmarks pool
them (its feature extraction for the VOC07 SVM / low-shot SVM and t-SNE tools, MultiExtractProcess).

  features, labels, stages = extract_pretrained('workdirs/simclr', {'trainval': src1, 'test': src2},
                                                transform, stages='all')
  features['test']['feat5']   # [N, 8192] float32 for ResNet-50 at 224 px

Stages, named as MMSelfSup's FEATURE_LIST:
  ResNet  feat1 (backbone output 0: the stem after its ReLU, before the max-pool) .. feat5 (output 4, stage 4).
          pool 'specified' (the default, the SVM tool's): torch AvgPool2d per stage with ResNet-50's (kernel, stride,
          padding), about 9,000 dimensions each at 224 px (ResNet-50: 9216, 9216, 8192, 9216, 8192); 'adaptive':
          AdaptiveAvgPool2d to 12, 6, 4, 3, 2 cells; 'avg': global average pooling (the stage's channels). The pools
          depend only on the map sizes, which every ResNet shares at a given input size, so they serve ResNet-18/34
          too (fewer channels, smaller features). Pooled maps are flattened in torch's (C, H, W) order.
  Swin    feat1 .. feat4: the stage outputs the backbone was built with (its out_indices: the norms of other stages
          do not exist in the checkpoint), globally averaged ('avg').
  ViT     'cls' (the class token) and 'mean' (the mean of the patch tokens), after the final norm ('mean' only for
          a fc_norm backbone).

One program is compiled per run (the variables are an argument; every batch, also the padded last one, has one
shape), the batch is sharded over all devices of the mesh, and the features come back as float32 numpy arrays.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np

from jssl.config import IMAGENET_MEAN, IMAGENET_STD
from jssl.evaluate import knn
from jssl.methods.base import DTYPES
from jssl.models import build_backbone
from jssl.models.heads import MultiPooling
from jssl.models.layers import sobel
from jssl.models.necks import global_avg_pool
from jssl.models.resnet import ResNet
from jssl.models.swin import SwinTransformer
from jssl.models.vit import VisionTransformer, token_features
from jssl.train import sharding

POOLS = ('specified', 'adaptive', 'avg')


def backbone_stages(module) -> tuple:
  """The stage names a backbone module gives, shallow to deep."""
  if isinstance(module, ResNet):
    return tuple(f'feat{i + 1}' for i in range(len(module.stage_sizes) + 1))
  if isinstance(module, SwinTransformer):
    return tuple(f'feat{i + 1}' for i in sorted(module.out_indices))
  if isinstance(module, VisionTransformer):
    return ('mean',) if module.use_fc_norm else ('cls', 'mean')
  raise ValueError(f'no per-stage features for a {type(module).__name__} backbone')


def parse_stages(spec, available, default, what='stages') -> tuple:
  """'all' -> every available stage; 'feat1,feat5' (or a sequence) -> those, checked; empty -> `default`."""
  if not spec:
    return tuple(default)
  if isinstance(spec, str):
    if spec == 'all':
      return tuple(available)
    spec = spec.split(',')
  stages = tuple(dict.fromkeys(s.strip() for s in spec if s.strip()))
  for stage in stages:
    if stage not in available:
      raise ValueError(f"{what}: unknown stage '{stage}'; valid: {', '.join(available)}, all")
  return stages


def default_pool(module):
  return 'specified' if isinstance(module, ResNet) else 'avg'


def stage_fn(module, stages, pool):
  """(variables, float images [B, H, W, C]) -> {stage: [B, D] float32} for `stages` of `backbone_stages(module)`."""
  if pool not in POOLS:
    raise ValueError(f"pool: unknown '{pool}'; valid: {', '.join(POOLS)}")
  if not isinstance(module, ResNet) and pool != 'avg':
    raise ValueError(f"pool '{pool}' is MMSelfSup's ResNet pooling; a {type(module).__name__} takes pool 'avg'")
  as_f32 = lambda x: x.astype(jnp.float32)

  if isinstance(module, ResNet):
    indices = tuple(int(s[len('feat'):]) - 1 for s in stages)
    net = module.clone(out_indices=tuple(sorted(indices)))

    def resnet_fn(variables, x):
      maps = dict(zip(sorted(indices), net.apply(variables, x, train=False)))
      maps = [maps[i] for i in indices]
      if pool == 'avg':
        pooled = [global_avg_pool(m) for m in maps]
      else:
        pooled = [p.transpose(0, 3, 1, 2).reshape(p.shape[0], -1)
                  for p in MultiPooling(pool, indices, 'resnet50').apply({}, maps)]
      return {s: as_f32(p) for s, p in zip(stages, pooled)}
    return resnet_fn

  if isinstance(module, SwinTransformer):
    def swin_fn(variables, x):
      maps = dict(zip(sorted(module.out_indices), module.apply(variables, x, train=False)))
      return {s: as_f32(global_avg_pool(maps[int(s[len('feat'):]) - 1])) for s in stages}
    return swin_fn

  net = module if module.use_fc_norm else module.clone(output='tokens')

  def vit_fn(variables, x):
    out = net.apply(variables, x, train=False)
    return {s: as_f32(out if module.use_fc_norm else token_features(out, s)) for s in stages}
  return vit_fn


def pretrained_preprocessing(path) -> dict:
  """How the backbone at `path` saw its images: a jssl workdir's config.data mean/std and config.model.with_sobel
  (DeepCluster's Sobel input) and config.model.feature (the MIM methods' 'cls' / 'mean'); ImageNet's mean/std for an
  imported backbone."""
  from jssl import convert
  if os.path.isfile(os.path.join(path, 'config.json')) and not os.path.isfile(
      os.path.join(path, convert.BACKBONE_JSON)):
    config = convert.load_config(path)
    return {'mean': tuple(config.data.get('mean', IMAGENET_MEAN)), 'std': tuple(config.data.get('std', IMAGENET_STD)),
            'with_sobel': bool(config.model.get('with_sobel', False)), 'feature': config.model.get('feature', None)}
  return {'mean': IMAGENET_MEAN, 'std': IMAGENET_STD, 'with_sobel': False, 'feature': None}


def stage_extractor(name, kwargs, stages=None, pool=None, dtype='float32', mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    with_sobel=False, default_feature=None, mesh=None):
  """(stages, extractor): `extractor(variables, uint8 images, labels) -> ({stage: [B, D]}, labels)`, jitted once
  (knn.make_extractor), for knn.extract_features. `stages`: 'all', 'feat1,feat5', a sequence, or None for the last
  stage (ViT: `default_feature` or 'cls'); `pool`: None for the backbone's default ('specified' for ResNet)."""
  if dtype not in DTYPES:
    raise ValueError(f"dtype: unknown '{dtype}'; valid: {', '.join(DTYPES)}")
  module = build_backbone(name, dtype=DTYPES[dtype], **dict(kwargs or {}))
  available = backbone_stages(module)
  default = (default_feature or 'cls',) if isinstance(module, VisionTransformer) else available[-1:]
  if default[0] not in available:
    default = available[-1:]
  stages = parse_stages(stages, available, default)
  fn = stage_fn(module, stages, pool or default_pool(module))
  mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
  normalize = lambda x: (x.astype(jnp.float32) / 255. - mean) / std
  extract = (lambda variables, x: fn(variables, sobel(x))) if with_sobel else fn
  return stages, knn.make_extractor(extract, normalize, mesh or sharding.make_mesh())


def feature_dims(extractor, variables, image_shape, labels_shape=()) -> dict:
  """{stage: D} of `extractor` for images of `image_shape` [H, W, C] (nothing is computed); a stage whose pooling
  leaves nothing (MMSelfSup's 'specified' pools need 224-px maps) is a one-line error."""
  images = jax.ShapeDtypeStruct((1, *image_shape), jnp.uint8)
  labels = jax.ShapeDtypeStruct((1, *labels_shape), jnp.int32)
  shapes = jax.eval_shape(extractor, variables, images, labels)[0]
  for stage, shape in shapes.items():
    if shape.shape[-1] == 0:
      raise ValueError(f'stage {stage}: the pooling leaves no features at {image_shape[0]}x{image_shape[1]} px '
                       "(the 'specified' pools are ResNet-50's at 224 px); use pool 'adaptive' or 'avg'")
  return {stage: int(shape.shape[-1]) for stage, shape in shapes.items()}


def extract_pretrained(pretrained, sources, transform, stages=None, pool=None, batch_size=64, dtype='float32',
                       step=None, mesh=None, preprocessing=None):
  """({split: {stage: [N, D] float32}}, {split: labels}, stages) for every record of each source in `sources`
  ({split: source}), through one compiled program.

  `pretrained`: a jssl workdir or an imported backbone directory (python -m jssl.convert), or a (name, kwargs,
  variables) tuple; `preprocessing` overrides the {'mean', 'std', 'with_sobel', 'feature'} read from the path.
  `transform` maps a record to its eval image (transforms.ResizeCenterCrop / ResizeSquash)."""
  from jssl import convert
  if isinstance(pretrained, (str, os.PathLike)):
    pre = pretrained_preprocessing(os.fspath(pretrained))
    name, kwargs, variables = convert.load_pretrained_backbone(os.fspath(pretrained), step)
  else:
    pre = {'mean': IMAGENET_MEAN, 'std': IMAGENET_STD, 'with_sobel': False, 'feature': None}
    name, kwargs, variables = pretrained
  pre.update(preprocessing or {})
  mesh = mesh or sharding.make_mesh()
  if batch_size % mesh.size:
    raise ValueError(f'batch_size {batch_size} is not a multiple of the {mesh.size} devices')
  stages, extractor = stage_extractor(name, kwargs, stages, pool, dtype, pre['mean'], pre['std'], pre['with_sobel'],
                                      pre['feature'], mesh)
  variables = jax.device_put(variables, sharding.replicated(mesh))
  features, labels = {}, {}
  for split, source in sources.items():
    first = transform.map(source[0])
    feature_dims(extractor, variables, first['image'].shape, np.shape(first['label']))
    features[split], labels[split] = knn.extract_features(extractor, variables, source, transform, batch_size, mesh)
  return features, labels, stages
