"""python -m jssl.convert and the jssl.convert API: workdir -> torchvision / mmpretrain / detectron2 / safetensors
files that PyTorch loads (and that compute the same features), files -> jssl backbones, and bad inputs that end
in one line on stderr, exit code 2, and nothing written."""
import json
import os
import pickle

import jax
import numpy as np
import pytest
import torch
import torchvision

from jssl import checkpoint
from jssl.config import load_config_file
from jssl.convert import import_backbone
from jssl.convert.__main__ import main as convert_main
from jssl.convert.errors import ConversionError
from jssl.methods.base import build_method
from jssl.models import build_backbone
from jssl.pretrained import backbone_variables, load_imported_backbone, load_workdir, replace_backbone
from jssl.train.loop import Trainer
from tests.conftest import NO_EVALS_ARGS, run_cli, run_python

SMALL = {'num_filters': 8}
SMALL_KWARGS = json.dumps(SMALL)


def make_workdir(path, num_filters=None, step=1, config_spec='configs/simclr.py:demo', backbone_kwargs=None,
                 backbone_name=None):
  """A jssl workdir (config.json + checkpoints/<step>) of a demo config without training or compiling: He-scaled
  random kernels, random biases, norms and BatchNorm statistics (so that every mapped tensor matters), zero
  optimizer state."""
  config = load_config_file(config_spec)
  if num_filters:  # SimCLR
    config.backbone.kwargs.num_filters = num_filters
    config.model.neck_hid_channels = 32
  config.backbone.name = backbone_name or config.backbone.name
  config.backbone.kwargs.update(backbone_kwargs or {})
  config.total_steps = step
  trainer = Trainer(config, str(path), num_records=1)
  rng = np.random.default_rng(0)
  def random_leaf(path, a):
    name, noise = path[-1].key, rng.standard_normal(a.shape).astype(np.float32)
    if name == 'kernel':
      return noise * np.float32(np.sqrt(2 / np.prod(a.shape[:-1])))
    if name in ('var', 'scale'):
      return np.float32(1.) + np.float32(0.3) * np.abs(noise)
    return np.float32(0.1) * noise  # bias, mean, cls_token, pos_embed, ...
  state = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), trainer.abstract_state)
  state = state.replace(step=np.int32(step),
                        params=jax.tree_util.tree_map_with_path(random_leaf, trainer.abstract_state.params),
                        model_state=jax.tree_util.tree_map_with_path(random_leaf, trainer.abstract_state.model_state))
  os.makedirs(path, exist_ok=True)
  (path / 'config.json').write_text(config.to_json_best_effort(indent=2))
  manager = checkpoint.make_manager(str(path), async_save=False)
  checkpoint.save(manager, step, state, force=True)
  manager.wait_until_finished()
  manager.close()
  return path


@pytest.fixture(scope='module')
def small_workdir(tmp_path_factory):
  return make_workdir(tmp_path_factory.mktemp('small') / 'workdir', num_filters=8, step=3)


def convert(*args):
  """In-process CLI: (exit code, stdout, stderr)."""
  return run_cli(convert_main, *args)


def assert_one_line_error(code, stderr, *needles):
  assert code == 2, (code, stderr[-3000:])
  lines = [l for l in stderr.splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith('jssl.convert: error:')]
  assert len(errors) == 1 and 'Traceback' not in stderr, stderr[-3000:]
  for needle in needles:
    assert needle in errors[0], errors[0]


def torchvision_resnet18_keys():
  return {k for k in torchvision.models.resnet18().state_dict() if not k.startswith('fc.')}


def random_torchvision_resnet(name, seed=0):
  """A torchvision ResNet with random weights and random BN statistics, in eval mode, classifier removed."""
  torch.manual_seed(seed)
  model = getattr(torchvision.models, name)()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
  return model.eval()


def torch_features(model, images_nhwc):
  model.fc = torch.nn.Identity()
  with torch.no_grad():
    return model(torch.from_numpy(np.asarray(images_nhwc).transpose(0, 3, 1, 2).copy())).numpy()


