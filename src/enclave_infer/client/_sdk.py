"""The Python SDK for model owners and image submitters: :class:`enclave_infer.Client`.

Client-side code (trusted by its user, not by the enclave), private: users import from
``enclave_infer``. :class:`Client` verifies the enclave's
evidence against the user's constraint before it sends anything, then speaks to the enclave's own
API (``protocol/api.py``) through Oblivious HTTP: every request is a binary-HTTP message (RFC 9292)
encapsulated to the attested key (RFC 9458); the host in between sees ciphertext.

Answers come back as the typed results of ``protocol/api.py``; refusals as the exception that
their RFC 9457 problem type maps to (:data:`PROBLEM_ERRORS`). Two problems are handled here:
RFC 9458's ``ohttp-key`` (§5.3: the request was not encrypted to the enclave's key) and ``date``
(§6.5.2: correct the clock by the enclave's ``date``, and resend once). ``ohttp-key`` travels outside
the encryption, so anyone on the path can send it: the client attests again and compares the key
configuration with the one it verified. The same one: the claim was false, nothing is resent. Another
one (an enclave of the same code, but another instance: restarted outside a cluster, or another
cluster the host founded): nothing is resent either, and :class:`KeyConfigurationChangedError` names
both, unless the caller consented (``Client(follow_key_changes=True)``, or :meth:`Client.attest`
again, which adopts what it verifies); with consent, a request that changes nothing is resent once.
Requests that change nothing (attestation, model metadata, classifications) are sent again on a 503
``overloaded`` or ``enclave-unavailable``, after a backoff never shorter than the host's
``Retry-After`` (:class:`ClientConfig` says how often and how long).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave_infer.attestation import constraints
from enclave_infer.attestation.constraints import Constraint
from enclave_infer.attestation.evidence import Attestation, Evidence, Policy, UnsafeNoPolicy, Verifier, verify
from enclave_infer.attestation.receipt import RECEIPT_HEADER, Receipt, ReceiptError, Statement
from enclave_infer.attestation.receipt import verify as verify_signed_receipt
from enclave_infer.attestation.report import NONCE_BYTES, Tee
from enclave_infer.client._config import ClientConfig
from enclave_infer.client._text import duration
from enclave_infer.client._transport import Reply, Transport, retry_after
from enclave_infer.errors import (
    AttestationError,
    EnclaveFailureError,
    InvalidImageError,
    InvalidRequestError,
    KeyConfigurationChangedError,
    ModelPinError,
    NoModelError,
    OverloadedError,
    ProtocolError,
    ProvisionRefusedError,
    RemoteError,
    TooLargeError,
    TransportError,
    UnavailableError,
    UsageError,
)
from enclave_infer.protocol import bhttp, chunked_ohttp, ohttp, padding
from enclave_infer.protocol.api import (
    INNER_AUTHORITY,
    INNER_SCHEME,
    JSON_MEDIA_TYPE,
    Classification,
    Header,
    ModelInfo,
    Preprocessing,
    Problem,
    ProblemDetails,
    ProvisionResult,
    Route,
    Runtime,
)
from enclave_infer.protocol.manifest import Manifest, ModelFile, ModelFormat, parse_sf_binary, sf_binary

__all__ = ["PROBLEM_ERRORS", "Client", "fetch_collateral", "verify_receipt"]

SUPPORTED_SUITE = (ohttp.KEM_X25519_HKDF_SHA256, ohttp.KDF_HKDF_SHA256, ohttp.AEAD_AES_128_GCM)

_T = TypeVar("_T")

# A receipt just received must be dated within this many seconds of this client's clock.
RECEIPT_CLOCK_SKEW = 600.0
# The roots a client verifies evidence with unless code gives others: Intel's and AMD's, pinned.
PRODUCTION = Verifier.production()

# Which exception each problem type raises; one class per type (several types share a class).
PROBLEM_ERRORS: Mapping[Problem, type[RemoteError]] = {
    Problem.DATE: InvalidRequestError,
    Problem.OHTTP_KEY: InvalidRequestError,
    Problem.MALFORMED_REQUEST: InvalidRequestError,
    Problem.INVALID_PARAMETER: InvalidRequestError,
    Problem.NOT_FOUND: InvalidRequestError,
    Problem.METHOD_NOT_ALLOWED: InvalidRequestError,
    Problem.UNSUPPORTED_MEDIA_TYPE: InvalidRequestError,
    Problem.REPLAYED: InvalidRequestError,
    Problem.RUNTIME_NOT_PROVISIONED: InvalidRequestError,
    Problem.TOO_LARGE: TooLargeError,
    Problem.HEADERS_TOO_LARGE: TooLargeError,
    Problem.INVALID_IMAGE: InvalidImageError,
    Problem.NO_MODEL: NoModelError,
    Problem.MODEL_PIN_MISMATCH: ModelPinError,
    Problem.INVALID_SIGNATURE: ProvisionRefusedError,
    Problem.VERSION_NOT_NEWER: ProvisionRefusedError,
    Problem.INVALID_MANIFEST: ProvisionRefusedError,
    Problem.MODEL_INTEGRITY: ProvisionRefusedError,
    Problem.INVALID_MODEL: ProvisionRefusedError,
    Problem.OVERLOADED: OverloadedError,
    Problem.ENCLAVE_UNAVAILABLE: UnavailableError,
    Problem.COLLATERAL_UNAVAILABLE: UnavailableError,
    Problem.BAD_GATEWAY: UnavailableError,
    Problem.REQUEST_TIMEOUT: UnavailableError,
    Problem.INFERENCE_FAILED: EnclaveFailureError,
    Problem.STORAGE_FULL: EnclaveFailureError,
    Problem.STORAGE_FAILED: EnclaveFailureError,
    Problem.INTERNAL: EnclaveFailureError,
    Problem.KEY_RELEASE_REFUSED: EnclaveFailureError,  # between enclaves only
}


class Client:
    """A connection to one enclave-infer deployment, checked against one constraint."""

    def __init__(
        self,
        url: str,
        constraint: str | Constraint | None,
        *,
        config: ClientConfig | None = None,
        transport: httpx.BaseTransport | None = None,
        now: Callable[[], datetime] | None = None,
        collateral: bytes | None = None,
        pccs_url: str | None = None,
        model_sha256: str | None = None,
        verifier: Verifier = PRODUCTION,
        measurements: bytes | None = None,
        follow_key_changes: bool = False,
    ) -> None:
        """``constraint`` None only for :meth:`inspect`: such a client never sends anything.
        ``verifier``: the roots evidence is verified with (:meth:`Verifier.production` unless given).
        ``collateral``: the DCAP collateral to verify a quote with (dcap-qvl JSON), instead of
        what the host attaches to the evidence; or ``pccs_url``: fetch it for each quote.
        ``model_sha256``: send images only to, and accept answers only from, that model.
        ``measurements``: the release's reference measurements that ``IMAGE:`` pins (what
        ``measure --image`` writes), instead of those the host attaches to its evidence.
        ``follow_key_changes``: after an ``ohttp-key`` problem, adopt another key configuration that
        satisfies the constraint and resend to it (default: raise
        :class:`KeyConfigurationChangedError`; nothing is resent to an instance the caller did not
        attest)."""
        # Everything is checked before the HTTP client exists: a failed constructor leaks nothing.
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"URL must start with http:// or https://, got {url!r}")
        if model_sha256 is not None and not _is_sha256(model_sha256):
            raise UsageError(f"a model SHA-256 is 64 hex digits, got {model_sha256!r}")
        self.url = url.rstrip("/")
        self.constraint = constraints.parse(constraint) if isinstance(constraint, str) else constraint
        self.config = config or ClientConfig()
        self.model_sha256 = model_sha256.lower() if model_sha256 else None
        self.follow_key_changes = follow_key_changes
        self._now = now or (lambda: datetime.now(UTC))
        self._collateral = collateral
        self._measurements = measurements
        self._pccs_url = pccs_url
        self._verifier = verifier
        self._key: ohttp.KeyConfig | None = None
        self._clock_offset = 0.0
        self.attestation: Attestation | None = None
        self._transport = Transport(self.url, self.config, transport)

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- attestation ---------------------------------------------------------------------------

    def attest(self) -> Attestation:
        """Fetch the key configuration and fresh evidence; verify both against the constraint. The
        client sends to that key configuration from then on (also when it is another than before:
        calling this is consent)."""
        if self.constraint is None:
            raise UsageError("no enclave constraint: the client will not talk to an unchecked enclave")
        self._key, self.attestation = self._attest(self.constraint)
        return self.attestation

    def inspect(self) -> Attestation:
        """Verify the evidence and its binding to fresh keys, without a policy: what ``attest``
        prints. Sends nothing to the enclave and enables nothing."""
        return self._attest(None)[1]

    def _attest(self, constraint: Constraint | None) -> tuple[ohttp.KeyConfig, Attestation]:
        """The host's key configuration and fresh evidence that binds it, verified; adopts nothing."""
        keys = self._retrying(lambda: self._get("/ohttp-keys", expect=ohttp.MEDIA_TYPE_KEYS))
        try:
            configs = ohttp.decode_key_configs(keys)
        except ProtocolError as exc:
            raise AttestationError(f"the host served an invalid key configuration: {exc}") from None
        config = next((c for c in configs if _supports(c)), None)
        if config is None:
            raise AttestationError("the enclave offers no supported HPKE suite")
        nonce = secrets.token_bytes(NONCE_BYTES)
        document = self._retrying(
            lambda: self._get(f"/v1/attestation?nonce={nonce.hex()}", expect="application/json")
        )
        collateral = self._collateral
        if collateral is None and self._pccs_url is not None:
            evidence = Evidence.decode(document)
            if evidence.tee in (Tee.SGX, Tee.TDX):
                collateral = fetch_collateral(self._pccs_url, evidence.evidence, timeout=self.config.timeout)
        policy: Policy = constraint or UnsafeNoPolicy(
            "inspect: a report to read, nothing sent to the enclave"
        )
        attestation = verify(
            document,
            policy,
            verifier=self._verifier,
            key_config=config.encode(),
            nonce=nonce,
            now=self._now(),
            collateral=collateral,
            measurements=self._measurements,
        )
        return config, attestation

    # -- the enclave's API ---------------------------------------------------------------------

    def classify(
        self, image: bytes, *, top: int = 1, runtime: Runtime | str = Runtime.DEFAULT, receipt: bool = False
    ) -> Classification:
        """Classify one image; with :attr:`Runtime.BOTH`, every provisioned runtime answers. With
        ``receipt``, the enclave signs a receipt for the answer, which is verified here (evidence,
        signature, this client's constraint, the image) and returned in ``result.receipt``, ready to
        keep and to verify again later (``enclave-infer verify-receipt``)."""
        runtime = Runtime.parse(runtime) if isinstance(runtime, str) else runtime
        headers: list[tuple[str, str]] = [("content-type", "application/octet-stream")]
        if self.model_sha256:
            # the enclave refuses the image, before decoding it, unless it serves this model
            headers.append((Header.MODEL_PIN, self.model_sha256))
        if receipt:
            headers.append((RECEIPT_HEADER, "?1"))  # RFC 8941 boolean
        path = f"{Route.CLASSIFY}?top={top}&runtime={runtime}"
        # a classification changes nothing: when the service is busy or restarting, ask again
        response = self._retrying(lambda: self._request("POST", path, headers=headers, content=image))
        result = Classification.from_json(_document(response))
        self._check_model(result.model_sha256)
        if receipt:
            result = dataclasses.replace(result, receipt=self._receipt(response, image))
        return result

    def _receipt(self, response: bhttp.Response, image: bytes) -> bytes:
        value = response.header(RECEIPT_HEADER)
        if value is None:
            raise ReceiptError("the enclave answered without the receipt asked for")
        try:
            signed = Receipt.decode(parse_sf_binary(value))
        except ProtocolError:
            raise ReceiptError("the enclave's receipt is not a receipt document") from None
        kept = dataclasses.replace(signed, response=response.content.decode("utf-8", "replace"))
        if self.constraint is None:  # classify() attests first, which needs one
            raise UsageError("no enclave constraint: the client will not talk to an unchecked enclave")
        measurements = self.attestation.measurements if self.attestation is not None else None
        statement, _ = verify_signed_receipt(
            kept, self.constraint, verifier=self._verifier, image=image, measurements=measurements
        )
        if abs((statement.time - self._now()).total_seconds()) > RECEIPT_CLOCK_SKEW:
            raise ReceiptError("the receipt is dated too far from now (the enclave's host sets its clock)")
        if statement.model_sha256 != json.loads(response.content)["model"]["sha256"]:
            raise ReceiptError("the receipt names another model than the answer")
        return kept.encode()

    def model_info(self) -> ModelInfo | None:
        """Public metadata of the served model, or None if none is provisioned."""
        try:
            return ModelInfo.from_json(_document(self._retrying(lambda: self._request("GET", Route.MODEL))))
        except NoModelError:
            return None

    def provision(
        self,
        model: bytes | Mapping[str, bytes],
        labels: Sequence[str],
        owner_key: Ed25519PrivateKey,
        *,
        preprocessing: Preprocessing | Mapping[str, Any] | None = None,
        version: int | None = None,
    ) -> ProvisionResult:
        """Sign a manifest for ``model`` (ONNX bytes, or a mapping of format to bytes) and upload
        it: the streamed path, on bytes in memory."""
        files = {"onnx": model} if isinstance(model, bytes | bytearray) else dict(model)
        return self._provision(
            {fmt: _Source(io.BytesIO, data) for fmt, data in files.items()},
            labels,
            owner_key,
            preprocessing=preprocessing,
            version=version,
        )

    def provision_file(
        self,
        model: Path | Mapping[str, Path],
        labels: Sequence[str],
        owner_key: Ed25519PrivateKey,
        *,
        preprocessing: Preprocessing | Mapping[str, Any] | None = None,
        version: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> ProvisionResult:
        """Stream model files through chunked OHTTP: client memory stays at a few pieces whatever
        the model's size. ``model`` is an ONNX file, or a mapping of format ("onnx",
        "torchscript") to file, each served by its runtime. ``progress`` gets byte counts."""
        paths = {"onnx": model} if isinstance(model, Path) else dict(model)
        return self._provision(
            {fmt: _Source(_opener(path), path) for fmt, path in paths.items()},
            labels,
            owner_key,
            preprocessing=preprocessing,
            version=version,
            progress=progress,
        )

    def _provision(
        self,
        sources: Mapping[str, _Source],
        labels: Sequence[str],
        owner_key: Ed25519PrivateKey,
        *,
        preprocessing: Preprocessing | Mapping[str, Any] | None,
        version: int | None,
        progress: Callable[[int], None] | None = None,
    ) -> ProvisionResult:
        """The one provisioning path: hash each file, sign the manifest (version: one more than the
        enclave's unless given), stream the files back to back in the manifest's order."""
        if preprocessing is None:
            preprocessing = Preprocessing()
        elif not isinstance(preprocessing, Preprocessing):
            preprocessing = Preprocessing.from_json(preprocessing)
        piece_bytes = self.config.upload_piece_bytes
        files = tuple(source.describe(fmt, piece_bytes) for fmt, source in sources.items())
        if version is None:
            current = self.model_info()
            version = 1 if current is None else current.version + 1
        manifest = Manifest(files, tuple(labels), preprocessing.to_json(), version)
        manifest_bytes, signature = manifest.sign(owner_key)

        def pieces() -> Iterator[bytes]:
            for source in sources.values():
                for piece in source.pieces(piece_bytes):
                    if progress is not None:
                        progress(len(piece))
                    yield piece

        response = self._request(
            "PUT",
            Route.MODEL,
            headers=(
                ("content-type", "application/octet-stream"),
                (Header.MANIFEST, sf_binary(manifest_bytes)),
                (Header.MANIFEST_SIGNATURE, sf_binary(signature)),
            ),
            stream=pieces,
        )
        return ProvisionResult.from_json(_document(response))

    def _retrying(self, send: Callable[[], _T]) -> _T:
        """``send()``, again after a backoff when the host answers 503 ``overloaded`` or
        ``enclave-unavailable``, at most ``config.retries`` more times (:class:`ClientConfig`)."""
        for attempt in range(self.config.retries + 1):
            try:
                return send()
            except (OverloadedError, UnavailableError) as exc:
                wait = self._backoff(attempt, exc)
                if wait is None:
                    raise
                time.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, attempt: int, exc: RemoteError) -> float | None:
        """Seconds to wait before sending again after ``exc``, or None not to: exponential backoff
        with full jitter, never shorter than the host's ``Retry-After``; None after the last
        attempt, for anything but a 503, and when ``Retry-After`` is longer than the client waits."""
        config = self.config
        if attempt == config.retries or exc.status != 503:
            return None
        if exc.retry_after is not None and exc.retry_after > config.max_retry_after:
            return None
        ceiling = min(config.retry_backoff_max, config.retry_backoff * 2**attempt)
        jitter = random.uniform(0, ceiling)  # noqa: S311 - jitter, not a secret
        return max(jitter, exc.retry_after or 0.0)

    def _check_model(self, served: str) -> None:
        if self.model_sha256 is not None and served.lower() != self.model_sha256:
            message = f"the enclave serves model {served}, not the pinned {self.model_sha256}"
            raise ModelPinError(Problem.MODEL_PIN_MISMATCH.status, message, Problem.MODEL_PIN_MISMATCH.uri)

    # -- Oblivious HTTP ------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        content: bytes = b"",
        stream: Callable[[], Iterator[bytes]] | None = None,
    ) -> bhttp.Response:
        """One request to the enclave's own API through Oblivious HTTP; refusals raise. With
        ``stream`` (a function returning the body's pieces, callable again for a retry) the request
        is sent in the chunked form, piece by piece, never held whole."""
        if self._key is None:
            self.attest()
        for attempt in (1, 2):
            inner = bhttp.Request(
                method, INNER_SCHEME, INNER_AUTHORITY, path, (*headers, self._date()), content
            )
            reply, response = self._exchange(inner, stream)
            if response is None:
                problem = reply.problem()
                if attempt == 1 and problem is not None and problem.problem is Problem.OHTTP_KEY:
                    # Outside the encryption, so anyone's to send: attest again; the same key: a
                    # claim, no rerun; another: only with the caller's consent (module docstring).
                    if not self._follow_key_change():
                        raise _host_error(reply)
                    if stream is None:
                        continue
                    # an upload: it may have been taken before the restart
                    raise UnavailableError(
                        reply.status,
                        "the enclave restarted during the upload; see `enclave-infer model` and provision"
                        " again if it is not the new version",
                        Problem.OHTTP_KEY.uri,
                    )
                raise _host_error(reply)
            if (
                attempt == 1
                and response.status == Problem.DATE.status
                and _problem_of(response) is Problem.DATE
            ):
                server_date = response.header(Header.DATE)
                if server_date is not None:  # RFC 9458 §6.5.2: correct the clock, retry once
                    try:
                        self._clock_offset = parsedate_to_datetime(server_date).timestamp() - time.time()
                    except (TypeError, ValueError):
                        raise _enclave_error(response) from None
                    continue
            if response.status >= 400:
                raise _enclave_error(response)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _follow_key_change(self) -> bool:
        """After an ``ohttp-key`` problem: attest again. False when the key configuration is the one
        this client verified; True when it is another and the caller consented (it is adopted);
        else :class:`KeyConfigurationChangedError`, and the client keeps the one it verified."""
        old = self._key
        assert old is not None, "set by attest()"
        assert self.constraint is not None, "attest() needs one"
        config, attestation = self._attest(self.constraint)
        if config == old:
            return False
        if not self.follow_key_changes:
            accept = "attest() again, or Client(follow_key_changes=True)"
            raise KeyConfigurationChangedError(_describe_key(old), _describe_key(config), accept)
        self._key, self.attestation = config, attestation
        return True

    def _date(self) -> tuple[str, str]:
        """The inner request's date, for the enclave's replay window (RFC 9458 §6.5.1)."""
        return (Header.DATE.value, formatdate(time.time() + self._clock_offset, usegmt=True))

    def _exchange(
        self, inner: bhttp.Request, stream: Callable[[], Iterator[bytes]] | None
    ) -> tuple[Reply, bhttp.Response | None]:
        """Encapsulate, send, open. The response is None when the host (or the enclave, outside the
        encapsulation) refused: the reply says why."""
        assert self._key is not None
        if stream is None:
            message = bhttp.encode_request(inner)
            if self.attestation is not None and self.attestation.config.padding.enabled:
                message = padding.pad(message, padding.padme(len(message)))  # RFC 9292 §3.8
            encapsulated, context = ohttp.encapsulate_request(self._key, message)
            reply = self._transport.send(
                "POST", "/v1/ohttp", content=encapsulated, headers={"content-type": ohttp.MEDIA_TYPE_REQUEST}
            )
            if not _relayed(reply, ohttp.MEDIA_TYPE_RESPONSE):
                return reply, None
            return reply, bhttp.decode_response(context.decapsulate_response(reply.body))
        encoder = chunked_ohttp.ChunkedRequestEncoder(self._key)

        def body() -> Iterator[bytes]:
            yield encoder.header()
            for plaintext in _slices(bhttp.encode_request_head(inner)):
                yield encoder.chunk(plaintext)
            for piece in stream():
                for plaintext in _slices(bhttp.encode_content_chunk(piece)):
                    yield encoder.chunk(plaintext)
            yield encoder.final(bhttp.encode_request_end())

        reply = self._transport.send(
            "POST",
            "/v1/ohttp",
            content=body(),
            headers={"content-type": chunked_ohttp.MEDIA_TYPE_CHUNKED_REQUEST},
        )
        if not _relayed(reply, chunked_ohttp.MEDIA_TYPE_CHUNKED_RESPONSE):
            return reply, None
        decoder = encoder.response_decoder()
        plaintext = b"".join(decoder.feed(reply.body)) + decoder.finish()
        return reply, bhttp.decode_response(plaintext)

    def _get(self, path: str, *, expect: str) -> bytes:
        """A plain GET to the host (the attestation routes); answers in its own words when what
        answers is not an enclave-infer host (a web server without the routes, a wrong port)."""
        reply = self._transport.send("GET", path)
        route = path.split("?")[0]
        if reply.status != 200:
            if reply.problem() is None:
                raise _error(None, reply.status, reply.retry_after, self._not_ours(route, reply))
            raise _host_error(reply)
        if reply.media_type != expect:
            raise AttestationError(f"{self._not_ours(route, reply)}, not with {expect}")
        return reply.body

    def _not_ours(self, route: str, reply: Reply) -> str:
        media = reply.media_type or "no content type"
        return f"{self.url} is not an enclave-infer host: GET {route} answered {reply.status} ({media})"


