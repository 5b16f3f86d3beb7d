"""The Emulator object (servers, temp files, lifecycle) and the foreground ``serve`` loop."""

from __future__ import annotations

import errno
import logging
import math
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import weakref
from collections.abc import Mapping
from types import FrameType, TracebackType
from typing import TextIO

from cryptography import x509

from . import _ca
from ._blob import ACCOUNT as BLOB_ACCOUNT
from ._ests import EstsHandler, handshake_failure_hook, reject_handshake_hook, server_context
from ._faults import Fault
from ._http import Server
from ._imds import ImdsHandler
from ._resources import ResourceServer
from ._state import MAX_AHEAD, MAX_LIFETIME, RecordedRequest, State

__all__ = ["Emulator", "EmulatorOptionError", "check_options", "serve"]

logger = logging.getLogger("msicert.emulator")

_POLL_INTERVAL = 0.05  # bounds how long stop() waits for each serve_forever loop


def _authority(scheme: str, server: Server) -> str:
    host, port = server.server_address[:2]
    host = str(host)
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class Emulator:
    """Local IMDS v2 (HTTP) + ESTS (HTTPS, mutual TLS) speaking the MSI v2 wire contract.

    ``lifetime``/``backdate`` shape issued certificates (NotBefore = now - backdate,
    NotAfter = NotBefore + lifetime; lifetime at most 100 years, a negative backdate puts
    NotBefore in the future); ``token_lifetime`` is the access-token lifetime. All
    three are plain attributes that may change while the servers run. ``imds_port`` and
    ``ests_port`` pin the ports (0 = any free port). ``require_attestation`` makes
    issuecredential refuse a request without an attestation token, as IMDS does on hosts that
    issue only to attested KeyGuard keys. Use as a context manager or call :meth:`start` and
    :meth:`stop`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        lifetime: float = 3600.0,
        backdate: float = 60.0,
        token_lifetime: float = 3600.0,
        *,
        imds_port: int = 0,
        ests_port: int = 0,
        require_attestation: bool = False,
    ) -> None:
        self.host = host
        self._ports = (imds_port, ests_port)
        self._state = State(lifetime=lifetime, backdate=backdate, token_lifetime=token_lifetime)
        self._state.require_attestation = require_attestation
        self._servers: list[Server] = []
        self._threads: list[threading.Thread] = []
        self._cleanup: weakref.finalize[..., Emulator] | None = None
        self._ca_file = ""
        self._store_dir = ""
        self._lifecycle = threading.Lock()
        self._stopped = False

    # -- configuration ------------------------------------------------------------------
    @property
    def lifetime(self) -> float:
        """Certificate lifetime in seconds, measured from NotBefore."""
        return self._state.lifetime

    @lifetime.setter
    def lifetime(self, value: float) -> None:
        if not (math.isfinite(value) and 0 < value <= MAX_LIFETIME):
            raise ValueError(f"lifetime must be in (0, {MAX_LIFETIME:g}] seconds, got {value!r}")
        self._state.lifetime = value

    @property
    def issuer_cn(self) -> str:
        """The name binding certificates are issued under: ``ISSUER_CN`` (Azure public), or
        ``SOVEREIGN_ISSUER_CN``, a name that lacks the fragment msicert looks for by default."""
        return self._state.issuer_cn

    @issuer_cn.setter
    def issuer_cn(self, value: str) -> None:
        if value not in _ca.ISSUER_CNS:
            raise ValueError(f"issuer_cn must be one of {', '.join(_ca.ISSUER_CNS)}")
        self._state.issuer_cn = value

    @property
    def backdate(self) -> float:
        """How far NotBefore lies before the moment of issue, in seconds. A negative value
        puts NotBefore in the future (an IMDS clock ahead of this host's), at most a day."""
        return self._state.backdate

    @backdate.setter
    def backdate(self, value: float) -> None:
        self._state.backdate = value

    @property
    def token_lifetime(self) -> float:
        """Access-token lifetime in seconds (``expires_in``)."""
        return self._state.token_lifetime

    @token_lifetime.setter
    def token_lifetime(self, value: float) -> None:
        self._state.token_lifetime = value

    @property
    def cuid(self) -> dict[str, str]:
        """The VM's cuId (``vmId``, ``vmssId``); drop ``vmssId`` to act as a plain VM."""
        return self._state.cuid

    @cuid.setter
    def cuid(self, value: Mapping[str, str]) -> None:
        self._state.cuid = dict(value)

    @property
    def require_attestation(self) -> bool:
        """When true, issuecredential without ``attestation_token`` answers 400 as IMDS does."""
        return self._state.require_attestation

    @require_attestation.setter
    def require_attestation(self, value: bool) -> None:
        self._state.require_attestation = bool(value)

    @property
    def tenant_id(self) -> str:
        """The tenant every identity belongs to (a fixed GUID)."""
        return self._state.tenant_id

    def client_id_for(self, query: Mapping[str, str]) -> str:
        """Client id for a query: fixed GUID (system), ``client_id`` as given, else uuid5."""
        return self._state.client_id_for(query)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> Emulator:
        """Bind both servers on free (or the given) ports and serve in daemon threads."""
        with self._lifecycle:
            if self._servers or self._stopped:
                raise RuntimeError("an Emulator starts once; create a new one")
            tmp = tempfile.mkdtemp(prefix="msicert-emulator-")
            self._cleanup = weakref.finalize(self, shutil.rmtree, tmp, True)
            try:
                self._start(tmp)
            except BaseException:
                self._shutdown()
                raise
        logger.info("emulator started: IMDS %s, ESTS %s", self.imds_url, self.ests_url)
        return self

    def _start(self, tmp: str) -> None:
        tls = _ca.server_tls(self.host)
        # Not created here: the client creates it (0700) on the first mint. It lives in the
        # temp directory, so the emulator's certificates go when the emulator stops.
        self._store_dir = os.path.join(tmp, "store")
        self._ca_file = os.path.join(tmp, "ca.pem")
        with open(self._ca_file, "wb") as handle:
            handle.write(tls.ca_pem)
        chain_file = os.path.join(tmp, "ests-server.pem")
        fd = os.open(chain_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(tls.key_pem + tls.leaf_pem)
        try:
            context = server_context(tls, chain_file)
        finally:
            os.remove(chain_file)  # the context holds the key; keep no copy on disk
        imds = Server((self.host, self._ports[0]), ImdsHandler, self._state)
        self._servers.append(imds)
        ests = Server(
            (self.host, self._ports[1]),
            EstsHandler,
            self._state,
            tls=context,
            before_handshake=reject_handshake_hook(self._state),
            on_handshake_failure=handshake_failure_hook(self._state),
        )
        self._servers.append(ests)
        self._servers.append(ResourceServer(
            (self.host, 0), self._state, tls=context,
            on_handshake_failure=handshake_failure_hook(self._state)))
        self._state.ests_url = _authority("https", ests)
        self._state.drop_idle_ests = lambda: ests.close_connections(idle_only=True)
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": _POLL_INTERVAL},
                name=f"msicert-emulator-{server.server_address[1]}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop both servers, close live connections and remove the temp directory."""
        with self._lifecycle:
            if self._stopped:
                return
            self._stopped = True
            self._shutdown()
        logger.info("emulator stopped")

    def _shutdown(self) -> None:
        self._state.stopping.set()
        # shutdown() waits for serve_forever to return: call it only where that loop runs.
        for server in self._servers[: len(self._threads)]:
            server.shutdown()
        for server in self._servers:
            server.close_connections()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=2.0)
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> Emulator:
        if not self._servers:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses ----------------------------------------------------------------------
    def _server(self, index: int) -> Server:
        if len(self._servers) != 3 or self._stopped:
            raise RuntimeError("the emulator is not running")
        return self._servers[index]

    @property
    def imds_url(self) -> str:
        """``http://host:port`` of IMDS (the value for AZURE_POD_IDENTITY_AUTHORITY_HOST)."""
        return _authority("http", self._server(0))

    @property
    def ests_url(self) -> str:
        """``https://host:port`` of ESTS (returned as ``mtls_authentication_endpoint``)."""
        self._server(1)
        return self._state.ests_url

    @property
    def vault_url(self) -> str:
        """``https://host:port`` of the Key Vault stand-in (``SecretClient``'s vault_url)."""
        return _authority("https", self._server(2))

    @property
    def blob_url(self) -> str:
        """The Blob stand-in's account URL (``BlobServiceClient``'s account_url)."""
        return f"{_authority('https', self._server(2))}/{BLOB_ACCOUNT}"

    @property
    def resources(self) -> ResourceServer:
        """The stand-ins' server: ``.vault`` and ``.account`` hold what they store."""
        server = self._server(2)
        assert isinstance(server, ResourceServer)
        return server

    @property
    def ca_file(self) -> str:
        """PEM file holding the ESTS server CA (the value for MSICERT_CA_BUNDLE)."""
        self._server(1)
        return self._ca_file

    @property
    def store_dir(self) -> str:
        """A store directory of the emulator's own, removed when it stops (MSICERT_STORE_DIR)."""
        self._server(1)
        return self._store_dir

    def env(self) -> dict[str, str]:
        """Environment that points msicert (and only msicert) at this emulator.

        ``AZURE_POD_IDENTITY_AUTHORITY_HOST`` (IMDS), ``MSICERT_CA_BUNDLE`` (trust the
        emulator's ESTS and resource, for msicert only; other programs keep their trust) and
        ``MSICERT_STORE_DIR`` (the emulator's own store: the real one is never touched).
        """
        return {
            "AZURE_POD_IDENTITY_AUTHORITY_HOST": self.imds_url,
            "MSICERT_CA_BUNDLE": self.ca_file,
            "MSICERT_STORE_DIR": self.store_dir,
        }

    # -- observation and faults ---------------------------------------------------------
    def count(self, name: str) -> int:
        """Requests received by ``name`` (getplatformmetadata, issuecredential, token,
        resource, keyvault, blob), faulted ones included."""
        return self._state.count(name)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of the recorded requests, oldest first."""
        return self._state.requests()

    @property
    def violations(self) -> list[str]:
        """Snapshot of the wire-contract violations seen, oldest first."""
        return self._state.violations()

    @property
    def issued(self) -> list[x509.Certificate]:
        """Snapshot of the certificates issued, oldest first."""
        return self._state.issued()

    def inject(self, endpoint: str, fault: Fault) -> None:
        """Queue ``fault`` for ``endpoint`` (FIFO per endpoint)."""
        self._state.inject(endpoint, fault)

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        self._state.faults.clear()

    def reset(self) -> None:
        """Clear counts, requests, violations and faults."""
        self._state.reset()

    def __repr__(self) -> str:
        running = bool(self._servers) and not self._stopped
        where = f" imds={self.imds_url} ests={self.ests_url}" if running else ""
        return f"<Emulator {'running' if running else 'stopped'}{where}>"


class EmulatorOptionError(ValueError):
    """The emulator cannot start with these options (one line, for the command line)."""


def check_options(host: str, port: int, lifetime: float, backdate: float) -> None:
    """Raise EmulatorOptionError for options that cannot work, before binding anything."""
    if not 0 <= port <= 65535:
        raise EmulatorOptionError(f"port {port} is not in 0..65535")
    if not math.isfinite(lifetime) or lifetime <= 0:
        raise EmulatorOptionError(f"lifetime {lifetime:g} s must be a positive number of seconds")
    if lifetime > MAX_LIFETIME:
        raise EmulatorOptionError(
            f"lifetime {lifetime:g} s is longer than {MAX_LIFETIME:g} s (100 years): NotAfter "
            "must stay before the year 9999")
    if not math.isfinite(backdate) or not -MAX_AHEAD <= backdate <= MAX_LIFETIME:
        raise EmulatorOptionError(
            f"backdate {backdate:g} s must be between {-MAX_AHEAD:g} (NotBefore a day ahead: "
            f"an IMDS clock ahead of this host's) and {MAX_LIFETIME:g}")
    if lifetime <= backdate:
        raise EmulatorOptionError(
            f"lifetime {lifetime:g} s is not longer than the backdate {backdate:g} s: "
            "every certificate would be expired when issued")
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICSERV)
    except (socket.gaierror, UnicodeError) as exc:
        raise EmulatorOptionError(f"host {host!r} cannot be resolved: {exc}") from None


def _start_error(host: str, port: int, exc: OSError) -> EmulatorOptionError:
    if exc.errno == errno.EADDRINUSE:
        return EmulatorOptionError(f"port {port} on {host} is busy (another process listens)")
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(exc, socket.gaierror):
        return EmulatorOptionError(f"cannot listen on host {host!r}: not a local address")
    if exc.errno == errno.EACCES:
        return EmulatorOptionError(f"port {port} on {host} needs privileges")
    return EmulatorOptionError(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    lifetime: float = 604800.0,
    out: TextIO | None = None,
    *,
    backdate: float = 60.0,
) -> None:
    """Run an emulator in the foreground until KeyboardInterrupt or SIGTERM.

    IMDS listens on ``port`` (0 = a free port). Prints the ``export`` lines a shell needs,
    then a ready line, to ``out`` (default: ``sys.stdout`` at call time). Raises
    EmulatorOptionError (a ValueError) for a busy port, a host that is not local, or a
    lifetime that is not positive or not longer than ``backdate``.
    """
    check_options(host, port, lifetime, backdate)
    stream = sys.stdout if out is None else out
    done = threading.Event()
    in_main_thread = threading.current_thread() is threading.main_thread()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = signal.signal(signal.SIGTERM, on_sigterm) if in_main_thread else None
    emulator = Emulator(host=host, lifetime=lifetime, backdate=backdate, imds_port=port)
    try:
        emulator.start()
    except OSError as exc:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        raise _start_error(host, port, exc) from None
    try:
        with emulator:
            for name, value in emulator.env().items():
                print(f"export {name}={shlex.quote(value)}", file=stream)
            print(
                f"# msicert emulator ready: IMDS {emulator.imds_url}, ESTS {emulator.ests_url},"
                f" stats {emulator.imds_url}/__emulator__/stats (Ctrl-C stops it)",
                file=stream,
            )
            stream.flush()
            while not done.wait(0.5):
                pass
    except KeyboardInterrupt:
        pass
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
