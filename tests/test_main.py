"""The command line: configuration mistakes end with one line naming the fault and exit code 2, found before
anything is compiled or written; a resume is checked against the run's config.json."""
import json
import os
import shutil

import pytest

from tests.conftest import NO_EVALS_ARGS, run_python


def run_main(*args):
  return run_python(['-m', 'jssl.main', *args], check=False, timeout=300)


def assert_one_line_error(proc, *needles):
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  errors = [l for l in proc.stderr.splitlines() if l.startswith('jssl: error:')]
  assert len(errors) == 1, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  for needle in needles:
    assert needle in errors[0], errors[0]


@pytest.mark.parametrize('args,needles', [
    (['--config.optimizer.lrr=1'], ["'config.optimizer.lrr'", 'valid fields of config.optimizer', 'lr,']),
    (['--config.batch_size=abc'], ['--config.batch_size=abc']),
    (['--config.method=simclrr'], ["config.method: unknown value 'simclrr'", 'valid:', 'mae', 'simclr']),
    (['--config.backbone.name=resnet9'], ["config.backbone.name: unknown value 'resnet9'", 'resnet18']),
    (['--config.optimizer.name=adam'], ["config.optimizer.name: unknown value 'adam'", 'adamw, lars, sgd']),
    (['--config.data.name=imagenett'], ["config.data.name: unknown value 'imagenett'", 'imagefolder']),
    (['--config.nonfinite_max_skipped=1.5'], ['config.nonfinite_max_skipped must be a fraction in [0, 1], got 1.5']),
])
def test_config_errors(tmp_path, args, needles):
  proc = run_main('--config=configs/simclr.py:demo', f'--workdir={tmp_path}', *args)
  assert_one_line_error(proc, *needles)


def test_unknown_variant_and_missing_file(tmp_path):
  assert_one_line_error(run_main('--config=configs/mae.py:vit_xx', f'--workdir={tmp_path}'),
                        "unknown variant 'vit_xx'", 'demo')
  assert_one_line_error(run_main('--config=configs/nope.py', f'--workdir={tmp_path}'), 'configs/nope.py')


@pytest.mark.parametrize('config', ['configs/simclr.py', 'configs/mae.py'])
def test_missing_imagenet_names_location_and_demo(tmp_path, config):
  proc = run_main(f'--config={config}', f'--workdir={tmp_path}', f'--config.data.root={tmp_path}/imagenet')
  assert_one_line_error(proc, f'{tmp_path}/imagenet', 'config.data.root', ':demo')
  assert not (tmp_path / 'checkpoints').exists()


def test_sobel_without_two_channel_backbone(tmp_path):
  assert_one_line_error(run_main('--config=configs/odc.py:demo', f'--workdir={tmp_path}',
                                 '--config.model.with_sobel=True'),
                        'config.model.with_sobel', 'config.backbone.kwargs.in_channels=2')


# --- resume, late checks, batches (docs/staying_up.md) ----------------------------------------------------------
SMALL = ['--config=configs/simclr.py:demo', '--config.backbone.kwargs.num_filters=8',
         '--config.model.neck_hid_channels=32', '--config.model.neck_out_channels=16', '--config.batch_size=64',
         *NO_EVALS_ARGS, '--config.evals.knn.every=0', '--config.log_every=1']


