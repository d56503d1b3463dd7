#!/usr/bin/env bash
# The README's test command: the whole pytest suite, DDS confined to loopback
# (scripts/loopback.sh). Extra arguments go to pytest, e.g. `bash scripts/test.sh -k nodes -x`.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
if [ ! -x .venv/bin/python ]; then
  echo "no .venv: run 'bash scripts/setup.sh' (or 'make test', which does it)" >&2
  exit 2
fi
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
exec bash scripts/loopback.sh .venv/bin/python -m pytest "$@"
