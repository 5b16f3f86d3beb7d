"""A child forked without exec starts clean: it keeps none of the parent's locks (neither the
identity's ``flock`` nor a thread lock a parent thread held at the fork) and shares none of its
connections. Real ``os.fork()``; the child reports through a pipe and leaves by ``os._exit``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX only"),
    # Python 3.12+ warns about fork() in a process with threads: that is the point here.
    pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning"),
]

# A third process takes the lock file's flock without waiting: exit 0 when it got it.
_FLOCK_NB = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    sys.exit(3)
print("locked")
"""


class Child:
    """A forked child running ``body(wait_for_parent)``; its JSON result comes back through
    a pipe. ``wait_for_parent()`` blocks the child until the parent calls :meth:`go`."""

    def __init__(self, body: Callable[[Callable[[], None]], dict]) -> None:
        go_r, go_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 0
            try:
                os.close(go_w)
                os.close(out_r)
                os.write(out_w, b"forked\n")
                result = body(lambda: os.read(go_r, 1) and None)
            except BaseException as exc:
                result, code = {"error": f"{type(exc).__name__}: {exc}"}, 1
            try:
                os.write(out_w, json.dumps(result).encode() + b"\n")
            finally:
                os._exit(code)
        os.close(go_r)
        os.close(out_w)
        self.pid = pid
        self._go = go_w
        self._out = os.fdopen(out_r, "rb")
        assert self._out.readline() == b"forked\n"

    def alive(self) -> bool:
        return os.waitpid(self.pid, os.WNOHANG) == (0, 0)

    def go(self) -> None:
        os.write(self._go, b"g")

    def result(self, timeout: float = 30.0) -> dict:
        """The child's result, once it has exited (killed, and the test failed, when it hangs
        past ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                line = self._out.readline()
                self._out.close()
                os.close(self._go)
                assert line, f"the child died without a result (status {status})"
                return json.loads(line)
            time.sleep(0.01)
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        pytest.fail(f"the forked child was still running after {timeout} s (deadlocked?)")


def _holding(client) -> tuple[threading.Event, threading.Thread]:
    """A parent thread holding the identity's lock (both halves) until the event is set."""
    return _holding_lock(client.store.lock(client.identity, timeout=10).hold(), "lock-holder")


def _fork_then_release(body, release: threading.Event, holder: threading.Thread) -> dict:
    """Fork a child running ``body`` while ``holder`` holds its lock, then let the holder go
    and the child run; the child's result (an error in it fails the test)."""
    child = Child(body)
    release.set()
    holder.join(10)
    child.go()
    result = child.result()
    assert "error" not in result, result
    return result


def _ports(pool_manager) -> set[int]:
    """Local ports of the kept-alive connections idle in a urllib3 PoolManager."""
    ports = set()
    for key in list(pool_manager.pools.keys()):
        for conn in list(pool_manager.pools[key].pool.queue):
            if conn is not None and conn.sock is not None:
                ports.add(conn.sock.getsockname()[1])
    return ports


def _client_ports(client) -> set[int]:
    """Every idle kept-alive connection of the client: IMDS, ESTS and the resource."""
    ports = set()
    manager = client._token_manager
    if manager is not None:
        for _, pool in list(manager.tls._entries.values()):
            ports |= _ports(pool)
    if client._imds_client is not None and client._imds_client._pool is not None:
        ports |= _ports(client._imds_client._pool)
    return ports


def test_a_child_forked_while_a_parent_thread_holds_the_lock_keeps_no_flock(make_client, emu):
    client = make_client()
    client.get_certificate()
    path = client.store.lock(client.identity, timeout=1).lock_path
    release, holder = _holding(client)

    child = Child(lambda wait: (wait(), {})[1])  # idles until told to go
    release.set()
    holder.join(10)
    assert child.alive()
    # The parent let go; the child is alive and never touched the lock. A third process
    # must get it at once: the child's inherited descriptor must not keep it.
    third = subprocess.run([sys.executable, "-c", _FLOCK_NB, path], capture_output=True,
                           text=True, timeout=30)
    assert child.alive()
    child.go()
    assert child.result() == {}
    assert (third.returncode, third.stdout.strip()) == (0, "locked"), third.stderr


def test_a_child_forked_while_a_parent_thread_holds_the_lock_can_take_it(make_client, emu):
    client = make_client()
    client.get_certificate()
    release, holder = _holding(client)

    def body(wait) -> dict:
        wait()  # until the parent thread let go of the flock
        started = time.monotonic()
        with client.store.lock(client.identity, timeout=5).hold():
            took = time.monotonic() - started
        # and what takes the lock in msicert itself: a purge and a new mint
        removed = len(client.purge())
        cert = client.get_certificate()
        return {"took": took, "removed": removed, "source": cert.source}

    result = _fork_then_release(body, release, holder)
    assert result["took"] < 2.0  # the thread lock the parent thread held is not inherited
    assert (result["removed"], result["source"]) == (1, "imds")
    assert emu.count("issuecredential") == 2


