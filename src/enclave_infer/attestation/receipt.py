"""Signed receipts: proof, verifiable offline and later, that an attested enclave gave this answer
to this image.

Pure logic on bytes: the enclave signs (:func:`sign`), anyone verifies (:func:`verify`). A receipt
document is JSON::

    {"type": "enclave-infer receipt v1",
     "statement": "<base64 of the statement>",
     "signature": "<base64 Ed25519 signature of 'enclave-infer receipt v1' 0x00 || statement>",
     "evidence": "<base64 attestation document, with collateral>",
     "key_config": "<base64>", "nonce": "<base64>",
     "response": "<the answer it covers, as JSON text>"}     # added by the client

and the statement, canonical JSON (sorted keys, no spaces)::

    {"image_sha256": hex, "request_sha256": hex, "response_sha256": hex,
     "model_sha256": hex, "model_version": int, "time": "YYYY-MM-DDTHH:MM:SSZ"}

- ``request_sha256``: SHA-256 of the inner request in RFC 9292's known-length encoding, without
  padding; ``image_sha256``: of its content, the image; ``response_sha256``: of the answer's
  content (the classification's JSON); the model and the time it was answered.
- The signing key is the enclave instance's own Ed25519 key, never released; ``evidence`` is that
  instance's attestation document, whose report data binds the key with the instance's key
  configuration, configuration and ``nonce`` (``attestation.report.attestation_binding``), so a
  verifier trusts the key exactly as far as it trusts the evidence: it appraises the evidence as
  of the receipt's time with its own roots and its policy, then checks the signature, and that the
  answer (and the image, when it has one) hash to what the statement says.
- The enclave signs the statement alone and sends the document without ``response`` (the answer
  travels beside it); the client adds the answer before keeping it. :func:`verify` refuses a
  document without its answer: a receipt is proof of an answer, and one whose answer was removed
  proves none (anyone could put another answer beside it and claim it was covered).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from enclave_infer.attestation.evidence import Attestation, Policy, Verifier
from enclave_infer.attestation.evidence import verify as verify_evidence
from enclave_infer.errors import AttestationError, ConstraintError
from enclave_infer.protocol import b64

__all__ = ["RECEIPT_HEADER", "RECEIPT_TYPE", "Receipt", "ReceiptError", "Statement", "sign", "verify"]

RECEIPT_TYPE = "enclave-infer receipt v1"
SIGNATURE_CONTEXT = RECEIPT_TYPE.encode() + b"\x00"
# The inner request header that asks for a receipt (RFC 8941 boolean ?1), and the answer's header
# that carries it (RFC 8941 byte sequence of the receipt document).
RECEIPT_HEADER = "receipt"
# A receipt is a few keys and hashes and one attestation document (at most 256 KiB).
MAX_RECEIPT_BYTES = 512 * 1024
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class ReceiptError(AttestationError):
    """A receipt that does not verify; the message says why, in one line."""


@dataclass(frozen=True)
class Statement:
    image_sha256: str
    request_sha256: str
    response_sha256: str
    model_sha256: str
    model_version: int
    time: datetime

    def encode(self) -> bytes:
        return json.dumps(
            {
                "image_sha256": self.image_sha256,
                "request_sha256": self.request_sha256,
                "response_sha256": self.response_sha256,
                "model_sha256": self.model_sha256,
                "model_version": self.model_version,
                "time": self.time.astimezone(UTC).strftime(TIME_FORMAT),
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Statement:
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or set(doc) != {
                "image_sha256", "request_sha256", "response_sha256", "model_sha256", "model_version", "time"
            }:  # fmt: skip
                raise ValueError
            hashes = [doc[k] for k in ("image_sha256", "request_sha256", "response_sha256", "model_sha256")]
            if not all(isinstance(h, str) and len(h) == 64 and _is_hex(h) for h in hashes):
                raise ValueError
            version = doc["model_version"]
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                raise ValueError
            when = datetime.strptime(doc["time"], TIME_FORMAT).replace(tzinfo=UTC)
        except (ValueError, TypeError, KeyError, RecursionError):
            raise ReceiptError("receipt refused: malformed statement") from None
        image, request, response, model = hashes
        return cls(image, request, response, model, version, when)


@dataclass(frozen=True)
class Receipt:
    statement: bytes
    signature: bytes
    evidence: bytes
    key_config: bytes
    nonce: bytes
    response: str | None = None

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "type": RECEIPT_TYPE,
            "statement": b64.encode(self.statement),
            "signature": b64.encode(self.signature),
            "evidence": b64.encode(self.evidence),
            "key_config": b64.encode(self.key_config),
            "nonce": b64.encode(self.nonce),
        }
        if self.response is not None:
            doc["response"] = self.response
        return json.dumps(doc, sort_keys=True, indent=1).encode()

    @classmethod
    def decode(cls, data: bytes) -> Receipt:
        if len(data) > MAX_RECEIPT_BYTES:
            raise ReceiptError("receipt refused: larger than any receipt")
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("type") != RECEIPT_TYPE:
                raise ValueError
            fields = ("statement", "signature", "evidence", "key_config", "nonce")
            if not set(doc) <= {"type", "response", *fields}:
                raise ValueError
            response = doc.get("response")
            if response is not None and not isinstance(response, str):
                raise ValueError
            statement, signature, evidence, key_config, nonce = (b64.decode(doc[k]) for k in fields)
            return cls(statement, signature, evidence, key_config, nonce, response)
        except (ValueError, TypeError, KeyError, RecursionError, UnicodeDecodeError):
            raise ReceiptError("receipt refused: not a receipt document") from None


def sign(
    key: Ed25519PrivateKey, statement: Statement, *, evidence: bytes, key_config: bytes, nonce: bytes
) -> Receipt:
    encoded = statement.encode()
    return Receipt(encoded, key.sign(SIGNATURE_CONTEXT + encoded), evidence, key_config, nonce)


def verify(
    receipt: Receipt,
    policy: Policy,
    *,
    verifier: Verifier,
    image: bytes | None = None,
    measurements: bytes | None = None,
) -> tuple[Statement, Attestation]:
    """Evidence (as of the receipt's time, with ``verifier``'s roots), binding, policy, signature,
    answer, image: raises :class:`ReceiptError` (or the policy's ConstraintError) with a one-line
    reason. A receipt without the answer it covers is refused. ``measurements``: the release's
    reference measurements, for a policy that pins ``IMAGE:`` (a receipt's evidence carries none)."""
    if receipt.response is None:
        raise ReceiptError("receipt refused: it carries no answer (the answer it covers was removed)")
    statement = Statement.decode(receipt.statement)
    try:
        attestation = verify_evidence(
            receipt.evidence,
            policy,
            verifier=verifier,
            key_config=receipt.key_config,
            nonce=receipt.nonce,
            now=statement.time,
            measurements=measurements,
        )
    except ConstraintError:
        raise
    except AttestationError as exc:
        raise ReceiptError(f"receipt refused: its evidence: {exc}") from None
    try:
        Ed25519PublicKey.from_public_bytes(attestation.receipt_key).verify(
            receipt.signature, SIGNATURE_CONTEXT + receipt.statement
        )
    except (InvalidSignature, ValueError):
        raise ReceiptError(
            "receipt refused: the signature does not verify with the key the evidence binds"
            " (altered, or signed by another instance)"
        ) from None
    if hashlib.sha256(receipt.response.encode()).hexdigest() != statement.response_sha256:
        raise ReceiptError("receipt refused: the answer it carries is not the one it covers")
    if image is not None and hashlib.sha256(image).hexdigest() != statement.image_sha256:
        raise ReceiptError("receipt refused: this image is not the one the receipt covers")
    return statement, attestation


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
