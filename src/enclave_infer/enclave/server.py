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
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave_infer.attestation.evidence import MAX_DOCUMENT_BYTES, Evidence, Verifier
from enclave_infer.attestation.report import MAX_NONCE_BYTES, MIN_NONCE_BYTES, attestation_binding
from enclave_infer.cluster import keyrelease
from enclave_infer.config import EnclaveConfig
from enclave_infer.enclave.app import App
from enclave_infer.enclave.gateway import Gateway
from enclave_infer.enclave.models import ModelStore
from enclave_infer.enclave.platform import Platform
from enclave_infer.enclave.receipts import Receipts
from enclave_infer.enclave.sealing import Sealer
from enclave_infer.errors import AttestationError, DecryptionError, ProtocolError
from enclave_infer.protocol import framing, ohttp
from enclave_infer.protocol.api import REQUEST_OVERHEAD_BYTES, Problem
from enclave_infer.protocol.framing import Address, FrameType, format_address

__all__ = ["Enclave", "serve"]

log = logging.getLogger("enclave_infer.enclave")

# A chunked request may pause this long between frames, and last this long in all: 512 MiB at
# 0.5 MB/s fits in the total; a stalled or trickling stream cannot hold a slot for longer.
STREAM_IDLE_SECONDS = 60.0
MAX_STREAM_SECONDS = 1800.0
# A frame longer than an image plus this much (binary HTTP framing and headers, the OHTTP header,
# encapsulated key and tag) is, from any honest client, a whole model upload (up to max_request_bytes).
# One such frame is read at a time, so that the many slots batching wants do not multiply the
# memory those frames can take; the one upload with the highest version wins anyway.
IMAGE_REQUEST_OVERHEAD = REQUEST_OVERHEAD_BYTES
MAX_LARGE_FRAMES = 1


