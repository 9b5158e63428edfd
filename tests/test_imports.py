"""The package's modules import each other without a cycle, counting imports inside functions."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = 'data2vec'


def _module_name(path):
  parts = path.relative_to(ROOT).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imports(path, modules):
  """The package modules that `path` imports anywhere in it (module level or in a function)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from data2vec.x import y`: y may be a module (data2vec.x.y) or a name in data2vec.x.
      names = [f'{node.module}.{a.name}' for a in node.names] + [node.module]
    else:
      continue
    found.update(n for n in names if n in modules)
  return found


def import_graph():
  paths = sorted((ROOT / PACKAGE).rglob('*.py'))
  modules = {_module_name(p): p for p in paths}
  graph = {}
  for name, path in modules.items():
    # A module imports its own package's __init__ on the way: that edge is not a choice.
    graph[name] = {m for m in _imports(path, modules) if not name.startswith(m + '.')}
  return graph


def find_cycle(graph):
  """One cycle of `graph` as a list of names, or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 'open':
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    state[node] = 'done'
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_find_cycle_finds_one():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_the_package_has_no_import_cycle():
  graph = import_graph()
  assert 'data2vec.pretraining' in graph and 'data2vec.tasks' in graph['data2vec.trainer']
  assert find_cycle(graph) is None, ' -> '.join(find_cycle(graph))
