"""The host's HTTP API: an ASGI app that relays opaque bytes to the enclave.

Untrusted code. It sees ciphertext and lengths only.

=========================  ====================================================================
``GET /ohttp-keys``        the enclave's key configuration (``application/ohttp-keys``, RFC 9458 §3)
``GET /v1/attestation``    evidence bound to the key configuration and ``?nonce=<hex>``, with the
                           collateral the host keeps for it (``host/collateral.py``)
``POST /v1/ohttp``         ``message/ohttp-req`` in, ``message/ohttp-res`` out (RFC 9458 §4), or
                           the chunked forms, streamed (draft-ietf-ohai-chunked-ohttp)
``GET /healthz``           the host runs (200), and its enclave process: ``{"status": "ok"}`` while it
                           is up, ``"starting"`` while not, and how often it was ``restarts``-ed
``GET /v2/health/live``    KServe Open Inference Protocol: the host runs (200 ``{"live": true}``)
``GET /v2/health/ready``   ... the service can answer: enclave up and attested, collateral current,
                           a cluster joined if it has one, a model provisioned (200
                           ``{"ready": true}``, else 400, ``false`` and the ``reason``)
``GET /v2/models/{name}/ready``  ... that model (``default``, or its SHA-256) is served
``GET /metrics``           Prometheus metrics (``host/metrics.py``)
``GET /``                  the browser client (``web/README.md``), under a strict Content-Security-Policy
=========================  ====================================================================

The first three paths answer CORS (any origin, no credentials, a preflight for ``POST /v1/ohttp``),
so that the browser client works from a local file or another origin too; no other path does.

Work that reaches the enclave goes through a bounded queue: beyond ``max_in_flight`` requests the
host answers 503 at once (the ``overloaded`` problem) rather than letting latency grow without
bound. Every 503 the host sends carries ``Retry-After``.

Errors are plain HTTP with an RFC 9457 problem document (``application/problem+json``) of a type
from ``protocol/api.py``: the enclave's own refusals of undecryptable requests (RFC 9458's
``ohttp-key``), relayed as the enclave wrote them, or the host's (the enclave is unreachable, a
request is too large). They can say only what the host knows, which is nothing secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.resources
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enclave_infer.attestation.evidence import Evidence
from enclave_infer.attestation.report import MAX_NONCE_BYTES, MIN_NONCE_BYTES
from enclave_infer.errors import AttestationError, ProtocolError, TransportError
from enclave_infer.host.collateral import CollateralKeeper
from enclave_infer.host.enclave_process import EnclaveProcess
from enclave_infer.host.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from enclave_infer.host.metrics import Metrics
from enclave_infer.protocol import chunked_ohttp, framing, ohttp
from enclave_infer.protocol.api import (
    PROBLEM_MEDIA_TYPE,
    REQUEST_OVERHEAD_BYTES,
    EnclaveStatus,
    Problem,
    ProblemDetails,
    slug,
)
from enclave_infer.protocol.framing import FrameType

__all__ = ["create_app"]

log = logging.getLogger("enclave_infer.host")

# How long a client may pause its body before the host gives up on it.
CLIENT_IDLE_SECONDS = 30.0
# However it pauses, a body must then arrive at this average rate once its first BODY_GRACE_SECONDS
# are over: a phone on a poor link sends far faster; a trickle of a byte every 10 s, which held a
# slot for ever, is dropped after the grace. A 512 MiB model takes 18 h at this rate: no upload is
# cut short; a stream holds a slot only while it keeps moving.
MIN_BODY_BYTES_PER_SECOND = 8 * 1024
BODY_GRACE_SECONDS = 10.0
# A whole request (an image) is held in memory until it is in, so it must be in within this long
# (16 MiB in a minute: 2.2 Mbit/s); it takes no slot until then, so a slow one holds only memory.
WHOLE_BODY_SECONDS = 60.0
# Requests the host works on at once before it refuses more with 503: enough to keep the enclave's
# batches full (it works on limits.max_concurrent_requests at once) without letting a queue grow
# past what it can answer within a client's patience.
DEFAULT_MAX_IN_FLIGHT = 64
# What a client refused with 503 is told to wait, in seconds (RFC 9110 §10.2.3): an enclave restarts
# and an overload passes in about that long; the SDK backs off further with jitter.
RETRY_AFTER_SECONDS = 1
_NO_STORE = {"cache-control": "no-store"}
# The problem type's last segment on the host's own answers, for its metrics (not a standard field).
_PROBLEM_HEADER = "x-problem"
Handler = Callable[[Request], Awaitable[Response]]
# The public paths a browser client on any origin reaches (web/README.md), and their methods.
CORS_PATHS = {"/ohttp-keys": "GET", "/v1/attestation": "GET", "/v1/ohttp": "POST"}
_CORS = {"access-control-allow-origin": "*", "access-control-expose-headers": "retry-after"}
PAGE_RESOURCE = ("data", "web", "enclave-infer.html")  # in the package; built from web/ (make web)


class _Refused(Exception):
    """A streaming client broke a rule of the host's; ``problem`` is the answer."""

    def __init__(self, problem: ProblemDetails) -> None:
        self.problem = problem


