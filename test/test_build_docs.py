"""The build and dependency commands the README and docs give a robot builder, run through
colcon's own package discovery (colcon list, with the very arguments of each `colcon build`
line) and rosdep's (catkin_pkg, what `rosdep install --from-paths` crawls with), on a
workspace laid out as the README says: this repository cloned to ~/ws/src/lightmer.

colcon stops descending into a folder once it finds a package there, and the repository root
is the lightmer package, so interfaces/lightmer_msgs is found only when a command names it.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from catkin_pkg.packages import find_packages

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / 'README.md', ROOT / 'models' / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
COLCON = Path(sys.executable).with_name('colcon')
# Files whose presence decides what colcon and catkin_pkg find in a folder.
DISCOVERY_FILES = re.compile(r'(^|/)(package\.xml|setup\.py|setup\.cfg|CMakeLists\.txt|'
                             r'COLCON_IGNORE|AMENT_IGNORE|CATKIN_IGNORE|colcon\.pkg)$')
WANTED = {'lightmer', 'lightmer_msgs'}


def _shell_lines(path: Path) -> list[str]:
    """Commands of the file's ```bash blocks, continuation lines joined, split at `&&`."""
    commands, block = [], None
    for line in path.read_text(encoding='utf-8').splitlines():
        if line.startswith('```'):
            block = [] if block is None and line.strip() in ('```bash', '```sh') else None
            continue
        if block is not None:
            block.append(line)
            if not line.rstrip().endswith('\\'):
                joined = ' '.join(part.rstrip().removesuffix('\\') for part in block)
                commands += [c.strip() for c in joined.split('&&') if c.strip()]
                block = []
    return commands


def _commands(program: str) -> list[tuple[Path, list[str]]]:
    """(file, argv after `program`) of every such command line in the docs."""
    found = []
    for path in DOCS:
        for command in _shell_lines(path):
            argv = shlex.split(command.split('#', 1)[0])
            if argv[:len(program.split())] == program.split():
                found.append((path, argv[len(program.split()):]))
    return found


@pytest.fixture(scope='module')
def workspace(tmp_path_factory) -> Path:
    """~/ws with this checkout as src/lightmer (its discovery files: what a clone holds)."""
    ws = tmp_path_factory.mktemp('ws')
    listed = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in listed.splitlines():
        if DISCOVERY_FILES.search(name) or name.startswith('resource/'):
            dest = ws / 'src' / 'lightmer' / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, dest)
    return ws


def _colcon_list(ws: Path, args: list[str]) -> set[str]:
    env = {**os.environ, 'COLCON_HOME': str(ws / '.colcon_home'),
           'COLCON_LOG_PATH': str(ws / 'log')}
    done = subprocess.run([str(COLCON), 'list', '--names-only', *args], cwd=ws, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_the_readme_says_where_the_clone_goes():
    commands = _shell_lines(ROOT / 'README.md')
    assert 'cd ~/ws/src' in commands
    assert any(c.startswith('git clone') and c.endswith(' lightmer') for c in commands), commands


def test_every_colcon_build_line_builds_lightmer_and_its_messages(workspace):
    lines = _commands('colcon build')
    files = {path.name for path, _ in lines}
    assert {'README.md', 'RUNTIME.md'} <= files, files
    for path, args in lines:
        assert _colcon_list(workspace, args) == WANTED, (path, args)


def _from_paths(args: list[str]) -> list[str]:
    start = args.index('--from-paths') + 1
    end = next((i for i in range(start, len(args)) if args[i].startswith('-')), len(args))
    return args[start:end]


def test_every_rosdep_line_sees_lightmer_and_its_messages(workspace):
    """rosdep install --from-paths P... --ignore-src resolves the dependencies of the packages
    catkin_pkg finds under P as system packages, except those found there: lightmer_msgs must
    be found, or rosdep looks for a system package of that name, which no distribution has."""
    lines = _commands('rosdep install')
    assert lines, 'docs/RUNTIME.md gives a rosdep line'
    for path, args in lines:
        assert '--ignore-src' in args, (path, args)
        found = {}
        for folder in _from_paths(args):
            found.update({pkg.name: pkg for pkg in
                          find_packages(str(workspace / folder)).values()})
        assert set(found) == WANTED, (path, args, sorted(found))
        wanted_keys = {d.name for pkg in found.values() for d in pkg.exec_depends}
        assert 'lightmer_msgs' in wanted_keys      # what --ignore-src must leave out
