"""Loading the key pair through /dev/fd with BSD (and /proc-less) semantics.

How BSD is modelled. On Linux, ``/dev/fd/N`` is a symlink into /proc: opening it opens the
file *again* (a new offset at 0). On macOS and the BSDs (fdescfs), opening ``/dev/fd/N`` is
``dup(N)``: the new descriptor *shares N's offset*. On Linux without /proc, and on FreeBSD
without fdescfs (N > 2), ``/dev/fd/N`` does not exist. A tiny LD_PRELOAD library, built here
from the C source below, gives a child Python process exactly those semantics at the libc
calls OpenSSL and Python use (``fopen``/``open``/``stat`` of ``/dev/fd/N``; on x86-64 glibc
``struct stat64`` is ``struct stat``): mode ``dup``
answers them with ``dup(N)``/``fstat(N)``, mode ``absent`` with ENOENT. Every other path is
untouched. The child then loads a real store entry and, through that context, gets a real
token from the emulator over mTLS.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import cli_env

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* -1: not /dev/fd/N. Otherwise N. */
static int devfd(const char *path) {
    if (path == NULL || strncmp(path, "/dev/fd/", 8) != 0) return -1;
    char *end;
    long n = strtol(path + 8, &end, 10);
    return (end == path + 8 || *end != '\0') ? -1 : (int)n;
}

static int absent(void) {
    const char *mode = getenv("MSICERT_DEVFD_MODE");
    return mode != NULL && strcmp(mode, "absent") == 0;
}

#define NEXT(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

static int bsd_open(int n, int flags) {
    if (absent()) { errno = ENOENT; return -1; }
    return fcntl(n, (flags & O_CLOEXEC) ? F_DUPFD_CLOEXEC : F_DUPFD, 0); /* fdescfs: dup */
}

int open(const char *path, int flags, ...) {
    int n = devfd(path);
    if (n >= 0) return bsd_open(n, flags);
    va_list ap; va_start(ap, flags); mode_t m = va_arg(ap, mode_t); va_end(ap);
    return NEXT(open)(path, flags, m);
}

int open64(const char *path, int flags, ...) {
    int n = devfd(path);
    if (n >= 0) return bsd_open(n, flags);
    va_list ap; va_start(ap, flags); mode_t m = va_arg(ap, mode_t); va_end(ap);
    return NEXT(open64)(path, flags, m);
}

static FILE *bsd_fopen(int n, const char *mode) {
    int fd = bsd_open(n, 0);
    return fd < 0 ? NULL : fdopen(fd, mode);
}

FILE *fopen(const char *path, const char *mode) {
    int n = devfd(path);
    return n >= 0 ? bsd_fopen(n, mode) : NEXT(fopen)(path, mode);
}

FILE *fopen64(const char *path, const char *mode) {
    int n = devfd(path);
    return n >= 0 ? bsd_fopen(n, mode) : NEXT(fopen64)(path, mode);
}

static int bsd_stat(int n, struct stat *st) {
    if (absent()) { errno = ENOENT; return -1; }
    return fstat(n, st);
}

int stat(const char *path, struct stat *st) {
    int n = devfd(path);
    return n >= 0 ? bsd_stat(n, st) : NEXT(stat)(path, st);
}

int stat64(const char *path, struct stat64 *st) {
    int n = devfd(path);
    return n >= 0 ? bsd_stat(n, (struct stat *)st) : NEXT(stat64)(path, st);
}

int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags) {
    int n = devfd(path);
    return n >= 0 ? bsd_stat(n, (struct stat *)st) : NEXT(fstatat64)(dirfd, path, st, flags);
}
"""

# Run in the child: the check that the shim really gives BSD semantics, the old loading code
# (read the file, then load /dev/fd/N) and today's build_context, then a real token request.
CHILD = textwrap.dedent("""
    import os, ssl, sys
    from msicert import ManagedIdentityClient
    from msicert.backends.posix._ssl_transport import build_context

    mode = os.environ.get("MSICERT_DEVFD_MODE", "linux")
    client = ManagedIdentityClient(store_dir=sys.argv[1], imds_endpoint=sys.argv[2])
    cert = client.status()
    fd = os.open(cert.store, os.O_RDONLY)
    head = os.read(fd, 64 * 1024)
    try:
        again = os.read(os.open(f"/dev/fd/{fd}", os.O_RDONLY), 64 * 1024)
        print("reopen-reads", len(again))
    except FileNotFoundError:
        print("reopen-reads absent")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(f"/dev/fd/{fd}")
        print("old-load ok")
    except (ssl.SSLError, OSError) as exc:
        print("old-load failed", type(exc).__name__)
    os.close(fd)
    build_context(cert)
    print("new-load ok")
    token = client.acquire_token("https://vault.azure.net")
    print("token", token.x5t_s256 == cert.x5t_s256)
""")


@pytest.fixture(scope="module")
def shim(tmp_path_factory) -> str:
    if not sys.platform.startswith("linux"):
        pytest.skip("the LD_PRELOAD model of BSD's /dev/fd is built for Linux/glibc")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the LD_PRELOAD model of BSD's /dev/fd")
    d = tmp_path_factory.mktemp("devfd")
    (d / "devfd.c").write_text(SHIM)
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(d / "devfd.so"), str(d / "devfd.c"),
                    "-ldl"], check=True, capture_output=True)
    return str(d / "devfd.so")


def _child(shim: str | None, mode: str | None, store_dir: str, imds: str) -> list[str]:
    env = cli_env({})
    if shim is not None:
        env["LD_PRELOAD"] = shim
    if mode is not None:
        env["MSICERT_DEVFD_MODE"] = mode
    proc = subprocess.run([sys.executable, "-c", CHILD, store_dir, imds], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()


@pytest.fixture
def stored(make_client, emu, store_dir) -> str:
    cert = make_client().get_certificate()
    assert os.path.getsize(cert.store) < 64 * 1024  # one read reaches the end of the entry
    return store_dir


def test_on_linux_dev_fd_reopens_and_both_loaders_work(stored, emu):
    out = _child(None, None, stored, emu.imds_url)
    assert out[0] != "reopen-reads 0" and out[0].startswith("reopen-reads ")
    assert out[1:] == ["old-load ok", "new-load ok", "token True"]


def test_with_bsd_dev_fd_semantics_the_key_pair_still_loads(shim, stored, emu):
    out = _child(shim, "dup", stored, emu.imds_url)
    assert out[0] == "reopen-reads 0"  # the model: a dup sharing an offset already at EOF
    assert out[1] == "old-load failed SSLError"  # the defect, as it happens on macOS/BSD
    assert out[2:] == ["new-load ok", "token True"]


def test_without_proc_dev_fd_the_key_pair_loads_by_path(shim, stored, emu):
    out = _child(shim, "absent", stored, emu.imds_url)
    assert out[0] == "reopen-reads absent"
    assert out[1] == "old-load failed FileNotFoundError"
    assert out[2:] == ["new-load ok", "token True"]
