"""Writes docs/PARAMETERS.md, the nodes' parameter table, from `lightmer.ros.params`.

The dataclasses there are the one definition of every parameter (name, default, description),
so the table is generated, never edited: `python scripts/params_doc.py` rewrites it, and
`--check` exits 1 when the file differs from what the code says (a test runs it).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from lightmer.ros.params import AudioFeatureParams, FaceCropParams, FusionParams

DOC = Path(__file__).resolve().parents[1] / 'docs' / 'PARAMETERS.md'
NODE_PARAMS = {'face_crop': FaceCropParams, 'audio_feature': AudioFeatureParams,
               'fusion': FusionParams}

HEADER = """# Node parameters

Generated from `src/lightmer/ros/params.py` by `python scripts/params_doc.py`; do not edit (a
test fails when this file and the code disagree). Every parameter is declared read-only with
this description (`ros2 param describe`). Defaults of the processing settings come from
`StreamSettings` (`src/lightmer/stream/settings.py`), which eval-bag, the benchmark and the
demo use too; `config/lightmer.yaml` repeats the ones worth tuning and `config/crema_d.yaml` /
`config/ravdess.yaml` are presets. Launch arguments win over the parameter file.

| parameter | nodes | default | meaning |
|---|---|---|---|
"""


def _default(value) -> str:
    if value == '':
        return "''"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def render() -> str:
    """The document: one row per parameter, in declaration order, naming the nodes that read
    it ('all' for the common ones). A name whose default or meaning differs between nodes
    (the subscriptions' QoS) gets a row per variant."""
    rows: dict[tuple, list[str]] = {}
    for node, cls in NODE_PARAMS.items():
        for f in dataclasses.fields(cls):
            rows.setdefault((f.name, f.default, f.metadata['description']), []).append(node)
    lines = []
    for (name, default, description), nodes in rows.items():
        readers = 'all' if len(nodes) == len(NODE_PARAMS) else ', '.join(nodes)
        text = description.replace('|', '\\|')
        lines.append(f'| `{name}` | {readers} | {_default(default)} | {text} |')
    return HEADER + '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--check', action='store_true',
                        help='exit 1 if the document is not what the code says')
    parser.add_argument('--doc', type=Path, default=DOC,
                        help='the document (default: %(default)s)')
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not args.doc.is_file() or args.doc.read_text(encoding='utf-8') != text:
            print(f'{args.doc} is stale: run `python scripts/params_doc.py`', file=sys.stderr)
            return 1
        return 0
    args.doc.write_text(text, encoding='utf-8')
    print(f'wrote {args.doc}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
