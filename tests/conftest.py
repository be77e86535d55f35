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
_CACHE_ENV = 'JSSL_TEST_XLA_CACHE'

# Tests compile far more than they run: hundreds of programs, most run for one or a few steps on toy shapes. LLVM's
# optimization of the generated CPU code is about two thirds of each compile (the SimCLR demo's init 19 s -> 3 s of
# CPU, its train step 16 s -> 8 s; 4 test files' CPU time 366 s -> 205 s). It changes no HLO: XLA's graph passes,
# fusion, sharding and buffer assignment (the memory figures tests assert) are those of a normal run; unoptimized
# loops may round the last bit differently. Steps run ~10x slower, so subprocesses that run many steps (the demos,
# the SIGTERM and kill-and-resume runs) or compare 1 and 8 devices bit for bit pass `optimize=True`.
TEST_XLA_FLAGS = '--xla_backend_optimization_level=0'


def pytest_configure(config):
  """The pytest process's own flags and compilation cache (its jax is not initialized yet). Not at import: test
  subprocesses import this module for its helpers, and their flags are run_python's."""
  if TEST_XLA_FLAGS not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + TEST_XLA_FLAGS).strip()
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', xla_cache_dir())


# a run that evaluates nothing (the :demo configs end with kNN and a quick linear probe)
NO_EVALS = {'evals.knn.at_end': False, 'evals.quick_linear.at_end': False}
NO_EVALS_ARGS = [f'--config.{k}={v}' for k, v in NO_EVALS.items()]


def xla_flags(devices=1, optimize=False):
  """XLA_FLAGS for a test's subprocess with `devices` CPU devices."""
  return f'--xla_force_host_platform_device_count={devices}' + ('' if optimize else ' ' + TEST_XLA_FLAGS)


def xla_cache_dir():
  """One XLA compilation cache for the test session: made by the first pytest process (xdist's controller, whose
  environment its workers inherit), used by the workers, their subprocesses and the tests in them, so that a
  program compiled once (the same small demo step in a resume test's killed, resumed and uninterrupted runs, or
  in two test files) is read back instead of compiled again. Removed when the process that made it exits."""
  if os.environ.get(_CACHE_ENV):
    return os.environ[_CACHE_ENV]
  if not _xla_cache:
    _xla_cache.append(tempfile.mkdtemp(prefix='jssl-test-xla-cache-'))
    atexit.register(shutil.rmtree, _xla_cache[0], ignore_errors=True)
    os.environ[_CACHE_ENV] = _xla_cache[0]
  return _xla_cache[0]


def subprocess_env(devices=1, optimize=False, **env):
  """The environment of a test's subprocess: `devices` CPU devices, the repo importable, the session's XLA cache
  (a relaunched or repeated run reuses what an earlier one compiled); `optimize`: LLVM-optimized CPU code
  (TEST_XLA_FLAGS); `env` added last."""
  full_env = dict(os.environ)
  full_env['XLA_FLAGS'] = xla_flags(devices, optimize)
  full_env['PYTHONPATH'] = ROOT + os.pathsep + full_env.get('PYTHONPATH', '')
  full_env.setdefault('JAX_PLATFORMS', 'cpu')
  full_env.setdefault('JAX_COMPILATION_CACHE_DIR', xla_cache_dir())
  full_env.update(env)
  return full_env


def run_python(code_or_args, devices=1, env=None, timeout=900, check=True, optimize=False):
  """Runs `python -c code` (str) or `python args...` (list) in a fresh process (subprocess_env)."""
  args = [sys.executable, '-c', code_or_args] if isinstance(code_or_args, str) else [sys.executable] + code_or_args
  proc = subprocess.run(args, cwd=ROOT, env=subprocess_env(devices, optimize, **(env or {})), capture_output=True,
                        text=True, timeout=timeout)
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
