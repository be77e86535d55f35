"""config.init.backbone: a fresh run starts from an imported backbone (e.g. released PyTorch weights)."""
import jax
import numpy as np
import pytest

from jssl import pretrained
from jssl.config import load_config_file
from jssl.train.loop import Trainer


def small_simclr():
  c = load_config_file('configs/simclr.py:demo')
  c.backbone.kwargs.num_filters = 8
  c.model.update({'neck_hid_channels': 16, 'neck_out_channels': 8})
  c.batch_size = 8
  return c


def test_load_backbone_replaces_params_and_bn_stats(tmp_path):
  c = small_simclr()
  template = pretrained.backbone_template('resnet18', {'num_filters': 8})
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), template)
  pretrained.save_imported_backbone(str(tmp_path / 'r18'), 'resnet18', {'num_filters': 8}, variables)
  trainer = Trainer(c, None, num_records=64)
  state = trainer.abstract_state
  state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state)
  state = pretrained.load_backbone(c, state, str(tmp_path / 'r18'))
  for a, b in zip(jax.tree.leaves(state.params['backbone']), jax.tree.leaves(variables['params'])):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(state.model_state['batch_stats']['backbone']),
                  jax.tree.leaves(variables['batch_stats'])):
    np.testing.assert_array_equal(a, b)
  assert not np.asarray(jax.tree.leaves(state.params['neck'])[0]).any()  # the neck is untouched

  c.backbone.name = 'resnet34'
  with pytest.raises(ValueError, match="holds a 'resnet18' backbone but config.backbone.name is 'resnet34'"):
    pretrained.load_backbone(c, state, str(tmp_path / 'r18'))
