"""Simulation evidence: the format a simulated enclave reports, and its verifier.

Pure logic on bytes. Simulation evidence is a JSON document that nothing signs: anyone can write
one, so it proves nothing about the platform, and :func:`verify` always assesses it INSECURE. It
exists so that every other part of the system (binding, constraints, OHTTP, sealing) runs for real.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from enclave_infer.attestation.report import EnclaveReport, SecurityLevel, Tee
from enclave_infer.errors import AttestationError

__all__ = ["FORMAT", "INSECURE_REASON", "encode", "verify"]

FORMAT = "enclave-infer simulation evidence v1"
INSECURE_REASON = "simulation mode: no hardware root of trust, the evidence is unsigned"


def encode(
    *,
    code_hash: bytes,
    signer: bytes,
    product_id: int,
    security_version: int,
    debug: bool,
    report_data: bytes,
    issued_at: datetime,
) -> bytes:
    return json.dumps(
        {
            "format": FORMAT,
            "code_hash": code_hash.hex(),
            "signer": signer.hex(),
            "product_id": product_id,
            "security_version": security_version,
            "debug": debug,
            "report_data": report_data.hex(),
            "issued_at": issued_at.astimezone(UTC).isoformat(),
        },
        sort_keys=True,
    ).encode()


def verify(evidence: bytes) -> EnclaveReport:
    """Parse simulation evidence; raises :class:`AttestationError` if it is malformed."""
    try:
        doc = json.loads(evidence)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise AttestationError("simulation evidence is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise AttestationError("not simulation evidence of a known version")
    return EnclaveReport(
        tee=Tee.SIMULATION,
        code_hash=_hex(doc, "code_hash", 32),
        signer=_hex(doc, "signer", 32),
        product_id=_int(doc, "product_id"),
        security_version=_int(doc, "security_version"),
        debug=_bool(doc, "debug"),
        report_data=_hex(doc, "report_data", 64),
        security_level=SecurityLevel.INSECURE,
        level_reason=INSECURE_REASON,
        issued_at=_time(doc, "issued_at"),
    )


def _hex(doc: dict[str, Any], key: str, size: int) -> bytes:
    value = doc.get(key)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        raw = None
    if raw is None or len(raw) != size:
        raise AttestationError(f"simulation evidence: {key} must be {size} bytes of hex")
    return raw


def _int(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF:
        raise AttestationError(f"simulation evidence: {key} must be an integer 0..65535")
    return value


def _bool(doc: dict[str, Any], key: str) -> bool:
    value = doc.get(key)
    if not isinstance(value, bool):
        raise AttestationError(f"simulation evidence: {key} must be a boolean")
    return value


def _time(doc: dict[str, Any], key: str) -> datetime:
    value = doc.get(key)
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise AttestationError(f"simulation evidence: {key} must be an RFC 3339 time with a zone")
    return when
