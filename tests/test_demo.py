"""The demo entry point end to end (shortened): what it is doing before the first progress line, progress lines,
TensorBoard events, checkpoints, resolved config, results.json with trained and random-init kNN, a last line saying
where they are, nothing on stderr; then the benchmark tool on the same config."""
import json

import pytest

from tests.conftest import run_python

SHORT = ['--config.total_steps=12', '--config.log_every=4', '--config.checkpoint.every=6']


def check_demo(tmp_path, config, extra_args=()):
  """A :demo through the CLI, shortened to 12 steps (tests/methods/test_every_method.py: every method's); returns
  (results.json, the process)."""
  proc = run_python(['-m', 'jssl.main', f'--config={config}', f'--workdir={tmp_path}', *SHORT, *extra_args],
                    optimize=True)
  out = proc.stdout.splitlines()
  lines = [l for l in out if l.startswith('step ')]
  assert lines[-1].startswith('step 12/12') and all(k in lines[-1] for k in ('loss', 'lr', 'img/s', 'ETA'))
  assert out[0].startswith('building ') and out.index('compiling the train step ...') < out.index(lines[0]), out[:5]
  assert out[-1] == (f'results: {tmp_path}/results.json | checkpoints: {tmp_path}/checkpoints | '
                     f'TensorBoard events: {tmp_path}/tensorboard'), out[-1]
  assert 'top-1: trained' in proc.stdout
  results = json.loads((tmp_path / 'results.json').read_text())
  assert results['steps'] == 12
  assert 0 <= results['knn_top1_random_init'] <= 100 and 0 <= results['knn_top1'] <= 100
  assert 0 <= results['linear_top1_random_init'] <= 100 and 0 <= results['linear_top1'] <= 100  # the quick probe
  assert 'linear probe' in proc.stdout
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit()) == ['12', '6']
  assert list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))
  assert json.loads((tmp_path / 'config.json').read_text())['total_steps'] == 12
  return results, proc


@pytest.mark.slow
def test_demo_writes_everything(tmp_path):
  # (every other method's demo: tests/methods/test_every_method.py, heavy)
  config = 'configs/simclr.py:demo'
  results, proc = check_demo(tmp_path, config)
  assert proc.stderr == ''  # the README's first command: no library's log lines, no warning
  # --mode=eval: kNN of the latest checkpoint at MMSelfSup's four ks
  proc = run_python(['-m', 'jssl.main', f'--config={config}', f'--workdir={tmp_path}', '--mode=eval', *SHORT])
  assert proc.stdout.splitlines()[:2] == ['building simclr (resnet18, digits data) ...',
                                          'evaluating step 12 on the test split ...'] and proc.stderr == ''
  lines = [l for l in proc.stdout.splitlines() if l.startswith('step 12 | kNN')]
  assert [l.split('(k=')[1].split(',')[0] for l in lines] == ['10', '20', '100', '200'], proc.stdout
  assert f'kNN (k=20, T=0.07) top-1 {results["knn_top1"]:.2f}' in lines[1]  # the end-of-run figure again


