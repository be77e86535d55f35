"""The fine-tune evaluator: its loss against an independent computation, and whole runs from an imported backbone
through `python -m jssl.main` (non-strict load, layer-wise decay, RandAugment, erasing, Mixup/CutMix, EMA head)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl import pretrained
from jssl.config import load_config_file
from tests.conftest import run_python

VIT = {'img_size': 32, 'patch_size': 8, 'embed_dim': 32, 'depth': 2, 'num_heads': 2, 'pos_embed': 'sincos'}
SHORT = ['--config.total_steps=6', '--config.log_every=3', '--config.checkpoint.every=3', '--config.batch_size=32',
         '--config.eval.batch_size=128']


def imported_vit(path):
  template = pretrained.backbone_template('vit_tiny', VIT)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: (rng.normal(size=s.shape) * 0.05).astype(np.float32), template)
  pretrained.save_imported_backbone(str(path), 'vit_tiny', VIT, variables)
  return variables


def small_config(**model):
  c = load_config_file('configs/eval/finetune.py:demo')
  c.backbone.name = 'vit_tiny'
  c.backbone.kwargs.update(VIT)
  c.model.update(model)
  return c


def test_loss_without_mixing_is_label_smoothed_cross_entropy():
  """Mixup/CutMix off: the loss is torch's CrossEntropyLoss(label_smoothing=0.1) of the eval-mode logits (drop path
  0 so train and eval forward agree)."""
  torch = pytest.importorskip('torch')
  from jssl.evaluate.finetune import Method
  c = small_config(mixup_alpha=0., cutmix_alpha=0.)
  c.backbone.kwargs.drop_path_rate = 0.
  method = Method(c)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), jnp.float32)
  labels = jnp.array([0, 3, 9, 3])
  params, model_state, method_state = method.init(jax.random.PRNGKey(0), {'views': (images,)})
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
  loss, (metrics, _, _) = method.loss(params, model_state, method_state, {'views': (images,), 'label': labels},
                                      jax.random.PRNGKey(2), 0)
  logits = method.predict(params, model_state, method_state, images)['model']
  expected = torch.nn.functional.cross_entropy(torch.tensor(np.asarray(logits)), torch.tensor(np.asarray(labels)).long(),
                                               label_smoothing=0.1)
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
  assert set(metrics) == {'loss', 'top1/train'}


def test_finetune_from_an_imported_vit(tmp_path):
  """fc_norm starts fresh and the pretrained final norm is reported unused; the backbone trains (every block moves,
  the first ones less under layer decay 0.65); the EMA head is evaluated next to the model."""
  variables = imported_vit(tmp_path / 'vit')
  work = tmp_path / 'ft'
  proc = run_python(['-m', 'jssl.main', '--config=configs/eval/finetune.py:demo', f'--workdir={work}',
                     f'--config.init.backbone={tmp_path / "vit"}', '--config.model.ema_momentum=0.9', *SHORT])
  assert 'not in it (fresh init): params/fc_norm/bias, params/fc_norm/scale' in proc.stdout
  assert 'in it, unused: params/norm/bias, params/norm/scale' in proc.stdout
  assert 'finetune on the test split (359 images)' in proc.stdout
  results = json.loads((work / 'results.json').read_text())
  assert sorted(results['val']) == ['ema', 'model']
  assert all(0 <= r['top1'] <= r['top5'] <= 100 for r in results['val'].values())
  config = json.loads((work / 'config.json').read_text())
  assert config['backbone']['name'] == 'vit_tiny' and config['backbone']['kwargs']['use_fc_norm']

  _, state, _ = pretrained.load_workdir(str(work))
  moved = lambda name: float(np.abs(np.asarray(state.params['backbone'][name]['attn']['qkv']['kernel'])
                                    - variables['params'][name]['attn']['qkv']['kernel']).mean())
  assert 0 < moved('blocks_0') and 0 < moved('blocks_1')
  ema = state.method_state['ema']['params']['head']['head']['kernel']
  assert not np.allclose(ema, state.params['head']['head']['kernel'])  # an average, not a copy


def test_finetune_bad_randaugment_policy(tmp_path):
  imported_vit(tmp_path / 'vit')
  proc = run_python(['-m', 'jssl.main', '--config=configs/eval/finetune.py:demo', f'--workdir={tmp_path / "w"}',
                     f'--config.init.backbone={tmp_path / "vit"}', '--config.data.randaugment=rand-m9-x3', *SHORT],
                    check=False)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and 'config.data.randaugment' in lines[0], proc.stderr[-2000:]


@pytest.mark.heavy  # the loop's 8-device/FSDP step stays in CI: tests/methods/test_every_method.py
def test_finetune_eight_devices_and_fsdp_match_one_device():
  """Mixup/CutMix pairs each image with its mirror in the batch (across devices), erasing and drop path draw per
  sample, the EMA follows: 1 device = 2 x 4 data x fsdp mesh (random init; no checkpoint needed)."""
  from tests.train.test_sharding import assert_devices_match
  assert_devices_match('configs/eval/finetune.py:demo', {
      'init.backbone': '', 'backbone.name': 'vit_tiny', 'backbone.kwargs.img_size': 16,
      'backbone.kwargs.patch_size': 4, 'backbone.kwargs.depth': 2, 'data.views.0.size': 16,
      'model.ema_momentum': 0.9})


@pytest.mark.slow
def test_simmim_swin_finetune_recipe_trains_a_small_swin(tmp_path):
  """configs/eval/finetune.py:simmim on a small Swin (the SimMIM demo's geometry): layer decay by Swin block, gradient
  clipping and bf16 compute build and take two finite steps; the head is the pooled, normed last stage."""
  from jssl.data.loader import to_global
  from jssl.train.loop import Trainer
  c = load_config_file('configs/eval/finetune.py:simmim')
  c.backbone.name = 'swin_tiny'
  c.backbone.kwargs.update({'img_size': 32, 'patch_size': 4, 'embed_dim': 32, 'depths': (2, 2), 'num_heads': (2, 4),
                            'window_size': 4, 'out_indices': (1,)})
  c.data.views[0]['size'] = 32
  c.batch_size, c.model.num_classes = 8, 10
  trainer = Trainer(c, None, num_records=64)
  state = trainer.init_state(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  batch = to_global({'views': (rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),),
                     'label': np.arange(8, dtype=np.int32)}, trainer.mesh)
  for _ in range(2):
    state, metrics = trainer.train_step(state, batch)
    assert np.isfinite(float(metrics['loss']))
  assert set(state.params) == {'backbone', 'head'}


def test_relative_position_bias_table_resize():
  """Window 6 -> 7 (SimMIM's 192 -> 224 px fine-tune): offsets the two grids share (0, +-1 on the geometric
  progression) keep their values, and a bicubic polynomial of the warped offsets is reproduced exactly everywhere,
  which pins down the offset mapping (a bicubic spline reproduces cubics)."""
  from jssl.pretrained import resize_relative_position_bias_table
  src, dst = 11, 13
  half = src // 2
  # the progression's ratio: 1 + q + ... + q^(half-1) = dst // 2, as in mmpretrain / BEiT
  q = next(q for q in np.arange(1.01, 1.5, 1e-7) if (1 - q ** half) / (1 - q) > dst // 2)
  d = np.cumsum([1.] + [q ** (i + 1) for i in range(half - 1)])
  coords = np.concatenate([-d[::-1], [0.], d])
  poly = lambda y, x: 0.3 + 0.1 * x - 0.05 * y ** 2 + 0.002 * x ** 3 + 0.01 * x * y
  yy, xx = np.meshgrid(coords, coords, indexing='ij')
  table = np.stack([poly(yy, xx), 2 * poly(xx, yy)], axis=-1).reshape(src * src, 2)
  out = resize_relative_position_bias_table(table, dst)
  assert out.shape == (dst * dst, 2)
  ty, tx = np.meshgrid(np.arange(-6., 7.), np.arange(-6., 7.), indexing='ij')
  np.testing.assert_allclose(out[:, 0].reshape(dst, dst), poly(ty, tx), atol=2e-4)
  np.testing.assert_allclose(out[:, 1].reshape(dst, dst), 2 * poly(tx, ty), atol=4e-4)
  center = table.reshape(src, src, 2)[half - 1:half + 2, half - 1:half + 2]
  np.testing.assert_allclose(out.reshape(dst, dst, 2)[5:8, 5:8], center, atol=1e-5)


def test_merge_backbone_resizes_relative_position_tables_of_another_window():
  """A window-3 Swin checkpoint merged into a window-6 state: tables resized (5^2 -> 11^2 offsets), the rest copied."""
  from jssl.train.state import TrainState
  kwargs = dict(img_size=48, patch_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 2), out_indices=(1,))
  rng = np.random.default_rng(0)
  random = lambda tree: jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), tree)
  saved = random(pretrained.backbone_template('swin_tiny', {**kwargs, 'window_size': 3}))
  target = random(pretrained.backbone_template('swin_tiny', {**kwargs, 'window_size': 6}))
  state = TrainState(step=0, params={'backbone': target['params']}, opt_state=None, model_state={}, method_state={},
                     rng=None)
  state, missing, unused = pretrained.merge_backbone(state, saved)
  assert missing == [] and unused == []
  got = state.params['backbone']['layers_0']['blocks_0']['attn']['relative_position_bias_table']
  source = saved['params']['layers_0']['blocks_0']['attn']['relative_position_bias_table']
  assert got.shape == (121, 2) and source.shape == (25, 2)
  np.testing.assert_allclose(np.asarray(got),
                             pretrained.resize_relative_position_bias_table(source, 11), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(state.params['backbone']['patch_embed']['proj']['kernel']),
                                saved['params']['patch_embed']['proj']['kernel'])