# --- export -----------------------------------------------------------------------------------------------------
def test_export_every_format_and_read_back(small_workdir, tmp_path):
  _, state, step = load_workdir(str(small_workdir))
  assert step == 3
  expected = jax.tree.map(np.asarray, backbone_variables(state))
  tv_keys = torchvision_resnet18_keys()

  proc = run_python(['-m', 'jssl.convert', str(small_workdir), str(tmp_path / 'r18.pth'), '--format=torchvision'])
  assert 'wrote' in proc.stdout and 'step 3' in proc.stdout
  torchvision_sd = torch.load(tmp_path / 'r18.pth', map_location='cpu', weights_only=True)
  assert set(torchvision_sd) == tv_keys
  assert tuple(torchvision_sd['conv1.weight'].shape) == (8, 3, 7, 7)  # OIHW
  np.testing.assert_array_equal(torchvision_sd['layer2.0.downsample.1.running_var'].numpy(),
                                expected['batch_stats']['layer2_0']['downsample_bn']['var'])

  for args in (['r18.pkl', '--format=detectron2'], ['r18_mm.pth', '--format=mmpretrain'],
               ['r18.safetensors', '--format=torchvision'], ['r18_mm.bin', '--format=mmpretrain',
                                                            '--file_format=safetensors']):
    code, out, err = convert(small_workdir, tmp_path / args[0], *args[1:])
    assert code == 0, err

  with open(tmp_path / 'r18.pkl', 'rb') as f:
    d2 = pickle.load(f)
  assert d2['__author__'] == 'jssl' and d2['matching_heuristics'] is True
  assert all(isinstance(v, np.ndarray) for v in d2['model'].values())
  assert {'stem.conv1.weight', 'stem.conv1.norm.running_mean', 'res2.0.conv1.weight',
          'res3.0.shortcut.weight', 'res5.1.conv2.norm.weight'} <= set(d2['model'])
  np.testing.assert_array_equal(d2['model']['res3.0.shortcut.weight'],
                                torchvision_sd['layer2.0.downsample.0.weight'].numpy())

  mm = torch.load(tmp_path / 'r18_mm.pth', map_location='cpu', weights_only=True)
  assert set(mm) == {'state_dict', 'meta'} and mm['meta']['step'] == 3
  assert set(mm['state_dict']) == {'backbone.' + k for k in tv_keys}  # mmpretrain ResNet: torchvision names

  import safetensors.numpy
  st = safetensors.numpy.load_file(tmp_path / 'r18.safetensors')
  assert set(st) == tv_keys
  np.testing.assert_array_equal(st['layer4.1.conv2.weight'], torchvision_sd['layer4.1.conv2.weight'].numpy())
  assert set(safetensors.numpy.load_file(tmp_path / 'r18_mm.bin')) == {'backbone.' + k for k in tv_keys}

  # every file imports back to the workdir's backbone exactly
  for name, fmt in [('r18.pth', 'torchvision'), ('r18.pkl', 'detectron2'), ('r18_mm.pth', 'mmpretrain'),
                    ('r18.safetensors', 'torchvision')]:
    imported = import_backbone(str(tmp_path / name), 'resnet18', fmt, SMALL)
    jax.tree.map(np.testing.assert_array_equal, imported, expected)
  assert sorted(os.listdir(tmp_path)) == ['r18.pkl', 'r18.pth', 'r18.safetensors', 'r18_mm.bin', 'r18_mm.pth']


def test_whole_model_export_adds_neck(small_workdir, tmp_path):
  code, _, err = convert(small_workdir, tmp_path / 'full.pth', '--format=mmpretrain', '--whole_model')
  assert code == 0, err
  sd = torch.load(tmp_path / 'full.pth', map_location='cpu', weights_only=True)['state_dict']
  neck = {k: tuple(v.shape) for k, v in sd.items() if k.startswith('neck.')}
  assert neck == {'neck.fc0.weight': (32, 64), 'neck.fc1.weight': (128, 32),  # Dense [in, out] -> [out, in]
                  'neck.bn0.weight': (32,), 'neck.bn0.bias': (32,), 'neck.bn0.running_mean': (32,),
                  'neck.bn0.running_var': (32,), 'neck.bn1.weight': (128,), 'neck.bn1.bias': (128,),
                  'neck.bn1.running_mean': (128,), 'neck.bn1.running_var': (128,)}
  assert set(sd) - set(neck) == {'backbone.' + k for k in torchvision_resnet18_keys()}
  # importing the whole-model file takes the backbone and ignores the neck
  code, out, err = convert(tmp_path / 'full.pth', tmp_path / 'imported', '--format=mmpretrain',
                           '--backbone=resnet18', f'--backbone_kwargs={SMALL_KWARGS}')
  assert code == 0, err
  assert 'ignored neck.' in out


