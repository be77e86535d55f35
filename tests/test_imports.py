"""jssl's import graph, read from the source (no module is imported): every `import` and `from ... import` of a
jssl module, at module level or inside a function, is an edge. No cycle (an import written inside a function
hides one from Python, not from a reader), and the layers stay apart: the converters and the method zoo use no
training code."""
import ast
import os

from tests.conftest import ROOT


def import_graph(root=ROOT):
  """{module: {jssl modules it imports}}. `from a.b import c` names a.b, and a.b.c where that is a module."""
  paths = {}
  for directory, _, files in os.walk(os.path.join(root, 'jssl')):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(directory, name)
        module = os.path.relpath(path, root)[:-3].replace(os.sep, '.')
        paths[module[:-len('.__init__')] if module.endswith('.__init__') else module] = path
  graph = {}
  for module, path in paths.items():
    package = module if path.endswith('__init__.py') else module.rpartition('.')[0]
    named = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
      if isinstance(node, ast.Import):
        named.update(alias.name for alias in node.names)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:  # relative: from the package, one level up per extra dot
          parent = package.split('.')[:len(package.split('.')) - node.level + 1]
          base = '.'.join(parent + ([base] if base else []))
        named.add(base)
        named.update(f'{base}.{alias.name}' for alias in node.names)
    graph[module] = {m for m in named if m in paths and m != module}
  return graph


def find_cycle(graph):
  """One import cycle [a, b, ..., a], or None."""
  state, stack = {}, []

  def visit(module):
    state[module] = 'open'
    stack.append(module)
    for target in sorted(graph[module]):
      if state.get(target) == 'open':
        return stack[stack.index(target):] + [target]
      if target not in state:
        cycle = visit(target)
        if cycle:
          return cycle
    stack.pop()
    state[module] = 'done'
    return None

  for module in sorted(graph):
    if module not in state:
      cycle = visit(module)
      if cycle:
        return cycle
  return None


def reachable(graph, start):
  seen, todo = set(), [start]
  while todo:
    for target in graph[todo.pop()]:
      if target not in seen:
        seen.add(target)
        todo.append(target)
  return seen


def imports_of(graph, package, forbidden):
  """'a -> b' for each module under `package` that imports one under `forbidden`."""
  inside = lambda module, pkg: module == pkg or module.startswith(pkg + '.')
  return sorted(f'{m} -> {t}' for m in graph if inside(m, package) for t in graph[m] if inside(t, forbidden))


def test_the_graph_sees_imports_inside_functions(tmp_path):
  (tmp_path / 'jssl' / 'sub').mkdir(parents=True)
  for name in ('jssl/__init__.py', 'jssl/sub/__init__.py'):
    (tmp_path / name).write_text('')
  (tmp_path / 'jssl' / 'a.py').write_text('def f():\n  from jssl.sub import b\n')
  (tmp_path / 'jssl' / 'sub' / 'b.py').write_text('from .c import x\n')
  (tmp_path / 'jssl' / 'sub' / 'c.py').write_text('import os\n\ndef g():\n  import jssl.a\n')
  graph = import_graph(str(tmp_path))
  assert graph['jssl.a'] == {'jssl.sub', 'jssl.sub.b'} and graph['jssl.sub.b'] == {'jssl.sub.c'}
  assert find_cycle(graph) == ['jssl.a', 'jssl.sub.b', 'jssl.sub.c', 'jssl.a']
  (tmp_path / 'jssl' / 'sub' / 'c.py').write_text('import os\n')
  assert find_cycle(import_graph(str(tmp_path))) is None


def test_no_import_cycle():
  cycle = find_cycle(import_graph())
  assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_converters_import_no_training_code():
  graph = import_graph()
  assert imports_of(graph, 'jssl.convert', 'jssl.train') == []
  loops = sorted(m for m in graph if m.startswith('jssl.convert') and 'jssl.train.loop' in reachable(graph, m))
  assert loops == [], f'reach jssl.train.loop: {loops}'


def test_methods_import_no_training_code():
  assert imports_of(import_graph(), 'jssl.methods', 'jssl.train') == []
