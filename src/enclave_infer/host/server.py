"""``enclave-infer serve``: start the enclave, attest it, log the report, serve HTTP with uvicorn.

Untrusted code. uvicorn parses HTTP with httptools when it is installed (a dependency), else h11;
either way its protocol class is wrapped here (:class:`_Guarded`) with the limits uvicorn lacks, so
that one connection cannot hold what the others need:

- a request head (request line and header fields) larger than :data:`MAX_HEAD_BYTES` is refused at
  once with 431 ``headers-too-large`` (httptools has no limit at all; h11's answers 400);
- a connection that has not sent a whole head within :data:`HEAD_SECONDS` of opening (or of its last
  answer) is closed, with 408 ``request-timeout`` if it had begun one;
- connections beyond the open-file limit less :data:`FD_RESERVE` are refused at once with 503
  ``overloaded`` and ``Retry-After`` (under uvloop, libuv would otherwise accept and reset them
  without a word once descriptors run out); the first refusal of a burst is logged, as is the event
  loop's ``EMFILE`` on accept.

Bodies are the app's business (``host/app.py``: a minimum rate, and no slot before a body is in).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http
import logging
import resource
import secrets
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn

from enclave_infer import logs
from enclave_infer.attestation.evidence import Attestation, Evidence, UnsafeNoPolicy, Verifier, verify
from enclave_infer.attestation.report import NONCE_BYTES, Tee
from enclave_infer.config import EnclaveConfig
from enclave_infer.errors import AttestationError, EnclaveInferError, TransportError, UsageError
from enclave_infer.host.app import DEFAULT_MAX_IN_FLIGHT, RETRY_AFTER_SECONDS, create_app
from enclave_infer.host.collateral import (
    FIRST_RETRY_SECONDS,
    Collateral,
    CollateralKeeper,
    CollateralSource,
    KdsSource,
    PccsSource,
    needs_collateral,
)
from enclave_infer.host.enclave_process import EnclaveProcess
from enclave_infer.protocol import ohttp
from enclave_infer.protocol.api import PROBLEM_MEDIA_TYPE, Problem, ProblemDetails
from enclave_infer.protocol.framing import Address, FrameType

__all__ = ["ConnectionLimits", "http_server", "run"]

log = logging.getLogger("enclave_infer.host")

# SIGTERM: no new connections; requests in progress get this long to finish, then the enclave stops.
DRAIN_SECONDS = 30.0
# A request line and its header fields: the host's requests carry a few hundred bytes of them (a
# browser's, with cookies of other sites, a few KiB); nginx allows 4 x 8 KiB, Node.js 16 KiB.
MAX_HEAD_BYTES = 64 * 1024
# A client has this long from opening a connection (or from its last answer) to send a whole request
# head: an honest one sends it in one packet; a silent or trickling one holds a descriptor for nothing.
HEAD_SECONDS = 10.0
# Descriptors kept free of client connections: the enclave's sockets, collateral fetches, logs, TLS
# and the listening socket itself. Connections beyond the open-file limit less this are refused.
FD_RESERVE = 128
# After refusing a request whose body may still be arriving, the host reads (and drops) what comes for
# this long before closing, so that the client reads the answer instead of a reset (RFC 9112 §9.6).
LINGER_SECONDS = 2.0
# A burst of refusals or accept failures is logged once: a new burst begins after this long without one.
BURST_QUIET_SECONDS = 60.0


async def _fetch_evidence(enclave: EnclaveProcess) -> tuple[bytes, bytes, bytes]:
    """The enclave's key configuration, a fresh nonce, and its evidence document for them."""
    kind, keys = await enclave.call(FrameType.GET_KEYS)
    nonce = secrets.token_bytes(NONCE_BYTES)
    kind2, document = await enclave.call(FrameType.GET_EVIDENCE, nonce)
    if kind is not FrameType.KEYS or kind2 is not FrameType.EVIDENCE:
        raise TransportError("the enclave did not answer the start-up attestation")
    return ohttp.decode_key_configs(keys)[0].encode(), nonce, document


_NO_CLIENT_POLICY = UnsafeNoPolicy(
    "the host's check of its own enclave at start; clients check their constraints"
)


