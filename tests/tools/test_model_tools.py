"""python -m jssl.tools.param_count / publish_model / extract_backbone: counts equal torch's sum(p.numel()) of the
same architecture in torchvision / timm and hand counts; a published file and an extracted backbone load back to
the workdir's backbone exactly; damaged inputs end in one line on stderr and exit code 2."""
import hashlib
import json
import os
import re

import jax
import numpy as np
import pytest
import timm
import torch
import torchvision

from jssl import pretrained
from jssl.config import load_config_file
from jssl.convert import published
from jssl.convert.errors import ConversionError
from jssl.tools import extract_backbone, param_count, publish_model
from tests.conftest import run_cli
from tests.convert.test_convert_cli import make_workdir


def assert_one_line_error(code, stderr, prog, *needles):
  assert code == 2, (code, stderr[-3000:])
  lines = [l for l in stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith(f'{prog}: error:'), stderr[-3000:]
  for needle in needles:
    assert needle in lines[0], lines[0]


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return make_workdir(tmp_path_factory.mktemp('tools') / 'workdir', num_filters=8, step=3)


def rows_by_name(rows):
  return {r['module']: (r['trainable'], r['non_trainable']) for r in rows}


def torch_params(module):
  return sum(p.numel() for p in module.parameters())


def torch_bn_statistics(module):
  return sum(b.numel() for name, b in module.named_buffers() if name.endswith(('running_mean', 'running_var')))


# --- param_count ------------------------------------------------------------------------------------------------
def test_param_count_equals_torchvision_and_timm():
  """resnet18 (torchvision) and vit_small / swin_tiny (timm) without classifier: params = sum(p.numel()), BN
  statistics = the running_mean / running_var buffers; per stage and per block too."""
  resnet = torchvision.models.resnet18()
  rows = rows_by_name(param_count.module_rows('backbone', param_count.sizes(pretrained.backbone_template('resnet18'))))
  assert rows['backbone'] == (torch_params(resnet) - torch_params(resnet.fc), torch_bn_statistics(resnet))
  assert rows['backbone'] == (11_176_512, 9_600)
  for stage in range(1, 5):
    layer = getattr(resnet, f'layer{stage}')
    [label] = [k for k in rows if k.startswith(f'layer{stage}_0..1 (2')]
    assert rows[label] == (torch_params(layer), torch_bn_statistics(layer))
  assert 'layer1_0..1 (2 x 74,240)' in rows  # identical blocks: their size is shown (73,984 + 256 BN statistics)
  assert rows['conv1'] == (3 * 64 * 7 * 7, 0) and rows['bn1'] == (2 * 64, 2 * 64)  # by hand

  vit = timm.create_model('vit_small_patch16_224', num_classes=0)
  rows = rows_by_name(param_count.module_rows('backbone', param_count.sizes(
      pretrained.backbone_template('vit_small', {'patch_size': 16}))))
  block = torch_params(vit.blocks[0])
  assert block == 12 * 384 ** 2 + 13 * 384  # qkv, proj, 2 MLP layers (4x), 2 LayerNorms, by hand
  assert rows['backbone'] == (torch_params(vit), 0) == (21_665_664, 0)
  assert rows[f'blocks_0..11 (12 x {block:,})'] == (12 * block, 0)
  assert rows['pos_embed'] == (197 * 384, 0) and rows['patch_embed'] == (torch_params(vit.patch_embed), 0)

  swin = timm.create_model('swin_tiny_patch4_window7_224', num_classes=0)
  rows = rows_by_name(param_count.module_rows('backbone', param_count.sizes(pretrained.backbone_template('swin_tiny'))))
  assert rows['backbone'] == (torch_params(swin), 0) == (27_519_354, 0)
  assert {'layers_0', 'layers_1', 'layers_2', 'layers_3'} <= set(rows)  # Swin's 4 stages keep a row each


def test_param_count_of_configs_by_hand():
  """Configs are built abstractly: ViT-H/14 in seconds. MoCo v3's frozen patch embedding is non-trainable, NPID's
  memory bank (1,281,167 x 128) is method state outside the total."""
  code, out, err = run_cli(param_count.main, 'configs/mae.py:vit_h')
  assert code == 0, err
  d, blocks = 1280, 32
  block = 12 * d * d + 13 * d
  patch_embed = 14 * 14 * 3 * d + d
  assert re.search(rf'blocks_0\.\.31 \(32 x {block:,}\) +{blocks * block:,} +0 +{blocks * block:,}', out), out
  backbone = blocks * block + patch_embed + 2 * d + d  # + final LayerNorm + cls token (sin-cos pos_embed: fixed)
  assert re.search(rf'\nbackbone +{backbone:,} +0 +{backbone:,}\n', out), out
  assert backbone == 630_435_840

  _, modules, method_state, frozen = param_count.count('configs/mocov3.py')
  text, rows = param_count.table('mocov3', modules, method_state, frozen)
  backbone = [r for r in rows if r['module'] == 'patch_embed']
  assert frozen == ('patch_embed',) and len(backbone) == 1
  assert (backbone[0]['trainable'], backbone[0]['non_trainable']) == (0, 16 * 16 * 3 * 768 + 768)
  assert 'frozen by config.optimizer.frozen_names (patch_embed)' in text

  _, modules, method_state, _ = param_count.count('configs/npid.py')
  text, rows = param_count.table('npid', modules, method_state)
  memory = next(r for r in rows if r['module'] == 'memory')
  assert (memory['trainable'], memory['non_trainable']) == (0, 1_281_167 * 128)
  total = next(r for r in rows if r['module'] == 'total')
  assert total['trainable'] == 23_508_032 + 2048 * 128 + 128  # ResNet-50 without fc + the 128-d linear neck


def test_param_count_of_workdir_published_and_imported_agree(workdir, tmp_path):
  """A workdir (checkpoint shapes), its published file, its extracted backbone and its config give the same
  counts; the SimCLR neck by hand: fc 64->32->128 without biases, BatchNorm after each."""
  code, out, err = run_cli(param_count.main, workdir, '--json', tmp_path / 'rows.json')
  assert code == 0, err
  rows = rows_by_name(json.loads((tmp_path / 'rows.json').read_text())['rows'])
  assert rows['neck'] == (64 * 32 + 32 * 128 + 2 * 32 + 2 * 128, 2 * 32 + 2 * 128)
  _, state, _ = pretrained.load_workdir(str(workdir))
  assert sum(rows['backbone']) == sum(x.size for x in jax.tree.leaves(pretrained.backbone_variables(state)))

  config = load_config_file('configs/simclr.py:demo')
  config.backbone.kwargs.num_filters = 8
  config.model.neck_hid_channels = 32
  modules, _ = param_count.from_config(config, num_records=1)
  assert rows_by_name(param_count.table('', modules, {})[1]) == rows

  published, _, _ = publish_model.publish(str(workdir), str(tmp_path / 'r18'), whole_model=True)
  _, out, _ = run_cli(param_count.main, published, '--json', tmp_path / 'published.json')
  assert rows_by_name(json.loads((tmp_path / 'published.json').read_text())['rows']) == rows
  extract_backbone.extract_backbone(str(workdir), str(tmp_path / 'extracted'))
  run_cli(param_count.main, tmp_path / 'extracted', '--json', tmp_path / 'extracted.json')
  extracted = rows_by_name(json.loads((tmp_path / 'extracted.json').read_text())['rows'])
  assert extracted['backbone'] == rows['backbone'] and 'neck' not in extracted


def test_param_count_bad_inputs(tmp_path):
  code, _, err = run_cli(param_count.main, 'configs/nope.py')
  assert_one_line_error(code, err, 'jssl.tools.param_count', 'configs/nope.py', 'neither a config file')
  code, _, err = run_cli(param_count.main, 'configs/mae.py:vit_xl')
  assert_one_line_error(code, err, 'jssl.tools.param_count', "unknown variant 'vit_xl'")
  (tmp_path / 'empty').mkdir()
  code, _, err = run_cli(param_count.main, tmp_path / 'empty')
  assert_one_line_error(code, err, 'jssl.tools.param_count', 'no config.json')


# --- publish_model ----------------------------------------------------------------------------------------------
def test_publish_round_trip_and_hash(workdir, tmp_path):
  config, state, _ = pretrained.load_workdir(str(workdir))
  code, out, err = run_cli(publish_model.main, workdir, tmp_path / 'simclr_r18.safetensors')
  assert code == 0, err
  [name] = os.listdir(tmp_path)
  match = re.fullmatch(r'simclr_r18-([0-9a-f]{8})\.safetensors', name)
  assert match, name
  path = str(tmp_path / name)
  assert hashlib.sha256(open(path, 'rb').read()).hexdigest()[:8] == match.group(1)
  assert f'wrote {path}: backbone of {workdir} at step 3' in out

  assert pretrained.pretrained_arch(path) == ('resnet18', {'num_filters': 8})
  loaded_name, kwargs, variables = pretrained.load_pretrained_backbone(path)
  assert (loaded_name, kwargs) == ('resnet18', {'num_filters': 8})
  expected = pretrained.backbone_variables(state)
  assert jax.tree.structure(variables) == jax.tree.structure(expected)
  jax.tree.map(np.testing.assert_array_equal, variables, expected)

  published_config, modules = published.read_published(path)
  assert list(modules) == ['backbone'] and published_config.to_dict() == config.to_dict()

  # --whole_model: the neck too, nothing training-only; config.init.backbone starts a run from the file
  whole, step, _ = publish_model.publish(str(workdir), str(tmp_path / 'whole'), whole_model=True)
  assert step == 3
  _, modules = published.read_published(whole)
  assert sorted(modules) == ['backbone', 'neck']
  jax.tree.map(np.testing.assert_array_equal, modules['neck'],
               {'params': state.params['neck'], 'batch_stats': state.model_state['batch_stats']['neck']})
  from jssl.train.loop import Trainer
  trainer = Trainer(config, None, num_records=64)
  fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), trainer.abstract_state)
  started = pretrained.load_backbone(config, fresh, whole)
  jax.tree.map(np.testing.assert_array_equal, pretrained.backbone_variables(started), expected)


