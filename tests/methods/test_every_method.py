"""The end-to-end checks every method of the registry gets, parametrized over `jssl.methods.base.METHODS`: two steps
on 1 device and on 8 (a 2 x 4 data x FSDP mesh) agree (`assert_devices_match`), a run killed like kill -9 resumes to
bit-identical state (`assert_resume_exact`), and the `:demo` runs through the CLI (`check_demo`).

A method's test file, tests/methods/test_<name>.py, says how to make its `:demo` small for them:

    DEVICES                overrides for the 1-vs-8-device steps (batch 16)
    DEVICE_MESHES          optional: the meshes compared (default ('fsdp',); 'dp8': 8-way data parallelism)
    METHOD_STATE_LEAVES    optional: at least this many method-state leaves (EMA targets, queues, banks) compared
    METHOD_STATE_ATOL      optional: their elementwise atol (default 1e-5)
    RESUME                 overrides for kill-and-resume, with batch_size and total_steps
    RESUME_KILL_AT         optional: the steps killed after (default (15,))

A new method gets all three from its file name; one whose test file lacks DEVICES or RESUME fails here, saying so.

Which run in CI: those named below, each for a mechanism no other CI test covers. Every other method's check is
`heavy` (`python -m pytest -m heavy`): its mechanisms are the CI ones', as its entry in HEAVY says."""
import importlib

import pytest

from jssl.methods.base import ALIASES, EVALUATORS, METHODS
from tests.test_demo import check_demo
from tests.train.test_resume import assert_resume_exact
from tests.train.test_sharding import assert_devices_match

PRETRAINING = sorted(m for m in METHODS if m not in EVALUATORS)

DEVICES_IN_CI = {
    'simclr': 'NT-Xent over the global batch, BatchNorm statistics across devices',
    'mae': 'a ViT sharded by FSDP with remat; plain 8-way data parallelism too',
    'mocov2': 'a queue and an EMA key encoder; shuffle-BN groups from a permutation of the global batch',
    'odc': 'memory banks, their clustering and the refill of empty clusters across devices',
    'simmim': 'a Swin; masks drawn on device from the step key',
}
RESUME_IN_CI = {
    'mocov2': 'three kills: params, optimizer, BN state, a queue with its pointer, an EMA encoder, an epoch boundary',
    'deepcluster': 'mid-epoch: pseudo-labels, the per-epoch sampling plan and the loader position',
}
# the demos of SimCLR and MAE run in CI in tests/test_demo.py (the CLI end to end, --mode=eval, MAE's picture)
HEAVY = {
    'barlowtwins': "devices: a batch-wide cross-correlation, as SimCLR's NT-Xent",
    'byol': "devices: an EMA target, as MoCo v2's key encoder",
    'cae': "devices: an EMA teacher (MoCo v2) and block masks on device (SimMIM)",
    'deepcluster': "devices: a classification step (its clustering on 8 devices is in CI: test_deepcluster.py)",
    'densecl': "devices: queues and a key encoder, as MoCo v2's",
    'interclr': "devices: a memory bank and its clustering (ODC), a queue and a key encoder (MoCo v2)",
    'maskfeat': "devices: a ViT (MAE), masks from the step key (SimMIM)",
    'mocov1': "MoCo v2's code with a linear neck",
    'mocov3': "devices: EMA targets, as MoCo v2's",
    'npid': "devices: a memory bank, as ODC's",
    'relative_loc': "devices: a ResNet classification step, as SimCLR's batch statistics",
    'rotation_pred': "devices: a ResNet classification step, as SimCLR's batch statistics",
    'simsiam': "devices: a predictor over BatchNorm statistics, as SimCLR's",
    'swav': "devices: a queue (MoCo v2) and Sinkhorn over the global batch (SimCLR's batch-wide loss)",
}
# resume: every array of the state comes back through the same checkpoint code; MoCo v2's and DeepCluster's runs
# cover method-state arrays and epoch-level plans


def small(method, *names):
  """The test file's overrides `names` (its module attributes) for `method`; a clear failure when it lacks one."""
  module = importlib.import_module(f'tests.methods.test_{ALIASES.get(method, method)}')
  missing = [n for n in names if not hasattr(module, n)]
  assert not missing, (f'tests/methods/test_{ALIASES.get(method, method)}.py defines no {", ".join(missing)}: say '
                       f'how to make configs/{method}.py:demo small for these checks (see {__name__})')
  return module


def cases(in_ci):
  return [m if m in in_ci else pytest.param(m, marks=pytest.mark.heavy) for m in PRETRAINING]


def test_every_pretraining_method_is_covered():
  assert set(PRETRAINING) == set(DEVICES_IN_CI) | set(HEAVY), 'a method without its CI check or its reason for heavy'


@pytest.mark.slow
@pytest.mark.parametrize('method', cases(DEVICES_IN_CI))
def test_eight_devices_match_one_device(method):
  module = small(method, 'DEVICES')
  out = assert_devices_match(f'configs/{method}.py:demo', module.DEVICES,
                             meshes=getattr(module, 'DEVICE_MESHES', ('fsdp',)),
                             method_state_atol=getattr(module, 'METHOD_STATE_ATOL', 1e-5))
  assert len(out['one']['method_state_sums']) >= getattr(module, 'METHOD_STATE_LEAVES', 0)


@pytest.mark.slow
@pytest.mark.parametrize('method', cases(RESUME_IN_CI))
def test_killed_run_resumes_exactly(tmp_path, method):
  module = small(method, 'RESUME')
  assert_resume_exact(tmp_path, f'configs/{method}.py:demo', module.RESUME,
                      kill_at=getattr(module, 'RESUME_KILL_AT', (15,)))


@pytest.mark.slow
@pytest.mark.parametrize('method', cases(()))
def test_demo(tmp_path, method):
  check_demo(tmp_path, f'configs/{method}.py:demo')