def test_exported_resnet18_loads_strict_into_torchvision_with_same_features(tmp_path):
  workdir = make_workdir(tmp_path / 'workdir', num_filters=64)
  code, _, err = convert(workdir, tmp_path / 'r18.pth', '--format=torchvision')
  assert code == 0, err
  model = torchvision.models.resnet18()
  model.fc = torch.nn.Identity()
  model.load_state_dict(torch.load(tmp_path / 'r18.pth', map_location='cpu', weights_only=True), strict=True)
  config, state, _ = load_workdir(str(workdir))
  images = np.random.default_rng(1).standard_normal((4, 32, 32, 3)).astype(np.float32)
  ours = np.asarray(build_method(config).extract(state.params, state.model_state, images))
  np.testing.assert_allclose(ours, torch_features(model.eval(), images), rtol=1e-4, atol=1e-4)


# --- import -----------------------------------------------------------------------------------------------------
def test_import_torchvision_resnet18_via_cli_gives_same_features(tmp_path):
  model = random_torchvision_resnet('resnet18')
  torch.save(model.state_dict(), tmp_path / 'resnet18.pth')  # with the classifier fc.*: ignored
  proc = run_python(['-m', 'jssl.convert', str(tmp_path / 'resnet18.pth'), str(tmp_path / 'imported'),
                     '--format=torchvision', '--backbone=resnet18'])
  assert 'ignored fc.weight, fc.bias' in proc.stdout, proc.stdout
  assert sorted(os.listdir(tmp_path / 'imported')) == ['backbone.json', 'variables']
  name, kwargs, variables = load_imported_backbone(str(tmp_path / 'imported'))
  assert (name, kwargs) == ('resnet18', {})
  images = np.random.default_rng(2).standard_normal((4, 32, 32, 3)).astype(np.float32)
  ours = build_backbone(name, **kwargs).apply(variables, images, train=False)[-1].mean(axis=(1, 2))
  np.testing.assert_allclose(np.asarray(ours), torch_features(model, images), rtol=1e-4, atol=1e-4)


def test_in_memory_state_dicts_both_ways(tmp_path):
  """import_backbone takes a torch state dict (or a checkpoint dict holding one) as it takes the file, and
  to_state_dict gives back the same names and arrays, which torchvision loads strictly."""
  from jssl.convert import to_state_dict
  model = random_torchvision_resnet('resnet18', seed=3)
  torch.save(model.state_dict(), tmp_path / 'r18.pth')
  from_file, ignored_file = import_backbone(str(tmp_path / 'r18.pth'), 'resnet18', 'torchvision', return_ignored=True)
  from_memory, ignored = import_backbone(model.state_dict(), 'resnet18', 'torchvision', return_ignored=True)
  assert ignored == ignored_file == ['fc.weight', 'fc.bias']
  jax.tree.map(np.testing.assert_array_equal, from_memory, from_file)
  wrapped = import_backbone({'state_dict': {k: v.numpy() for k, v in model.state_dict().items()}}, 'resnet18',
                            'torchvision')
  jax.tree.map(np.testing.assert_array_equal, wrapped, from_file)
  state_dict = to_state_dict(from_memory, 'resnet18', 'torchvision')
  assert set(state_dict) == torchvision_resnet18_keys()
  for k, v in state_dict.items():
    np.testing.assert_array_equal(v, model.state_dict()[k].numpy(), err_msg=k)
  torchvision.models.resnet18(num_classes=1).load_state_dict(
      {**{k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()},
       'fc.weight': torch.zeros(1, 512), 'fc.bias': torch.zeros(1)}, strict=True)
  with pytest.raises(ConversionError, match=r"^the state dict: .*layer1"):
    import_backbone({k: v for k, v in model.state_dict().items() if not k.startswith('layer1.0.conv1')}, 'resnet18',
                    'torchvision')


