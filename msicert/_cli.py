"""The ``msicert`` command line (``python -m msicert``).

Exit codes: 0 success; 1 the operation failed (IMDS, ESTS, store), or ``status`` found an
identity that is absent, expired, not yet valid or corrupt, or ``probe`` found no IMDS v2;
2 invalid usage or options; 130 interrupted; 141 the reader of the output went away.

What ``status`` and ``purge`` show is rendered by :mod:`msicert._cli_status`, which only those
two commands import.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from . import _lazylog
from ._errors import ImdsError, MsiCertError, TokenError

if TYPE_CHECKING:
    import logging

__all__ = ["main"]

HINT_NOT_ON_AZURE = "not on Azure? try `msicert emulator`"
def _terminal_width() -> int:
    """``shutil.get_terminal_size().columns``, without importing ``shutil`` (about 2 ms, with
    its archive modules, that argparse pays at the first ``add_argument``)."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _Formatter(argparse.HelpFormatter):
    """argparse's help layout, with the width found by :func:`_terminal_width`."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _terminal_width() - 2 if width is None else width)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors become a JSON object on stdout under ``--json``."""

    json_errors = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        if _Parser.json_errors:
            _print_json({"error": message, "step": "arguments", "status": None,
                         "correlation_id": None, "type": "UsageError"})
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _common() -> _Parser:
    """-v/-q/--json, accepted before and after the subcommand."""
    c = _Parser(add_help=False)
    c.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                   help="more log lines on stderr (-vv: debug)")
    c.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="no progress lines on stderr, errors only")
    c.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="one JSON object on stdout (errors too)")
    return c


def _identity_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--client-id", help="user-assigned identity by client id")
    g.add_argument("--object-id", help="user-assigned identity by object id")
    g.add_argument("--resource-id", help="user-assigned identity by ARM resource id")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--store-dir", help="store directory (default $MSICERT_STORE_DIR, "
                                           "else ~/.config/msal/certs)")
    where.add_argument("--store", choices=("current-user", "local-machine"), default=None,
                       help="Windows certificate store (default current-user; "
                            "local-machine for services)")


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0 (``inf``, ``1e309``, ``nan``, ``0``
    and negatives are usage errors, never a traceback or an unbounded wait)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds > 0")
    return value


def _timeout_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="give up after this long (IMDS retries, lock waits and ESTS included)")


def _parser() -> argparse.ArgumentParser:
    from ._version import __version__

    common = _common()
    p = _Parser(
        prog="msicert", parents=[common],
        description="Azure Managed Identity v2 binding certificate, store-first.",
        epilog="Exit codes: 0 ok; 1 failed (or status/probe found nothing usable); "
               "2 usage; 130 interrupted.",
    )
    p.add_argument("--version", action="version", version=f"msicert {__version__}")
    p.set_defaults(verbose=0, quiet=False, json=False)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cert", parents=[common],
                       help="print the binding certificate (mint it only if needed)")
    _identity_args(c)
    _timeout_arg(c)
    s = sub.add_parser("status", parents=[common],
                       help="show stored certificates, their lifetime and the tokens cached "
                            "for them (no network)")
    _identity_args(s)
    s.add_argument("--all", action="store_true", help="every identity in the store")
    t = sub.add_parser("token", parents=[common],
                       help="get an mtls_pop access token for a resource")
    t.add_argument("--resource", "--scope", dest="resource", required=True,
                   help="resource URI or scope, e.g. https://vault.azure.net[/.default]")
    t.add_argument("--raw", action="store_true", help="print the bare access token only")
    t.add_argument("--claims", metavar="JSON", default=None,
                   help="a resource's claims challenge (JSON): mint a fresh certificate, then "
                        "ask for a token with these claims")
    _identity_args(t)
    _timeout_arg(t)
    u = sub.add_parser("purge", parents=[common],
                       help="remove the identity's stored certificate and cached tokens")
    _identity_args(u)
    pr = sub.add_parser("probe", parents=[common],
                        help="which managed identity source this host has (imds_v2/v1/none) and "
                             "its max binding strength (keyguard/software/bearer/none)")
    pr.add_argument("--timeout", type=_seconds, default=2.0, metavar="SECONDS",
                    help="answer within this long (default 2)")
    pr.add_argument("--imds-endpoint", default=None,
                    help="IMDS base URL (default $AZURE_POD_IDENTITY_AUTHORITY_HOST, "
                         "else http://169.254.169.254)")
    e = sub.add_parser("emulator", parents=[common],
                       help="run the local IMDS v2 + ESTS emulator")
    e.add_argument("--host", default="127.0.0.1")
    e.add_argument("--port", type=int, default=0, help="IMDS port (0: any free port)")
    e.add_argument("--lifetime", type=float, default=7 * 86400.0,
                   help="certificate lifetime in seconds (default 7 days)")
    e.add_argument("--backdate", type=float, default=60.0,
                   help="seconds NotBefore lies before issuance (default 60)")
    sub.add_parser("demo", parents=[common],
                   help="cold mint, warm store hit and renewal against the emulator")
    return p


