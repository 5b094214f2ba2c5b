#!/usr/bin/env bash
# Build the one-folder bundle dist/pld-desktop/ (executables `pld-desktop` and `pld`) from a clone where
# scripts/setup has made .venv. Prints the bundle size and the build time. Usage: packaging/build.sh [--smoke]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
PYINSTALLER_VERSION="6.22.3"  # keep in step with the `packaging` extra in pyproject.toml

if [[ ! -x "$PY" ]]; then
    echo "error: $ROOT/.venv is missing; run scripts/setup first" >&2
    exit 2
fi
if ! "$PY" -c "import PyInstaller, sys; sys.exit(PyInstaller.__version__ != '$PYINSTALLER_VERSION')" 2>/dev/null; then
    echo "Installing pyinstaller==$PYINSTALLER_VERSION into .venv" >&2
    "$ROOT/.venv/bin/pip" install --quiet "pyinstaller==$PYINSTALLER_VERSION"
fi
for size in 16 24 32 48 64 128 256 512; do
    if [[ ! -f "resources/icons/pld-desktop-$size.png" ]]; then
        "$PY" packaging/render_icons.py >/dev/null
        break
    fi
done

start=$(date +%s)
# --noconfirm replaces an earlier dist/pld-desktop; build/ keeps PyInstaller's cache for a faster rebuild.
"$PY" -m PyInstaller --noconfirm --log-level WARN \
    --distpath "$ROOT/dist" --workpath "$ROOT/build/pyinstaller" packaging/pld-desktop.spec
elapsed=$(( $(date +%s) - start ))

echo "Built $ROOT/dist/pld-desktop in $((elapsed / 60)) min $((elapsed % 60)) s"
du -sh "$ROOT/dist/pld-desktop"
"$ROOT/dist/pld-desktop/pld" --version

if [[ "${1:-}" == "--smoke" ]]; then
    PLD_TEST_PACKAGING=1 "$ROOT/.venv/bin/pytest" -q -p no:cacheprovider -m slow tests/test_packaging.py
fi