class _Source:
    """A model file to upload: something that opens to a binary stream, read twice (hash, send)."""

    def __init__(self, opener: Callable[[Any], BinaryIO], what: Any) -> None:
        self._opener, self._what = opener, what

    def describe(self, fmt: str, piece_bytes: int) -> ModelFile:
        digest, size = hashlib.sha256(), 0
        for piece in self.pieces(piece_bytes):
            digest.update(piece)
            size += len(piece)
        return ModelFile(ModelFormat.parse(fmt), digest.hexdigest(), size)

    def pieces(self, piece_bytes: int) -> Iterator[bytes]:
        with self._opener(self._what) as f:
            while piece := f.read(piece_bytes):
                yield piece


def _opener(path: Path) -> Callable[[Any], BinaryIO]:
    def open_model(p: Path) -> BinaryIO:
        try:
            return open(p, "rb")
        except OSError as exc:
            raise UsageError(f"cannot read model {p}: {exc.strerror}") from None

    return open_model


def verify_receipt(
    document: bytes,
    constraint: str | Constraint | UnsafeNoPolicy | None,
    *,
    image: bytes | None = None,
    verifier: Verifier = PRODUCTION,
    measurements: bytes | None = None,
) -> tuple[Statement, Attestation]:
    """Verify a kept receipt (``Classification.receipt``) offline, as ``enclave-infer
    verify-receipt`` does: its evidence as of its time, the binding, ``constraint``, the signature,
    the answer it carries, and ``image`` when given. Returns the signed statement and the evidence.

    A receipt proves which enclave answered only against a constraint: any enclave whose evidence
    verifies, of whatever code hash or configuration, can mint one whose signature and answer check
    out. So ``constraint`` None is refused (:class:`UsageError`); verifying without one takes an
    explicit ``UnsafeNoPolicy(reason)``, which logs a warning naming the enclave it let through.
    ``measurements``: the release's reference measurements, for a constraint that pins ``IMAGE:``."""
    if constraint is None:
        raise UsageError(
            "a receipt verified without a constraint proves nothing about which enclave minted it:"
            ' give the enclave\'s (e.g. "C:<code hash> SEC:SECURE"), or UnsafeNoPolicy(reason) to'
            " check its signature and answer only"
        )
    policy: Policy = constraints.parse(constraint) if isinstance(constraint, str) else constraint
    return verify_signed_receipt(
        Receipt.decode(document), policy, verifier=verifier, image=image, measurements=measurements
    )