def test_replace_backbone_puts_imported_weights_into_a_train_state(small_workdir, tmp_path):
  torch.manual_seed(0)
  config, state, _ = load_workdir(str(small_workdir))
  code, _, err = convert(small_workdir, tmp_path / 'r18.pth', '--format=torchvision')
  assert code == 0, err
  sd = torch.load(tmp_path / 'r18.pth', map_location='cpu', weights_only=True)
  sd = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
  torch.save(sd, tmp_path / 'shifted.pth')
  variables = import_backbone(str(tmp_path / 'shifted.pth'), 'resnet18', 'torchvision', SMALL)
  new = replace_backbone(state, variables)
  np.testing.assert_allclose(np.asarray(new.params['backbone']['conv1']['kernel']),
                             np.asarray(state.params['backbone']['conv1']['kernel']) + 1, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(new.model_state['batch_stats']['backbone']['bn1']['var']),
                             np.asarray(state.model_state['batch_stats']['backbone']['bn1']['var']) + 1, rtol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, new.params['neck'], state.params['neck'])


# --- ViT ---------------------------------------------------------------------------------------------------------
VIT = {'img_size': 32, 'patch_size': 4, 'depth': 2}


def timm_vit(seed=0, num_classes=0):
  import timm
  torch.manual_seed(seed)
  model = timm.models.vision_transformer.VisionTransformer(
      img_size=32, patch_size=4, embed_dim=192, depth=2, num_heads=3, num_classes=num_classes)
  with torch.no_grad():  # timm initializes LayerNorms and biases to constants: make them matter
    for name, p in model.named_parameters():
      if name.endswith('bias') or 'norm' in name:
        p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def timm_tokens(model, images_nhwc):
  with torch.no_grad():
    return model.forward_features(torch.from_numpy(np.asarray(images_nhwc).transpose(0, 3, 1, 2).copy())).numpy()


def test_mae_workdir_exports_timm_names_that_timm_loads_strict(tmp_path):
  pytest.importorskip('jssl.convert.vit')
  workdir = make_workdir(tmp_path / 'workdir', config_spec='configs/mae.py:demo', backbone_kwargs={'depth': 2})
  code, _, err = convert(workdir, tmp_path / 'vit.pth', '--format=mae', '--whole_model')
  assert code == 0, err
  content = torch.load(tmp_path / 'vit.pth', map_location='cpu', weights_only=True)
  sd = content['model']
  assert {k for k in sd if k.startswith('neck.')} >= {'neck.decoder_embed.weight', 'neck.mask_token'}
  model = timm_vit()
  model.load_state_dict({k: v for k, v in sd.items() if not k.startswith('neck.')}, strict=True)
  config, state, _ = load_workdir(str(workdir))
  images = np.random.default_rng(3).standard_normal((2, 32, 32, 3)).astype(np.float32)
  ours = np.asarray(build_method(config).extract(state.params, state.model_state, images))  # mean patch token
  np.testing.assert_allclose(ours, timm_tokens(model, images)[:, 1:].mean(axis=1), rtol=1e-4, atol=1e-4)
  # and back: the MAE file's decoder (here under jssl's neck.* names) is not the backbone
  imported = import_backbone(str(tmp_path / 'vit.pth'), 'vit_tiny', 'mae', {**VIT, 'pos_embed': 'sincos'})
  jax.tree.map(np.testing.assert_array_equal, imported, backbone_variables(state))


