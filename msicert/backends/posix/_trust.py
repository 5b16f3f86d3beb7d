"""Extra server trust for msicert's own TLS connections (ESTS, mTLS resources).

``MSICERT_CA_BUNDLE`` names a PEM file whose CAs are trusted *in addition to* the system
ones, by msicert only: the emulator exports it so that a shell pointed at the emulator does
not redirect every other program's trust, as ``SSL_CERT_FILE`` would.
"""

from __future__ import annotations

import os
import ssl

from ..._errors import MsiCertError

__all__ = ["ENV_CA_BUNDLE", "add_extra_trust"]

ENV_CA_BUNDLE = "MSICERT_CA_BUNDLE"


def add_extra_trust(ctx: ssl.SSLContext) -> None:
    """Load ``$MSICERT_CA_BUNDLE`` (when set) into ``ctx``'s trust anchors.

    Call it after ``ctx.set_default_verify_paths()``: when ``$SSL_CERT_FILE`` names the same
    file and that load found CAs, the file is not parsed a second time (about 0.1 ms for one
    CA; OpenSSL would drop the duplicates anyway).
    """
    path = os.environ.get(ENV_CA_BUNDLE)
    if not path:
        return
    if path == os.environ.get("SSL_CERT_FILE") and ctx.cert_store_stats()["x509_ca"]:
        return
    try:
        ctx.load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise MsiCertError(f"{ENV_CA_BUNDLE}={path!r} cannot be loaded: {exc}") from exc
