"""python -m jssl.tools.extract_features: per-split, per-stage .npy files of a pretrained backbone on the embedded
digits, equal to jssl.evaluate.features' in-process extraction; bad input is one line."""
import json

import jax
import numpy as np

from jssl import pretrained
from jssl.data.sources import DigitsSource
from jssl.data.transforms import ResizeCenterCrop
from jssl.evaluate import features
from tests.conftest import run_python


def imported_resnet(path):
  template = pretrained.backbone_template('resnet18', {'num_filters': 8})
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: (rng.normal(size=s.shape) * 0.1).astype(np.float32), template)
  variables['batch_stats'] = jax.tree.map(lambda s: np.ones(s.shape, np.float32), template['batch_stats'])
  pretrained.save_imported_backbone(str(path), 'resnet18', {'num_filters': 8}, variables)
  return variables


def test_extract_features_cli(tmp_path):
  variables = imported_resnet(tmp_path / 'r18')
  out = tmp_path / 'features'
  proc = run_python(['-m', 'jssl.tools.extract_features', str(tmp_path / 'r18'), f'--out={out}',
                     '--stages=feat1,feat5', '--pool=adaptive', '--batch_size=128'])
  assert 'feat1: 1152, feat5: 256' in proc.stdout
  meta = json.loads((out / 'meta.json').read_text())
  assert meta['stages'] == ['feat1', 'feat5'] and meta['dims'] == {'feat1': 12 * 12 * 8, 'feat5': 2 * 2 * 64}
  assert meta['num_records'] == {'train': 1438, 'val': 359} and meta['transform']['size'] == 32
  np.testing.assert_array_equal(np.load(out / 'train_labels.npy'), DigitsSource('train').labels)
  np.testing.assert_array_equal(np.load(out / 'val_labels.npy'), DigitsSource('test').labels)
  assert np.load(out / 'train_feat1.npy').shape == (1438, 1152)
  expected = features.extract_pretrained(('resnet18', {'num_filters': 8}, variables), {'val': DigitsSource('test')},
                                         ResizeCenterCrop(32, 32), 'feat5', 'adaptive', batch_size=128)[0]
  np.testing.assert_allclose(np.load(out / 'val_feat5.npy'), expected['val']['feat5'], rtol=1e-5, atol=1e-6)


def test_extract_features_errors(tmp_path):
  proc = run_python(['-m', 'jssl.tools.extract_features', str(tmp_path / 'missing'), f'--out={tmp_path}'],
                    check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f'extract_features: error: {tmp_path / "missing"}: does not exist (expected a jssl workdir, an imported '
      'backbone directory or a published model file)']
  proc = run_python(['-m', 'jssl.tools.extract_features', str(tmp_path), f'--out={tmp_path}', '--data.name=imagefolder',
                     f'--data.root={tmp_path / "imagenet"}'], check=False)
  assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
  assert 'extract_features: error:' in proc.stderr