# --- output ------------------------------------------------------------------------------
def _print_json(obj: object) -> None:
    print(json.dumps(obj, sort_keys=True), flush=True)


def _print_kv(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(info)
        return
    width = max(len(k) for k in info)
    for k, v in info.items():
        print(f"{k.ljust(width)}  {v}")


# --- commands ----------------------------------------------------------------------------
def _client(args: argparse.Namespace, timeout: float | None = None):  # type: ignore[no-untyped-def]
    from ._client import ManagedIdentityClient

    kw: dict[str, Any] = {}
    if timeout is not None:
        if timeout <= 0:
            raise ValueError("--timeout must be positive")
        from ._timeouts import DEFAULT_ESTS_TIMEOUTS, DEFAULT_IMDS_TIMEOUTS, Timeouts

        imds, ests = DEFAULT_IMDS_TIMEOUTS, DEFAULT_ESTS_TIMEOUTS
        kw = {"imds_timeouts": Timeouts(connect=min(imds.connect, timeout), read=imds.read,
                                        total=timeout),
              "ests_timeouts": Timeouts(connect=min(ests.connect, timeout),
                                        read=min(ests.read, timeout), total=ests.total),
              "renewal_deadline": min(10.0, timeout), "lock_timeout": min(120.0, timeout)}
    return ManagedIdentityClient(
        client_id=args.client_id, object_id=args.object_id, resource_id=args.resource_id,
        store_dir=args.store_dir, store_location=args.store, **kw,
    )


def _cmd_cert(args: argparse.Namespace) -> int:
    with _client(args, args.timeout) as client:
        cert = client.get_certificate()
    _print_kv(cert.to_json(), args.json)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    if args.all:
        return _status_all(args)
    from ._cli_status import status_line, status_row, store_missing, token_line, token_rows
    from .backends.contract import CorruptEntry

    client = _client(args)
    now = time.time()
    missing = store_missing(client)
    corrupt: CorruptEntry | None = None
    try:
        cert = None if missing else client.status()
    except CorruptEntry as exc:
        cert, corrupt = None, exc
    tokens = token_rows([] if missing else client.cached_tokens(), cert, now)
    counted = {"tokens_cached": len(tokens)}
    if cert is None:
        info: dict[str, Any] = {"identity": client.identity.alias,
                                "state": "absent" if corrupt is None else "corrupt"}
        if corrupt is not None:
            info["reason"] = corrupt.reason
        info["store"] = client.store.description
    else:
        row = status_row(cert, now)
        info = {**cert.to_json(), **row}
        if not args.json:
            print(status_line(row, cert, now, len(row["identity"])))
    if args.json:
        _print_kv({**info, **counted, "tokens": tokens}, True)
    else:
        _print_kv({**info, **counted}, False)
        for token in tokens:
            print(token_line(token))
    return 0 if info["state"] in ("fresh", "renewing") else 1


def _status_all(args: argparse.Namespace) -> int:
    from ._cli_status import alias_of, entry_names, identity_from_alias, status_line, status_row
    from ._identity import Identity
    from ._shared_tokens import entries
    from .backends.contract import CorruptEntry

    client = _client(args)
    directory = client.store.directory
    if directory is None:
        raise ValueError("status --all lists file stores only (use --store-dir)")
    names = entry_names(directory)
    now = time.time()
    rows: list[tuple[dict[str, Any], Any]] = []
    for name in names:
        path = os.path.join(directory, name)
        alias = alias_of(path, name)
        try:
            identity = identity_from_alias(alias, Identity)
            cert = client.store.find(identity, issuer_cn=client.issuer_cn)
            if cert is None:
                continue  # removed while we looked
            rows.append(({**status_row(cert, now),
                          "tokens_cached": len(entries(client.store, identity))}, cert))
        except (CorruptEntry, ValueError) as exc:
            reason = exc.reason if isinstance(exc, CorruptEntry) else str(exc)
            rows.append(({"identity": alias, "state": "corrupt", "reason": reason,
                          "store": path}, None))
        except MsiCertError as exc:  # unreadable: the rest of the listing still shows
            rows.append(({"identity": alias, "state": "unreadable",
                          "reason": _SUFFIX.sub("", str(exc)), "store": path}, None))
    ok = bool(rows) and all(r["state"] in ("fresh", "renewing") for r, _ in rows)
    if args.json:
        _print_json({"store": directory, "identities": [r for r, _ in rows]})
        return 0 if ok else 1
    if not rows:
        print(f"no identities in {directory}")
        return 1
    width = max(len(r["identity"]) for r, _ in rows)
    for row, cert in rows:
        cached = row.get("tokens_cached")
        tail = f", {cached} token{'' if cached == 1 else 's'} cached" if cached else ""
        print(status_line(row, cert, now, width) + tail)
    return 0 if ok else 1


def _cmd_token(args: argparse.Namespace) -> int:
    resource = args.resource.strip()
    if resource.endswith("/.default"):
        resource = resource[: -len("/.default")]
    claims = args.claims
    if claims is not None:
        from .wire._ests import check_claims

        try:
            check_claims(claims)
        except ValueError:
            raise ValueError(
                "--claims must be a JSON object (a resource's claims challenge)") from None
    with _client(args, args.timeout) as client:
        token = client.acquire_token(resource, claims=claims)
    if args.raw:
        print(token.access_token)
        return 0
    out = {
        "token_type": token.token_type,
        "access_token": token.access_token,
        "expires_on": token.expires_on,
        "x5t_s256": token.x5t_s256,
        "source": token.source,
    }
    _print_kv(out, args.json)
    return 0


def _cmd_purge(args: argparse.Namespace) -> int:
    from ._cli_status import store_missing

    client = _client(args)
    missing = store_missing(client)
    tokens = 0 if missing else len(client.cached_tokens())
    gone = [] if missing else client.purge()
    n = len(gone)
    if args.json:
        _print_json({"removed": n, "entries": gone, "tokens_removed": tokens})
    else:
        print(f"removed {n} entr{'y' if n == 1 else 'ies'} and {tokens} cached "
              f"token{'' if tokens == 1 else 's'}")
        for x5t in gone:
            print(f"  {x5t}")
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from ._capabilities import capabilities

    caps = capabilities(args.imds_endpoint, timeout=args.timeout)
    result = caps.probe
    if args.json:
        _print_json(caps.to_json())
    else:
        print(f"source  {result.source}")
        if result.imds_v2_reason:
            print(f"imds_v2  {result.imds_v2_reason}")
        if result.imds_v1_reason:
            print(f"imds_v1  {result.imds_v1_reason}")
        print(f"max_binding_strength  {caps.max_binding_strength}")
        for reason in caps.reasons:
            print(f"  because  {reason}")
    if result.unreachable:
        print(f"msicert probe: {HINT_NOT_ON_AZURE}", file=sys.stderr)
    return 0 if result.source == "imds_v2" else 1


def _cmd_emulator(args: argparse.Namespace) -> int:
    from .emulator._server import EmulatorOptionError, serve

    _lazylog.activate()  # the emulator logs through plain ``logging`` loggers
    try:
        serve(host=args.host, port=args.port, lifetime=args.lifetime, backdate=args.backdate)
    except EmulatorOptionError as exc:
        _fail(args, str(exc), "emulator", None, None, "EmulatorOptionError")
        return 2
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    _lazylog.activate()  # the demo runs the emulator, which logs through plain ``logging``
    return run_demo()


# --- errors and logging --------------------------------------------------------------------
_SUFFIX = re.compile(r"; (?:step=[^;]*|status=\d+|correlation_id=[^;]*)(?=;|$)")


def _describe(exc: MsiCertError) -> tuple[str, str | None, int | None, str | None]:
    """(message saying each thing once, step, status, correlation id)."""
    step = getattr(exc, "step", "") or None
    status = getattr(exc, "status", None)
    cid = getattr(exc, "correlation_id", "") or None
    text = _SUFFIX.sub("", str(exc))
    if isinstance(exc, ImdsError):
        if step and step not in text:
            text = f"{step}: {text}"
        if status is not None:
            text = f"{text} (HTTP {status})" if "; body=" not in text else \
                text.replace("; body=", f" (HTTP {status}); body=", 1)
        if status is None and HINT_NOT_ON_AZURE not in text and \
                re.search(r"\((\w+Error)\b", text):
            text = f"{text}; {HINT_NOT_ON_AZURE}"
    elif isinstance(exc, TokenError):
        if status is not None:
            text = f"token request failed (HTTP {status}): {text}"
        elif not text.startswith("token"):
            text = f"token request failed: {text}"
    else:
        text = f"{type(exc).__name__}: {text}"
    return text, step, status, cid


def _fail(args: argparse.Namespace, text: str, step: str | None, status: int | None,
          cid: str | None, kind: str) -> None:
    if getattr(args, "json", False):
        _print_json({"error": text, "step": step, "status": status, "correlation_id": cid,
                     "type": kind})
    # The correlation id is its own JSON field; on the terminal it ends the one line.
    tail = f"; correlation_id={cid}" if cid else ""
    print(f"msicert {args.command}: {text}{tail}", file=sys.stderr)


def _waits_only(record: logging.LogRecord) -> bool:
    """Default stderr view: warnings, and the INFO lines that say what is being waited for."""
    if record.levelno >= 30:  # logging.WARNING
        return True
    # Every wait is tagged where it is logged (IMDS retries, another process's mint).
    return bool(getattr(record, "wait", False))


def _setup_logging(args: argparse.Namespace) -> None:
    """The stderr handler of the ``msicert`` logger. Run by :mod:`._lazylog` just before the
    first record: a command that logs nothing (a warm ``cert``) never imports ``logging``."""
    import logging

    log = logging.getLogger("msicert")
    for old in [h for h in log.handlers if getattr(h, "_msicert_cli", False)]:
        log.removeHandler(old)  # main() called again in one process: one handler only
    handler = logging.StreamHandler(sys.stderr)
    handler._msicert_cli = True  # type: ignore[attr-defined]
    if args.quiet:
        handler.setLevel(logging.ERROR)
        handler.setFormatter(logging.Formatter("msicert: %(message)s"))
        return log.addHandler(handler)
    if args.verbose:
        log.setLevel(logging.DEBUG if args.verbose > 1 else logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    else:
        log.setLevel(logging.INFO)
        handler.addFilter(_waits_only)
        handler.setFormatter(logging.Formatter("msicert: %(message)s"))
    log.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _Parser.json_errors = "--json" in argv
    args = _parser().parse_args(argv)
    # Configured just before the first record that can show (ERROR with -q, else INFO), so
    # a command that logs nothing never imports logging. -v shows everything: configured
    # now, since msicert_native (below msicert) logs through a plain logging logger.
    _lazylog.on_first_use(lambda: _setup_logging(args), level=40 if args.quiet else 20)
    if args.verbose:
        _lazylog.activate()
    commands = {
        "cert": _cmd_cert, "status": _cmd_status, "token": _cmd_token, "purge": _cmd_purge,
        "probe": _cmd_probe, "emulator": _cmd_emulator, "demo": _cmd_demo,
    }
    try:
        return commands[args.command](args)
    except MsiCertError as exc:
        text, step, status, cid = _describe(exc)
        _fail(args, text, step, status, cid, type(exc).__name__)
        return 1
    except ValueError as exc:
        _fail(args, f"invalid input: {exc}", "arguments", None, None, "ValueError")
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _closed_pipe(args)


def _closed_pipe(args: argparse.Namespace) -> int:
    """The reader of our output went away (``| head``): one line on stderr, exit 141 (what a
    shell reports for SIGPIPE), and no second error when Python flushes stdout at exit."""
    import contextlib

    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    with contextlib.suppress(OSError):
        print(f"msicert {args.command}: output closed before it was all written (broken pipe)",
              file=sys.stderr)
    return 141
