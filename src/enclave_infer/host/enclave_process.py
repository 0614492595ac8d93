"""Starting, watching and talking to the enclave process.

Untrusted code: the host relays opaque frames and never imports the enclave package; it starts it
as ``python -m enclave_infer.enclave`` and speaks :mod:`enclave_infer.protocol.framing` to it over a
unix socket. If the enclave process dies, the next request restarts it (with a fresh key pair, so
clients attest again).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

from enclave_infer.config import EnclaveConfig
from enclave_infer.errors import ProtocolError, TransportError, UsageError
from enclave_infer.protocol import framing
from enclave_infer.protocol.api import EnclaveStatus
from enclave_infer.protocol.framing import Address, FrameType

__all__ = ["EnclaveProcess"]

log = logging.getLogger("enclave_infer.host")

# Idle connections the host keeps open to the enclave, at most (each holds one enclave thread, which
# under Gramine counts against sgx.max_threads): never more than the enclave works on at once.
MAX_IDLE_CONNECTIONS = 16
# Health checks and scrapes within this long of each other share one answer of the enclave's.
STATUS_CACHE_SECONDS = 1.0
# A health check or a scrape waits this long for the enclave's status.
STATUS_TIMEOUT = 2.0
# How long the enclave may take to start (it loads ONNX Runtime and unseals a model).
START_TIMEOUT = 120.0
# Unix socket paths are limited to 108 bytes on Linux.
_MAX_SOCKET_PATH = 100
# All the enclave process inherits from the host's environment (not TMPDIR: the enclave keeps its
# private folders where the host did not choose).
_PASSED_ENVIRONMENT = ("PATH", "LANG", "LC_ALL", "HOME")


class EnclaveProcess:
    def __init__(
        self,
        config: EnclaveConfig,
        data_dir: Path,
        *,
        platform: str = "auto",
        external: Address | None = None,
        log_format: str = "text",
        cluster_storage: Path | None = None,
        restart: bool = True,
    ) -> None:
        """``cluster_storage``: the shared folder of a cluster (:mod:`enclave_infer.cluster`); the
        enclave joins or founds one before it serves. ``restart``: start the enclave again when it
        has died (else requests fail with 503 until whoever runs this host replaces it: Ray)."""
        self.config = config
        self.cluster_storage = cluster_storage.absolute() if cluster_storage else None
        self.restart = restart
        self.log_format = log_format
        # absolute: the enclave process runs in a private working directory of its own
        self.data_dir = data_dir.absolute()
        self.platform = platform
        # An enclave started by someone else (e.g. `gramine-sgx enclave-infer`): attach, never spawn.
        self.external = external
        socket_path = self.data_dir / "enclave.sock"
        if len(str(socket_path.resolve())) > _MAX_SOCKET_PATH:
            socket_path = Path(tempfile.mkdtemp(prefix="enclave-infer-")) / "enclave.sock"
        self.socket_path = socket_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._data_lock: int | None = None
        self._pycache: str | None = None
        self._own_socket_dir = socket_path.parent if socket_path.parent != self.data_dir else None
        self.restarts = 0
        # The collateral for the enclave's evidence (host/collateral.py), handed to every enclave
        # this host starts, for the receipts it signs: set by whoever keeps it.
        self._collateral = b""
        # Idle connections for the server's event loop, with the enclave generation they reach.
        self._idle: list[tuple[int, asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._max_idle = min(MAX_IDLE_CONNECTIONS, config.limits.max_concurrent_requests)
        self._work_slots: asyncio.Semaphore | None = None  # made in the server's event loop
        self._stream_slots: asyncio.Semaphore | None = None
        self._generation = 0
        self._status_lock = asyncio.Lock()
        self._status: tuple[EnclaveStatus | None, float] = (None, -STATUS_CACHE_SECONDS)

    def _make_data_dir(self) -> None:
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise UsageError(f"--data-dir {self.data_dir} exists and is not a directory")
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot use --data-dir {self.data_dir}: {exc.strerror}") from None

    def _lock_data_dir(self) -> None:
        """One server per data dir: a second one would delete the first one's socket."""
        if self._data_lock is not None:
            return
        self._make_data_dir()
        try:
            fd = os.open(self.data_dir / "serve.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise UsageError(f"cannot use --data-dir {self.data_dir}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UsageError(f"--data-dir {self.data_dir} is in use by another enclave-infer serve") from None
        self._data_lock = fd

    # -- process lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self.external is None:
                self._start_locked()
            else:  # nothing to spawn, but the host keeps its collateral cache in the data dir
                self._make_data_dir()

    def _start_locked(self) -> None:
        self._lock_data_dir()
        config_path = self.data_dir / "enclave.json"
        config_path.write_bytes(self.config.canonical())
        self.socket_path.unlink(missing_ok=True)
        # -I: ignore PYTHON* variables and the user's site, and keep the working directory off
        # sys.path; a fresh, private pycache prefix means only the measured .py sources run, never
        # a planted .pyc. The environment is reduced to what a process needs to run at all.
        self._remove_pycache()
        self._pycache = tempfile.mkdtemp(prefix="enclave-infer-pycache-")
        cmd = [
            sys.executable, "-I", "-X", f"pycache_prefix={self._pycache}", "-m", "enclave_infer.enclave",
            "--listen", str(self.socket_path),
            "--config", str(config_path),
            "--storage", str(self.data_dir / "sealed"),
            "--platform", self.platform,
            "--log-format", self.log_format,
            "--exit-with-host",
        ]  # fmt: skip
        if self.cluster_storage is not None:
            cmd += ["--cluster-storage", str(self.cluster_storage)]
        env = {k: os.environ[k] for k in _PASSED_ENVIRONMENT if k in os.environ}
        # its own session: a terminal's Ctrl-C (and systemd's KillMode=mixed) signals the host alone,
        # which drains its requests and then stops the enclave
        # stdin: a pipe only this host holds; when the host dies, however, the enclave sees it close
        # and exits (--exit-with-host) instead of lingering, unreachable, in its own session
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, env=env, cwd=self._pycache, start_new_session=True
        )
        self._generation += 1
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                _close_stdin(self._proc)
                raise TransportError(
                    f"the enclave process exited at start with status {self._proc.returncode}"
                )
            if self.socket_path.exists():
                if self._collateral:
                    self._send_collateral()
                return
            time.sleep(0.05)
        self._proc.kill()
        self._proc.wait()
        _close_stdin(self._proc)
        raise TransportError(f"the enclave did not start within {START_TIMEOUT:.0f} s")

    def set_collateral(self, collateral: bytes) -> None:
        """Hand the enclave (and every enclave started later) the collateral its receipts carry."""
        self._collateral = collateral
        if self.running:
            self._send_collateral()

    def _send_collateral(self) -> None:
        """One SET_COLLATERAL frame (from a thread without an event loop, as ``self_attest`` asks)."""
        try:
            asyncio.run(self.call(FrameType.SET_COLLATERAL, self._collateral))
        except (TransportError, ProtocolError) as exc:
            log.warning("could not hand the enclave its collateral for receipts: %s", exc)

    def ensure_running(self) -> None:
        if self.external is not None:
            return
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            if self._proc is not None:
                log.warning("enclave process exited with status %s; restarting it", self._proc.returncode)
                self.restarts += 1
                _close_stdin(self._proc)
            self._start_locked()

    def stop(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            if self._proc is not None:
                _close_stdin(self._proc)
            if self._data_lock is not None:  # only a host that held the data dir owns its socket
                with contextlib.suppress(OSError):
                    self.socket_path.unlink(missing_ok=True)
            self._remove_pycache()
            if self._own_socket_dir is not None:
                shutil.rmtree(self._own_socket_dir, ignore_errors=True)
            if self._data_lock is not None:
                os.close(self._data_lock)
                self._data_lock = None

    def _remove_pycache(self) -> None:
        if self._pycache is not None:
            shutil.rmtree(self._pycache, ignore_errors=True)
            self._pycache = None

    @property
    def running(self) -> bool:
        return self.external is not None or (self._proc is not None and self._proc.poll() is None)

    # -- requests ------------------------------------------------------------------------------

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the enclave, (re)starting it first if it is down."""
        if self.external is None and (self._proc is None or self._proc.poll() is not None):
            await self._restart()
        try:
            if isinstance(self.external, tuple):
                return await asyncio.open_connection(*self.external)
            return await asyncio.open_unix_connection(str(self.external or self.socket_path))
        except OSError as exc:
            raise TransportError(f"cannot reach the enclave: {exc.strerror}") from None

    async def call(
        self, kind: FrameType, payload: bytes | bytearray = b"", *, pooled: bool = False
    ) -> tuple[FrameType, bytes]:
        """Send one frame, return the reply's type and payload: the reply ``framing.REQUESTS`` names
        for ``kind``, or ERROR (anything else raises :class:`ProtocolError`). The payload is not copied.
        ``pooled``: reuse an idle connection of this event loop's (the server's own), and keep this
        one for the next request: no connect, and no new enclave thread, per request."""
        async with self._work() if kind is FrameType.OHTTP_REQUEST else contextlib.nullcontext():
            reader, writer = await (self._borrow() if pooled else self.connect())
            done = False
            try:
                await _write_frame(writer, kind, payload)
                reply = await _read_frame(reader)
                framing.check_reply(kind, reply[0])  # the row of framing.REQUESTS, or ERROR
                done = True
                return reply
            except (OSError, asyncio.IncompleteReadError):
                raise TransportError("the enclave closed the connection") from None
            finally:
                if pooled and done and len(self._idle) < self._max_idle:
                    self._idle.append((self._generation, reader, writer))
                else:
                    writer.close()

    def _work(self) -> asyncio.Semaphore:
        """Requests that reach the enclave's inference at once, at most what it works on at once:
        the rest wait here, in the host, rather than as connections, each an enclave thread (which
        under Gramine count against sgx.max_threads)."""
        if self._work_slots is None:
            self._work_slots = asyncio.Semaphore(self.config.limits.max_concurrent_requests)
        return self._work_slots

    def _streams(self) -> asyncio.Semaphore:
        """Chunked requests relayed at once: at most what the enclave reads at once."""
        if self._stream_slots is None:
            self._stream_slots = asyncio.Semaphore(framing.STREAM_SLOTS)
        return self._stream_slots

    async def _borrow(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """An idle connection to the enclave running now, or a new one."""
        if self.external is None and (self._proc is None or self._proc.poll() is not None):
            await self._restart()  # a restart makes every idle one stale
        while self._idle:
            generation, reader, writer = self._idle.pop()
            if generation == self._generation and not writer.is_closing() and not reader.at_eof():
                return reader, writer
            writer.close()
        return await self.connect()

    async def _restart(self) -> None:
        if not self.restart:
            raise TransportError("the enclave process has exited; this replica is being replaced")
        await asyncio.to_thread(self.ensure_running)

    async def status(self) -> EnclaveStatus | None:
        """The enclave's public status, or None when it does not answer (down, restarting): for
        health checks and metrics, so it never starts an enclave that is down."""
        if not self.running:
            return None
        async with self._status_lock:  # one question at a time, however many probes and scrapers
            cached, at = self._status
            if time.monotonic() - at < STATUS_CACHE_SECONDS:
                return cached
            try:
                kind, data = await asyncio.wait_for(
                    self.call(FrameType.GET_STATUS, pooled=True), STATUS_TIMEOUT
                )
                status = EnclaveStatus.from_json(json.loads(data)) if kind is FrameType.STATUS else None
            except (TransportError, ProtocolError, TimeoutError, ValueError, RecursionError):
                status = None
            self._status = (status, time.monotonic())
            return status

    async def call_streaming(self, pieces: AsyncIterator[bytes]) -> tuple[FrameType, bytes]:
        """Relay a chunked request as BEGIN, DATA*, END frames as its ``pieces`` arrive, never
        holding more than one; stop sending as soon as the enclave answers (it may refuse at the
        head, before the body). Exceptions from ``pieces`` (a stalled or oversized client) end the
        exchange and propagate; the enclave sees the connection close and abandons the request."""
        async with self._streams():  # never a work slot: streams cannot stall classifications
            return await self._stream(pieces)

    async def _stream(self, pieces: AsyncIterator[bytes]) -> tuple[FrameType, bytes]:
        reader, writer = await self.connect()
        answer = asyncio.ensure_future(_read_frame(reader))
        try:
            kind = FrameType.CHUNKED_BEGIN
            async for piece in pieces:
                if answer.done():
                    break
                await _write_frame(writer, kind, piece)
                kind = FrameType.CHUNKED_DATA
            if not answer.done():
                if kind is FrameType.CHUNKED_BEGIN:  # an empty body still opens and closes a stream
                    await _write_frame(writer, kind, b"")
                await _write_frame(writer, FrameType.CHUNKED_END, b"")
            reply = await answer
            framing.check_reply(FrameType.CHUNKED_BEGIN, reply[0])
            return reply
        except (OSError, asyncio.IncompleteReadError):
            raise TransportError("the enclave closed the connection") from None
        finally:
            if not answer.done():
                answer.cancel()
            writer.close()


def _close_stdin(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()


async def _write_frame(writer: asyncio.StreamWriter, kind: FrameType, payload: bytes | bytearray) -> None:
    writer.write(framing.HEADER.pack(kind, len(payload)))
    writer.write(payload)
    await writer.drain()


async def _read_frame(reader: asyncio.StreamReader) -> tuple[FrameType, bytes]:
    kind, length = framing.parse_header(await reader.readexactly(framing.HEADER.size))
    return kind, await reader.readexactly(length)
