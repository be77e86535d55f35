"""The linear-probe evaluator: the quick probe on fixed features, the 'linear_probe' method's heads and frozen
backbone, and the whole evaluator run from a pretrained workdir through `python -m jssl.main`."""
import numpy as np

from jssl.evaluate.linear import fit_linear_probe


def linear_problem(seed=0, n=3000, dim=32, classes=10):
  """Gaussian features labelled by a random linear map (argmax): separable by a linear classifier."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, dim)).astype(np.float32) * rng.uniform(0.1, 10., size=dim).astype(np.float32)
  y = np.argmax(x @ rng.normal(size=(dim, classes)), axis=1)
  return x[:2000], y[:2000], x[2000:], y[2000:]


def test_fit_linear_probe_learns_a_linear_problem_and_not_shuffled_labels():
  x, y, xt, yt = linear_problem()
  result = fit_linear_probe(x, y, xt, yt, epochs=30, lr=0.5)
  assert result['top1'] > 90., result  # a noiseless linear rule, learned from 2,000 samples
  assert result['top5'] >= result['top1']
  shuffled = fit_linear_probe(x, np.random.default_rng(1).permutation(y), xt, yt, epochs=30, lr=0.5)
  assert shuffled['top1'] < 20., shuffled  # chance is ~10% (labels carry no information about the features)


# --- the evaluator, through python -m jssl.main -------------------------------------------------------------------
import json

import jax
import pytest

from tests.conftest import run_python

SHORT = ['--config.total_steps=6', '--config.log_every=3', '--config.checkpoint.every=3', '--config.batch_size=32',
         '--config.eval.batch_size=128']


def imported_resnet(path, seed=0):
  """A small random ResNet-18 written as an imported backbone (what `python -m jssl.convert` makes)."""
  from jssl import pretrained
  template = pretrained.backbone_template('resnet18', {'num_filters': 8})
  rng = np.random.default_rng(seed)
  variables = jax.tree.map(lambda s: (rng.normal(size=s.shape) * 0.1).astype(np.float32), template)
  variables['batch_stats'] = jax.tree.map(np.abs, variables['batch_stats'])  # variances must be positive
  pretrained.save_imported_backbone(str(path), 'resnet18', {'num_filters': 8}, variables)
  return variables


@pytest.mark.parametrize('head', ['linear', 'multi'])
def test_linear_probe_from_an_imported_backbone(tmp_path, head):
  """The evaluator takes the architecture from config.init.backbone, trains only the head (the backbone stays
  bitwise the imported one), prints the val table and writes results.json; --mode=eval reports the checkpoint's
  heads again and a second run resumes."""
  variables = imported_resnet(tmp_path / 'r18')
  work = tmp_path / 'probe'
  args = ['-m', 'jssl.main', '--config=configs/eval/linear.py:demo', f'--workdir={work}',
          f'--config.init.backbone={tmp_path / "r18"}', f'--config.model.head={head}',
          '--config.model.pool_type=adaptive', *SHORT]
  proc = run_python(args)
  assert 'step 6/6' in proc.stdout and 'linear_probe on the test split (359 images)' in proc.stdout
  results = json.loads((work / 'results.json').read_text())
  names = ['feat1', 'feat2', 'feat3', 'feat4', 'feat5'] if head == 'multi' else ['head']
  assert sorted(results['val']) == names
  assert all(0 <= r['top1'] <= r['top5'] <= 100 for r in results['val'].values())
  assert json.loads((work / 'config.json').read_text())['backbone']['name'] == 'resnet18'

  from jssl import pretrained
  _, state, step = pretrained.load_workdir(str(work))
  assert step == 6
  for a, b in zip(jax.tree.leaves(state.params['backbone']), jax.tree.leaves(variables['params'])):
    np.testing.assert_array_equal(a, b)  # frozen: only the head trained
  for a, b in zip(jax.tree.leaves(state.model_state['batch_stats']['backbone']),
                  jax.tree.leaves(variables['batch_stats'])):
    np.testing.assert_array_equal(a, b)  # eval-mode BatchNorm: running statistics untouched
  assert np.abs(np.asarray(jax.tree.leaves(state.params['head'])[0])).sum() > 0
  if head == 'linear':  # --mode=eval and the resume are the same code for any head: once, for the multi-head probe
    return

  evaluated = run_python(args + ['--mode=eval'])  # the checkpoint's classifiers again, nothing trained
  first = next(iter(results['val']))
  assert f'step 6 | {first} top-1 {results["val"][first]["top1"]:.2f}' in evaluated.stdout, evaluated.stdout

  again = run_python(args[:-len(SHORT)] + ['--config.total_steps=9'] + SHORT[1:])
  assert 'resumed from step 6' in again.stdout and 'step 9/9' in again.stdout


def test_linear_probe_bad_inputs(tmp_path):
  imported_resnet(tmp_path / 'r18')
  base = ['-m', 'jssl.main', '--config=configs/eval/linear.py:demo', f'--workdir={tmp_path / "w"}', *SHORT]
  cases = [
      ([f'--config.init.backbone={tmp_path / "missing"}'], 'missing: does not exist'),
      ([f'--config.init.backbone={tmp_path}'], 'neither a jssl workdir'),
      ([f'--config.init.backbone={tmp_path / "r18"}', '--config.backbone.name=vit_tiny'],
       "holds a 'resnet18' backbone but config.backbone.name is 'vit_tiny'"),
      (['--config.init.backbone='], 'config.backbone.name is empty'),
      ([f'--config.init.backbone={tmp_path / "r18"}', '--config.model.head=mlp'], "config.model.head: unknown head"),
  ]
  for extra, message in cases:
    proc = run_python(base + extra, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (extra, proc.stderr[-2000:])


@pytest.mark.heavy  # the loop's 8-device/FSDP step stays in CI: tests/methods/test_every_method.py
def test_multihead_probe_eight_devices_and_fsdp_match_one_device():
  """The heads' BatchNorm statistics are over the global batch: 1 device = 2 x 4 data x fsdp mesh."""
  from tests.train.test_sharding import assert_devices_match
  assert_devices_match('configs/eval/linear.py:demo', {
      'init.backbone': '', 'backbone.name': 'resnet18', 'backbone.kwargs.num_filters': 8, 'model.head': 'multi',
      'model.pool_type': 'adaptive', 'data.views.0.size': 16})
