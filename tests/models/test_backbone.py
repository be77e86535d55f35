"""The backbone interface (jssl/models/backbone.py) of every registered family: `feature_info` says the channels,
strides and kinds of the outputs that `outputs=names` gives, those outputs are the full forward's, and the layer
groups of layer-wise lr decay give every parameter an id."""
import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest

from jssl import optim
from jssl.evaluate import features
from jssl.models import FAMILIES, build_backbone
from jssl.models.backbone import KINDS

# one small module per family
SMALL = {
    'resnet': ('resnet18', {'num_filters': 4}, 32),
    'vit': ('vit_tiny', {'img_size': 32, 'patch_size': 8, 'embed_dim': 16, 'depth': 2, 'num_heads': 2}, 32),
    'swin': ('swin_tiny', {'img_size': 32, 'embed_dim': 8, 'depths': (2, 1, 1), 'num_heads': (1, 2, 2),
                           'window_size': 2, 'out_indices': (0, 1, 2)}, 32),
}


def full_forward(family, module, variables, x):
  """{output name: array} from the family's ordinary calls (not `outputs=`)."""
  names = [o.name for o in module.feature_info()]
  if family == 'resnet':
    return dict(zip(names, jax.jit(module.clone(out_indices=range(len(names))).apply)(variables, x)))
  if family == 'swin':
    return dict(zip(names, jax.jit(module.apply)(variables, x)))
  # ViT: cls / mean as its `output`s; block k's tokens from the first k blocks alone, without the final norm
  params = variables['params']
  outs = {name: module.clone(output=name).apply(variables, x) for name in ('cls', 'mean')}
  for k in range(1, module.depth + 1):
    first = {n: p for n, p in params.items() if not n.startswith('blocks_') or int(n.split('_')[1]) < k}
    outs[f'block{k}'] = module.clone(depth=k, final_norm=False).apply({'params': first}, x)
  tokens = module.clone(output='tokens').apply(variables, x)  # the last block's tokens, then the final norm
  np.testing.assert_allclose(nn.LayerNorm(epsilon=1e-6).apply({'params': params['norm']}, outs[f'block{module.depth}']),
                             tokens, rtol=1e-5, atol=1e-6)
  return outs


def test_every_family_has_a_small_case():
  assert sorted(SMALL) == sorted(FAMILIES)


@pytest.mark.parametrize('family', sorted(SMALL))
def test_feature_info_says_what_the_outputs_are(family):
  name, kwargs, size = SMALL[family]
  module = build_backbone(name, **kwargs)
  assert module.family == family and FAMILIES[family] is type(module)
  info = module.feature_info()
  names = [o.name for o in info]
  assert len(set(names)) == len(names) and {o.kind for o in info} <= set(KINDS)
  assert [o.stride for o in info] == sorted(o.stride for o in info)  # shallow to deep
  assert module.pools and set(module.pools) <= set(features.POOLS)
  assert module.default_feature in features.backbone_stages(module)

  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, size, size, 3)), jnp.float32)
  variables = jax.jit(module.init)(jax.random.key(0), x)
  outs = jax.jit(lambda v, x: module.apply(v, x, outputs=names))(variables, x)
  assert list(outs) == names
  for o in info:
    grid = -(-size // o.stride)
    shape = {'map': (2, grid, grid, o.channels), 'tokens': (2, 1 + grid * grid, o.channels),
             'vector': (2, o.channels)}[o.kind]
    assert outs[o.name].shape == shape, o
  reference = full_forward(family, module, variables, x)
  assert sorted(reference) == sorted(names)
  for n in names:
    np.testing.assert_allclose(outs[n], reference[n], rtol=1e-5, atol=1e-6, err_msg=n)
  some = names[::-2]  # any subset (jit returns a dict's keys sorted: callers look outputs up by name)
  assert sorted(jax.eval_shape(lambda v, x: module.apply(v, x, outputs=some), variables, x)) == sorted(some)
  with pytest.raises(ValueError, match=f"{type(module).__name__}: unknown output 'feat9'; valid: {names[0]}, "):
    jax.eval_shape(lambda v, x: module.apply(v, x, outputs=('feat9',)), variables, x)


@pytest.mark.parametrize('family', sorted(SMALL))
def test_layer_groups_cover_every_parameter(family):
  name, kwargs, size = SMALL[family]
  # mmpretrain numbers the layers of ResNet-50's depths, not ResNet-18's (test_resnet.py)
  module = build_backbone('resnet50' if family == 'resnet' else name, **kwargs)
  params = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))['params']
  ids, last = type(module).layer_ids(params)
  assert jax.tree.structure(ids) == jax.tree.structure(params)
  used = set(jax.tree.leaves(ids))
  # every id from the stem (0) to the deepest layer is some parameter's; L + 1 is the head's (ViT, Swin: the norms')
  assert set(range(last)) <= used <= set(range(last + 1))
  assert all(isinstance(i, int) for i in used)
  assert optim.layer_ids(params, family) == (ids, last)  # config.optimizer.layer_decay_kind names the family