class _Relay:
    """The routes, bound to one enclave process."""

    def __init__(
        self,
        enclave: EnclaveProcess,
        collateral: CollateralKeeper | None,
        metrics: Metrics,
        max_in_flight: int,
        measurements: bytes = b"",
    ) -> None:
        self._enclave = enclave
        self._collateral = collateral
        self._measurements = measurements
        self._max_request_bytes = enclave.config.limits.max_request_bytes
        self._max_whole_bytes = enclave.config.limits.max_image_bytes + REQUEST_OVERHEAD_BYTES
        self._metrics = metrics
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._streams_open = 0

    def counted(self, route: str, handler: Handler) -> Handler:
        """``handler``, timed and counted by outcome."""

        async def run(request: Request) -> Response:
            started = time.monotonic()
            try:
                response = await handler(request)
            except _Refused as exc:
                response = _problem(exc.problem)
            problem = response.headers.get(_PROBLEM_HEADER, "")
            self._metrics.requests.labels(route, str(response.status_code), problem).inc()
            self._metrics.latency.labels(route).observe(time.monotonic() - started)
            return response

        return run

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        status = await self._enclave.status()
        return _readiness({}, self._not_ready(status))

    async def model_ready(self, request: Request) -> Response:
        name = request.path_params["name"]
        version = request.path_params.get("version")
        status = await self._enclave.status()
        reason = self._not_ready(status)
        if reason is None and status is not None:
            if name not in ("default", status.model_sha256):
                reason = f"{name[:100]} is not the served model (default, or {status.model_sha256})"
            elif version is not None and version != str(status.model_version):
                reason = f"version {version[:20]} is not served (version {status.model_version} is)"
        return _readiness({"name": name}, reason)

    def _not_ready(self, status: EnclaveStatus | None) -> str | None:
        """Why the service cannot answer classifications now, for operators; None when it can."""
        if not self._enclave.running:
            return "the enclave process is down (the next request starts it again)"
        if status is None:
            return "the enclave does not answer"
        if self._collateral is not None and self._collateral.current is None:
            return f"no current attestation collateral: {self._collateral.problem or 'expired'}"
        if self._enclave.cluster_storage is not None and status.cluster_id is None:
            return "not yet a member of the cluster (key release from a peer pending)"
        if status.model_sha256 is None:
            return "no model provisioned yet"
        return None

    async def metrics(self, request: Request) -> Response:
        current = self._collateral.current if self._collateral is not None else None
        self._metrics.update(
            status=await self._enclave.status(),
            restarts=self._enclave.restarts,
            attestation_ready=self._attestation_ready(),
            collateral_expiry=current.next_update.timestamp() if current is not None else None,
        )
        return Response(self._metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        """One of the ``max_in_flight`` places of work that reaches the enclave, held while it does;
        none free: the ``overloaded`` problem at once. A whole request takes one only once its body
        is in; a chunked one never (:meth:`_chunked`)."""
        if self._in_flight >= self._max_in_flight:
            self._metrics.overloaded.inc()
            detail = f"more than {self._max_in_flight} requests in progress; retry shortly"
            raise _Refused(Problem.OVERLOADED.details(detail))
        self._in_flight += 1
        self._metrics.in_flight.set(self._in_flight)
        try:
            yield
        finally:
            self._in_flight -= 1
            self._metrics.in_flight.set(self._in_flight)

    def _attestation_ready(self) -> bool:
        return self._enclave.running and (self._collateral is None or self._collateral.current is not None)

    async def keys(self, request: Request) -> Response:
        return await self._call(FrameType.GET_KEYS, b"", FrameType.KEYS, ohttp.MEDIA_TYPE_KEYS)

    async def attestation(self, request: Request) -> Response:
        try:
            nonce = bytes.fromhex(request.query_params.get("nonce", ""))
        except ValueError:
            nonce = b""
        if not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
            detail = f"nonce must be {MIN_NONCE_BYTES} to {MAX_NONCE_BYTES} bytes of hex"
            return _problem(Problem.INVALID_PARAMETER.details(detail))
        collateral = None
        if self._collateral is not None:
            current = self._collateral.current
            if current is None:  # never evidence that clients cannot verify
                return _problem(Problem.COLLATERAL_UNAVAILABLE.details(self._collateral.problem or "expired"))
            collateral = current.data
        answer = await self._call(FrameType.GET_EVIDENCE, nonce, FrameType.EVIDENCE, "application/json")
        if (collateral is None and not self._measurements) or answer.status_code != 200:
            return answer
        # The document is public; the host attaches what it fetched (signed by Intel or AMD) and the
        # release's reference measurements (which IMAGE: pins by hash): neither needs trust in the host.
        try:
            document = Evidence.decode(bytes(answer.body))
            if collateral is not None:
                document = dataclasses.replace(document, collateral=collateral)
            if self._measurements:
                document = dataclasses.replace(document, measurements=self._measurements)
        except AttestationError:
            return _problem(Problem.BAD_GATEWAY.details("malformed evidence document from the enclave"))
        return Response(document.encode(), media_type="application/json", headers=_NO_STORE)

    async def ohttp(self, request: Request) -> Response:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type == chunked_ohttp.MEDIA_TYPE_CHUNKED_REQUEST:
            return await self._chunked(request)
        if media_type != ohttp.MEDIA_TYPE_REQUEST:
            chunked = chunked_ohttp.MEDIA_TYPE_CHUNKED_REQUEST
            detail = f"content-type must be {ohttp.MEDIA_TYPE_REQUEST} or {chunked}"
            return _problem(Problem.UNSUPPORTED_MEDIA_TYPE.details(detail))
        # One encapsulated request, held whole: an image and its headers. Anything larger (a model)
        # streams in the chunked form, which never holds more than a piece.
        limit = self._max_whole_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _problem(self._too_large(limit))
        body = bytearray()
        try:
            async for chunk in self._pieces(request, limit, within=WHOLE_BODY_SECONDS):
                body += chunk
        except ClientDisconnect:
            return _problem(Problem.MALFORMED_REQUEST.details("the client went away"))
        return await self._call(
            FrameType.OHTTP_REQUEST, body, FrameType.OHTTP_RESPONSE, ohttp.MEDIA_TYPE_RESPONSE
        )

    async def healthz(self, request: Request) -> Response:
        enclave = self._enclave
        return JSONResponse({"status": "ok" if enclave.running else "starting", "restarts": enclave.restarts})

    async def _call(
        self, kind: FrameType, payload: bytes | bytearray, expect: FrameType, media_type: str
    ) -> Response:
        try:
            with self._slot():
                reply, data = await self._enclave.call(kind, payload, pooled=True)
        except (TransportError, ProtocolError) as exc:
            return _problem(Problem.ENCLAVE_UNAVAILABLE.details(str(exc)))
        return _answer(reply, data, expect, media_type)

    async def _chunked(self, request: Request) -> Response:
        """Relay a chunked request as it arrives; the client's pauses and size are bounded.

        A stream takes none of the ``max_in_flight`` places whole requests need: it waits for one of
        the enclave's stream slots (``framing.STREAM_SLOTS``) holding only its connection, and its
        pace is measured from when it has one. At most ``max_in_flight`` streams are open at once;
        beyond, the ``overloaded`` problem at once. So streams, however slow or many, never hold
        what a classification needs."""
        if self._streams_open >= self._max_in_flight:
            self._metrics.overloaded.inc()
            detail = f"more than {self._max_in_flight} streamed requests in progress; retry shortly"
            return _problem(Problem.OVERLOADED.details(detail))
        self._streams_open += 1
        try:
            reply, data = await self._enclave.call_streaming(self._pieces(request))
        except ClientDisconnect:
            # nobody reads this; the enclave sees the stream end and abandons the upload
            return _problem(Problem.MALFORMED_REQUEST.details("the client went away"))
        except (TransportError, ProtocolError) as exc:
            return _problem(Problem.ENCLAVE_UNAVAILABLE.details(str(exc)))
        finally:
            self._streams_open -= 1
        return _answer(reply, data, FrameType.CHUNKED_RESPONSE, chunked_ohttp.MEDIA_TYPE_CHUNKED_RESPONSE)

    async def _pieces(
        self, request: Request, limit: int | None = None, *, within: float | None = None
    ) -> AsyncIterator[bytes]:
        """The request's body as it arrives, at most ``limit`` bytes (default: a model's upload),
        all of it ``within`` seconds if given, from a client that never pauses longer than
        :data:`CLIENT_IDLE_SECONDS` nor falls below :data:`MIN_BODY_BYTES_PER_SECOND` after
        :data:`BODY_GRACE_SECONDS`: a client that stalls or trickles gives its place back."""
        limit = limit or self._max_request_bytes
        pieces = request.stream().__aiter__()
        started = time.monotonic()
        total = 0
        while True:
            now = time.monotonic()
            waits = {
                f"no request data for {CLIENT_IDLE_SECONDS:g} s": CLIENT_IDLE_SECONDS,
                f"request data slower than {MIN_BODY_BYTES_PER_SECOND} bytes/s": started
                + BODY_GRACE_SECONDS
                + total / MIN_BODY_BYTES_PER_SECOND
                - now,
            }
            if within is not None:
                waits[f"request not received within {within:g} s"] = started + within - now
            reason, wait = min(waits.items(), key=lambda item: item[1])
            try:
                piece = await asyncio.wait_for(pieces.__anext__(), max(wait, 0.0))
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise _Refused(Problem.REQUEST_TIMEOUT.details(reason)) from None
            total += len(piece)
            if total > limit:
                raise _Refused(self._too_large(limit))
            yield piece

    def _too_large(self, limit: int) -> ProblemDetails:
        return Problem.TOO_LARGE.details(f"request larger than {limit} bytes")


def create_app(
    enclave: EnclaveProcess,
    collateral: CollateralKeeper | None = None,
    *,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    measurements: bytes = b"",
) -> Starlette:
    """``collateral``: what the host attaches to the enclave's evidence (SGX, TDX, SEV-SNP).
    ``max_in_flight``: requests to the enclave at once before the host answers 503.
    ``measurements``: the release's reference measurements, attached to every attestation document
    for clients that pin IMAGE:."""
    relay = _Relay(enclave, collateral, Metrics(), max_in_flight, measurements)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        enclave.stop()

    app = Starlette(
        routes=[
            Route("/ohttp-keys", relay.counted("/ohttp-keys", relay.keys), methods=["GET"]),
            Route("/v1/attestation", relay.counted("/v1/attestation", relay.attestation), methods=["GET"]),
            Route("/v1/ohttp", relay.counted("/v1/ohttp", relay.ohttp), methods=["POST"]),
            Route("/healthz", relay.healthz, methods=["GET"]),
            Route("/v2/health/live", relay.live, methods=["GET"]),
            Route("/v2/health/ready", relay.ready, methods=["GET"]),
            Route("/v2/models/{name}/ready", relay.model_ready, methods=["GET"]),
            Route("/v2/models/{name}/versions/{version}/ready", relay.model_ready, methods=["GET"]),
            Route("/metrics", relay.metrics, methods=["GET"]),
            Route("/", _page_handler(), methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={404: _routing_refusal, 405: _routing_refusal},
    )
    app.router.redirect_slashes = False  # "/healthz/" is no route: a 404 problem, not a 307 to "/healthz"
    app.add_middleware(_Cors)
    return app


class _Cors:
    """CORS on :data:`CORS_PATHS` alone: any origin, never credentials (nothing there depends on who
    asks), preflights answered here; every other path answers as if CORS did not exist."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = CORS_PATHS.get(scope["path"]) if scope["type"] == "http" else None
        if method is None:
            await self.app(scope, receive, send)
            return
        request = Headers(scope=scope)
        if scope["method"] == "OPTIONS" and "access-control-request-method" in request:
            headers = {
                **_CORS,
                "access-control-allow-methods": method,
                "access-control-allow-headers": "content-type",
                "access-control-max-age": "600",
            }
            if request.get("access-control-request-private-network") == "true":
                headers["access-control-allow-private-network"] = "true"  # a host on a private network
            await Response(status_code=200, headers=headers)(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(_CORS)
            await send(message)

        await self.app(scope, receive, send_with_cors)


def _page_handler() -> Handler:
    """``GET /``: the browser client from the package, under its own Content-Security-Policy (the
    one its meta tag states, which allows its inline script and style by hash) and frame-ancestors."""
    try:
        page = importlib.resources.files("enclave_infer").joinpath(*PAGE_RESOURCE).read_bytes()
    except OSError:
        page = b""
    found = re.search(rb'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page)
    headers = {
        "content-security-policy": (found.group(1).decode() if found else "default-src 'none'")
        + "; frame-ancestors 'none'",
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cache-control": "no-cache",
    }

    async def serve_page(request: Request) -> Response:
        if found is None:
            return _problem(Problem.NOT_FOUND.details("this installation carries no web page"))
        return Response(page, media_type="text/html", headers=headers)

    return serve_page


def _routing_refusal(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals, a path without a route or a method the route does not take, as the
    problem documents every other refusal is."""
    path = request.url.path[:100]
    if isinstance(exc, HTTPException) and exc.status_code == 405:
        response = _problem(Problem.METHOD_NOT_ALLOWED.details(f"{request.method} is not allowed on {path}"))
        response.headers.update(exc.headers or {})  # Allow (RFC 9110 §15.5.6)
        return response
    return _problem(Problem.NOT_FOUND.details(f"no such resource {path}"))


def _readiness(body: dict[str, Any], reason: str | None) -> Response:
    """A KServe Open Inference Protocol readiness answer (200 ready, 400 not), with the reason
    when not ready."""
    if reason is None:
        return JSONResponse({**body, "ready": True})
    return JSONResponse({**body, "ready": False, "reason": reason}, status_code=400)


def _answer(reply: FrameType, data: bytes, expect: FrameType, media_type: str) -> Response:
    """The enclave's reply frame as the host's HTTP answer: relayed bytes, or its problem."""
    if reply is FrameType.ERROR:
        try:
            return _problem(framing.decode_problem(data))
        except ProtocolError:
            return _problem(Problem.BAD_GATEWAY.details("malformed error frame from the enclave"))
    if reply is not expect:
        return _problem(Problem.BAD_GATEWAY.details("unexpected answer from the enclave"))
    return Response(data, media_type=media_type, headers=_NO_STORE)


def _problem(problem: ProblemDetails) -> Response:
    """``problem`` as the host's answer; a 503 (the host or its enclave busy or down, collateral
    missing) says when to retry (RFC 9110 §10.2.3), as the SDK expects."""
    headers = {**_NO_STORE, _PROBLEM_HEADER: slug(problem.type)}
    if problem.status == 503:
        headers["retry-after"] = str(RETRY_AFTER_SECONDS)
    return Response(
        problem.encode(), status_code=problem.status, media_type=PROBLEM_MEDIA_TYPE, headers=headers
    )
