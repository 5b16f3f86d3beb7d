"""The ``msicert`` command line (``python -m msicert``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence

from ._errors import ImdsError, MsiCertError, TokenError

__all__ = ["main"]


def _identity_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--client-id", help="user-assigned identity by client id")
    g.add_argument("--object-id", help="user-assigned identity by object id")
    g.add_argument("--resource-id", help="user-assigned identity by ARM resource id")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--store-dir", help="store directory (default ~/.config/msal/certs)")
    where.add_argument("--store", choices=("current-user", "local-machine"), default=None,
                       help="Windows certificate store (default current-user; "
                            "local-machine for services)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="msicert",
        description="Azure Managed Identity v2 binding certificate, store-first.",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="log to stderr (-vv: debug)")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cert", help="print the binding certificate (mint it only if needed)")
    _identity_args(c)
    c.add_argument("--json", action="store_true", help="one JSON object on stdout")
    s = sub.add_parser("status", help="show the stored certificate (no network)")
    _identity_args(s)
    s.add_argument("--json", action="store_true")
    t = sub.add_parser("token", help="get an mtls_pop access token for a resource")
    t.add_argument("--resource", required=True, help="resource URI, e.g. https://vault.azure.net")
    _identity_args(t)
    t.add_argument("--json", action="store_true")
    u = sub.add_parser("purge", help="remove the identity's stored certificate")
    _identity_args(u)
    e = sub.add_parser("emulator", help="run the local IMDS v2 + ESTS emulator")
    e.add_argument("--host", default="127.0.0.1")
    e.add_argument("--port", type=int, default=0, help="IMDS port (0: any free port)")
    e.add_argument("--lifetime", type=float, default=7 * 86400.0,
                   help="certificate lifetime in seconds (default 7 days)")
    sub.add_parser("demo", help="cold mint, warm store hit and renewal against the emulator")
    return p


def _client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from ._client import ManagedIdentityClient

    return ManagedIdentityClient(
        client_id=args.client_id, object_id=args.object_id, resource_id=args.resource_id,
        store_dir=args.store_dir, store_location=args.store,
    )


def _print_cert(cert_json: dict[str, str], as_json: bool) -> None:
    if as_json:
        print(json.dumps(cert_json, indent=None, sort_keys=True))
        return
    width = max(len(k) for k in cert_json)
    for k, v in cert_json.items():
        print(f"{k.ljust(width)}  {v}")


def _cmd_cert(args: argparse.Namespace) -> int:
    cert = _client(args).get_certificate()
    _print_cert(cert.to_json(), args.json)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from ._store import CorruptEntry

    client = _client(args)
    try:
        cert = client.status()
    except CorruptEntry as exc:
        info = {"state": "corrupt", "reason": exc.reason, "store": client.store.description}
        _print_cert(info, args.json)
        return 1
    if cert is None:
        _print_cert({"state": "absent", "store": client.store.description}, args.json)
        return 1
    info = cert.to_json()
    state = cert.state(time.time()).value
    info["state"] = state
    _print_cert(info, args.json)
    return 0 if state in ("fresh", "renew") else 1


def _cmd_token(args: argparse.Namespace) -> int:
    token = _client(args).acquire_token(args.resource)
    out = {
        "token_type": token.token_type,
        "access_token": token.access_token,
        "expires_on": str(token.expires_on),
        "x5t_s256": token.x5t_s256,
        "source": token.source,
    }
    if args.json:
        print(json.dumps({**out, "expires_on": token.expires_on}, sort_keys=True))
    else:
        _print_cert(out, False)
    return 0


def _cmd_purge(args: argparse.Namespace) -> int:
    n = _client(args).purge()
    print(f"removed {n} entr{'y' if n == 1 else 'ies'}")
    return 0


def _cmd_emulator(args: argparse.Namespace) -> int:
    from .emulator import serve

    serve(host=args.host, port=args.port, lifetime=args.lifetime)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo()


def _describe(exc: MsiCertError) -> str:
    if isinstance(exc, ImdsError):
        where = exc.step or "imds"
        status = f" (HTTP {exc.status})" if exc.status is not None else ""
        return f"{where} failed{status}: {exc}"
    if isinstance(exc, TokenError):
        status = f" (HTTP {exc.status})" if exc.status is not None else ""
        return f"token request failed{status}: {exc}"
    return f"{type(exc).__name__}: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(
            level=logging.DEBUG if args.verbose > 1 else logging.INFO,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
        )
    commands = {
        "cert": _cmd_cert, "status": _cmd_status, "token": _cmd_token, "purge": _cmd_purge,
        "emulator": _cmd_emulator, "demo": _cmd_demo,
    }
    try:
        return commands[args.command](args)
    except MsiCertError as exc:
        print(f"msicert {args.command}: {_describe(exc)}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"msicert {args.command}: invalid input: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