def fetch_collateral(pccs_url: str, quote: bytes, *, timeout: float = ClientConfig().timeout) -> bytes:
    """DCAP collateral for ``quote`` from a PCCS (or Intel's PCS), as dcap-qvl's JSON, within
    ``timeout`` seconds."""
    import asyncio

    import dcap_qvl

    async def fetch() -> Any:
        return await asyncio.wait_for(dcap_qvl.get_collateral(pccs_url, quote), timeout)

    try:
        collateral = asyncio.run(fetch())
    except TimeoutError:
        raise TransportError(
            f"cannot fetch collateral from {pccs_url}: no answer within {duration(timeout)}"
        ) from None
    except (ValueError, RuntimeError, OSError) as exc:
        why = str(exc)[:200] or "the request failed"
        raise TransportError(f"cannot fetch collateral from {pccs_url}: {why}") from None
    return str(collateral.to_json()).encode()


def _relayed(reply: Reply, expect: str) -> bool:
    """Whether the host relayed an encapsulated answer (False: it, or the enclave outside the
    encapsulation, refused; the reply's problem says why)."""
    if reply.status != 200:
        return False
    if reply.media_type != expect:
        raise ProtocolError(f"the host's answer is not {expect}")
    return True


def _problem_of(response: bhttp.Response) -> Problem | None:
    details = _details(response)
    return details.problem if details is not None else None