def test_published_file_damaged_is_one_line(workdir, tmp_path):
  path, _, _ = publish_model.publish(str(workdir), str(tmp_path / 'r18'))
  data = open(path, 'rb').read()
  truncated = tmp_path / 'truncated.safetensors'  # no hash in the name: the format itself must notice
  truncated.write_bytes(data[:len(data) // 2])
  with pytest.raises(ConversionError, match=f'{truncated}: cannot read'):
    pretrained.load_pretrained_backbone(str(truncated))
  code, _, err = run_cli(extract_backbone.main, truncated, tmp_path / 'dst')
  assert_one_line_error(code, err, 'jssl.tools.extract_backbone', str(truncated), 'truncated')
  assert not (tmp_path / 'dst').exists()
  code, _, err = run_cli(param_count.main, truncated)
  assert_one_line_error(code, err, 'jssl.tools.param_count', str(truncated))

  flipped = bytearray(data)  # a changed value (the header still parses): the hash in the name says so
  flipped[-3] ^= 0xFF
  open(path, 'wb').write(bytes(flipped))
  with pytest.raises(ConversionError, match=r'sha256 does not start with [0-9a-f]{8} as the name says'):
    pretrained.load_pretrained_backbone(path)

  torch.save({'conv1.weight': torch.zeros(1)}, tmp_path / 'r18.pth')
  with pytest.raises(ConversionError, match='not a published jssl model.*python -m jssl.convert'):
    pretrained.pretrained_arch(str(tmp_path / 'r18.pth'))
  code, _, err = run_cli(publish_model.main, tmp_path / 'nope', tmp_path / 'out')
  assert_one_line_error(code, err, 'jssl.tools.publish_model', 'no config.json')
  code, _, err = run_cli(publish_model.main, workdir, tmp_path / 'missing_dir' / 'out')
  assert_one_line_error(code, err, 'jssl.tools.publish_model', 'missing_dir', 'does not exist')


# --- extract_backbone -------------------------------------------------------------------------------------------
def test_extract_backbone_round_trip(workdir, tmp_path):
  code, out, err = run_cli(extract_backbone.main, workdir, tmp_path / 'r18')
  assert code == 0, err
  assert f'--config.init.backbone={tmp_path / "r18"}' in out
  assert sorted(os.listdir(tmp_path / 'r18')) == ['backbone.json', 'variables']
  meta = json.loads((tmp_path / 'r18' / 'backbone.json').read_text())
  assert meta['source'] == {'extracted_from': str(workdir), 'step': 3}
  name, kwargs, variables = pretrained.load_imported_backbone(str(tmp_path / 'r18'))
  assert (name, kwargs) == ('resnet18', {'num_filters': 8})
  _, state, _ = pretrained.load_workdir(str(workdir))
  jax.tree.map(np.testing.assert_array_equal, variables, pretrained.backbone_variables(state))

  # from a published file; a non-empty destination is refused before anything is read
  published, _, _ = publish_model.publish(str(workdir), str(tmp_path / 'pub'))
  assert run_cli(extract_backbone.main, published, tmp_path / 'from_published')[0] == 0
  jax.tree.map(np.testing.assert_array_equal, pretrained.load_imported_backbone(str(tmp_path / 'from_published'))[2],
               variables)
  code, _, err = run_cli(extract_backbone.main, workdir, tmp_path / 'r18')
  assert_one_line_error(code, err, 'jssl.tools.extract_backbone', 'r18', 'not an empty directory')
  code, _, err = run_cli(extract_backbone.main, published, tmp_path / 'x', '--step=3')
  assert_one_line_error(code, err, 'jssl.tools.extract_backbone', '--step is for a workdir')
