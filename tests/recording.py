"""A TCP relay that keeps every byte it carries: what an observer of the wire (or the operator of a
proxy in front of the service) sees."""

from __future__ import annotations

import contextlib
import socket
import threading


class Recorder:
    """Relays connections on a loopback port to ``target``; ``sent`` is what clients sent through
    it, ``received`` what came back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._sent, self._received = bytearray(), bytearray()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def sent(self) -> bytes:
        with self._lock:
            return bytes(self._sent)

    @property
    def received(self) -> bytes:
        with self._lock:
            return bytes(self._received)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            threading.Thread(target=self._pipe, args=(client, upstream, self._sent), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self._received), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bytearray) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    record += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            src.close()  # each socket is the source of one of the two pipes: closed once

    def close(self) -> None:
        self._listener.close()
