"""tools/install_reference.sh: the setuptools it pins is one that the torch it pins accepts (pip ended the script
with a resolver error while it pinned setuptools < 70 and torch 2.14.1 requires >= 77.0.3) and one that still has
pkg_resources, which mmcv-lite 2.2.0's setup.py imports (removed in setuptools 82)."""
import importlib.metadata
import os
import re

import pytest
from packaging.requirements import Requirement

from tests.conftest import ROOT


def test_setuptools_pin_fits_torch_and_mmcv_lite():
  with open(os.path.join(ROOT, 'tools', 'install_reference.sh')) as f:
    script = f.read()
  torch_version = re.search(r'"torch==([^"]+)"', script).group(1)
  pinned = Requirement(re.search(r'"(setuptools[^"]*)"', script).group(1)).specifier
  if importlib.metadata.version('torch').split('+')[0] != torch_version:
    pytest.skip(f'torch {torch_version} (the script\'s) is not installed: its requirements are not known here')
  torch_needs = next(Requirement(r).specifier for r in importlib.metadata.requires('torch')
                     if Requirement(r).name == 'setuptools')
  lowest = next(s.version for s in torch_needs if s.operator == '>=')
  assert pinned.contains(lowest), (str(pinned), str(torch_needs))  # some setuptools satisfies both
  assert not pinned.contains('82.0.0')
