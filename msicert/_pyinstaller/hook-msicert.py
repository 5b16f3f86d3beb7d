"""PyInstaller hook for ``msicert`` (found through the ``pyinstaller40`` ``hook-dirs`` entry point).

The CLI imports most of the package lazily, inside functions (``msicert demo`` pulls in the
emulator, the token leg and urllib3 only when it runs), and the Windows code paths reach
``msicert_native`` only on Windows. Everything is listed here so that a frozen ``msicert``
behaves like the installed one on every platform.
"""

from __future__ import annotations

from msicert._pyinstaller._collect import submodules

# Imported lazily (inside functions) by the CLI, the client and the demo; modulegraph usually
# sees them, but a frozen CLI that lacks one fails only when that command runs, so name them.
_LAZY = [
    "msicert._capabilities",
    "msicert._cli",
    "msicert._cli_status",
    "msicert._client",
    "msicert._demo",
    "msicert._probe",
    "msicert._resource_call",
    "msicert._shared_tokens",
    "msicert._token_cache",
    "msicert._transport_failure",
    "msicert.backends",
    "msicert.backends.contract",
    "msicert.backends.posix._file_store",
    "msicert.backends.posix._software_key",
    "msicert.backends.posix._ssl_transport",
    "msicert.backends.windows._attestation",
    "msicert.backends.windows._cert_store",
    "msicert.backends.windows._ncrypt_key",
    "msicert.backends.windows._winhttp_transport",
    "msicert.emulator",
    "msicert.wire._csr",
    "msicert.wire._ests",
    "msicert.wire._http",
    "msicert.wire._imds",
    "msicert.wire._imds_answers",
    "msicert.wire._retry",
    "urllib3",
]

hiddenimports = sorted(
    {
        *submodules("msicert", skip=("msicert._pyinstaller",)),
        *_LAZY,
        # The native layer (Windows stores, keys and WinHTTP); its own hook adds the generated
        # cffi module and _cffi_backend.
        "msicert_native",
    }
)

# Build-time-only packages: the generated cffi module needs neither at run time.
excludedimports = ["pycparser"]