def self_attest(enclave: EnclaveProcess, verifier: Verifier, collateral: bytes | None = None) -> Attestation:
    """What the Conclave host does at start: fetch its enclave's evidence, appraise it with the
    collateral the host serves, and log the report. Raises when it does not verify. The host has no
    policy of its own (each client checks its constraint), and says so in its log."""
    key_config, nonce, document = asyncio.run(_fetch_evidence(enclave))
    attestation = verify(
        document,
        _NO_CLIENT_POLICY,
        verifier=verifier,
        key_config=key_config,
        nonce=nonce,
        now=datetime.now(UTC),
        collateral=collateral,
    )
    if attestation.report.tee == Tee.SIMULATION:
        log.warning("SIMULATION MODE: no hardware TEE; the enclave's evidence is INSECURE")
    log.info("%s", attestation.summary(now=datetime.now(UTC)))
    return attestation


def run(
    config: EnclaveConfig,
    data_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    platform: str = "auto",
    external: Address | None = None,
    log_format: str = "text",
    collateral: CollateralSource | None = None,
    verifier: Verifier,
    tls: tuple[Path, Path] | None = None,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    drain_seconds: float = DRAIN_SECONDS,
    collateral_first_retry: float = FIRST_RETRY_SECONDS,
    measurements: bytes = b"",
) -> None:
    """``measurements``: the release's reference measurements, attached to the evidence (IMAGE:).
    ``collateral``: where the host gets collateral for its enclave's evidence (default: Intel's
    PCS for SGX and TDX, AMD's KDS for SEV-SNP). ``verifier``: the roots the host appraises its own
    enclave with at start (:meth:`Verifier.production`; only code, never an option, gives another).
    ``tls``: (certificate chain, private key) PEM files to serve HTTPS with.
    ``max_in_flight``: requests at once before 503. ``drain_seconds``: how long SIGTERM waits for
    requests in progress before the enclave stops. ``collateral_first_retry``: seconds before the
    first retry of a failed collateral fetch (then doubling); tests shorten it."""
    started = time.monotonic()
    logs.configure("host", log_format)
    listener = _listen(host, port)  # before the enclave starts: a busy port fails fast, in one line
    port = listener.getsockname()[1]  # --port 0: the one the system chose
    enclave = EnclaveProcess(config, data_dir, platform=platform, external=external, log_format=log_format)
    try:
        enclave.start()
        keeper = attest_at_start(enclave, verifier, collateral, first_retry=collateral_first_retry)
    except EnclaveInferError:
        enclave.stop()
        listener.close()
        raise
    app = create_app(enclave, keeper, max_in_flight=max_in_flight, measurements=measurements)
    server = http_server(app, host=host, port=port, tls=tls, drain_seconds=drain_seconds)
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "Started enclave-infer in %.2f seconds; listening on %s://%s:%d",
        time.monotonic() - started,
        "https" if tls else "http",
        shown,
        port,
    )
    try:
        server.run(sockets=[listener])
    finally:
        if keeper is not None:
            keeper.stop()
        enclave.stop()
        listener.close()


def attest_at_start(
    enclave: EnclaveProcess,
    verifier: Verifier,
    collateral: CollateralSource | None,
    *,
    first_retry: float = FIRST_RETRY_SECONDS,
) -> CollateralKeeper | None:
    """The started enclave's evidence appraised, as clients will appraise it; for SGX, TDX and
    SEV-SNP, the collateral kept for it (a keeper fetching in the background). Raises when the
    evidence does not verify."""
    tee, evidence = _platform_evidence(enclave)
    if not needs_collateral(tee):
        self_attest(enclave, verifier)
        return None

    def appraise_with(fresh: Collateral) -> None:
        self_attest(enclave, verifier, fresh.data)
        enclave.set_collateral(fresh.data)  # receipts carry it, to verify offline

    keeper = CollateralKeeper(
        collateral or _default_source(tee),
        enclave.data_dir / COLLATERAL_CACHE,
        on_ready=appraise_with,
        first_retry=first_retry,
    )
    keeper.start(tee, evidence)
    if keeper.refused:
        keeper.stop()
        raise AttestationError(keeper.problem)
    return keeper