def test_import_timm_mae_and_mocov3_files_ignore_what_is_not_the_backbone(tmp_path):
  pytest.importorskip('jssl.convert.vit')
  model = timm_vit(num_classes=10)
  sd = model.state_dict()
  assert {'head.weight', 'head.bias'} <= set(sd)
  torch.save(sd, tmp_path / 'timm.pth')
  encoder = {k: v for k, v in sd.items() if not k.startswith('head.')}
  torch.save({'model': {**encoder, 'mask_token': torch.zeros(1, 1, 64), 'decoder_embed.weight': torch.zeros(64, 192),
                        'decoder_blocks.0.norm1.weight': torch.zeros(64)}, 'epoch': 10}, tmp_path / 'mae.pth')
  moco = {**{f'module.base_encoder.{k}': v for k, v in sd.items()},   # base_encoder.head: the projector
          **{f'module.momentum_encoder.{k}': v for k, v in sd.items()},
          'module.predictor.0.weight': torch.zeros(8, 8)}
  torch.save({'epoch': 300, 'arch': 'vit_tiny', 'state_dict': moco}, tmp_path / 'mocov3.pth')
  images = np.random.default_rng(4).standard_normal((2, 32, 32, 3)).astype(np.float32)
  expected = timm_tokens(model, images)
  for name, fmt in [('timm.pth', 'timm'), ('mae.pth', 'mae'), ('mocov3.pth', 'mocov3')]:
    variables = import_backbone(str(tmp_path / name), 'vit_tiny', fmt, VIT)
    ours = build_backbone('vit_tiny', **VIT).apply(variables, images, train=False)
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-4, atol=1e-4, err_msg=fmt)
  # a MAE file is not a mocov3 file: no module.base_encoder. keys -> names taken as they are -> strict error
  with pytest.raises(ConversionError, match='decoder_embed.weight'):
    import_backbone(str(tmp_path / 'mae.pth'), 'vit_tiny', 'timm', VIT)
  # another resolution: an error naming pos_embed unless --interpolate_pos_embed
  args = ['--format=timm', '--backbone=vit_tiny', '--backbone_kwargs=' + json.dumps({**VIT, 'img_size': 48})]
  assert_one_line_error(*convert(tmp_path / 'timm.pth', tmp_path / 'vit48', *args)[::2], 'pos_embed')
  assert not (tmp_path / 'vit48').exists()
  code, _, err = convert(tmp_path / 'timm.pth', tmp_path / 'vit48', *args, '--interpolate_pos_embed')
  assert code == 0, err
  _, kwargs, variables = load_imported_backbone(str(tmp_path / 'vit48'))
  assert kwargs['img_size'] == 48 and variables['params']['pos_embed'].shape == (1, 1 + 12 * 12, 192)


def test_import_mmpretrain_mae_checkpoint_into_a_sincos_vit(tmp_path):
  """An mmpretrain MAE checkpoint (MAEViT: MoCo v3's sin-cos table, the channel halves swapped vs MAE's) into a
  pos_embed='sincos' ViT: the CLI finds the layout, says so, records sincos_layout='mocov3' in backbone.json, and
  the imported backbone computes mmpretrain's features; the API without that kwarg names it."""
  from tests.convert.test_vit_convert import mmpretrain_sincos_vit
  model = mmpretrain_sincos_vit('MAEViT')
  torch.save({'state_dict': {f'backbone.{k}': v for k, v in model.state_dict().items()}, 'meta': {}},
             tmp_path / 'mae_mmpretrain.pth')
  kwargs = {'img_size': 32, 'patch_size': 8, 'embed_dim': 64, 'depth': 2, 'num_heads': 4, 'pos_embed': 'sincos'}
  code, out, err = convert(tmp_path / 'mae_mmpretrain.pth', tmp_path / 'imported', '--format=mmpretrain',
                           '--backbone=vit_small', '--backbone_kwargs=' + json.dumps(kwargs))
  assert code == 0, err
  assert "; pos_embed: MoCo v3's / mmpretrain's sin-cos table (sincos_layout='mocov3')" in out, out
  name, imported_kwargs, variables = load_imported_backbone(str(tmp_path / 'imported'))
  assert imported_kwargs == {**kwargs, 'sincos_layout': 'mocov3'}
  images = np.random.default_rng(6).standard_normal((2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    theirs = model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), None)[-1].numpy()
  ours = build_backbone(name, **imported_kwargs).apply(variables, images, train=False)
  np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-4, atol=1e-4)
  with pytest.raises(ConversionError, match="set sincos_layout='mocov3' to import it"):
    import_backbone(str(tmp_path / 'mae_mmpretrain.pth'), 'vit_small', 'mmpretrain', kwargs)


def test_family_lookup_errors(monkeypatch):
  import jssl.convert
  with pytest.raises(ConversionError, match="no checkpoint conversion for backbone 'convnext_tiny'"):
    jssl.convert.family_of('convnext_tiny')
  monkeypatch.setitem(jssl.convert.FAMILY_MODULES, 'swin', 'jssl.convert.no_such_map')
  with pytest.raises(ConversionError, match='no key map for the swin family'):
    jssl.convert.family_of('swin_tiny')


# --- bad inputs -------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def resnet18_file(tmp_path_factory):
  path = tmp_path_factory.mktemp('files') / 'resnet18.pth'
  torch.save(random_torchvision_resnet('resnet18').state_dict(), path)
  return path


