"""Per-stage features of a pretrained backbone for every record of a source, pooled as MMSelfSup's benchmarks pool
them (its feature extraction for the VOC07 SVM / low-shot SVM and t-SNE tools, MultiExtractProcess).

  features, labels, stages = extract_pretrained('workdirs/simclr', {'trainval': src1, 'test': src2},
                                                transform, stages='all')
  features['test']['feat5']   # [N, 8192] float32 for ResNet-50 at 224 px

Stages: the outputs of the backbone (its `feature_info`, jssl/models/backbone.py) that give one vector per image,
its maps pooled and its vectors as they are; named as MMSelfSup's FEATURE_LIST:
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
The default stage is the backbone's `default_feature` (the last stage; a ViT's 'cls'), the default pool the first
of its `pools`.

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
from jssl.models.backbone import Backbone, select
from jssl.models.heads import MultiPooling
from jssl.models.layers import sobel
from jssl.models.necks import global_avg_pool
from jssl.pretrained import BACKBONE_JSON, load_config, load_pretrained_backbone
from jssl.train import sharding

POOLS = ('specified', 'adaptive', 'avg')


def backbone_stages(module: Backbone) -> tuple:
  """The stage names a backbone module gives, shallow to deep: its map and vector outputs."""
  return tuple(o.name for o in module.feature_info() if o.kind in ('map', 'vector'))


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


def pool_output(x, output, pool):
  """[B, D] of one backbone output: a vector as it is; a map globally averaged ('avg') or by MMSelfSup's pool of
  ResNet-50's output `output.index` ('specified', 'adaptive'), flattened in torch's (C, H, W) order."""
  if output.kind == 'vector':
    return x
  if pool == 'avg':
    return global_avg_pool(x)
  x = MultiPooling(pool, (output.index,), 'resnet50').apply({}, [x])[0]
  return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)


def stage_fn(module: Backbone, stages, pool):
  """(variables, float images [B, H, W, C]) -> {stage: [B, D] float32} for `stages` of `backbone_stages(module)`."""
  if pool not in POOLS:
    raise ValueError(f"pool: unknown '{pool}'; valid: {', '.join(POOLS)}")
  if pool not in module.pools:
    raise ValueError(f"pool '{pool}' is MMSelfSup's ResNet pooling; a {type(module).__name__} takes pool "
                     f"{', '.join(repr(p) for p in module.pools)}")
  outputs = select(module, stages)

  def fn(variables, x):
    out = module.apply(variables, x, train=False, outputs=stages)
    return {o.name: pool_output(out[o.name], o, pool).astype(jnp.float32) for o in outputs}
  return fn


def pretrained_preprocessing(path) -> dict:
  """How the backbone at `path` saw its images: a jssl workdir's config.data mean/std and config.model.with_sobel
  (DeepCluster's Sobel input) and config.model.feature (the MIM methods' 'cls' / 'mean'); ImageNet's mean/std for an
  imported backbone."""
  if os.path.isfile(os.path.join(path, 'config.json')) and not os.path.isfile(os.path.join(path, BACKBONE_JSON)):
    config = load_config(path)
    return {'mean': tuple(config.data.get('mean', IMAGENET_MEAN)), 'std': tuple(config.data.get('std', IMAGENET_STD)),
            'with_sobel': bool(config.model.get('with_sobel', False)), 'feature': config.model.get('feature', None)}
  return {'mean': IMAGENET_MEAN, 'std': IMAGENET_STD, 'with_sobel': False, 'feature': None}


def stage_extractor(name, kwargs, stages=None, pool=None, dtype='float32', mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    with_sobel=False, default_feature=None, mesh=None):
  """(stages, extractor): `extractor(variables, uint8 images, labels) -> ({stage: [B, D]}, labels)`, jitted once
  (knn.make_extractor), for knn.extract_features. `stages`: 'all', 'feat1,feat5', a sequence, or None for the last
  stage (`default_feature` where the backbone has it: a ViT method's config.model.feature; else the backbone's
  default_feature); `pool`: None for the backbone's default ('specified' for ResNet)."""
  if dtype not in DTYPES:
    raise ValueError(f"dtype: unknown '{dtype}'; valid: {', '.join(DTYPES)}")
  module = build_backbone(name, dtype=DTYPES[dtype], **dict(kwargs or {}))
  available = backbone_stages(module)
  default = (default_feature if default_feature in available else module.default_feature,)
  stages = parse_stages(stages, available, default)
  fn = stage_fn(module, stages, pool or module.pools[0])
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
  if isinstance(pretrained, (str, os.PathLike)):
    pre = pretrained_preprocessing(os.fspath(pretrained))
    name, kwargs, variables = load_pretrained_backbone(os.fspath(pretrained), step)
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
