"""jssl.pretrained: pretrained backbones read without a Trainer (a workdir's backbone arrays alone, whatever the
method keeps besides), and loaded only into a config of their architecture, refused in one line otherwise."""
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from jssl import checkpoint, pretrained
from jssl.config import load_config_file
from jssl.convert.errors import ConversionError
from jssl.train.state import TrainState
from tests.conftest import run_python

VIT = {'img_size': 32, 'patch_size': 8, 'embed_dim': 32, 'depth': 1, 'num_heads': 2, 'pos_embed': 'sincos'}


def random_variables(name, kwargs, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), pretrained.backbone_template(name, kwargs))


def backbone_config(name, kwargs, path, strict=True):
  return ml_collections.ConfigDict({'backbone': {'name': name, 'kwargs': kwargs},
                                    'init': {'backbone': str(path), 'strict': strict}})


def fresh_state(name, kwargs):
  template = pretrained.backbone_template(name, kwargs)
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
  return TrainState(step=0, params={'backbone': zeros['params']}, opt_state=None,
                    model_state={'batch_stats': {'backbone': zeros['batch_stats']}} if 'batch_stats' in zeros else {},
                    method_state={}, rng=None)


def test_another_architecture_is_refused_naming_the_kwarg_and_its_value(tmp_path):
  """A MoCo v3 sin-cos table (its layout, not its shape, differs from MAE's) and another number of heads (the same
  weights' shapes) used to load silently; another width failed late, with a shape. Each is one line naming the
  config field and the value to set, from the metadata alone (check_pretrained) and again on loading."""
  path = tmp_path / 'vit'
  theirs = {**VIT, 'sincos_layout': 'mocov3'}
  pretrained.save_imported_backbone(str(path), 'vit_tiny', theirs, random_variables('vit_tiny', theirs))
  for ours, line in [
      ({**VIT, 'sincos_layout': 'mae'}, f"config.init.backbone: {path} holds a vit_tiny with sincos_layout='mocov3' "
                                        "(config.backbone.kwargs.sincos_layout: 'mae'); valid: "
                                        '--config.backbone.kwargs.sincos_layout=mocov3'),
      ({**theirs, 'num_heads': 4}, f'config.init.backbone: {path} holds a vit_tiny with num_heads=2 '
       '(config.backbone.kwargs.num_heads: 4); valid: --config.backbone.kwargs.num_heads=2'),
      ({**theirs, 'embed_dim': 64, 'patch_size': 16}, f'config.init.backbone: {path} holds a vit_tiny with '
       'patch_size=8 (config.backbone.kwargs.patch_size: 16), embed_dim=32 (config.backbone.kwargs.embed_dim: 64); '
       'valid: --config.backbone.kwargs.patch_size=8 --config.backbone.kwargs.embed_dim=32'),
      # a field the config does not have (its default is 'mae'): no override can add it; an empty name can
      ({**VIT, 'num_heads': 4}, f"config.init.backbone: {path} holds a vit_tiny with num_heads=2 "
       "(config.backbone.kwargs.num_heads: 4), sincos_layout='mocov3' (config.backbone.kwargs.sincos_layout: 'mae'); "
       'valid: --config.backbone.name= --config.backbone.kwargs.num_heads=2 (an empty name takes '
       "config.init.backbone's architecture, config.backbone.kwargs laid over it)")]:
    config = backbone_config('vit_tiny', ours, path)
    with pytest.raises(ValueError) as e:
      pretrained.check_pretrained(config, str(path))
    assert str(e.value) == line
    with pytest.raises(ValueError) as e:
      pretrained.load_backbone(config, fresh_state('vit_tiny', ours), str(path))
    assert str(e.value) == line

  # what leaves the weights' computation as it is may differ: a fine-tune's drop path, what it outputs
  config = backbone_config('vit_tiny', {**theirs, 'drop_path_rate': 0.1, 'output': 'mean'}, path)
  pretrained.check_pretrained(config, str(path))
  state = pretrained.load_backbone(config, fresh_state('vit_tiny', theirs), str(path))
  jax.tree.map(np.testing.assert_array_equal, state.params['backbone'],
               pretrained.load_imported_backbone(str(path))[2]['params'])


