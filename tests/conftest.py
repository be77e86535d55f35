"""Shared test helpers. Tests run from the repo root (`python -m pytest`), 1 CPU device in-process; anything
multi-device or multi-process runs in a subprocess with its own XLA_FLAGS."""
import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_xla_cache = []


def xla_cache_dir():
  """One XLA compilation cache per test process (xdist worker), shared by its subprocesses: a resume test's
  killed, resumed and uninterrupted runs compile the same step once instead of three times. Removed at exit."""
  if not _xla_cache:
    _xla_cache.append(tempfile.mkdtemp(prefix='jssl-test-xla-cache-'))
    atexit.register(shutil.rmtree, _xla_cache[0], ignore_errors=True)
  return _xla_cache[0]


def run_python(code_or_args, devices=1, env=None, timeout=900, check=True):
  """Runs `python -c code` (str) or `python args...` (list) in a fresh process with `devices` CPU devices."""
  full_env = dict(os.environ)
  full_env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  full_env['PYTHONPATH'] = ROOT + os.pathsep + full_env.get('PYTHONPATH', '')
  full_env.setdefault('JAX_PLATFORMS', 'cpu')
  full_env.setdefault('JAX_COMPILATION_CACHE_DIR', xla_cache_dir())
  full_env.update(env or {})
  args = [sys.executable, '-c', code_or_args] if isinstance(code_or_args, str) else [sys.executable] + code_or_args
  proc = subprocess.run(args, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f'subprocess failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}')
  return proc


def run_cli(main, *args):
  """A CLI's `main(argv)` in-process: (exit code, stdout, stderr)."""
  import contextlib
  import io
  out, err = io.StringIO(), io.StringIO()
  code = 0
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      main([str(a) for a in args])
    except SystemExit as e:
      code = e.code
  return code, out.getvalue(), err.getvalue()


def apply_overrides(config, overrides):
  """Sets {'a.b.0.c': value} (dotted keys; integers index lists) in an ml_collections config."""
  for key, value in overrides.items():
    *path, last = key.split('.')
    node = config
    for k in path:
      node = node[int(k)] if isinstance(node, list) else node[k]
    if isinstance(node, list):
      node[int(last)] = value
    else:
      node[last] = value
  return config


@pytest.fixture
def root():
  return ROOT