def _details(response: bhttp.Response) -> ProblemDetails | None:
    try:
        return ProblemDetails.decode(response.content, status=response.status)
    except ProtocolError:
        return None


def _error(
    details: ProblemDetails | None, status: int, retry_after: float | None = None, message: str = ""
) -> RemoteError:
    """The exception a problem maps to (:data:`PROBLEM_ERRORS`); RemoteError for unknown types and
    for answers without a problem document (``message`` says what answered)."""
    if details is None:
        message = message or f"answered {status} without a problem document"
        return RemoteError(status, message, "", retry_after)
    cls = PROBLEM_ERRORS.get(details.problem, RemoteError) if details.problem is not None else RemoteError
    return cls(status, str(details), details.type, retry_after)


def _host_error(reply: Reply) -> RemoteError:
    """The host's refusal (or the enclave's, outside the encapsulation)."""
    details = reply.problem()
    if details is None:
        media = reply.media_type or "no content type"
        where = reply.url or "the host"
        return _error(None, reply.status, reply.retry_after, f"{where} answered {reply.status} ({media})")
    return _error(details, reply.status, reply.retry_after)


def _enclave_error(response: bhttp.Response) -> RemoteError:
    """The enclave's refusal, inside the encapsulation."""
    return _error(_details(response), response.status, retry_after(response.header("retry-after") or ""))


def _document(response: bhttp.Response) -> Any:
    if (response.header("content-type") or "").split(";")[0].strip() != JSON_MEDIA_TYPE:
        raise ProtocolError(f"the enclave answered {response.status} without a JSON document")
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ProtocolError(f"the enclave answered {response.status} with a body that is not JSON") from None


def _slices(data: bytes) -> Iterator[bytes]:
    """``data`` in pieces a chunked-OHTTP chunk can carry."""
    for i in range(0, len(data), chunked_ohttp.MAX_CHUNK_BYTES):
        yield data[i : i + chunked_ohttp.MAX_CHUNK_BYTES]


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


def _describe_key(config: ohttp.KeyConfig) -> str:
    """A key configuration as ``attest`` prints it: its id and the SHA-256 of its encoding."""
    return f"key id {config.key_id}, SHA-256 {hashlib.sha256(config.encode()).hexdigest().upper()}"


def _supports(config: ohttp.KeyConfig) -> bool:
    kem, kdf, aead = SUPPORTED_SUITE
    return config.kem_id == kem and (kdf, aead) in config.symmetric_algorithms