def test_a_changed_width_is_refused_before_anything_is_built(tmp_path):
  """python -m jssl.main: SimCLR started from an imported num_filters=8 ResNet-18 with num_filters=16 (which used to
  fail with a shape once the state was built and compiled, the workdir created) ends with one line and exit code 2,
  and writes nothing."""
  path = tmp_path / 'r18'
  pretrained.save_imported_backbone(str(path), 'resnet18', {'num_filters': 8},
                                    random_variables('resnet18', {'num_filters': 8}))
  work = tmp_path / 'simclr'
  proc = run_python(['-m', 'jssl.main', '--config=configs/simclr.py:demo', f'--workdir={work}',
                     f'--config.init.backbone={path}', '--config.backbone.kwargs.num_filters=16'], check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.splitlines() == [f'jssl: error: config.init.backbone: {path} holds a resnet18 with num_filters=8 '
                                      '(config.backbone.kwargs.num_filters: 16); valid: '
                                      '--config.backbone.kwargs.num_filters=8'], proc.stderr[-3000:]
  assert not work.exists()


def save_workdir(path, spec, num_records, step=2):
  """A workdir of `spec` sized for `num_records` images (memory banks, cluster labels), random backbone, zeros
  elsewhere, saved as training saves it; returns (config, state)."""
  from jssl.train.loop import Trainer
  config = load_config_file(spec)
  abstract = Trainer(config, None, num_records=num_records).abstract_state
  state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  variables = random_variables(config.backbone.name, config.backbone.kwargs.to_dict())
  state = state.replace(step=np.int32(step), params={**state.params, 'backbone': variables['params']},
                        model_state={'batch_stats': {**state.model_state['batch_stats'],
                                                     'backbone': variables['batch_stats']}})
  os.makedirs(path)
  (path / 'config.json').write_text(config.to_json_best_effort(indent=2))
  manager = checkpoint.make_manager(str(path), async_save=False)
  checkpoint.save(manager, step, state, force=True)
  manager.close()
  return config, state


def test_a_workdir_backbone_is_read_alone_whatever_the_method_keeps(tmp_path):
  """An ODC workdir (30 clusters, labels and features per training image: nothing a config alone can size, and
  which a whole TrainState's restore built with one record could not even build) gives its backbone and its model
  as saved; the backbone's arrays are all that is read and checked: a damaged optimizer state does not stop it."""
  config, state = save_workdir(tmp_path / 'odc', 'configs/odc.py:demo', num_records=40)
  name, kwargs, variables = pretrained.load_pretrained_backbone(str(tmp_path / 'odc'))
  assert (name, kwargs) == (config.backbone.name, config.backbone.kwargs.to_dict())
  jax.tree.map(np.testing.assert_array_equal, variables, pretrained.backbone_subtree(state))
  _, model, step = pretrained.load_workdir(str(tmp_path / 'odc'))
  assert step == 2 and model.opt_state is None and model.method_state['memory']['labels'].shape == (40,)
  jax.tree.map(np.testing.assert_array_equal, model.params, state.params)

  checksums = next((tmp_path / 'odc' / 'checkpoints' / '2' / 'checksums').iterdir())
  saved = json.loads(checksums.read_text())
  momentum = next(k for k in saved['arrays'] if k.startswith('opt_state/'))
  saved['arrays'][momentum] = '0' * 16  # as if that array had been damaged
  checksums.write_text(json.dumps(saved))
  jax.tree.map(np.testing.assert_array_equal, pretrained.load_pretrained_backbone(str(tmp_path / 'odc'))[2], variables)
  with pytest.raises(checkpoint.CheckpointError):
    checkpoint.restore_params(str(tmp_path / 'odc'), jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state))


