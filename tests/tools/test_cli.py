"""Every command line's --help: exit code 0, the tool's whole description (its module docstring, not a line cut
mid-sentence) on stdout, nothing on stderr, and no jax / torch imported to print it (help starts in a fraction of a
second instead of after jax's import)."""
import ast
import importlib.util
import json

import pytest

from tests.conftest import run_python

CLIS = ['jssl.main', 'jssl.bench', 'jssl.convert', 'jssl.convert.dalle', 'jssl.evaluate.svm_voc',
        'jssl.tools.extract_backbone', 'jssl.tools.extract_features', 'jssl.tools.mae_visualize',
        'jssl.tools.param_count', 'jssl.tools.publish_model', 'jssl.tools.tsne']
HEAVY = ('jax', 'torch', 'flax', 'orbax', 'tensorflow')

# runs the module as `python -m MODULE --help` does, then reports which heavy packages that imported
HELP = """
import atexit, json, runpy, sys
atexit.register(lambda: print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(%r))), file=sys.stderr))
sys.argv = [%r] + sys.argv[1:]
runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)
"""


def words(text):
  return ' '.join(text.split())


def docstring(module):
  """The docstring of what `python -m module` runs (a package's __main__), read without importing it."""
  spec = importlib.util.find_spec(module)
  path = spec.origin.replace('__init__.py', '__main__.py') if spec.submodule_search_locations else spec.origin
  with open(path) as f:
    return ast.get_docstring(ast.parse(f.read()))


@pytest.mark.parametrize('module', CLIS)
@pytest.mark.parametrize('flag', ['--help', '-h'])
def test_help_exits_0_with_the_whole_text_and_without_jax(module, flag):
  proc = run_python(['-c', HELP % (HEAVY, module), flag], check=False, timeout=120)
  *noise, imported = proc.stderr.strip().splitlines()
  assert proc.returncode == 0 and not noise, (proc.returncode, proc.stderr[-3000:])
  assert words(docstring(module)) in words(proc.stdout), proc.stdout[:2000]
  assert json.loads(imported) == [], f'{module} {flag} imported {imported}'


def test_helpfull_exits_0():
  proc = run_python(['-m', 'jssl.main', '--helpfull'], check=False, timeout=120)
  assert proc.returncode == 0 and '--workdir' in proc.stdout and '--verbosity' in proc.stdout, proc.stderr[-2000:]
