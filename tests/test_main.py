"""The command line: configuration mistakes end with one line naming the fault and exit code 2."""
import pytest

from tests.conftest import run_python


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


def test_sobel_without_two_channel_backbone_and_eval_without_checkpoint(tmp_path):
  assert_one_line_error(run_main('--config=configs/odc.py:demo', f'--workdir={tmp_path}',
                                 '--config.model.with_sobel=True'),
                        'config.model.with_sobel', 'config.backbone.kwargs.in_channels=2')
  assert_one_line_error(run_main('--config=configs/simclr.py:demo', f'--workdir={tmp_path}', '--mode=eval'),
                        '--workdir', 'no checkpoint', str(tmp_path))


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
