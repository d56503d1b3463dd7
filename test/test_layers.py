"""The house in layers: which package may import which, read from the source.

Every `import` and `from ... import` in src/lightmer counts, wherever it stands: at the top, inside
a function, under `if TYPE_CHECKING:`. docs/ARCHITECTURE.md explains each rule.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / 'src'
PACKAGE = SRC / 'lightmer'

# layer -> the layers it may import (its own is always allowed). The root package (`lightmer`,
# which holds only __version__) may be imported by anyone.
BELOW = {
    'core': set(),
    'datasets': {'core'},
    'stream': {'core'},
    'training': {'core', 'datasets'},
    'evaluation': {'core', 'datasets', 'stream'},
    'active': {'core', 'datasets', 'stream', 'training', 'evaluation'},
    'labelling': {'core', 'evaluation', 'active'},
    'ros': {'core', 'stream'},
    'harness': {'core', 'datasets', 'stream', 'training', 'evaluation', 'ros'},
    'experiments': {'core', 'datasets', 'stream', 'training', 'evaluation', 'active',
                    'labelling', 'harness'},
}
TOP = {'cli', '__main__'}   # the command line: may import every layer


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def layer_of(module: str) -> str | None:
    """'lightmer.core.model' -> 'core'; the root package -> None."""
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else None


def lightmer_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported lightmer module) of every import in the file, relative ones resolved.
    `from pkg import name` counts as pkg.name when that is a module of ours, else as pkg."""
    here = module_name(path)
    package = here if path.name == '__init__.py' else here.rpartition('.')[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - node.level + 1]
                origin = '.'.join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ''
            for a in node.names:
                candidate = f'{origin}.{a.name}'
                found.append((node.lineno, candidate if _is_module(candidate) else origin))
    return sorted({(line, m) for line, m in found if m == 'lightmer' or m.startswith('lightmer.')})


def _is_module(dotted: str) -> bool:
    path = SRC.joinpath(*dotted.split('.'))
    return path.with_suffix('.py').is_file() or (path / '__init__.py').is_file()


def source_files() -> list[Path]:
    return sorted(PACKAGE.rglob('*.py'))


def test_every_module_sits_in_a_known_layer():
    strays = [str(p.relative_to(SRC)) for p in source_files()
              if layer_of(module_name(p)) not in BELOW.keys() | TOP | {None}]
    assert not strays, f'modules outside every layer (add them to a layer folder): {strays}'


def test_imports_point_only_down():
    broken = []
    for path in source_files():
        mine = layer_of(module_name(path))
        if mine in TOP or mine is None:
            continue
        allowed = BELOW[mine] | {mine, None}
        for line, imported in lightmer_imports(path):
            theirs = layer_of(imported)
            if theirs not in allowed:
                broken.append(f'{path.relative_to(SRC)}:{line}: {mine} imports {imported} '
                              f'({theirs}); {mine} may import {sorted(BELOW[mine]) or "nothing"}')
    assert not broken, 'imports against the layer rule:\n' + '\n'.join(broken)


def test_no_import_circles():
    graph = {module_name(p): {m for _, m in lightmer_imports(p)} for p in source_files()}
    # A package's __init__ that re-exports its modules is not a circle with them.
    graph = {m: {d for d in deps if not m.startswith(d + '.')} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                circles.append(' -> '.join(stack[stack.index(d):] + [d]))
            elif d in graph and d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, 'import circles:\n' + '\n'.join(circles)


def test_an_import_inside_a_function_says_why():
    """Imports sit at the top, so a file's head says what it depends on. One inside a function
    is there for a heavy or optional dependency (torch on the ONNX path, matplotlib, librosa in a
    node, a message package a robot may lack) and carries a comment saying so, on its line or
    within the three lines above it. cli.py imports every command lazily by design (its
    docstring says why: `lightmer --help` must not pay for torch or rclpy)."""
    silent = []
    for path in source_files():
        if path.name == 'cli.py':
            continue
        lines = path.read_text(encoding='utf-8').splitlines()
        for fn in ast.walk(ast.parse('\n'.join(lines))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    near = lines[max(0, node.lineno - 4):node.end_lineno]
                    if not any('#' in line for line in near):
                        silent.append(f'{path.relative_to(SRC)}:{node.lineno}: '
                                      f'{lines[node.lineno - 1].strip()}')
    assert not silent, ('imports inside functions without a reason (move them to the top, or '
                        'say why beside them):\n' + '\n'.join(silent))


@pytest.mark.parametrize('source, expected', [
    ('from lightmer.core import model\n', ['lightmer.core.model']),
    ('def f():\n    from lightmer.harness.rig import Rig\n', ['lightmer.harness.rig']),
    ('from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n'
     '    from lightmer.active.pool import Pool\n', ['lightmer.active.pool']),
    ('from .fuser import SegmentFuser\n', ['lightmer.stream.fuser']),
    ('from ..core.config import FeatureConfig\n', ['lightmer.core.config']),
])
def test_the_reader_sees_every_kind_of_import(tmp_path, monkeypatch, source, expected):
    """The rule test is only as good as its reader: imports in functions, under TYPE_CHECKING
    and relative ones are all found and resolved."""
    fake = PACKAGE / 'stream' / '_layers_probe.py'
    monkeypatch.setattr(Path, 'read_text', lambda self, encoding=None: source)
    assert [m for _, m in lightmer_imports(fake)] == expected
