"""The enclave process: a server speaking :mod:`enclave_infer.protocol.framing` to the host.

It listens on a unix socket (simulation, and any process-based TEE) or on TCP loopback (Gramine,
whose unix sockets cannot reach host processes).

Trusted code; this is the I/O edge of the enclave. One thread per host connection; each connection
carries one request frame at a time and gets one reply frame. At most
``limits.max_concurrent_requests`` requests are worked on at once; the rest wait. A classification
decodes its image in its connection's thread and then waits for the model store's batcher
(:mod:`enclave_infer.enclave.batching`) to run it with others.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave_infer.attestation.evidence import MAX_DOCUMENT_BYTES, Evidence, Verifier
from enclave_infer.attestation.report import MAX_NONCE_BYTES, MIN_NONCE_BYTES, Tee, attestation_binding
from enclave_infer.cluster import keyrelease
from enclave_infer.config import EnclaveConfig
from enclave_infer.enclave.app import App
from enclave_infer.enclave.classifier import Classifier
from enclave_infer.enclave.gateway import Gateway
from enclave_infer.enclave.limits import ServerLimits
from enclave_infer.enclave.models import LoadedModel, ModelStore
from enclave_infer.enclave.platform import Platform
from enclave_infer.enclave.receipts import Receipts
from enclave_infer.enclave.sealing import Sealer
from enclave_infer.enclave.state import AlreadyJoined, OtherCluster, TcbBelowFloor, TrustedState
from enclave_infer.errors import AttestationError, DecryptionError, ProtocolError
from enclave_infer.protocol import framing, ohttp
from enclave_infer.protocol.api import EnclaveStatus, Problem
from enclave_infer.protocol.framing import Address, Cap, FrameType, Slot, format_address

__all__ = ["Enclave", "serve"]

log = logging.getLogger("enclave_infer.enclave")

DEFAULT_LIMITS = ServerLimits()


class Enclave:
    """The enclave's state and its answers to the host's questions.

    ``shared``: the storage of a cluster (:mod:`enclave_infer.cluster`): the enclave serves nothing
    until it has joined one by attested key release, or founded one; then it answers with the
    cluster's key and serves the cluster's models from ``shared``. ``verifier``: the roots peers'
    evidence is verified with (:meth:`Verifier.production`, or a test's own roots). ``limits``: how
    long and how slowly the host may keep the enclave busy. ``clock``: the time key release checks
    evidence at; the host's, whatever it is (a test winds it back as a host could)."""

    def __init__(
        self,
        config: EnclaveConfig,
        platform: Platform,
        storage: Path,
        *,
        shared: Path | None = None,
        verifier: Verifier,
        limits: ServerLimits = DEFAULT_LIMITS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self._clock = clock
        self.limits = limits
        self.platform = platform
        # fresh per instance; it leaves only by attested key release, to a member of its cluster
        self._own_key = ohttp.GatewayKey.generate(key_id=1)
        # signs receipts; this instance's own (never released), bound into its evidence
        self.receipt_key = Ed25519PrivateKey.generate()
        self.receipt_public_key = self.receipt_key.public_key().public_bytes_raw()
        self.shared = shared
        # the served model, the version floor and the cluster: changed only by its checked methods
        self.state: TrustedState[LoadedModel] = TrustedState()
        self._pending: keyrelease.PendingJoin | None = None
        self._cluster_lock = threading.Lock()
        self._verifier = verifier
        try:
            sealer: Sealer | None = Sealer(platform.sealing_key())
        except AttestationError as exc:
            log.warning("%s: provisioned models are kept in memory only, not across restarts", exc)
            sealer = None
        self.store = ModelStore(config, sealer, storage, state=self.state, shared=shared)
        if shared is None:  # a cluster member's models are the cluster's, loaded once it joins
            self.store.restore()
        self.classifier = Classifier(config, self.state)
        self.receipts = Receipts(self.receipt_key, platform, config, lambda: self.key_config)
        app = App(
            self.store,
            self.classifier,
            max_top_k=config.limits.max_top_k,
            max_image_bytes=config.limits.max_image_bytes,
            receipts=self.receipts,
            pad=config.padding.enabled,
        )
        self.gateway = Gateway(lambda: self.key, app)
        self.slots = threading.BoundedSemaphore(config.limits.max_concurrent_requests)
        self.stream_slots = threading.BoundedSemaphore(framing.STREAM_SLOTS)
        self.large_frames = threading.BoundedSemaphore(limits.max_large_frames)
        self.max_frame_bytes = config.limits.max_request_bytes
        self.max_image_frame_bytes = config.limits.max_image_bytes + limits.image_request_overhead
        self._caps = {
            Cap.EMPTY: 0,
            Cap.NONCE: MAX_NONCE_BYTES,
            Cap.DOCUMENT: MAX_DOCUMENT_BYTES,
            Cap.CLUSTER: framing.CLUSTER_PREFIX.size + MAX_DOCUMENT_BYTES + keyrelease.MAX_MESSAGE_BYTES,
            Cap.REQUEST: config.limits.max_request_bytes,
        }
        # what answers each request of framing.REQUESTS (but CHUNKED_BEGIN, a stream: _Handler)
        self._handlers: dict[FrameType, Callable[[bytes], bytes]] = {
            FrameType.GET_KEYS: self._keys,
            FrameType.GET_EVIDENCE: self._evidence,
            FrameType.GET_STATUS: self._status,
            FrameType.SET_COLLATERAL: self._set_collateral,
            FrameType.OHTTP_REQUEST: self._ohttp,
            **{kind: self._cluster_handler(kind) for kind, spec in framing.REQUESTS.items() if spec.cluster},
        }

    @property
    def cluster(self) -> keyrelease.ClusterSecrets | None:
        """The cluster this enclave has joined (or founded), if any."""
        return self.state.cluster

    @property
    def key(self) -> ohttp.GatewayKey:
        """The OHTTP key the enclave answers with: its own, or its cluster's once it has joined."""
        cluster = self.state.cluster
        return cluster.ohttp_key if cluster is not None else self._own_key

    @property
    def key_config(self) -> bytes:
        return self.key.config.encode()

    # -- the frames: dispatched by framing.REQUESTS -----------------------------------------------

    def cap(self, spec: framing.Spec) -> int:
        """The most payload a request of ``spec`` may carry, in bytes."""
        return self._caps[spec.cap]

    def refusal(self, kind: FrameType) -> bytes | None:
        """The ERROR frame for a request this enclave does not take (not a request, a cluster frame
        to an enclave that serves alone, a client's request before the enclave joined its cluster),
        or None. The one place these are checked, from the frame's row in ``framing.REQUESTS``."""
        spec = framing.REQUESTS.get(kind)
        if spec is None:
            return _problem(Problem.MALFORMED_REQUEST, f"unexpected frame {kind.name}")
        if spec.cluster and self.shared is None:
            return _problem(Problem.MALFORMED_REQUEST, "this enclave was not started as a cluster member")
        if spec.joined and self.shared is not None and self.cluster is None:
            return _problem(Problem.ENCLAVE_UNAVAILABLE, NOT_JOINED_DETAIL)
        return None

    def answer(self, kind: FrameType, payload: bytes) -> bytes:
        """The reply frame to one request frame (a chunked request streams: :class:`_Handler`)."""
        refusal = self.refusal(kind)
        if refusal is not None:
            return refusal
        spec = framing.REQUESTS[kind]
        handler = self._handlers.get(kind)
        if handler is None:  # CHUNKED_BEGIN: its stream is read by the connection's handler
            return _problem(Problem.MALFORMED_REQUEST, f"{kind.name} opens a stream on a connection")
        if len(payload) > self.cap(spec):
            return _problem(Problem.TOO_LARGE, f"{kind.name} takes at most {self.cap(spec)} bytes")
        try:
            return framing.encode_frame(spec.reply, handler(payload))
        except _Refused as exc:
            return exc.frame
        except Exception as exc:  # never let one request take the enclave down
            log.error("internal error while answering %s: %s", kind.name, type(exc).__name__)
            return _problem(Problem.INTERNAL, "internal enclave error")

    def _keys(self, payload: bytes) -> bytes:
        return ohttp.encode_key_configs([self.key.config])

    def _evidence(self, nonce: bytes) -> bytes:
        if not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
            raise _Refused(
                Problem.INVALID_PARAMETER, f"nonce must be {MIN_NONCE_BYTES} to {MAX_NONCE_BYTES} bytes"
            )
        report_data = attestation_binding(
            self.key_config, self.receipt_public_key, self.config.digest(), nonce
        )
        document = Evidence(
            self.platform.tee,
            self.platform.evidence(report_data),
            self.config.canonical(),
            receipt_key=self.receipt_public_key,
            event_log=self.platform.event_log,
        )
        return document.encode()

    def status(self) -> EnclaveStatus:
        """What the host may know: the served model's public identity, how many answers, and the
        sizes of the batches inference ran."""
        loaded, cluster, batches = self.state.model, self.state.cluster, self.classifier.batch_stats()
        return EnclaveStatus(
            model_sha256=loaded.manifest.model_sha256 if loaded else None,
            model_version=loaded.version if loaded else None,
            classifications=self.classifier.classifications,
            batches=batches.batches,
            batch_sizes={n: count for n, count in enumerate(batches.sizes, start=1) if count},
            cluster_id=cluster.cluster_id.hex() if cluster is not None else None,
            version_floor=self.state.floor if cluster is not None else None,
        )

    def _status(self, payload: bytes) -> bytes:
        return json.dumps(self.status().to_json()).encode()

    def _set_collateral(self, collateral: bytes) -> bytes:
        self.receipts.set_collateral(collateral)
        return b""

    def _ohttp(self, request: bytes) -> bytes:
        try:
            return self.gateway.handle(request)
        except (DecryptionError, ohttp.KeyMismatchError):
            raise _Refused(Problem.OHTTP_KEY, KEY_PROBLEM_DETAIL) from None
        except ProtocolError as exc:
            raise _Refused(Problem.MALFORMED_REQUEST, f"malformed encapsulated request: {exc}") from None

    # -- clusters ------------------------------------------------------------------------------

    def _cluster_handler(self, kind: FrameType) -> Callable[[bytes], bytes]:
        return lambda payload: self._cluster(kind, payload)

    def _cluster(self, kind: FrameType, payload: bytes) -> bytes:
        try:
            collateral, message = framing.decode_cluster_payload(payload)
        except ProtocolError as exc:
            raise _Refused(Problem.MALFORMED_REQUEST, str(exc)) from None
        if kind is FrameType.CLUSTER_RELOAD:
            try:
                framing.ClusterAction(message)
            except ValueError:
                raise _Refused(Problem.MALFORMED_REQUEST, "CLUSTER_RELOAD without a known action") from None
            self.store.reload()
            return b""

        def attest(report_data: bytes) -> bytes:
            evidence = self.platform.evidence(report_data)
            return Evidence(self.platform.tee, evidence, self.config.canonical(), collateral).encode()

        now = self._clock()  # the host's clock: see the README on key release
        with self._cluster_lock:
            try:
                reply, joined = self._cluster_locked(kind, message, attest, now)
            except TcbBelowFloor as exc:
                log.warning("key release refused: %s", exc)
                raise _Refused(Problem.KEY_RELEASE_REFUSED, f"key release refused: {exc}") from None
            except keyrelease.KeyReleaseError as exc:
                log.warning("%s", exc)
                raise _Refused(Problem.KEY_RELEASE_REFUSED, str(exc)) from None
            except AttestationError as exc:  # this enclave's own evidence does not verify
                log.error("key release: this enclave's own evidence does not verify: %s", exc)
                raise _Refused(Problem.KEY_RELEASE_REFUSED, f"the enclave's own evidence: {exc}") from None
        if joined:
            # a member now: load the newest model outside the lock, so that releases to joiners
            # never wait for a model to load
            self.store.reload()
        return reply

    def _cluster_locked(
        self, kind: FrameType, message: bytes, attest: keyrelease.Attest, now: datetime
    ) -> tuple[bytes, bool]:
        """The reply's payload, and whether the enclave has just joined (or founded) its cluster."""
        member = self.cluster
        if kind is FrameType.CLUSTER_RELEASE:
            assert member is not None  # the frame's row: joined
            own = keyrelease.self_report(attest, self.config, verifier=self._verifier, now=now)
            if own.tee == Tee.SIMULATION:
                log.warning("SIMULATION: releasing the cluster's keys on unsigned evidence (INSECURE)")
            # the cluster's TCB floor, raised to this enclave's own platform (refused below it)
            tcb = self.state.raise_tcb(keyrelease.TcbFloor.of(own))
            answer = keyrelease.release(
                message,
                member.with_floor(self.state.floor).with_tcb(tcb),
                own=own,
                config=self.config,
                attest=attest,
                verifier=self._verifier,
                now=now,
                pending=self._pending,
            )
            log.info("released the cluster's keys to a joining enclave")
            return answer, False
        if kind is FrameType.CLUSTER_FOUND:
            self._pending = None
            # the TCB floor: the founder's own platform, and the measured configuration's minimum
            own = keyrelease.self_report(attest, self.config, verifier=self._verifier, now=now)
            platform = keyrelease.TcbFloor.of(own)
            floor = platform.merge(keyrelease.TcbFloor.minimum(self.config))
            self._join(keyrelease.ClusterSecrets.found(self.key, floor), platform, founded=True)
            return b"", True
        if kind is FrameType.CLUSTER_JOIN:
            # a member asks too: a release to it tells it the giver's floor (a floor refresh)
            self._pending = keyrelease.join_request(attest, self.config)
            return self._pending.request, False
        assert kind is FrameType.CLUSTER_ACCEPT
        if self._pending is None:
            raise _Refused(Problem.MALFORMED_REQUEST, "no join request is waiting for a release")
        own = keyrelease.self_report(attest, self.config, verifier=self._verifier, now=now)
        secrets = keyrelease.accept(
            message, self._pending, own=own, config=self.config, verifier=self._verifier, now=now
        )
        platform = keyrelease.TcbFloor.of(own)
        if member is None:
            self._join(secrets, platform, founded=False)
            return b"", True
        # already a member (a second release for one join request, or a refresh): the floors only
        try:
            _dropped(self.state.refresh(secrets, platform), secrets.floor)
        except OtherCluster as exc:
            raise keyrelease.KeyReleaseError(str(exc)) from None
        return b"", False

    def _join(self, cluster: keyrelease.ClusterSecrets, own: keyrelease.TcbFloor, *, founded: bool) -> None:
        """One transition of the state: from here on the enclave answers with the cluster's key,
        seals into the cluster's storage and serves nothing below the cluster's floor. ``own``:
        this enclave's platform, from its own evidence (refused below the cluster's TCB floor)."""
        try:
            _dropped(self.state.join(cluster, own), cluster.floor)
        except AlreadyJoined as exc:  # founding again: its key would change under its clients
            raise _Refused(Problem.MALFORMED_REQUEST, str(exc)) from None
        log.info(
            "%s cluster %s: key configuration SHA-256 %s, model version floor %d, TCB floor %s",
            "founded" if founded else "joined",
            cluster.cluster_id.hex(),
            hashlib.sha256(self.key_config).hexdigest().upper(),
            cluster.floor,
            self.state.tcb_floor,
        )


def _dropped(model: LoadedModel | None, floor: int) -> None:
    """Log a served model that a higher floor ended."""
    if model is not None:
        log.error(
            "a member of the cluster holds model version %d: version %d is no longer served",
            floor,
            model.version,
        )


NOT_JOINED_DETAIL = "the enclave has not joined its cluster yet"


# RFC 9458 §5.3: a request not encrypted to this key (an outdated configuration, or corrupted on
# the way: the gateway cannot tell which) gets the ohttp-key problem; the client fetches the key
# configuration again and retries only if it changed.
KEY_PROBLEM_DETAIL = "the request is not encrypted to this enclave's key configuration; fetch it again"


def _problem(problem: Problem, detail: str) -> bytes:
    return framing.encode_problem(problem.details(detail))


class _Refused(Exception):
    """A request frame is answered with ``problem``: raised by the frame handlers."""

    def __init__(self, problem: Problem, detail: str) -> None:
        super().__init__(detail)
        self.frame = _problem(problem, detail)


class _FrameError(Exception):
    """The host broke the framing; ``reply`` is the error frame to send before hanging up."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply


class _Frames:
    """Frame I/O on one host connection, and nothing else: no deadlines, no meaning."""

    def __init__(self, rfile: io.BufferedIOBase, wfile: io.BufferedIOBase, max_frame_bytes: int) -> None:
        self._rfile, self._wfile, self._max = rfile, wfile, max_frame_bytes

    def header(self) -> tuple[FrameType, int] | None:
        """The next frame's type and length; None when the host closed the connection."""
        header = self._rfile.read(framing.HEADER.size)
        if len(header) < framing.HEADER.size:
            return None
        try:
            kind, length = framing.parse_header(header)
        except ProtocolError as exc:
            raise _FrameError(_problem(Problem.MALFORMED_REQUEST, str(exc))) from None
        if length > self._max:
            raise _FrameError(_problem(Problem.TOO_LARGE, f"frame larger than {self._max} bytes"))
        return kind, length

    def payload(self, length: int) -> bytes | None:
        payload = self._rfile.read(length)
        return payload if len(payload) == length else None

    def next(self) -> tuple[FrameType, bytes] | None:
        head = self.header()
        if head is None:
            return None
        payload = self.payload(head[1])
        return None if payload is None else (head[0], payload)

    def send(self, frame: bytes) -> None:
        try:
            self._wfile.write(frame)
            self._wfile.flush()
        except OSError:
            pass  # the host went away; nothing to tell it


class _StreamPace:
    """A chunked request's deadlines (:class:`ServerLimits`): a pause between frames, the whole
    stream's duration, and its minimum rate after a grace period. The socket's timeout is set before
    each read to whichever comes first, so that a read blocked on a trickle ends in time."""

    def __init__(self, connection: socket.socket, limits: ServerLimits) -> None:
        self._connection, self._limits = connection, limits
        self._started = time.monotonic()
        connection.settimeout(limits.stream_idle_seconds)

    def late(self, received: int) -> str | None:
        """Why the stream, having delivered ``received`` bytes, must end now; None while in time.
        Else sets the socket's timeout for the next read."""
        limits, now = self._limits, time.monotonic()
        if now - self._started > limits.max_stream_seconds:
            return f"request took longer than {limits.max_stream_seconds:.0f} s"
        # the latest time the next bytes may arrive and keep the stream at the minimum rate
        due = self._started + limits.stream_grace_seconds + received / limits.min_stream_bytes_per_second
        if now > due:
            return f"request slower than {limits.min_stream_bytes_per_second} bytes/s"
        until = min(limits.stream_idle_seconds, due - now, self._started + limits.max_stream_seconds - now)
        self._connection.settimeout(max(until, 0.001))
        return None

    def close(self) -> None:
        self._connection.settimeout(None)


_CHUNKED_REPLY = framing.REQUESTS[FrameType.CHUNKED_BEGIN].reply


class _Handler(socketserver.StreamRequestHandler):
    server: _UnixServer | _TcpServer

    def handle(self) -> None:
        enclave = self.server.enclave
        frames = _Frames(self.rfile, self.wfile, enclave.max_frame_bytes)
        try:
            while True:
                head = frames.header()
                if head is None:
                    return
                kind, length = head
                spec = framing.REQUESTS.get(kind)
                if spec is None:  # not a request: the host is broken, and the payload unread
                    frames.send(_problem(Problem.MALFORMED_REQUEST, f"unexpected frame {kind.name}"))
                    return
                if length > enclave.cap(spec):
                    frames.send(
                        _problem(Problem.TOO_LARGE, f"{kind.name} takes at most {enclave.cap(spec)} bytes")
                    )
                    return
                # Keys, status, evidence and collateral take no slot: small, and answered at once,
                # never queued behind inferences (a health check must not time out because the
                # enclave is busy). For the rest, the slot is taken before the payload is read, so at
                # most max_concurrent_requests payloads (and STREAM_SLOTS streams) are in the
                # enclave's memory at once, however many connections the host opens, and of them at
                # most max_large_frames larger than an image request. A stream never takes a work
                # slot: however many the host relays, classifications go on.
                large = length > enclave.max_image_frame_bytes
                with contextlib.ExitStack() as held:
                    if spec.slot is Slot.WORK:
                        held.enter_context(enclave.slots)
                    elif spec.slot is Slot.STREAM:
                        held.enter_context(enclave.stream_slots)
                    if large:
                        held.enter_context(enclave.large_frames)
                    payload = frames.payload(length)
                    if payload is None:
                        return
                    if kind is FrameType.CHUNKED_BEGIN:
                        refusal = enclave.refusal(kind)
                        if refusal is not None:
                            frames.send(refusal)
                            return
                        if not self._chunked(frames, payload):
                            return
                        continue
                    reply = enclave.answer(kind, payload)
                    del payload
                frames.send(reply)
        except _FrameError as exc:
            frames.send(exc.reply)

    def _chunked(self, frames: _Frames, first: bytes) -> bool:
        """A chunked request, BEGIN already read: feed DATA frames through until END, answer once.
        Returns False when the connection is finished. A stream is answered and dropped as soon as
        its answer is known (an upload whose manifest signature fails: checked on the chunk that
        completes the head; any other request over an image's size), and dropped when it stalls,
        trickles below the minimum rate, or outlasts the total deadline: it gives its slot back."""
        enclave = self.server.enclave
        exchange = enclave.gateway.begin_chunked()
        total, payload = len(first), first
        pace = _StreamPace(self.connection, enclave.limits)
        try:
            while True:
                early = exchange.feed(payload)
                if early is not None:
                    frames.send(framing.encode_frame(_CHUNKED_REPLY, early))
                    return False  # the host stops sending; nothing more is read
                late = pace.late(total)
                if late is not None:
                    frames.send(_problem(Problem.REQUEST_TIMEOUT, late))
                    return False
                frame = frames.next()
                if frame is None:
                    return False  # the host went away mid-stream: the upload is abandoned
                kind, payload = frame
                total += len(payload)
                if kind is FrameType.CHUNKED_END:
                    frames.send(framing.encode_frame(_CHUNKED_REPLY, exchange.finish()))
                    return True
                if kind is not FrameType.CHUNKED_DATA:
                    frames.send(
                        _problem(
                            Problem.MALFORMED_REQUEST, f"unexpected frame {kind.name} in a chunked request"
                        )
                    )
                    return False
                if total > enclave.max_frame_bytes:
                    frames.send(
                        _problem(Problem.TOO_LARGE, f"request larger than {enclave.max_frame_bytes} bytes")
                    )
                    return False
        except TimeoutError:
            late = pace.late(total)
            frames.send(_problem(Problem.REQUEST_TIMEOUT, late or "the request stalled"))
            return False  # stalled or too slow: the upload is abandoned, the slot freed
        except (DecryptionError, ohttp.KeyMismatchError):
            frames.send(_problem(Problem.OHTTP_KEY, KEY_PROBLEM_DETAIL))
            return False
        except ProtocolError as exc:
            frames.send(_problem(Problem.MALFORMED_REQUEST, f"malformed chunked request: {exc}"))
            return False
        except _FrameError as exc:
            frames.send(exc.reply)
            return False
        except Exception as exc:  # never let one request take the enclave down
            log.error("internal error in a chunked request: %s", type(exc).__name__)
            frames.send(_problem(Problem.INTERNAL, "internal enclave error"))
            return False
        finally:
            pace.close()
            exchange.abort()  # a no-op once the upload has finished


# The listen backlog: with socketserver's default of 5, the host's connections opened at once beyond
# the sixth were reset ("the enclave closed the connection"), so requests that arrived together
# failed. A connection waiting in the backlog costs the kernel, not the enclave.
LISTEN_BACKLOG = socket.SOMAXCONN


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG
    enclave: Enclave


class _TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG
    enclave: Enclave


_Server = _UnixServer | _TcpServer


def serve(enclave: Enclave, listen: Address) -> None:
    server: _Server
    if isinstance(listen, Path):
        listen.unlink(missing_ok=True)
        server = _UnixServer(str(listen), _Handler)
        listen.chmod(0o600)
    else:
        server = _TcpServer(listen, _Handler)
    server.enclave = enclave
    with server:
        log.info("enclave listening on %s", format_address(listen))
        server.serve_forever()
