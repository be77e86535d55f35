#!/usr/bin/env bash
# (Copy of the shared team tool, so a fresh checkout can run the parity tests.)
# Installs the PyTorch reference stack into the active Python environment:
#   torch + torchvision (CPU-capable build found on this machine's disk), timm,
#   and OpenMMLab's mmpretrain 1.2.0 (the maintained successor of MMSelfSup,
#   which holds every self-supervised algorithm of the reference docs).
# Use it for parity tests: build the same model in both libraries, copy the
# weights across with the project's own converter, and compare outputs/losses.
# mmcv is installed as mmcv-lite (no compiled ops); mmpretrain's self-supervised
# models, backbones, necks, heads and losses import and run on the CPU with it.
set -euo pipefail
PY=${PYTHON:-python}
$PY -m pip install -q "torch==2.14.1" "torchvision==0.29.1" timm
# mmcv-lite 2.2.0 is an sdist whose setup.py imports pkg_resources (removed in setuptools 82); it is built with this
# environment's setuptools (--no-build-isolation: an isolated build would take the newest), which torch 2.14.1
# needs at >= 77.0.3
$PY -m pip install -q "setuptools>=77.0.3,<82" wheel importlib_metadata mat4py einops modelindex rich "mmengine==0.10.7"
$PY -m pip install -q --no-build-isolation "mmcv-lite==2.2.0"
$PY -m pip install -q --no-deps "mmpretrain==1.2.0"
$PY - <<'PY'
import warnings
warnings.filterwarnings('ignore', 'Fail to import ``MultiScaleDeformableAttention``')  # mmcv-lite: no compiled ops
import torch, timm, torchvision, mmpretrain, mmcv
from mmpretrain.utils import register_all_modules
register_all_modules()
print(f"reference stack ready: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"timm {timm.__version__}, mmpretrain {mmpretrain.__version__}, mmcv {mmcv.__version__}")
PY