# The collateral cache, in the data dir: public data, signed by Intel or AMD.
COLLATERAL_CACHE = "collateral.json"


def _platform_evidence(enclave: EnclaveProcess) -> tuple[Tee, bytes]:
    """The TEE type and the platform evidence of the running enclave (for its collateral)."""
    document = asyncio.run(_fetch_evidence(enclave))[2]
    parsed = Evidence.decode(document)
    return parsed.tee, parsed.evidence


def _default_source(tee: Tee) -> CollateralSource:
    return KdsSource() if tee == Tee.SEV_SNP else PccsSource()


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may hold before its request reaches the app (the module docstring)."""

    max_head_bytes: int = MAX_HEAD_BYTES
    head_seconds: float = HEAD_SECONDS
    fd_reserve: int = FD_RESERVE
    linger_seconds: float = LINGER_SECONDS


def http_server(
    app: Any,
    *,
    host: str,
    port: int,
    tls: tuple[Path, Path] | None = None,
    drain_seconds: float = DRAIN_SECONDS,
    limits: ConnectionLimits | None = None,
    parser: str = "auto",
) -> uvicorn.Server:
    """uvicorn serving ``app`` with the connection limits; ``parser``: ``"httptools"``, ``"h11"``
    or ``"auto"`` (httptools when installed, as uvicorn chooses)."""
    limits = limits or ConnectionLimits()
    protocol = _guarded(parser, limits, _Bursts())
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        log_level="info",
        log_config=None,
        timeout_graceful_shutdown=int(drain_seconds),
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
        # h11's own limit on a head (400) stays above ours (431)
        h11_max_incomplete_event_size=2 * limits.max_head_bytes,
    )
    return _Server(config, protocol.bursts)


class _Bursts:
    """The host's log lines about refused connections: one per burst, not one per connection."""

    def __init__(self, quiet: float = BURST_QUIET_SECONDS) -> None:
        self._quiet = quiet
        self._last: dict[str, float] = {}

    def first(self, kind: str) -> bool:
        """Whether this ``kind`` of event begins a burst (none for ``quiet`` seconds before it)."""
        now = time.monotonic()
        last, self._last[kind] = self._last.get(kind), now
        return last is None or now - last > self._quiet


def _guarded(parser: str, limits: ConnectionLimits, bursts: _Bursts) -> type[Any]:
    """uvicorn's HTTP protocol class for ``parser``, with :class:`_Guarded`'s limits."""
    if parser == "auto":
        try:
            import httptools  # noqa: F401
        except ImportError:
            parser = "h11"
        else:
            parser = "httptools"
    if parser == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        class _HttpTools(_Guarded, HttpToolsProtocol):  # type: ignore[misc]
            """httptools tells where a head begins and ends through its callbacks."""

            _in_body = False

            def _reading_head(self) -> bool:
                return not self._in_body

            def on_headers_complete(self) -> None:
                self._in_body = True
                super().on_headers_complete()

            def on_message_complete(self) -> None:
                self._in_body = False
                super().on_message_complete()

        return type("GuardedHttpTools", (_HttpTools,), {"limits": limits, "bursts": bursts})
    if parser == "h11":
        import h11
        from uvicorn.protocols.http.h11_impl import H11Protocol

        class _H11(_Guarded, H11Protocol):  # type: ignore[misc]
            """h11 is in IDLE until it has a whole request head."""

            def _reading_head(self) -> bool:
                return bool(self.conn.their_state is h11.IDLE)

        return type("GuardedH11", (_H11,), {"limits": limits, "bursts": bursts})
    raise ValueError(f"unknown HTTP parser {parser!r}")


