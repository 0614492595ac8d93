"""The Python SDK for model owners and image submitters.

Client-side code (trusted by its user, not by the enclave). :class:`Client` verifies the enclave's
evidence against the user's constraint before it sends anything, then speaks to the enclave's own
API through Oblivious HTTP: every request is a binary-HTTP message (RFC 9292) encapsulated to the
attested key (RFC 9458); the host in between sees ciphertext.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave_infer.attestation import constraints
from enclave_infer.attestation.constraints import Constraint
from enclave_infer.attestation.evidence import Attestation, Evidence, appraise, verify
from enclave_infer.errors import (
    AttestationError,
    ConstraintError,
    ProtocolError,
    RemoteError,
    TransportError,
    UsageError,
)
from enclave_infer.protocol import bhttp, chunked_ohttp, ohttp
from enclave_infer.protocol.manifest import Manifest, ModelFile, sf_binary

__all__ = ["Classification", "Client", "Prediction", "fetch_collateral", "load_labels"]

# The inner request's authority: the enclave is its own target resource (RFC 9458 §2).
INNER_AUTHORITY = "enclave"
SUPPORTED_SUITE = (ohttp.KEM_X25519_HKDF_SHA256, ohttp.KDF_HKDF_SHA256, ohttp.AEAD_AES_128_GCM)
# A streamed model is read and sent in pieces of this size (plus 2-4 bytes of binary-HTTP framing,
# well under a chunked-OHTTP chunk's 1 MiB).
UPLOAD_PIECE_BYTES = 256 * 1024
# Answers from the enclave are small JSON documents and evidence is a few KB; anything larger from
# the (untrusted) host is refused rather than buffered.
MAX_RESPONSE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    probability: float

    def __str__(self) -> str:
        return f"{self.label} ({self.probability * 100:.1f}%)"


@dataclass(frozen=True)
class Classification:
    model_sha256: str
    model_version: int
    results: tuple[Prediction, ...]
    # with runtime="both": each runtime's results, side by side ("onnx", "torch")
    by_runtime: dict[str, tuple[Prediction, ...]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, doc: Any) -> Classification:
        def predictions(items: Any) -> tuple[Prediction, ...]:
            return tuple(Prediction(str(r["label"]), int(r["index"]), float(r["probability"])) for r in items)

        try:
            return cls(
                model_sha256=str(doc["model"]["sha256"]),
                model_version=int(doc["model"]["version"]),
                results=predictions(doc["results"]),
                by_runtime={str(k): predictions(v) for k, v in doc.get("runtimes", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ProtocolError("the enclave's classification answer is malformed") from None

    def to_json(self) -> dict[str, Any]:
        def items(ps: tuple[Prediction, ...]) -> list[dict[str, Any]]:
            return [{"label": p.label, "index": p.index, "probability": p.probability} for p in ps]

        doc: dict[str, Any] = {
            "model": {"sha256": self.model_sha256, "version": self.model_version},
            "results": items(self.results),
        }
        if self.by_runtime:
            doc["runtimes"] = {name: items(ps) for name, ps in self.by_runtime.items()}
        return doc


class Client:
    """A connection to one enclave-infer deployment, checked against one constraint."""

    def __init__(
        self,
        url: str,
        constraint: str | Constraint | None,
        *,
        timeout: float = 300.0,
        transport: httpx.BaseTransport | None = None,
        now: Callable[[], datetime] | None = None,
        collateral: bytes | None = None,
        pccs_url: str | None = None,
        model_sha256: str | None = None,
    ) -> None:
        """``collateral``: the DCAP collateral to verify a quote with (dcap-qvl JSON), instead of
        what the host attaches to the evidence; or ``pccs_url``: fetch it for each quote.
        ``model_sha256``: send images only to, and accept answers only from, that model."""
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        # None only for inspect(): a client without a constraint never sends anything.
        self.constraint = constraints.parse(constraint) if isinstance(constraint, str) else constraint
        self._http = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)
        self._timeout = timeout
        self._now = now or (lambda: datetime.now(UTC))
        self._collateral = collateral
        self._pccs_url = pccs_url
        if model_sha256 is not None and not _is_sha256(model_sha256):
            raise UsageError(f"a model SHA-256 is 64 hex digits, got {model_sha256!r}")
        self.model_sha256 = model_sha256.lower() if model_sha256 else None
        self._key: ohttp.KeyConfig | None = None
        self._clock_offset = 0.0
        self.attestation: Attestation | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- attestation ---------------------------------------------------------------------------

    def attest(self) -> Attestation:
        """Fetch the key configuration and fresh evidence; verify both against the constraint."""
        if self.constraint is None:
            raise UsageError("no enclave constraint: the client will not talk to an unchecked enclave")
        return self._attest(self.constraint)

    def inspect(self) -> Attestation:
        """Verify the evidence and its binding to fresh keys, without a policy: what ``attest``
        prints. Sends nothing to the enclave and enables nothing."""
        return self._attest(None)

    def _attest(self, constraint: Constraint | None) -> Attestation:
        keys = self._get("/ohttp-keys", expect="application/ohttp-keys")
        try:
            configs = ohttp.decode_key_configs(keys)
        except ProtocolError as exc:
            raise AttestationError(f"the host served an invalid key configuration: {exc}") from None
        config = next((c for c in configs if _supports(c)), None)
        if config is None:
            raise AttestationError("the enclave offers no supported HPKE suite")
        nonce = secrets.token_bytes(32)
        document = self._get(f"/v1/attestation?nonce={nonce.hex()}", expect="application/json")
        collateral = self._collateral
        if collateral is None and self._pccs_url is not None:
            evidence = Evidence.decode(document)
            if evidence.tee in ("sgx", "tdx"):
                collateral = fetch_collateral(self._pccs_url, evidence.evidence)
        if constraint is None:
            return appraise(
                document, key_config=config.encode(), nonce=nonce, now=self._now(), collateral=collateral
            )
        attestation = verify(
            document,
            key_config=config.encode(),
            nonce=nonce,
            constraint=constraint,
            now=self._now(),
            collateral=collateral,
        )
        self._key, self.attestation = config, attestation
        return attestation

    # -- the enclave's API ---------------------------------------------------------------------

    def classify(self, image: bytes, *, top: int = 1, runtime: str = "default") -> Classification:
        """``runtime``: the owner's first ("default"), "onnx", "torch", or "both" side by side."""
        response = self.request(
            "POST",
            f"/v1/classify?top={top}&runtime={runtime}",
            content=image,
            headers=(
                ("content-type", "application/octet-stream"),
                # the enclave refuses the image, before decoding it, unless it serves this model
                *((("model-sha256", self.model_sha256),) if self.model_sha256 else ()),
            ),
        )
        result = Classification.from_json(_json_or_raise(response))
        if self.model_sha256 is not None:
            self._check_model(result.model_sha256)
        return result

    def _check_model(self, served: str) -> None:
        if served.lower() != self.model_sha256:
            raise ConstraintError(f"the enclave serves model {served}, not the pinned {self.model_sha256}")

    def model_info(self) -> dict[str, Any] | None:
        """Public metadata of the served model, or None if none is provisioned."""
        response = self.request("GET", "/v1/model")
        if response.status == 404:
            return None
        doc = _json_or_raise(response)
        if not isinstance(doc, dict):
            raise ProtocolError("the enclave's model metadata is malformed")
        return doc

    def provision(
        self,
        model: bytes,
        labels: Sequence[str],
        owner_key: Ed25519PrivateKey,
        *,
        preprocessing: dict[str, Any],
        version: int | None = None,
    ) -> dict[str, Any]:
        """Sign a manifest for ``model`` (ONNX bytes) and upload both; returns the new metadata."""
        files = (ModelFile("onnx", hashlib.sha256(model).hexdigest(), len(model)),)
        return self._put_model(files, labels, owner_key, preprocessing, version, content=model)

    def _put_model(
        self,
        files: tuple[ModelFile, ...],
        labels: Sequence[str],
        owner_key: Ed25519PrivateKey,
        preprocessing: dict[str, Any],
        version: int | None,
        *,
        content: bytes = b"",
        stream: Callable[[], Iterator[bytes]] | None = None,
    ) -> dict[str, Any]:
        """Sign the manifest (version: one more than the enclave's unless given) and PUT it with
        the files' bytes, whole or streamed."""
        if version is None:
            current = self.model_info()
            version = 1 if current is None else int(current["version"]) + 1
        manifest_bytes, signature = Manifest(files, tuple(labels), preprocessing, version).sign(owner_key)
        response = self.request(
            "PUT",
            "/v1/model",
            headers=(
                ("content-type", "application/octet-stream"),
                ("manifest", sf_binary(manifest_bytes)),
                ("manifest-signature", sf_binary(signature)),
            ),
            content=content,
            stream=stream,
        )
        doc = _json_or_raise(response)
        if not isinstance(doc, dict):
            raise ProtocolError("the enclave's answer to a provision is malformed")
        return doc

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        content: bytes = b"",
        stream: Callable[[], Iterator[bytes]] | None = None,
    ) -> bhttp.Response:
        """One request to the enclave's own API through Oblivious HTTP. With ``stream`` (a
        function returning the body's pieces, callable again for a retry) the request is sent in
        the chunked form, piece by piece, never held whole."""
        if self._key is None:
            self.attest()
        for attempt in range(2):
            if stream is None:
                response = self._exchange(method, path, headers, content)
            else:
                response = self._exchange_chunked(method, path, headers, stream())
            if attempt == 0 and response is None:
                # The enclave may have restarted with a new key: verify it again, and resend only if
                # the key really changed (a host that merely claims failure must not get a rerun).
                old_key = self._key
                self.attest()
                if self._key != old_key:
                    continue
            if attempt == 0 and response is not None and _clock_refusal(response):
                server_date = response.header("date")
                if server_date is not None:
                    self._clock_offset = parsedate_to_datetime(server_date).timestamp() - time.time()
                    continue
            if response is None:
                raise RemoteError(400, "the enclave could not decrypt the request")
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _exchange(
        self, method: str, path: str, headers: Sequence[tuple[str, str]], content: bytes
    ) -> bhttp.Response | None:
        assert self._key is not None
        inner = self._inner(method, path, headers, content)
        encapsulated, context = ohttp.encapsulate_request(self._key, bhttp.encode_request(inner))
        status, media_type, body = self._send(
            "POST", "/v1/ohttp", content=encapsulated, headers={"content-type": "message/ohttp-req"}
        )
        del encapsulated
        if not _relayed(status, media_type, body, expect="message/ohttp-res"):
            return None
        return bhttp.decode_response(context.decapsulate_response(body))

    def _inner(
        self, method: str, path: str, headers: Sequence[tuple[str, str]], content: bytes = b""
    ) -> bhttp.Request:
        """The request to the enclave's own API, dated for its replay window (RFC 9458 §6.5.1)."""
        date = formatdate(time.time() + self._clock_offset, usegmt=True)
        return bhttp.Request(method, "https", INNER_AUTHORITY, path, (*headers, ("date", date)), content)

    def _exchange_chunked(
        self, method: str, path: str, headers: Sequence[tuple[str, str]], pieces: Iterator[bytes]
    ) -> bhttp.Response | None:
        assert self._key is not None
        head = self._inner(method, path, headers)
        encoder = chunked_ohttp.ChunkedRequestEncoder(self._key)

        def body() -> Iterator[bytes]:
            yield encoder.header()
            for plaintext in _slices(bhttp.encode_request_head(head)):
                yield encoder.chunk(plaintext)
            for piece in pieces:
                for plaintext in _slices(bhttp.encode_content_chunk(piece)):
                    yield encoder.chunk(plaintext)
            yield encoder.final(bhttp.encode_request_end())

        status, media_type, reply = self._send(
            "POST",
            "/v1/ohttp",
            content=body(),
            headers={"content-type": chunked_ohttp.MEDIA_TYPE_CHUNKED_REQUEST},
        )
        if not _relayed(status, media_type, reply, expect=chunked_ohttp.MEDIA_TYPE_CHUNKED_RESPONSE):
            return None
        decoder = encoder.response_decoder()
        plaintext = b"".join(decoder.feed(reply)) + decoder.finish()
        return bhttp.decode_response(plaintext)

    def provision_file(
        self,
        model: Path | Mapping[str, Path],
        labels: Sequence[str],
        owner_key: Ed25519PrivateKey,
        *,
        preprocessing: dict[str, Any],
        version: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Like :meth:`provision`, streaming the model file through chunked OHTTP: client memory
        stays at a few pieces whatever the model's size. ``model`` is an ONNX file, or a mapping
        of format ("onnx", "torchscript") to file, served by each runtime. ``progress`` gets byte
        counts as they go."""
        paths = {"onnx": model} if isinstance(model, Path) else dict(model)
        files = []
        for fmt, path in paths.items():
            digest, size = hashlib.sha256(), 0
            try:
                with open(path, "rb") as f:
                    while piece := f.read(UPLOAD_PIECE_BYTES):
                        digest.update(piece)
                        size += len(piece)
            except OSError as exc:
                raise UsageError(f"cannot read model {path}: {exc.strerror}") from None
            files.append(ModelFile(fmt, digest.hexdigest(), size))

        def pieces() -> Iterator[bytes]:
            for path in paths.values():  # back to back, in the manifest's order
                with open(path, "rb") as f:
                    while piece := f.read(UPLOAD_PIECE_BYTES):
                        if progress is not None:
                            progress(len(piece))
                        yield piece

        return self._put_model(tuple(files), labels, owner_key, preprocessing, version, stream=pieces)

    def _get(self, path: str, *, expect: str) -> bytes:
        status, media_type, body = self._send("GET", path)
        where = self.url + path.split("?")[0]
        if status != 200:
            raise TransportError(f"{where} answered {status}: {_error_text(body)}")
        if media_type != expect:
            raise AttestationError(f"{where} did not answer with {expect}")
        return body

    def _send(
        self,
        method: str,
        path: str,
        *,
        content: bytes | Iterator[bytes] = b"",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, str, bytes]:
        """One HTTP exchange with the host, which is not trusted: the answer is read up to
        MAX_RESPONSE_BYTES and within the client's timeout as a whole, not per read."""
        deadline = time.monotonic() + self._timeout
        try:
            with self._http.stream(method, self.url + path, content=content, headers=headers) as reply:
                declared = reply.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
                    raise ProtocolError(f"the host's answer is larger than {MAX_RESPONSE_BYTES} bytes")
                body = bytearray()
                for chunk in reply.iter_bytes():
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise ProtocolError(f"the host's answer is larger than {MAX_RESPONSE_BYTES} bytes")
                    if time.monotonic() > deadline:
                        raise TransportError(f"{self.url} did not answer within {self._timeout:.0f} s")
                media_type = reply.headers.get("content-type", "").split(";")[0].strip()
                return reply.status_code, media_type, bytes(body)
        except httpx.HTTPError as exc:
            raise TransportError(f"cannot reach {self.url}: {_why(exc)}") from None


def fetch_collateral(pccs_url: str, quote: bytes) -> bytes:
    """DCAP collateral for ``quote`` from a PCCS (or Intel's PCS), as dcap-qvl's JSON."""
    import asyncio

    import dcap_qvl

    try:
        collateral = asyncio.run(dcap_qvl.get_collateral(pccs_url, quote))
    except (ValueError, RuntimeError, OSError) as exc:
        raise TransportError(f"cannot fetch collateral from {pccs_url}: {str(exc)[:200]}") from None
    return str(collateral.to_json()).encode()


def load_labels(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read labels {path}: {exc}") from None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise UsageError(f"{path} holds no labels (one per line)")
    return labels


def _relayed(status: int, media_type: str, body: bytes, *, expect: str) -> bool:
    """Whether the host relayed an encapsulated answer; False when the enclave could not decrypt
    the request (it may have restarted with a new key); raises for anything else."""
    if status == 400 and b"could not decrypt" in body:
        return False
    if status != 200:
        raise RemoteError(status, f"host answered {status}: {_error_text(body)}")
    if media_type != expect:
        raise ProtocolError(f"the host's answer is not {expect}")
    return True


def _slices(data: bytes) -> Iterator[bytes]:
    """``data`` in pieces a chunked-OHTTP chunk can carry."""
    for i in range(0, len(data), chunked_ohttp.MAX_CHUNK_BYTES):
        yield data[i : i + chunked_ohttp.MAX_CHUNK_BYTES]


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


def _supports(config: ohttp.KeyConfig) -> bool:
    kem, kdf, aead = SUPPORTED_SUITE
    return config.kem_id == kem and (kdf, aead) in config.symmetric_algorithms


def _clock_refusal(response: bhttp.Response) -> bool:
    return response.status == 400 and b"acceptance window" in response.content


def _json_or_raise(response: bhttp.Response) -> Any:
    try:
        doc = json.loads(response.content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ProtocolError(f"the enclave answered {response.status} with a body that is not JSON") from None
    if response.status >= 400:
        message = doc.get("error") if isinstance(doc, dict) else None
        raise RemoteError(response.status, str(message or f"the enclave answered {response.status}"))
    return doc


def _error_text(body: bytes) -> str:
    """The host's plain error message, if it sent one; shortened, since the host is not trusted."""
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return "".join(c for c in doc["error"][:300] if c.isprintable())
    except (ValueError, UnicodeDecodeError, RecursionError):
        pass
    return "error"


def _why(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or host unreachable"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return type(exc).__name__
