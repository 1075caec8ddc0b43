"""A TCP proxy between a device and the bundle server, for bench.soak: it forwards bytes both
ways and, when armed, damages the next large read from the server (a chunk of a bundle in
transit): `flip` inverts one byte in its second half (the ZMTP frame stays well formed, the
payload is wrong: the device's sha256 check must catch it), `truncate` forwards the first half
and cuts both connections (a transfer torn mid-chunk). down() stops listening and cuts every
connection (the bundle server gone from the device's view); up() listens again on the same port.
"""

from __future__ import annotations

import random
import socket
import threading

BIG = 8 << 10  # reads at least this long are taken for chunk payloads (requests and headers are short)


class BundleProxy:
    def __init__(self, upstream: tuple[str, int], port: int = 0, seed: int = 0) -> None:
        self.upstream = upstream
        self.port = port
        self.rng = random.Random(seed)
        self.armed = ""  # "" | flip | truncate
        self.hits: list[str] = []  # what was done, one entry per damaged read
        self.connections = 0
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._up = threading.Event()

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def up(self) -> BundleProxy:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(16)
        s.settimeout(0.2)
        self.port = s.getsockname()[1]
        self._listener = s
        self._up.set()
        threading.Thread(target=self._accept, args=(s,), daemon=True, name="proxy-accept").start()
        return self

    def down(self) -> None:
        self._up.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            _close(s)

    def arm(self, how: str) -> None:
        self.armed = how

    def _accept(self, listener: socket.socket) -> None:
        while self._up.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=2.0)
            except OSError:
                _close(client)
                continue
            client.settimeout(None)
            server.settimeout(None)
            with self._lock:
                self._socks += [client, server]
                self.connections += 1
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        try:
            while True:
                data = src.recv(256 << 10)
                if not data:
                    break
                how = self.armed if from_server and len(data) >= BIG else ""
                if how == "flip":
                    self.armed = ""
                    buf = bytearray(data)
                    k = self.rng.randrange(len(buf) // 2, len(buf))
                    buf[k] ^= 0xFF
                    data = bytes(buf)
                    self.hits.append(f"flip byte {k} of a {len(buf)}-byte read")
                elif how == "truncate":
                    self.armed = ""
                    self.hits.append(f"truncate a {len(data)}-byte read to {len(data) // 2}")
                    dst.sendall(data[: len(data) // 2])
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src)
            _close(dst)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