def test_truncated_file_is_one_line_and_writes_nothing(resnet18_file, tmp_path):
  data = resnet18_file.read_bytes()
  (tmp_path / 'cut.pth').write_bytes(data[:len(data) // 2])
  proc = run_python(['-m', 'jssl.convert', str(tmp_path / 'cut.pth'), str(tmp_path / 'out'),
                     '--format=torchvision', '--backbone=resnet18'], check=False)
  assert_one_line_error(proc.returncode, proc.stderr, str(tmp_path / 'cut.pth'), 'truncated')
  assert sorted(os.listdir(tmp_path)) == ['cut.pth']


def edited_state_dict(path, edit):
  sd = torch.load(path, map_location='cpu', weights_only=True)
  edit(sd)
  return sd


@pytest.mark.parametrize('case,needles', [
    ('resnet50', ['layer1.0.conv3.weight']),             # wrong architecture: keys resnet18 does not have
    ('extra', ['unexpected', 'layer1.0.extra.weight']),
    ('missing', ['missing', 'layer3.1.bn2.running_var']),
    ('shape', ['conv1.weight']),
    ('unknown_format', ["unknown format 'timm'", 'torchvision, mmpretrain, detectron2']),
    ('unknown_backbone', ["unknown backbone 'resnet9'", 'resnet18']),
    ('bad_kwargs', ['num_filterz']),
    ('no_backbone', ['--backbone is required']),
    ('not_a_state_dict', ['epoch']),
])
def test_bad_import_is_one_line_and_writes_nothing(case, needles, resnet18_file, tmp_path):
  src, args = resnet18_file, ['--format=torchvision', '--backbone=resnet18']
  edits = {
      'extra': lambda sd: sd.update({'layer1.0.extra.weight': torch.zeros(3)}),
      'missing': lambda sd: sd.pop('layer3.1.bn2.running_var'),
      'shape': lambda sd: sd.update({'conv1.weight': torch.zeros(64, 3, 3, 3)}),
  }
  if case == 'resnet50':
    src = tmp_path / 'resnet50.pth'
    torch.save(torchvision.models.resnet50().state_dict(), src)
  elif case in edits:
    src = tmp_path / f'{case}.pth'
    torch.save(edited_state_dict(resnet18_file, edits[case]), src)
  elif case == 'not_a_state_dict':
    src = tmp_path / 'training.pth'
    torch.save({'epoch': 3, 'net': {'w': torch.zeros(2)}}, src)
  args = {'unknown_format': ['--format=timm', '--backbone=resnet18'],
          'unknown_backbone': ['--format=torchvision', '--backbone=resnet9'],
          'bad_kwargs': ['--format=torchvision', '--backbone=resnet18', '--backbone_kwargs={"num_filterz": 8}'],
          'no_backbone': ['--format=torchvision']}.get(case, args)
  before = sorted(os.listdir(tmp_path))
  code, _, err = convert(src, tmp_path / 'out', *args)
  assert_one_line_error(code, err, *needles)
  assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize('args,needles', [
    (['out.pth', '--format=timm'], ["unknown format 'timm'", 'torchvision, mmpretrain, detectron2']),
    (['out.npy', '--format=torchvision'], ["extension '.npy'", '.safetensors']),
    (['out.pth', '--format=torchvision', '--step=7'], ['no checkpoint for step 7', 'available: 3']),
    (['missing_dir/out.pth', '--format=torchvision'], ['missing_dir', 'does not exist']),
])
def test_bad_export_is_one_line_and_writes_nothing(args, needles, small_workdir, tmp_path):
  code, _, err = convert(small_workdir, tmp_path / args[0], *args[1:])
  assert_one_line_error(code, err, *needles)
  assert os.listdir(tmp_path) == []


def test_destination_and_flags_fail_before_anything_is_loaded(small_workdir, resnet18_file, tmp_path, monkeypatch):
  """A destination whose folder does not exist, a directory where the export's file goes, a non-empty import
  directory: one line, exit 2, before the workdir's checkpoint or the file is read."""
  import jssl.convert
  import jssl.pretrained
  def too_late(*args, **kwargs):
    raise AssertionError('the checkpoint was loaded before the destination was checked')
  monkeypatch.setattr(jssl.pretrained, 'load_workdir', too_late)
  monkeypatch.setattr(jssl.pretrained, 'load_workdir_backbone', too_late)
  monkeypatch.setattr(jssl.convert.io, 'read_checkpoint', too_late)
  (tmp_path / 'a_dir').mkdir()
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'x').write_text('')
  missing = tmp_path / 'missing'
  import_args = ['--format=torchvision', '--backbone=resnet18']
  for args, needles in [
      ([small_workdir, missing / 'r18.pth', '--format=torchvision'], [str(missing), 'does not exist']),
      ([small_workdir, tmp_path / 'a_dir', '--format=torchvision', '--file_format=pth'], ['a_dir: is a directory']),
      ([resnet18_file, missing / 'imported', *import_args], [str(missing), 'does not exist']),
      ([resnet18_file, tmp_path / 'full', *import_args], ['already exists and is not an empty directory'])]:
    assert_one_line_error(*convert(*args)[::2], *needles)
  assert not missing.exists()


def test_without_torch_the_error_names_the_extra(small_workdir, resnet18_file, tmp_path):
  """PyTorch missing (simulated: sys.modules['torch'] = None makes `import torch` raise ModuleNotFoundError):
  writing or reading a .pth file is one line naming the `torch` extra, before the checkpoint is loaded; a
  detectron2 .pkl needs no torch."""
  cases = [[str(small_workdir), str(tmp_path / 'r18.pth'), '--format=torchvision'],
           [str(resnet18_file), str(tmp_path / 'imported'), '--format=torchvision', '--backbone=resnet18'],
           [str(small_workdir), str(tmp_path / 'r18.pkl'), '--format=detectron2']]
  proc = run_python(f"""
import json, sys
sys.modules['torch'] = None
from jssl.convert.__main__ import main
from tests.conftest import run_cli
print(json.dumps([run_cli(main, *args) for args in {cases!r}]))
""")
  (pth_code, _, pth_err), (import_code, _, import_err), (pkl_code, pkl_out, pkl_err) = json.loads(
      proc.stdout.splitlines()[-1])
  extra = "pip install -e '.[torch]'"
  assert_one_line_error(pth_code, pth_err, 'r18.pth: writing a .pth file needs torch, which is not installed', extra)
  assert_one_line_error(import_code, import_err, 'resnet18.pth: reading a .pth file needs torch', extra)
  assert pkl_code == 0 and 'wrote' in pkl_out, pkl_err
  assert sorted(os.listdir(tmp_path)) == ['r18.pkl']


def test_width_mismatch_hints_at_backbone_kwargs(small_workdir, tmp_path):
  """A file of another width than --backbone_kwargs say: the one-line error gives the kwargs that fit."""
  code, _, err = convert(small_workdir, tmp_path / 'r18.pth', '--format=torchvision')  # num_filters=8
  assert code == 0, err
  assert_one_line_error(*convert(tmp_path / 'r18.pth', tmp_path / 'out', '--format=torchvision',
                                 '--backbone=resnet18')[::2],
                        "checkpoint shape", "the file's resnet18 has num_filters=8 (the backbone: 64)",
                        """--backbone_kwargs='{"num_filters": 8}'""")
  torch.save(timm_vit().state_dict(), tmp_path / 'vit_tiny.pth')  # embed_dim 192, depth 2
  assert_one_line_error(*convert(tmp_path / 'vit_tiny.pth', tmp_path / 'out', '--format=timm', '--backbone=vit_small',
                                 '--backbone_kwargs=' + json.dumps({'img_size': 32, 'patch_size': 4}))[::2],
                        'missing keys: blocks.10.',
                        "the file's vit_small has embed_dim=192 (the backbone: 384), depth=2 (the backbone: 12)",
                        """--backbone_kwargs='{"img_size": 32, "patch_size": 4, "embed_dim": 192, "depth": 2}'""",
                        'num_heads')
  assert sorted(os.listdir(tmp_path)) == ['r18.pth', 'vit_tiny.pth']


def test_source_that_is_not_a_workdir_or_file(tmp_path):
  assert_one_line_error(*convert(tmp_path, tmp_path / 'x.pth', '--format=torchvision')[::2], 'config.json')
  assert_one_line_error(*convert(tmp_path / 'nope', tmp_path / 'x', '--format=torchvision')[::2], 'nope')
  assert_one_line_error(*convert(tmp_path, tmp_path / 'x.pth')[::2], '--format')


# --- a real run -------------------------------------------------------------------------------------------------
@pytest.mark.heavy  # in CI a workdir's export is covered by test_mae_workdir_exports_timm_names_that_timm_loads_strict
def test_workdir_of_a_real_run_exports_to_torchvision(tmp_path):
  workdir = tmp_path / 'run'
  run_python(['-m', 'jssl.main', '--config=configs/simclr.py:demo', f'--workdir={workdir}',
              '--config.total_steps=2', '--config.checkpoint.every=2', *NO_EVALS_ARGS,
              '--config.backbone.kwargs.num_filters=8', '--config.model.neck_hid_channels=32',
              '--config.batch_size=16'])
  proc = run_python(['-m', 'jssl.convert', str(workdir), str(tmp_path / 'r18.pkl'), '--format=detectron2'])
  assert 'step 2' in proc.stdout
  with open(tmp_path / 'r18.pkl', 'rb') as f:
    assert "res5.1.conv2.norm.running_var" in pickle.load(f)['model']
  _, state, _ = load_workdir(str(workdir))
  imported = import_backbone(str(tmp_path / 'r18.pkl'), 'resnet18', 'detectron2', SMALL)
  jax.tree.map(np.testing.assert_array_equal, imported, backbone_variables(state))


# --- docs/tools.md: loading an export in PyTorch -------------------------------------------------------------
def docs_snippet(name):
  """The python block after '<!-- snippet: NAME -->' in docs/tools.md."""
  with open(os.path.join(os.path.dirname(__file__), '..', '..', 'docs', 'tools.md')) as f:
    text = f.read()
  block = text.split(f'<!-- snippet: {name} -->\n```python\n', 1)[1].split('\n```\n', 1)[0]
  first, rest = block.split('\n', 1)
  assert first.startswith('WORKDIR, EXPORT, IMAGE = '), first  # the line a reader edits; the test sets it
  return rest


def run_docs_snippet(name, workdir, export, image, capsys):
  code = f'WORKDIR, EXPORT, IMAGE = {str(workdir)!r}, {str(export)!r}, {str(image)!r}\n' + docs_snippet(name)
  exec(compile(code, f'docs/tools.md:{name}', 'exec'), {})
  return capsys.readouterr().out


@pytest.fixture(scope='module')
def photo(tmp_path_factory):
  path = tmp_path_factory.mktemp('image') / 'photo.png'
  from PIL import Image
  Image.fromarray(np.random.default_rng(5).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(path)
  return path


def test_docs_resnet_snippet_loads_full_width_into_torchvision_and_narrow_into_mmpretrain(small_workdir, photo,
                                                                                          tmp_path, capsys):
  """docs/tools.md's ResNet snippet as it is: a full-width ResNet-50 export strictly into torchvision's resnet50
  (fc = Identity), a narrow ResNet-18 (num_filters=8, as the demos' 32) strictly into mmpretrain's ResNet; same
  features as jssl's."""
  workdir = make_workdir(tmp_path / 'r50', backbone_name='resnet50', backbone_kwargs={'num_filters': 64})
  for src, dst, line in [(workdir, tmp_path / 'r50.pth', 'torchvision.models.resnet.ResNet; same 2048-d'),
                         (small_workdir, tmp_path / 'r18_narrow.pth', 'mmpretrain.models.backbones.resnet.ResNet; '
                                                                      'same 64-d')]:
    code, _, err = convert(src, dst, '--format=torchvision')
    assert code == 0, err
    out = run_docs_snippet('resnet', src, dst, photo, capsys)
    assert f'loaded strictly into {line} features' in out, out


def test_docs_vit_snippet_loads_into_timm(photo, tmp_path, capsys):
  workdir = make_workdir(tmp_path / 'mae', config_spec='configs/mae.py:demo', backbone_kwargs={'depth': 2})
  code, _, err = convert(workdir, tmp_path / 'vit.pth', '--format=timm')
  assert code == 0, err
  out = run_docs_snippet('vit', workdir, tmp_path / 'vit.pth', photo, capsys)
  assert 'same 65 x 192 tokens' in out, out