def files_of(workdir):
  """{relative path: bytes} of everything in `workdir`."""
  return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A finished 2-step run: config.json, checkpoints/2, results.json."""
  workdir = tmp_path_factory.mktemp('trained')
  proc = run_main(*SMALL, f'--workdir={workdir}', '--config.total_steps=2')
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def copy_of(trained, tmp_path):
  shutil.copytree(trained, tmp_path / 'run')
  return tmp_path / 'run'


def test_refused_resume_leaves_the_workdir_byte_identical(trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  before = files_of(workdir)
  proc = run_main(*SMALL, f'--workdir={workdir}', '--config.total_steps=2', '--config.backbone.kwargs.num_filters=16',
                  '--config.optimizer.lr=0.1')  # the lr alone would be free to change
  assert_one_line_error(proc)
  assert proc.stderr.strip() == (
      f'jssl: error: resume of {workdir} (step 2) refused, the config changes what is trained: '
      f'config.backbone.kwargs.num_filters 8 -> 16 (against the run\'s {workdir}/config.json); resume with the '
      f'run\'s config, or continue the checkpoint anyway with --config.allow_changed=backbone.kwargs.num_filters, '
      f'or use a new --workdir')
  assert files_of(workdir) == before


def test_resume_with_changed_lr_and_length_prints_the_changes_and_keeps_the_previous_files(trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  before = files_of(workdir)
  proc = run_main(*SMALL, f'--workdir={workdir}', '--config.total_steps=3', '--config.optimizer.lr=0.01',
                  '--config.model.temperature=0.2', '--config.allow_changed=model.temperature')
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  start = lines.index('resumed from step 2 (%s/checkpoints)' % workdir)
  assert lines[start + 1:start + 6] == [
      f'the config differs from the run\'s {workdir}/config.json in 3 fields:',
      '  config.model.temperature: 0.1 -> 0.2 (config.allow_changed)',
      '  config.optimizer.lr: 0.6 -> 0.01',
      '  config.total_steps: 2 -> 3',
      f'the previous config.json is kept as {workdir}/config.until_step_2.json']
  assert f'the previous results.json (step 2) is kept as {workdir}/results.step_2.json' in lines
  assert any(l.startswith('step 3/3 ') for l in lines)
  after = files_of(workdir)
  assert after['config.until_step_2.json'] == before['config.json']
  assert after['results.step_2.json'] == before['results.json']
  config = json.loads(after['config.json'])
  assert (config['optimizer']['lr'], config['total_steps'], config['model']['temperature']) == (0.01, 3, 0.2)
  assert json.loads(after['results.json'])['steps'] == 3


def image_folder(root, splits=('train',), per_class=2):
  from PIL import Image
  for split in splits:
    for label in ('a', 'b'):
      (root / split / label).mkdir(parents=True)
      for i in range(per_class):
        Image.new('RGB', (8, 8), (40 * i, 100, 200)).save(root / split / label / f'{i}.png')
  return root


@pytest.mark.parametrize('case', ['digits_val_split', 'imagefolder_val_split', 'init_backbone_missing',
                                  'init_backbone_without_checkpoint'])
def test_missing_inputs_are_reported_before_anything_is_built(tmp_path, case):
  """Each of these used to surface only after training (the val split: at the end-of-run kNN / val accuracy) or
  after compiling (config.init.backbone)."""
  workdir = tmp_path / 'run'
  args, expected = {
      'digits_val_split': (['--config.data.val_split=nope', '--config.evals.knn.at_end=True'],
                           "data not found: digits has no split 'nope' (config.data.val_split); valid: test, train"),
      'imagefolder_val_split': (
          ['--config.data.name=imagefolder', f'--config.data.root={image_folder(tmp_path / "data")}',
           '--config.batch_size=4', '--config.evals.knn.every=1', '--config.total_steps=2'],  # main: read after step 1
          f'data not found: {tmp_path}/data/test (config.data.val_split); point --config.data.val_split at the '
          f'sub-folder of {tmp_path}/data holding the val images, or run the \':demo\' variant which uses the '
          f'embedded digits dataset'),
      'init_backbone_missing': ([f'--config.init.backbone={tmp_path}/none'],
                                f'config.init.backbone: {tmp_path}/none: does not exist (expected a jssl workdir, '
                                f'an imported backbone directory or a published model file)'),
      'init_backbone_without_checkpoint': (
          [f'--config.init.backbone={tmp_path}'],
          f'config.init.backbone: {tmp_path}: a jssl workdir without checkpoints (its run has not saved one)'),
  }[case]
  (tmp_path / 'config.json').write_text(json.dumps({'backbone': {'name': 'resnet18', 'kwargs': {'num_filters': 8}}}))
  proc = run_main(*SMALL, f'--workdir={workdir}', '--config.total_steps=1', *args)  # the last override counts
  assert_one_line_error(proc)
  assert proc.stderr.strip() == f'jssl: error: {expected}'
  assert not workdir.exists()  # nothing compiled, nothing written


def test_batch_larger_than_the_training_set(tmp_path):
  proc = run_main(*SMALL, f'--workdir={tmp_path / "run"}', '--config.total_steps=1', '--config.batch_size=2048')
  assert_one_line_error(proc)
  assert proc.stderr.strip() == ("jssl: error: config.batch_size: 2048 is larger than the training set (1438 images, "
                                 "DigitsSource(split='train', size=32)); valid: at most 1438")
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('field', ['batch_size', 'eval.batch_size'])
def test_batch_not_divisible_by_the_devices_fails_before_compiling(tmp_path, field):
  proc = run_python(['-m', 'jssl.main', *SMALL, f'--workdir={tmp_path / "run"}', '--config.total_steps=1',
                     '--config.evals.knn.at_end=True', f'--config.{field}=100'], devices=8, check=False, timeout=300)
  assert_one_line_error(proc)
  assert proc.stderr.strip() == (f'jssl: error: config.{field}: 100 does not split evenly over the 8 devices; '
                                 f'nearest valid: 96 or 104')
  assert not (tmp_path / 'run').exists()


def test_eval_without_checkpoint_writes_nothing(tmp_path):
  (tmp_path / 'empty').mkdir()
  for workdir in (tmp_path / 'empty', tmp_path / 'missing'):
    proc = run_main('--config=configs/simclr.py:demo', f'--workdir={workdir}', '--mode=eval')
    assert_one_line_error(proc)
    assert proc.stderr.strip() == (f'jssl: error: --workdir: no checkpoint in {workdir}/checkpoints to evaluate; '
                                   f'train first (--mode=train), or point --workdir at a trained run')
  assert os.listdir(tmp_path / 'empty') == [] and not (tmp_path / 'missing').exists()


QUIET_LOGS = r'''
import logging as python_logging, sys, tempfile
from absl import logging
from tensorboardX import SummaryWriter
from jssl import main
from jssl.train import guard
main.flags.FLAGS(['jssl.main'])  # what app.run does
logging.use_absl_handler()
main.quiet_logs()
guard.lock_workdir('gs://bucket/run')  # one of jssl's own warnings
writer = SummaryWriter(tempfile.mkdtemp())
writer.add_scalar('train/loss', float('nan'), 1)  # what a config.nonfinite='skip' run writes
writer.close()
python_logging.getLogger('some.library').warning('a library warning')
logging.info('INFO chatter')
'''


def test_quiet_logs_jssl_warnings_plain_library_warnings_kept():
  """Without --verbosity: jssl's own warnings are `jssl: warning:` lines like its errors, tensorboardX does not warn
  about the NaN it is knowingly given, another library's warning keeps absl's format, INFO is off."""
  lines = run_python(QUIET_LOGS).stderr.strip().splitlines()
  assert len(lines) == 2, lines
  assert lines[0] == 'jssl: warning: workdir gs://bucket/run is not local: no lock against a second run on it'
  assert lines[1].startswith('W') and lines[1].endswith('] a library warning'), lines[1]