class _Guarded:
    """A mixin for uvicorn's HTTP protocol classes: the limits of the module docstring.

    Head bytes are counted before the parser sees them: from the first byte a connection sends while
    its parser waits for a head, up to the blank line that ends it (which the parser cannot have seen
    sooner), so the count is never below what the parser holds. Bytes of a next request that arrive
    in the same read as a body's end are not counted: at most one read (256 KiB) more.
    """

    limits: ConnectionLimits
    bursts: _Bursts
    # uvicorn's, set by its protocol classes
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    connections: set[Any]
    cycle: Any

    def _reading_head(self) -> bool:
        raise NotImplementedError

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._head_bytes = 0  # of the head being read
        self._tail = b""  # its last bytes, for a blank line split across two reads
        self._lingering = False
        self._head_timer: asyncio.TimerHandle | None = None
        allowed = _open_file_limit() - self.limits.fd_reserve
        if len(self.connections) > allowed:
            if self.bursts.first("connections"):
                log.warning(
                    "%d connections open, the most the open-file limit allows (raise LimitNOFILE);"
                    " refusing new ones with 503 until some close",
                    len(self.connections) - 1,
                )
            detail = "too many connections open; retry shortly"
            self._answer(Problem.OVERLOADED.details(detail), retry_after=RETRY_AFTER_SECONDS, linger=False)
            return
        self._await_head()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the answer is sent; what follows is dropped until the connection closes
        if self._reading_head():
            seen = self._tail + data
            end = seen.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._tail))
            self._tail = seen[-3:]
            if self._head_bytes > self.limits.max_head_bytes:
                detail = f"request line and header fields larger than {self.limits.max_head_bytes} bytes"
                self._answer(Problem.HEADERS_TOO_LARGE.details(detail))
                return
            if end >= 0:  # this head is whole: the next one is counted afresh
                self._head_bytes, self._tail = 0, b""
                self._cancel_head_timer()
        super().data_received(data)  # type: ignore[misc]
        if not self._reading_head():
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _await_head(self) -> None:
        self._cancel_head_timer()
        self._head_bytes, self._tail = 0, b""
        self._head_timer = self.loop.call_later(self.limits.head_seconds, self._head_late)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        busy = self.cycle is not None and not self.cycle.response_complete
        if busy or not self._reading_head() or self.transport.is_closing():
            return
        if self._head_bytes == 0:  # nothing begun: nothing to say
            self.transport.close()
            return
        detail = f"no whole request head within {self.limits.head_seconds:g} s"
        self._answer(Problem.REQUEST_TIMEOUT.details(detail))

    def _answer(
        self, problem: ProblemDetails, *, retry_after: int | None = None, linger: bool = True
    ) -> None:
        """Answer with ``problem`` at the connection's level (no request reached the app), then close:
        after :data:`LINGER_SECONDS` of reading and dropping, unless ``linger`` is false."""
        self._cancel_head_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # an answer is under way: nothing can be said after it
            return
        body = problem.encode()
        head = [
            f"HTTP/1.1 {problem.status} {http.HTTPStatus(problem.status).phrase}",
            f"content-type: {PROBLEM_MEDIA_TYPE}",
            f"content-length: {len(body)}",
            "cache-control: no-store",
            "connection: close",
        ]
        if retry_after is not None:
            head.append(f"retry-after: {retry_after}")
        self.transport.write("\r\n".join(head).encode() + b"\r\n\r\n" + body)
        if linger and self.transport.can_write_eof():
            self._lingering = True
            self.transport.write_eof()
            self.loop.call_later(self.limits.linger_seconds, self.transport.close)
        else:
            self.transport.close()


def _open_file_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class _Server(uvicorn.Server):
    """uvicorn, stopped by SIGINT or SIGTERM without re-raising the signal afterwards (which would
    end the process with a traceback instead of a clean exit); a second signal forces the exit. The
    event loop's failures to accept a connection for want of descriptors are logged once a burst."""

    def __init__(self, config: uvicorn.Config, bursts: _Bursts) -> None:
        super().__init__(config)
        self._bursts = bursts

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()

        def on_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exc = context.get("exception")
            if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
                if self._bursts.first("descriptors"):
                    log.error("out of file descriptors accepting connections (raise LimitNOFILE)")
                return
            loop.default_exception_handler(context)

        loop.set_exception_handler(on_error)
        await super().startup(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # a server run by a test in a thread of its own
            return

        def stop(signum: int, frame: object) -> None:
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True
            log.info("%s received: stopping", signal.Signals(signum).name)

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _listen(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise UsageError(f"cannot resolve --host {host!r}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock
