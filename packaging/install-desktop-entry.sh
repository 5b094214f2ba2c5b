#!/usr/bin/env bash
# Register a built bundle with the current user's Linux desktop: menu entry, icons, and .pld files opening in
# PLD Desktop. Usage: packaging/install-desktop-entry.sh [BUNDLE_DIR]   (default: dist/pld-desktop)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE="$(cd "${1:-$ROOT/dist/pld-desktop}" && pwd)"
DATA="${XDG_DATA_HOME:-$HOME/.local/share}"

if [[ ! -x "$BUNDLE/pld-desktop" ]]; then
    echo "error: $BUNDLE/pld-desktop not found; build it with packaging/build.sh" >&2
    exit 2
fi
for size in 16 24 32 48 64 128 256 512; do
    install -D -m 644 "$ROOT/resources/icons/pld-desktop-$size.png" \
        "$DATA/icons/hicolor/${size}x${size}/apps/pld-desktop.png"
done
install -D -m 644 "$ROOT/resources/icons/pld-desktop.svg" "$DATA/icons/hicolor/scalable/apps/pld-desktop.svg"
# The menu entry runs this bundle by absolute path (the bundle is not on PATH).
mkdir -p "$DATA/applications"
sed -e "s|^Exec=pld-desktop|Exec=\"$BUNDLE/pld-desktop\"|" -e "s|^TryExec=pld-desktop|TryExec=$BUNDLE/pld-desktop|" \
    "$ROOT/packaging/pld-desktop.desktop" > "$DATA/applications/pld-desktop.desktop"
install -D -m 644 "$ROOT/packaging/pld-desktop-mime.xml" "$DATA/mime/packages/pld-desktop.xml"
command -v update-mime-database >/dev/null && update-mime-database "$DATA/mime" || true
command -v update-desktop-database >/dev/null && update-desktop-database "$DATA/applications" || true
command -v gtk-update-icon-cache >/dev/null && gtk-update-icon-cache -q -t "$DATA/icons/hicolor" || true
echo "Installed the PLD Desktop menu entry, icons and the .pld file type for $USER (under $DATA)."