class Enclave:
    """The enclave's state and its answers to the host's questions.

    ``shared``: the storage of a cluster (:mod:`enclave_infer.cluster`): the enclave serves nothing
    until it has joined one by attested key release, or founded one; then it answers with the
    cluster's key and serves the cluster's models from ``shared``. ``verifier``: the roots peers'
    evidence is verified with (tests only; production roots otherwise)."""

    def __init__(
        self,
        config: EnclaveConfig,
        platform: Platform,
        storage: Path,
        *,
        shared: Path | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self.config = config
        self.platform = platform
        # fresh per instance; it leaves only by attested key release, to a member of its cluster
        self.key = ohttp.GatewayKey.generate(key_id=1)
        self.key_config = self.key.config.encode()
        # signs receipts; this instance's own (never released), bound into its evidence
        self.receipt_key = Ed25519PrivateKey.generate()
        self.receipt_public_key = self.receipt_key.public_key().public_bytes_raw()
        self.shared = shared
        self.cluster: keyrelease.ClusterSecrets | None = None
        self._pending: keyrelease.PendingJoin | None = None
        self._cluster_lock = threading.Lock()
        self._verifier = verifier or Verifier.production()
        try:
            sealer: Sealer | None = Sealer(platform.sealing_key())
        except AttestationError as exc:
            log.warning("%s: provisioned models are kept in memory only, not across restarts", exc)
            sealer = None
        self.store = ModelStore(config, sealer, storage)
        if shared is None:  # a cluster member's models are the cluster's, loaded once it joins
            self.store.restore()
        self.receipts = Receipts(self.receipt_key, platform, config, lambda: self.key_config)
        app = App(
            self.store,
            max_top_k=config.limits.max_top_k,
            max_image_bytes=config.limits.max_image_bytes,
            receipts=self.receipts,
            pad=config.padding.enabled,
        )
        self.gateway = Gateway(self.key, app)
        self.slots = threading.BoundedSemaphore(config.limits.max_concurrent_requests)
        self.large_frames = threading.BoundedSemaphore(MAX_LARGE_FRAMES)
        self.max_frame_bytes = config.limits.max_request_bytes
        self.max_image_frame_bytes = config.limits.max_image_bytes + IMAGE_REQUEST_OVERHEAD

    def answer(self, kind: FrameType, payload: bytes) -> bytes:
        if kind is FrameType.GET_STATUS:
            return self._status()
        if kind is FrameType.GET_KEYS:
            return framing.encode_frame(FrameType.KEYS, ohttp.encode_key_configs([self.key.config]))
        if kind is FrameType.GET_EVIDENCE:
            if not MIN_NONCE_BYTES <= len(payload) <= MAX_NONCE_BYTES:
                return _problem(
                    Problem.INVALID_PARAMETER, f"nonce must be {MIN_NONCE_BYTES} to {MAX_NONCE_BYTES} bytes"
                )
            report_data = attestation_binding(
                self.key_config, self.receipt_public_key, self.config.digest(), payload
            )
            document = Evidence(
                self.platform.tee,
                self.platform.evidence(report_data),
                self.config.canonical(),
                receipt_key=self.receipt_public_key,
            )
            return framing.encode_frame(FrameType.EVIDENCE, document.encode())
        if kind is FrameType.SET_COLLATERAL:
            if len(payload) > MAX_DOCUMENT_BYTES:
                return _problem(Problem.TOO_LARGE, f"collateral larger than {MAX_DOCUMENT_BYTES} bytes")
            self.receipts.set_collateral(payload)
            return self._status()
        if kind in _CLUSTER_FRAMES:
            return self._cluster(kind, payload)
        if kind is FrameType.OHTTP_REQUEST:
            if self.shared is not None and self.cluster is None:
                return _problem(Problem.ENCLAVE_UNAVAILABLE, "the enclave has not joined its cluster yet")
            try:
                return framing.encode_frame(FrameType.OHTTP_RESPONSE, self.gateway.handle(payload))
            except (DecryptionError, ohttp.KeyMismatchError):
                return _problem(Problem.OHTTP_KEY, KEY_PROBLEM_DETAIL)
            except ProtocolError as exc:
                return _problem(Problem.MALFORMED_REQUEST, f"malformed encapsulated request: {exc}")
        return _problem(Problem.MALFORMED_REQUEST, f"unexpected frame {kind.name}")

    # -- clusters ------------------------------------------------------------------------------

    def _cluster(self, kind: FrameType, payload: bytes) -> bytes:
        if self.shared is None:
            return _problem(Problem.MALFORMED_REQUEST, "this enclave was not started as a cluster member")
        try:
            collateral, message = framing.decode_cluster_payload(payload)
        except ProtocolError as exc:
            return _problem(Problem.MALFORMED_REQUEST, str(exc))

        def attest(report_data: bytes) -> bytes:
            evidence = self.platform.evidence(report_data)
            return Evidence(self.platform.tee, evidence, self.config.canonical(), collateral).encode()

        now = datetime.now(UTC)  # the host's clock: see the README on key release
        with self._cluster_lock:
            try:
                reply = self._cluster_locked(kind, message, attest, now)
            except keyrelease.KeyReleaseError as exc:
                log.warning("%s", exc)
                return _problem(Problem.KEY_RELEASE_REFUSED, str(exc))
            except AttestationError as exc:  # this enclave's own evidence does not verify
                log.error("key release: this enclave's own evidence does not verify: %s", exc)
                return _problem(Problem.KEY_RELEASE_REFUSED, f"the enclave's own evidence: {exc}")
        if reply:
            return reply
        # a member now, or asked to reload: load the newest model outside the lock, so that releases
        # to joiners never wait for a model to load
        self.store.reload()
        return self._status()

    def _cluster_locked(
        self, kind: FrameType, message: bytes, attest: keyrelease.Attest, now: datetime
    ) -> bytes:
        member = self.cluster
        if kind is FrameType.CLUSTER_RELOAD:
            if member is None:
                return _problem(Problem.ENCLAVE_UNAVAILABLE, "the enclave has not joined its cluster yet")
            return b""  # reload, outside the lock
        if kind is FrameType.CLUSTER_RELEASE:
            if member is None:
                return _problem(Problem.ENCLAVE_UNAVAILABLE, "the enclave has not joined its cluster yet")
            own = keyrelease.self_report(attest, self.config, verifier=self._verifier, now=now)
            if own.tee == "simulation":
                log.warning("SIMULATION: releasing the cluster's keys on unsigned evidence (INSECURE)")
            answer = keyrelease.release(
                message,
                member.with_floor(self.store.floor),
                own=own,
                config=self.config,
                attest=attest,
                verifier=self._verifier,
                now=now,
            )
            log.info("released the cluster's keys to a joining enclave")
            return framing.encode_frame(FrameType.CLUSTER_MESSAGE, answer)
        if kind is FrameType.CLUSTER_FOUND:
            if member is not None:  # its key would change under its clients
                return _problem(Problem.MALFORMED_REQUEST, "the enclave is already a member of its cluster")
            self._pending = None
            self._join(keyrelease.ClusterSecrets.found(self.key), founded=True)
            return b""
        if kind is FrameType.CLUSTER_JOIN:
            # a member asks too: a release to it tells it the giver's floor (a floor refresh)
            self._pending = keyrelease.join_request(attest, self.config)
            return framing.encode_frame(FrameType.CLUSTER_MESSAGE, self._pending.request)
        # CLUSTER_ACCEPT
        if self._pending is None:
            return _problem(Problem.MALFORMED_REQUEST, "no join request is waiting for a release")
        own = keyrelease.self_report(attest, self.config, verifier=self._verifier, now=now)
        secrets = keyrelease.accept(
            message, self._pending, own=own, config=self.config, verifier=self._verifier, now=now
        )
        if member is None:
            self._join(secrets, founded=False)
            return b""
        # already a member (a second release for one join request, or a refresh): the floor only
        if (secrets.cluster_id, secrets.sealing_key, secrets.ohttp_key.private_bytes()) != (
            member.cluster_id,
            member.sealing_key,
            member.ohttp_key.private_bytes(),
        ):
            raise keyrelease.KeyReleaseError("key release refused: the giver is a member of another cluster")
        self.store.raise_floor(secrets.floor)
        return b""

    def _join(self, cluster: keyrelease.ClusterSecrets, *, founded: bool) -> None:
        assert self.shared is not None
        sealer = Sealer(cluster.sealing_key, purpose=CLUSTER_SEALING_PURPOSE)
        self.store.use_cluster(sealer, self.shared, cluster.cluster_id.hex(), cluster.floor)
        self.key = cluster.ohttp_key
        self.key_config = self.key.config.encode()
        self.gateway.key = self.key
        self.cluster = cluster  # last: from here on the enclave answers clients
        log.info(
            "%s cluster %s: key configuration SHA-256 %s, model version floor %d",
            "founded" if founded else "joined",
            cluster.cluster_id.hex(),
            hashlib.sha256(self.key_config).hexdigest().upper(),
            cluster.floor,
        )
        sealer = Sealer(cluster.sealing_key, purpose=CLUSTER_SEALING_PURPOSE)
        self.store.use_cluster(sealer, self.shared, cluster.cluster_id.hex(), cluster.floor)

    def _status(self) -> bytes:
        return framing.encode_frame(FrameType.STATUS, json.dumps(self.store.status().to_json()).encode())


CLUSTER_SEALING_PURPOSE = b"enclave-infer cluster storage v1"
_CLUSTER_FRAMES = frozenset(
    {
        FrameType.CLUSTER_JOIN,
        FrameType.CLUSTER_RELEASE,
        FrameType.CLUSTER_ACCEPT,
        FrameType.CLUSTER_FOUND,
        FrameType.CLUSTER_RELOAD,
    }
)


# RFC 9458 §5.3: a request not encrypted to this key (an outdated configuration, or corrupted on
# the way: the gateway cannot tell which) gets the ohttp-key problem; the client fetches the key
# configuration again and retries only if it changed.
KEY_PROBLEM_DETAIL = "the request is not encrypted to this enclave's key configuration; fetch it again"


def _problem(problem: Problem, detail: str) -> bytes:
    return framing.encode_problem(problem.details(detail))


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


class _StreamDeadline:
    """A chunked request's two deadlines: a pause between frames (enforced by the socket's timeout)
    and the whole stream's duration (checked after each frame)."""

    def __init__(self, connection: socket.socket, *, idle: float, total: float) -> None:
        self._connection, self._total = connection, total
        self._started = time.monotonic()
        connection.settimeout(idle)

    def expired(self) -> bool:
        return time.monotonic() - self._started > self._total

    def close(self) -> None:
        self._connection.settimeout(None)


# Frames that need no slot: the most payload each may carry.
_SMALL_QUESTIONS = {FrameType.GET_KEYS: 0, FrameType.GET_STATUS: 0, FrameType.GET_EVIDENCE: MAX_NONCE_BYTES}


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
                if kind in _SMALL_QUESTIONS:
                    # keys, status and evidence: small, and answered at once, never queued behind
                    # inferences (a health check must not time out because the enclave is busy)
                    if length > _SMALL_QUESTIONS[kind]:
                        frames.send(
                            _problem(
                                Problem.MALFORMED_REQUEST,
                                f"{kind.name} takes at most {_SMALL_QUESTIONS[kind]} bytes",
                            )
                        )
                        return
                    payload = frames.payload(length)
                    if payload is None:
                        return
                    frames.send(enclave.answer(kind, payload))
                    continue
                # The slot is taken before the payload is read, so at most max_concurrent_requests
                # payloads are in the enclave's memory at once, however many connections the host
                # opens, and of them at most MAX_LARGE_FRAMES larger than an image request.
                large = length > enclave.max_image_frame_bytes
                with enclave.slots, enclave.large_frames if large else contextlib.nullcontext():
                    payload = frames.payload(length)
                    if payload is None:
                        return
                    if kind is FrameType.CHUNKED_BEGIN:
                        if enclave.shared is not None and enclave.cluster is None:
                            frames.send(
                                _problem(
                                    Problem.ENCLAVE_UNAVAILABLE, "the enclave has not joined its cluster yet"
                                )
                            )
                            return
                        if not self._chunked(frames, payload):
                            return
                        continue
                    try:
                        reply = enclave.answer(kind, payload)
                    except Exception as exc:  # never let one request take the enclave down
                        log.error("internal error while answering %s: %s", kind.name, type(exc).__name__)
                        reply = _problem(Problem.INTERNAL, "internal enclave error")
                    del payload
                frames.send(reply)
        except _FrameError as exc:
            frames.send(exc.reply)

    def _chunked(self, frames: _Frames, first: bytes) -> bool:
        """A chunked request, BEGIN already read: feed DATA frames through until END, answer once
        (early if the answer is known early). Returns False when the connection is finished."""
        enclave = self.server.enclave
        exchange = enclave.gateway.begin_chunked()
        answered, total, payload = False, len(first), first
        # A stream holds a slot: one that stalls, or trickles past the deadline, gives it back
        # (and a held-back final chunk can no longer make an old upload go live days later).
        deadline = _StreamDeadline(self.connection, idle=STREAM_IDLE_SECONDS, total=MAX_STREAM_SECONDS)
        try:
            while True:
                if not answered:
                    early = exchange.feed(payload)
                    if early is not None:
                        frames.send(framing.encode_frame(FrameType.CHUNKED_RESPONSE, early))
                        answered = True
                frame = frames.next()
                if frame is None:
                    return False  # the host went away mid-stream: the upload is abandoned
                kind, payload = frame
                total += len(payload)
                if deadline.expired():
                    if not answered:
                        frames.send(
                            _problem(
                                Problem.REQUEST_TIMEOUT,
                                f"request took longer than {MAX_STREAM_SECONDS:.0f} s",
                            )
                        )
                    return False
                if kind is FrameType.CHUNKED_END:
                    if not answered:
                        frames.send(framing.encode_frame(FrameType.CHUNKED_RESPONSE, exchange.finish()))
                    return True
                if kind is not FrameType.CHUNKED_DATA:
                    frames.send(
                        _problem(
                            Problem.MALFORMED_REQUEST, f"unexpected frame {kind.name} in a chunked request"
                        )
                    )
                    return False
                if total > enclave.max_frame_bytes and not answered:
                    frames.send(
                        _problem(Problem.TOO_LARGE, f"request larger than {enclave.max_frame_bytes} bytes")
                    )
                    return False
        except TimeoutError:
            return False  # stalled: the upload is abandoned, the slot freed
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
            deadline.close()
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
