"""Every connection a pull makes goes through here, checked against the registry policy.

``skopeo`` follows redirects and token realms by itself, so checking the reference's host before
the pull is not enough. Instead skopeo runs in a network namespace of its own that has nothing
but loopback, with ``HTTPS_PROXY`` pointing at :class:`ConnectGuard`, an HTTP CONNECT proxy whose
listening socket was made inside that namespace while it serves from the host's. For each tunnel
the guard resolves the host named in CONNECT, checks every address (``RegistryPolicy.check``)
and connects to one of them, so a redirect to an internal address is refused and a name that
resolves differently on a second lookup changes nothing. What does not go through the proxy
cannot leave the namespace: Go connects directly to loopback literals and ``localhost``, which
are the namespace's own (empty) loopback, and to plain-HTTP URLs (no ``HTTP_PROXY`` is set),
which have no route. A listed registry (plain HTTP, or on loopback) is reached through a
forwarder listening on its own address inside the namespace, for that one host:port only.

The guard also counts the bytes that come back and cuts every tunnel past the pull's size cap.
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
import threading
from collections.abc import Callable, Sequence

from .reference import InvalidReferenceError, split_host_port
from .registry_policy import RegistryPolicy, RegistryPolicyError

_CLONE_NEWNET = 0x40000000
_HEAD_LIMIT = 8192
_CONNECT_TIMEOUT = 10.0


def listen_in_netns(pid: int, addresses: Sequence[tuple[str, int]]) -> list[socket.socket]:
    """Listening sockets bound to ``addresses`` in the network namespace of process ``pid``.

    ``setns`` moves only the calling thread, so a short-lived thread does it; the sockets stay
    in that namespace while the rest of the process (and every connection it opens) does not.
    """
    made: list[socket.socket] = []
    failure: list[BaseException] = []

    def work() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns: {os.strerror(err)}")
        finally:
            os.close(fd)
        for host, port in addresses:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(64)
            made.append(sock)

    def guarded() -> None:
        try:
            work()
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)

    thread = threading.Thread(target=guarded, name="registry-netns", daemon=True)
    thread.start()
    thread.join()
    if failure:
        for sock in made:
            sock.close()
        raise failure[0]
    return made


class ConnectGuard:
    """A CONNECT proxy and fixed forwarders that only reach addresses the policy allows."""

    def __init__(self, policy: RegistryPolicy, byte_limit: int | None) -> None:
        self._policy = policy
        self._limit = byte_limit
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self.received = 0
        self.over_limit = False
        self.refusals: list[str] = []  # connections the policy refused
        self.failures: list[str] = []  # allowed connections that could not be made

    def serve_connect(self, listener: socket.socket) -> None:
        """Accept CONNECT requests on ``listener`` (the skopeo side's ``HTTPS_PROXY``)."""
        self._accept_loop(listener, self._tunnel)

    def serve_forward(self, listener: socket.socket, address: str, port: int) -> None:
        """Relay every connection on ``listener`` to ``address:port``.

        For a listed registry only: ``address`` is one its name resolved to when it was checked.
        """
        self._accept_loop(listener, lambda client: self._forward(client, address, port))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                sock.close()
                return False
            self._sockets.add(sock)
            return True

    def _accept_loop(
        self, listener: socket.socket, handle: Callable[[socket.socket], None]
    ) -> None:
        self._track(listener)

        def loop() -> None:
            while True:
                try:
                    client, _ = listener.accept()
                except OSError:
                    return  # closed
                if not self._track(client):
                    return
                threading.Thread(target=handle, args=(client,), daemon=True).start()

        threading.Thread(target=loop, name="registry-guard", daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        try:
            client.settimeout(_CONNECT_TIMEOUT)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(_HEAD_LIMIT)
                if not chunk or len(head) + len(chunk) > _HEAD_LIMIT:
                    return
                head += chunk
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if len(parts) != 3 or parts[0] != "CONNECT":
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nConnection: close\r\n\r\n")
                return
            try:
                host, port = split_host_port(parts[1])
                if port is None:
                    raise InvalidReferenceError(f"{parts[1]} has no port")
                upstream = self._open(host, port)
            except (InvalidReferenceError, RegistryPolicyError) as exc:
                with self._lock:
                    self.refusals.append(f"connection to {parts[1]} refused: {exc}")
                client.sendall(b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\n")
                return
            except OSError as exc:
                with self._lock:
                    self.failures.append(f"connecting to {parts[1]} failed: {exc}")
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n")
                return
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._relay(client, upstream)
        except OSError:
            pass
        finally:
            self._untrack(client)

    def _forward(self, client: socket.socket, address: str, port: int) -> None:
        try:
            upstream = socket.create_connection((address, port), timeout=_CONNECT_TIMEOUT)
            self._relay(client, upstream)
        except OSError:
            pass
        finally:
            self._untrack(client)

    def _open(self, host: str, port: int) -> socket.socket:
        """Connect to one of the addresses the policy allows for ``host:port``."""
        last: OSError | None = None
        for address in self._policy.check(host, port):
            try:
                return socket.create_connection((str(address), port), timeout=_CONNECT_TIMEOUT)
            except OSError as exc:
                last = exc
        raise last or OSError(f"cannot connect to {host}:{port}")

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        if not self._track(upstream):
            return
        try:
            client.settimeout(None)
            upstream.settimeout(None)
            peers = {client: upstream, upstream: client}
            while True:
                ready, _, _ = select.select(list(peers), [], [], 60.0)
                if not ready:
                    continue
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is upstream and not self._count(len(data)):
                        return
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            self._untrack(upstream)

    def _count(self, size: int) -> bool:
        with self._lock:
            self.received += size
            if self._limit is not None and self.received > self._limit:
                self.over_limit = True
                return False
            return True

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        sock.close()
