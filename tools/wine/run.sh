#!/usr/bin/env bash
# Wine tier run: Windows CPython runs tests/native once per backend (cffi, then ctypes).
# Stages msicert/, msicert_native/ (+ _ffi.py generated here with the Linux python),
# cdefs/ and tests/native/ into $MSICERT_WINE_DIR/work, starts tools/wine/mtls_server.py (HTTPS,
# client certificate required) on loopback for the WinHTTP mTLS test, and checks the CSRs the
# Windows side wrote with `openssl req -verify`.
# Last line: "N passed, M failed[, K skipped]"; exit status 1 on any failure.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="${MSICERT_WINE_DIR:-$REPO/.wine-tier}"
WINE=/usr/lib/wine/wine64
WINESERVER=/usr/lib/wine/wineserver
export WINEPREFIX="$DIR/prefix" WINEDEBUG=-all WINEARCH=win64
PYTEST_TIMEOUT="${MSICERT_WINE_PYTEST_TIMEOUT:-900}"
# Arguments are passed to pytest (default: the whole tests/native directory).
PYTEST_ARGS=("$@") FULL_RUN=0
((${#PYTEST_ARGS[@]})) || { PYTEST_ARGS=(tests/native); FULL_RUN=1; }

log() { printf '[wine-run] %s\n' "$*" >&2; }
start=$(date +%s)

bash "$REPO/tools/wine/setup.sh" || { log "setup failed"; echo "0 passed, 1 failed"; exit 1; }

WORK="$DIR/work"
ART="$WORK/artifacts"
rm -rf "$WORK" && mkdir -p "$WORK/tests" "$ART"
(cd "$REPO" && python3 cdefs/build_ffi.py >/dev/null) || { log "build_ffi failed"; exit 1; }
cp -a "$REPO/msicert" "$REPO/msicert_native" "$REPO/cdefs" "$WORK/"
cp -a "$REPO/tests/native" "$WORK/tests/native"
cp -a "$REPO/tests/__init__.py" "$REPO/tests/certgen.py" "$REPO/tests/store_contract.py" \
    "$WORK/tests/"
find "$WORK" -name __pycache__ -prune -exec rm -rf {} +
cat >"$WORK/pytest.ini" <<'INI'
[pytest]
addopts = -ra -p no:cacheprovider
markers =
    slow: multi-process or storm tests
    windows: needs real Windows or the Wine tier
INI

# Stand-in AttestationClientLib.dll (the real one is not redistributable).
mkdir -p "$WORK/fake"
x86_64-w64-mingw32-gcc -O2 -shared -o "$WORK/fake/AttestationClientLib.dll" \
    "$REPO/tools/wine/fake_attestation.c" || log "fake attestation DLL did not build"
export MSICERT_WINE_FAKE_ATTESTATION_DLL="Z:${WORK//\//\\}\\fake\\AttestationClientLib.dll"

# Loopback mTLS server (client certificate required) for test_windows_winhttp.py.
python3 "$REPO/tools/wine/make_tls_fixtures.py" "$WORK/tls"
python3 "$REPO/tools/wine/mtls_server.py" "$WORK/tls" "$WORK/port" 2>"$WORK/mtls_server.log" &
SERVER_PID=$!
for _ in $(seq 50); do [[ -s "$WORK/port" ]] && break; sleep 0.1; done
PORTS="$(cat "$WORK/port" 2>/dev/null || true)"
[[ -n "$PORTS" ]] || log "mTLS server did not start (see $WORK/mtls_server.log): its tests will skip"
# The msicert emulator (IMDS + ESTS) on the Linux side, for tests/native/test_windows_msicert.py.
(cd "$REPO" && exec python3 -m msicert emulator --lifetime 3600) >"$WORK/emulator.out" \
    2>"$WORK/emulator.log" &
EMULATOR_PID=$!
for _ in $(seq 100); do grep -q AZURE_POD_IDENTITY_AUTHORITY_HOST "$WORK/emulator.out" && break; sleep 0.1; done
IMDS_URL="$(sed -n 's/^export AZURE_POD_IDENTITY_AUTHORITY_HOST=//p' "$WORK/emulator.out")"
[[ -n "$IMDS_URL" ]] || log "emulator did not start (see $WORK/emulator.log): its tests will skip"
export MSICERT_WINE_IMDS="$IMDS_URL"
cleanup() {
    kill "$SERVER_PID" "$EMULATOR_PID" 2>/dev/null
    timeout 60 "$WINESERVER" -k >/dev/null 2>&1
}
trap cleanup EXIT
export MSICERT_WINE_TLS_PORTS="$PORTS"
export MSICERT_WINE_TLS_DIR="Z:${WORK//\//\\}\\tls"
export MSICERT_NATIVE_ARTIFACTS="Z:${ART//\//\\}"

passed=0 failed=0 skipped=0
count() { # pytest summary line -> totals
    local p f k
    read -r p f k < <(python3 -c '
import re, sys
words = dict((w, 0) for w in ("passed", "failed", "skipped"))
for n, w in re.findall(r"(\d+) (passed|failed|errors?|skipped)", sys.argv[1]):
    words["failed" if w.startswith("error") else w] += int(n)
print(words["passed"], words["failed"], words["skipped"])' "$1")
    passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + k))
}

for backend in cffi ctypes; do
    t0=$(date +%s)
    out="$WORK/pytest-$backend.log"
    (cd "$WORK" && MSICERT_NATIVE_BACKEND=$backend timeout "$PYTEST_TIMEOUT" \
        "$WINE" "$DIR/python/python.exe" -m pytest "${PYTEST_ARGS[@]}" -q -rs -p no:cacheprovider \
        </dev/null 2>&1 | tr -d '\r' | cat >"$out")
    summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error)|no tests ran' "$out" | tail -1)
    grep -E '^(FAILED|ERROR|SKIPPED)' "$out" | sed "s/^/[$backend] /"
    if [[ -z "$summary" ]]; then
        tail -30 "$out" | sed "s/^/[$backend] /"
        summary="0 passed, 1 failed (pytest did not finish)"
    fi
    echo "[$backend] $summary  ($(( $(date +%s) - t0 )) s)"
    count "$summary"
    # Windows python that crashed or timed out: count it as a failure.
    grep -qE '[0-9]+ (passed|failed)' <<<"$summary" || failed=$((failed + 1))
done

# The CSRs signed by CNG keys under Windows, verified by OpenSSL on Linux.
for backend in cffi ctypes; do
    csr="$ART/csr-$backend.der"
    ((FULL_RUN)) || [[ -f "$csr" ]] || continue  # a partial run may not have made one
    if [[ -f "$csr" ]] && openssl req -inform DER -in "$csr" -noout -verify >/dev/null 2>&1; then
        echo "[openssl] csr-$backend.der: signature verified"
        passed=$((passed + 1))
    else
        echo "[openssl] csr-$backend.der: missing or signature NOT verified"
        failed=$((failed + 1))
    fi
done

log "wine tier took $(( $(date +%s) - start )) s"
line="$passed passed, $failed failed"
((skipped)) && line+=", $skipped skipped"
echo "$line"
((failed == 0))