def test_a_backbone_unlike_its_config_json_and_a_damaged_imported_backbone_are_one_line(tmp_path, capsys):
  config, _ = save_workdir(tmp_path / 'simclr', 'configs/simclr.py:demo', num_records=64)
  described = json.loads((tmp_path / 'simclr' / 'config.json').read_text())
  described['backbone']['kwargs']['num_filters'] = 16
  (tmp_path / 'simclr' / 'config.json').write_text(json.dumps(described))
  with pytest.raises(ConversionError, match=r"simclr: the backbone of checkpoint 2 is not the resnet18 "
                                            r"\{'num_filters': 16\} its config.json describes: batch_stats/bn1/mean "
                                            r'\(32,\) \(config.json: \(16,\)\), .* and 97 more$'):
    pretrained.load_pretrained_backbone(str(tmp_path / 'simclr'))

  path = tmp_path / 'r18'
  pretrained.save_imported_backbone(str(path), 'resnet18', {'num_filters': 8},
                                    random_variables('resnet18', {'num_filters': 8}))
  data = max((path / 'variables').rglob('d/*'), key=lambda p: p.stat().st_size)
  data.write_bytes(data.read_bytes()[:100])
  with pytest.raises(ConversionError) as e:
    pretrained.load_imported_backbone(str(path))
  assert str(e.value).startswith(f'{path}/variables: could not be restored (') and '\n' not in str(e.value)
  assert str(e.value).endswith(f"), as the resnet18 {{'num_filters': 8}} of {path}/backbone.json")
  assert capsys.readouterr().err == ''


def test_a_simmim_workdir_backbone_leaves_its_mask_token_behind(tmp_path, capsys, monkeypatch):
  """SimMIM's Swin keeps the mask token among its backbone params; it belongs to the pretraining, not to the backbone
  an evaluator builds. A strict load from the workdir used to fail ('do not have the state's backbone structure');
  now every leaf of the evaluator's backbone comes from the checkpoint and the token is named as unused.
  extract_backbone leaves it out of the directory (whose backbone.json describes its variables exactly); a file that
  lacks a leaf of the backbone is refused under strict and kept at its fresh init otherwise."""
  from jssl.tools.extract_backbone import extract_backbone
  from jssl.train.loop import Trainer
  config = load_config_file('configs/simmim.py:demo')
  abstract = Trainer(config, None, num_records=16).abstract_state
  rng = np.random.default_rng(0)
  state = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), abstract).replace(step=np.int32(2))
  work = tmp_path / 'simmim'
  os.makedirs(work)
  (work / 'config.json').write_text(config.to_json_best_effort(indent=2))
  manager = checkpoint.make_manager(str(work), async_save=False)
  checkpoint.save(manager, 2, state, force=True)
  manager.close()
  name, kwargs = config.backbone.name, config.backbone.kwargs.to_dict()
  expected = {k: v for k, v in state.params['backbone'].items() if k != 'mask_token'}

  loaded = pretrained.load_backbone(backbone_config(name, kwargs, work), fresh_state(name, kwargs), str(work))
  assert jax.tree.structure(loaded.params['backbone']) == jax.tree.structure(expected)
  jax.tree.map(np.testing.assert_array_equal, loaded.params['backbone'], expected)
  assert capsys.readouterr().out == f'backbone initialized from {work}; in it, unused: params/mask_token\n'

  assert extract_backbone(str(work), str(tmp_path / 'bb'))[2] == ['params/mask_token']
  assert json.loads((tmp_path / 'bb' / 'backbone.json').read_text())['source']['left_out'] == ['params/mask_token']
  _, _, variables = pretrained.load_imported_backbone(str(tmp_path / 'bb'))
  jax.tree.map(np.testing.assert_array_equal, variables['params'], expected)

  # a file that holds less than the backbone (no format jssl writes does: a backbone directory that lacks a leaf of
  # its backbone.json is refused on reading, as above; this is the last line of defence for what other readers give)
  partial = {'params': {k: v for k, v in expected.items() if k != 'norm'}}
  monkeypatch.setattr(pretrained, 'load_pretrained_backbone', lambda path: (name, kwargs, partial))
  with pytest.raises(ConversionError, match=r'^config.init.backbone: partial lacks params/norm/\w+, '
                                            r'params/norm/\w+ of the swin_tiny backbone; --config.init.strict=False'):
    pretrained.load_backbone(backbone_config(name, kwargs, 'partial'), fresh_state(name, kwargs), 'partial')
  fresh = fresh_state(name, kwargs)
  kept = pretrained.load_backbone(backbone_config(name, kwargs, 'partial', strict=False), fresh, 'partial')
  jax.tree.map(np.testing.assert_array_equal, kept.params['backbone']['norm'], fresh.params['backbone']['norm'])
  jax.tree.map(np.testing.assert_array_equal, kept.params['backbone']['patch_embed'], expected['patch_embed'])
