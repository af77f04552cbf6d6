"""A TCP proxy for fault tests: it forwards bytes both ways and can cut every
connection (mid-frame, wherever the stream happens to be), cut each
connection after N bytes, stall the stream, or hold each connection's
stream after N bytes until released. Threads only; loopback only."""
from __future__ import annotations

import socket
import threading


class Proxy:
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_after_bytes: int | None = None
        self.hold_after_bytes: int | None = None
        self.flowing = threading.Event()
        self.flowing.set()
        self.released = threading.Event()  # ends every hold (hold_after_bytes)
        self.cuts = 0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                down.close()
                continue
            with self._lock:
                self._conns += [down, up]
            budget = [self.cut_after_bytes]
            for src, dst in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(src, dst, budget), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, budget: list) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self.flowing.wait(30)  # a stall holds the bytes, bounded
                hold = self.hold_after_bytes
                if hold is not None and sent + len(data) > hold and not self.released.is_set():
                    part = max(hold - sent, 0)
                    dst.sendall(data[:part])
                    sent += part
                    data = data[part:]
                    self.released.wait(30)  # bounded, like a stall
                sent += len(data)
                if budget[0] is not None:
                    if len(data) >= budget[0]:
                        dst.sendall(data[: budget[0]])
                        self.cuts += 1
                        break
                    budget[0] -= len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)  # the FIN goes out even while
                except OSError:                   # the other pump sits in recv
                    pass
                try:
                    s.close()
                except OSError:
                    pass

    def cut_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        self.cuts += 1

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        self.cut_all()