def test_a_forked_child_opens_its_own_connections_and_leaves_the_parents_working(make_client, emu):
    client = make_client()
    vault = emu.resources.vault_resource
    url = f"{emu.vault_url}/secrets/s?api-version=7.6"
    json_ct = {"Content-Type": "application/json"}
    assert client.request("PUT", url, resource=vault, body=b'{"value": "parent"}',
                          headers=json_ct).status == 200
    parent_ports = _client_ports(client)
    assert len(parent_ports) == 3  # IMDS, ESTS, the vault: each kept alive
    parent_pools = (client._token_manager.tls, client._imds_client)
    release, holder = _holding(client)  # a parent thread holds the lock at the fork, too

    def body(wait) -> dict:
        wait()
        fresh = (client._token_manager.tls is not parent_pools[0]
                 and client._imds_client is not parent_pools[1])
        # A new resource (ESTS), the vault again, and a new certificate (IMDS)
        token = client.acquire_token("https://storage.azure.com")
        status = client.request("PUT", url, resource=vault, body=b'{"value": "child"}',
                                headers=json_ct).status
        client.purge()
        minted = client.get_certificate()
        assert client.request("PUT", url, resource=vault, body=b'{"value": "child2"}',
                              headers=json_ct).status == 200
        return {"fresh": fresh, "status": status, "bound": token.x5t_s256,
                "minted": minted.x5t_s256, "ports": sorted(_client_ports(client))}

    result = _fork_then_release(body, release, holder)
    assert result["fresh"] and result["status"] == 200
    assert emu.count("issuecredential") == 2  # the child's own mint
    assert result["ports"] and not set(result["ports"]) & parent_ports
    # The parent's connections were never used by the child: they still work, and they are
    # the same connections (no reconnect): the vault, ESTS (a new resource) and IMDS.
    assert client.request("PUT", url, resource=vault, body=b'{"value": "parent2"}',
                          headers=json_ct).status == 200
    mine = client.acquire_token("https://storage.azure.com")  # the child's cache is its own
    assert (mine.source, mine.x5t_s256) == ("identity_provider", result["bound"])
    assert _client_ports(client) == parent_ports
    client.purge()
    client.get_certificate()  # a mint over the parent's own IMDS connection
    assert emu.count("issuecredential") == 3
    assert _client_ports(client) >= parent_ports
    assert emu.violations == []


def _holding_lock(lock, name: str = "inside-a-lock") -> tuple[threading.Event, threading.Thread]:
    """A parent thread inside ``lock`` (any context manager; for an internal lock, taken
    directly: in real life a thread holds it for microseconds, and a fork can land in them)
    until the returned event is set."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(60)

    thread = threading.Thread(target=hold, name=name, daemon=True)
    thread.start()
    assert held.wait(10)
    return release, thread


@pytest.mark.parametrize("inside", ["registry", "issued-map"])
def test_a_child_forked_while_a_parent_thread_is_inside_the_sdk_credential_can_use_it(
        make_client, emu, inside):
    from azure.core.rest import HttpRequest

    from msicert.azure import _issued, sdk_kwargs

    client = make_client()
    kw = sdk_kwargs(client)
    kw["credential"].get_token_info(emu.resources.vault_resource)
    lock = _issued._registries._guard if inside == "registry" else _issued.issued_for(client)._lock
    release, holder = _holding_lock(lock)

    def body(wait) -> dict:
        kw2 = sdk_kwargs(client)  # the registry
        token = kw2["credential"].get_token_info("https://storage.azure.com")  # the map
        bearer = kw2["credential"].get_token_info(emu.resources.vault_resource).token
        resp = kw2["transport"].send(HttpRequest(
            "PUT", f"{emu.vault_url}/secrets/c?api-version=7.6", json={"value": "child"},
            headers={"Authorization": f"Bearer {bearer}"}))
        return {"type": token.token_type, "status": resp.status_code}

    child = Child(body)
    try:
        result = child.result(timeout=15)
    finally:
        release.set()
        holder.join(10)
    assert result == {"type": "mtls_pop", "status": 200}
    assert emu.violations == []


def test_a_child_forked_while_a_parent_thread_is_inside_capabilities_can_ask_it(emu):
    from msicert import _capabilities

    _capabilities.capabilities(emu.imds_url, timeout=5)
    release, holder = _holding_lock(_capabilities._lock)

    def body(wait) -> dict:
        caps = _capabilities.capabilities(emu.imds_url, timeout=5)
        return {"strength": caps.max_binding_strength}

    child = Child(body)
    try:
        result = child.result(timeout=15)
    finally:
        release.set()
        holder.join(10)
    assert result == {"strength": "software"}


def test_a_child_forked_while_a_parent_thread_is_inside_a_log_handler_logs_and_mints(
        make_client, emu):
    import logging

    class Blocking(logging.Handler):
        """Holds its lock (``Handler.handle`` takes it around ``emit``) while the parent's
        logging thread is inside."""

        def __init__(self) -> None:
            super().__init__(logging.INFO)
            # msicert's own records only: the emulator (this process) logs below "msicert"
            # too, and must not wait on the lock the parent's thread holds.
            self.addFilter(lambda record: record.name == "msicert")
            self.entered, self.let_go = threading.Event(), threading.Event()
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())
            if threading.current_thread().name == "logging-parent":
                self.entered.set()
                self.let_go.wait(60)

    logger = logging.getLogger("msicert")
    handler, level = Blocking(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        client = make_client()
        client.get_certificate()
        lock_release, lock_holder = _holding(client)
        logging_thread = threading.Thread(
            target=lambda: logger.warning("a parent thread logging at the fork"),
            name="logging-parent", daemon=True)
        logging_thread.start()
        assert handler.entered.wait(10)

        def body(wait) -> dict:
            wait()
            client.purge()
            cert = client.get_certificate()  # logs at INFO: "minted certificate ..."
            return {"source": cert.source,
                    "minted": any(m.startswith("minted certificate") for m in handler.messages)}

        child = Child(body)
        lock_release.set()
        lock_holder.join(10)
        child.go()
        result = child.result(timeout=20)
    finally:
        handler.let_go.set()
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert result == {"source": "imds", "minted": True}
