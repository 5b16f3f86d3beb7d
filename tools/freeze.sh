#!/usr/bin/env bash
# Freeze the msicert CLI into one executable with PyInstaller, using msicert's own hooks
# (found through its `pyinstaller40` entry point, so msicert must be *installed*, not just on
# PYTHONPATH).
#
#   PYTHON=venv/bin/python tools/freeze.sh [OUTDIR]     # -> OUTDIR/msicert (msicert.exe on Windows)
#
# PYTHON   interpreter whose environment has msicert and pyinstaller installed (default: python3)
# WORKDIR  where the entry script, spec and PyInstaller's build files go (default: a temp dir,
#          removed afterwards; set it to keep warn-msicert.txt and xref-msicert.html)
set -euo pipefail

python="${PYTHON:-python3}"
outdir="${1:-dist-frozen}"
if [ -n "${WORKDIR:-}" ]; then
  workdir="$WORKDIR"
  mkdir -p "$workdir"
else
  workdir="$(mktemp -d)"
  trap 'rm -rf "$workdir"' EXIT
fi

# The entry script is what `msicert` (the console script) runs; PyInstaller needs a file.
cat >"$workdir/msicert_entry.py" <<'PY'
"""Entry point of the frozen msicert CLI."""

from msicert._cli import main

raise SystemExit(main())
PY

"$python" -m PyInstaller --onefile --name msicert --noconfirm \
  --distpath "$outdir" --workpath "$workdir/build" --specpath "$workdir" \
  "$workdir/msicert_entry.py"

echo "frozen: $outdir/msicert"
