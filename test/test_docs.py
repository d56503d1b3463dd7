"""Documents generated from the code stay what the code says."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARAMS_DOC = REPO / 'docs' / 'PARAMETERS.md'


def _check(doc: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / 'scripts' / 'params_doc.py'), '--check',
                           '--doc', str(doc)], capture_output=True, text=True, timeout=120)


def test_the_parameter_table_is_what_the_nodes_declare():
    proc = _check(PARAMS_DOC)
    assert proc.returncode == 0, proc.stderr


def test_a_stale_parameter_table_is_caught(tmp_path):
    """Any drift fails: here one row's meaning edited by hand in a copy of the document."""
    lines = PARAMS_DOC.read_text(encoding='utf-8').splitlines(keepends=True)
    row = next(i for i, line in enumerate(lines) if line.startswith('| `'))
    lines[row] = lines[row].replace(' |\n', ' (edited) |\n')
    stale = tmp_path / 'PARAMETERS.md'
    stale.write_text(''.join(lines), encoding='utf-8')
    proc = _check(stale)
    assert proc.returncode == 1 and 'stale' in proc.stderr
