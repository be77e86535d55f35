"""configs/: every config file and variant builds and passes check_config; each docstring carries its demo block;
README.md's and docs/evaluation.md's generated tables match the docstrings (tools/methods_table.py); a config loads
by its path from any working directory, with the same errors."""
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from jssl.config import check_config, load_config_file
from tests.conftest import ROOT


def load_tool():
  spec = importlib.util.spec_from_file_location('methods_table', os.path.join(ROOT, 'tools', 'methods_table.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


tool = load_tool()
METHOD_CONFIGS = tool.config_files('configs')
CONFIGS = METHOD_CONFIGS + tool.config_files('configs/eval')


def spec(path, variant=''):
  rel = path.relative_to(ROOT).as_posix()
  return f'{rel}:{variant}' if variant else rel


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.stem)
def test_every_variant_builds_and_passes_check_config(path):
  variants = tool.read_config(path)['variants']
  assert variants and all(isinstance(v, str) and v for v in variants), f'{path}: VARIANTS'
  for variant in ('',) + tuple(variants):
    config = load_config_file(spec(path, variant))
    if not config.backbone.name:  # evaluators take the architecture of config.init.backbone at run time
      config.backbone.name = 'resnet50'
    check_config(config)


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.stem)
def test_docstring_has_the_demo_block(path):
  info = tool.read_config(path)
  assert info['demos'], f'{path}: no "Demo:" line in the docstring'
  for demo in info['demos']:
    assert all(demo.get(key) for key in tool.DEMO_KEYS), (path, demo)
    command, _, variant = demo['Demo'].partition(':')
    assert command == f'python -m jssl.main --config={spec(path)}', demo['Demo']
    assert variant.split()[0] in info['variants'] and ' --workdir=workdirs/' in variant, demo['Demo']
    assert '%' in demo['Demo result'] and 'digits test split' in demo['Demo result'], demo['Demo result']
  if path in METHOD_CONFIGS:
    assert tool.HEADER.match(info['doc']), f'{path}: first line not "<Method>, <backbone>, the reference recipe `...`"'
    assert info.get('Paper') and len(info['demos']) == 1, path
    assert (pathlib.Path(ROOT) / info.get('Page', f'docs/methods/{path.stem}.md')).is_file(), path


def test_generated_tables_are_up_to_date():
  """Fails when README.md or docs/evaluation.md differs from what `python tools/methods_table.py` writes."""
  for file, (name, table) in tool.TABLES.items():
    text = (pathlib.Path(ROOT) / file).read_text()
    assert tool.updated(text, name, table()) == text, f'{file} is out of date: run python tools/methods_table.py'
  assert tool.main(['--check']) == 0


def test_a_stale_table_is_detected_and_rewritten():
  text = (pathlib.Path(ROOT) / 'README.md').read_text()
  row = next(line for line in text.splitlines() if line.startswith('| SimCLR |'))
  stale = text.replace(row, row.replace('%', '0%', 1))
  fixed = tool.updated(stale, 'methods table', tool.methods_table())
  assert stale != text and fixed == text


def test_unknown_variant_names_the_file_and_the_valid_ones():
  with pytest.raises(ValueError, match=r"^configs/eval/linear\.py: unknown variant 'nope'; valid: demo, demo_mae, "
                                       r"mae, multihead$"):
    load_config_file('configs/eval/linear.py:nope')


def test_configs_load_by_path_from_another_directory(tmp_path):
  """From another working directory (the package `configs` found as an install finds it): jssl's loader and
  ml_collections' config_flags give the same config, and a bad variant names the file as the repo does."""
  code = f"""
import sys
from absl import flags
from ml_collections import config_flags
from jssl.config import load_config_file
path = {os.path.join(ROOT, 'configs', 'mocov1.py')!r}
holder = config_flags.DEFINE_config_file('config')
flags.FLAGS([sys.argv[0], f'--config={{path}}:demo'])
assert holder.value.to_dict() == load_config_file(path + ':demo').to_dict()
assert holder.value.method == 'mocov1' and holder.value.data.name == 'digits'
try:
  load_config_file({os.path.join(ROOT, 'configs', 'mae.py')!r} + ':vit_xx')
except ValueError as e:
  print(e)
"""
  env = {**os.environ, 'PYTHONPATH': ROOT}
  proc = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == "configs/mae.py: unknown variant 'vit_xx'; valid: demo, vit_h, vit_l"


def test_configs_is_installed_with_jssl():
  """`pip install -e .` (or a plain install) ships the package `configs`, so `from configs import common` in a config
  loaded by path works from any working directory, not only from the repo root."""
  import configparser
  import setuptools
  setup = configparser.ConfigParser()
  setup.read(os.path.join(ROOT, 'setup.cfg'))
  include = [name.strip() for name in setup['options.packages.find']['include'].split(',')]
  packages = setuptools.find_packages(ROOT, include=include)
  assert 'configs' in packages and 'jssl' in packages and not any(p.startswith('tests') for p in packages)