@pytest.mark.slow
def test_mae_demo_and_its_reconstruction_picture(tmp_path):
  """The MAE demo, then `jssl.tools.mae_visualize --index=0` on its checkpoint (the first image of the run's own
  val data, the command docs/methods/mae.md gives): a 4-panel PNG, each panel labelled above it, whose panels are
  the original, the masked image (masked patches grey) and the pasted reconstruction equal to the original on
  visible patches; after 12 steps the masked-patch error is already below the random-init model's."""
  import numpy as np
  from PIL import Image
  from jssl.config import load_config_file
  from jssl.data import sources
  workdir = tmp_path / 'run'
  check_demo(workdir, 'configs/mae.py:demo')
  config = load_config_file('configs/mae.py:demo')
  digit = sources.build_source(config.data, 'val')[0]['image']  # already the model's 32 px
  out, figures = tmp_path / 'mae.png', tmp_path / 'mae.json'
  proc = run_python(['-m', 'jssl.tools.mae_visualize', '--index=0', f'--workdir={workdir}', f'--out={out}',
                     f'--json={figures}', '--panel=32'])
  assert 'masked-patch MSE' in proc.stdout and '(val record 0 of digits, step 12)' in proc.stdout
  result = json.loads(figures.read_text())
  assert result['step'] == 12 and result['mask_ratio'] == 0.75
  assert result['masked_mse'] < result['masked_mse_random_init']
  png = np.asarray(Image.open(out))
  assert png.shape[0] > 32 and png.shape[1:] == (4 * 32 + 3 * 2, 3)
  labels, body = png[:-32], png[-32:]
  assert all((labels[:, i * 34:i * 34 + 32] < 128).any() for i in range(4))  # a label over each panel
  panels = [body[:, i * 34:i * 34 + 32] for i in range(4)]
  np.testing.assert_array_equal(panels[0], digit)
  grey = (panels[1] == 128).all(axis=-1)
  assert abs(grey.mean() - 0.75) < 0.02  # 48 of the 64 4-px patches (a digit pixel may be 128 by chance)
  np.testing.assert_array_equal(panels[3][~grey], digit[~grey])
  assert not np.array_equal(panels[2], digit)
  proc = run_python(['-m', 'jssl.tools.mae_visualize', str(tmp_path / 'missing.png'), f'--workdir={workdir}',
                     f'--out={out}'], check=False)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith('missing.png: no such image file')
  proc = run_python(['-m', 'jssl.tools.mae_visualize', '--index=359', f'--workdir={workdir}', f'--out={out}'],
                    check=False)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
      "mae_visualize: error: --index=359: the run's val data (digits) has 359 images: 0..358")


@pytest.mark.heavy  # the bench's compile path stays in CI: test_bench_memory_only
def test_bench_reports_figures(tmp_path):
  out = tmp_path / 'bench.json'
  # NPID: the synthetic batch must carry dataset indices for its memory bank
  run_python(['-m', 'jssl.bench', '--config=configs/npid.py:demo', '--config.batch_size=16', '--steps=2',
              f'--json={out}'])
  result = json.loads(out.read_text())
  assert result['ms_per_step'] > 0 and result['img_per_s'] > 0 and result['gflops_per_step'] > 0
  assert result['compiled_memory_mb']['temporaries'] > 0
  assert result['num_records'] == 1438  # the embedded digits' training split, counted (--num_records overrides)


@pytest.mark.slow
def test_bench_memory_only(tmp_path):
  out = tmp_path / 'memory.json'
  run_python(['-m', 'jssl.bench', '--config=configs/mae.py:demo', '--config.batch_size=8',
              '--config.backbone.kwargs.depth=1', '--config.param_sharding=fsdp', '--config.mesh.data=1',
              '--config.mesh.fsdp=-1', '--memory_only', f'--json={out}'], devices=2)
  result = json.loads(out.read_text())
  assert result['mesh'] == {'data': 1, 'fsdp': 2} and result['batch_per_device'] == 4
  assert 'ms_per_step' not in result  # compiled, not run
  # the donated state comes back as the outputs; the arguments add the batch shard
  assert result['arguments_mb'] >= result['state_mb_per_device'] == result['aliased_mb'] > 0
  assert result['temporaries_mb'] > 0 and result['peak_estimate_mb'] > result['arguments_mb']


@pytest.mark.slow
def test_bench_times_the_clustering(tmp_path):
  out = tmp_path / 'kmeans.json'
  run_python(['-m', 'jssl.bench', '--kmeans=1000,32,16,10', f'--json={out}'])
  result = json.loads(out.read_text())
  assert result['features'] == '1000 x 32 -> 16' and result['clusters'] == 10
  assert result['pca_whiten_s'] > 0 and result['kmeans_20_iterations_s'] > 0
  assert result['imagenet_1.28Mx256_k10000_20it_estimate_s'] > result['kmeans_20_iterations_s']
  proc = run_python(['-m', 'jssl.bench', '--kmeans=10,32,64,5'], check=False)
  assert proc.returncode == 2 and '--kmeans: need 0 < D <= D_IN' in proc.stderr
