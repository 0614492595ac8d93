"""Intel SGX and TDX DCAP quotes: verification with ``dcap-qvl`` and mapping onto security levels.

Pure logic on bytes, used by clients (and by ``enclave-infer verify-evidence``). ``dcap-qvl`` checks
the quote's ECDSA signature, the PCK certificate chain up to Intel's SGX Root CA, the CRLs, the
Quoting Enclave's identity and the platform's TCB level against the collateral (TCB info, QE
identity, CRLs and their issuer chains), all at a time the caller gives. This module turns its
verdict into an :class:`EnclaveReport`:

========================================================  ===========
TCB status                                                level
========================================================  ===========
``UpToDate``                                              SECURE
``SWHardeningNeeded``, ``ConfigurationNeeded``,           STALE
``ConfigurationAndSWHardeningNeeded``, ``OutOfDate``,
``OutOfDateConfigurationNeeded``
``Revoked``, anything unknown                             refused
a debug enclave (SGX ATTRIBUTES.DEBUG, TDX TD_ATTRIBUTES  INSECURE
.DEBUG), whatever the TCB
========================================================  ===========

The evidence's time (``issued_at``, what ``EXPIRE:`` measures) is the TCB info's ``issueDate``:
a nonce already proves the quote is fresh, so what can grow old is Intel's assessment of the
platform that the collateral carries.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from enclave_infer.attestation.report import EnclaveReport, SecurityLevel
from enclave_infer.errors import AttestationError

__all__ = ["TCB_LEVELS", "QuoteVerdict", "collateral_issue_date", "verify_quote"]

TCB_LEVELS: Mapping[str, SecurityLevel] = {
    "UpToDate": SecurityLevel.SECURE,
    "SWHardeningNeeded": SecurityLevel.STALE,
    "ConfigurationNeeded": SecurityLevel.STALE,
    "ConfigurationAndSWHardeningNeeded": SecurityLevel.STALE,
    "OutOfDate": SecurityLevel.STALE,
    "OutOfDateConfigurationNeeded": SecurityLevel.STALE,
}
# SGX ATTRIBUTES.FLAGS bit 1 (Intel SDM vol. 3D, 38.7.1 "ATTRIBUTES"): a debug enclave, whose
# memory the host can read with EDBGRD.
SGX_FLAG_DEBUG = 0x02
# TDX TD_ATTRIBUTES bit 0 (Intel TDX Module ABI, "TD_ATTRIBUTES"): a debug TD, inspectable by the VMM.
TDX_ATTR_DEBUG = 0x01
# A collateral document (TCB info, QE identity, CRLs, chains) is a few tens of KB.
MAX_COLLATERAL_BYTES = 1024 * 1024
MAX_QUOTE_BYTES = 64 * 1024


@dataclass(frozen=True)
class QuoteVerdict:
    """What a verified quote says, in the form ``verify-evidence`` prints."""

    report: EnclaveReport
    tcb_status: str
    advisory_ids: tuple[str, ...]
    measurements: Mapping[str, str]  # hex: mrenclave/mrsigner, or mrtd/rtmr0..3

    def to_json(self) -> dict[str, Any]:
        r = self.report
        return {
            "tee": r.tee,
            "status": self.tcb_status,
            "advisory_ids": list(self.advisory_ids),
            **self.measurements,
            "product_id": r.product_id,
            "security_version": r.security_version,
            "debug": r.debug,
            "report_data": r.report_data.hex(),
            "security_level": r.security_level.name,
            "security_level_reason": r.level_reason,
            "collateral_issued_at": r.issued_at.strftime("%Y-%m-%dT%H:%M:%SZ") if r.issued_at else None,
        }


def verify_quote(
    quote: bytes, collateral: bytes, *, now: datetime, root_ca_der: bytes | None = None
) -> QuoteVerdict:
    """Verify ``quote`` against ``collateral`` (dcap-qvl's QuoteCollateralV3 JSON) at ``now``.

    ``root_ca_der`` is the root every certificate chain must end in. None, the default, means
    Intel's SGX Root CA as dcap-qvl pins it (``dcap_qvl.verify``); other bytes, a DER certificate
    handed to ``dcap_qvl.verify_with_root_ca``, exist for tests of an emulated platform. It is a
    parameter only, for a verifier object to own: no flag, environment variable or configuration
    file may reach it.

    Raises :class:`AttestationError` with dcap-qvl's reason when anything fails to verify.
    """
    import dcap_qvl  # a compiled extension: imported where it is needed

    if not quote or len(quote) > MAX_QUOTE_BYTES:
        raise AttestationError("quote is empty or too large")
    if len(collateral) > MAX_COLLATERAL_BYTES:
        raise AttestationError("collateral is too large")
    issued_at = collateral_issue_date(collateral)
    try:
        parsed = dcap_qvl.QuoteCollateralV3.from_json(collateral.decode())
    except (ValueError, UnicodeDecodeError):
        raise AttestationError("collateral is not dcap-qvl QuoteCollateralV3 JSON") from None
    try:
        if root_ca_der is None:
            verified = dcap_qvl.verify(quote, parsed, int(now.timestamp()))
        else:
            verified = dcap_qvl.verify_with_root_ca(quote, parsed, root_ca_der, int(now.timestamp()))
        doc = json.loads(verified.to_json())
    except ValueError as exc:
        raise AttestationError(f"DCAP quote did not verify: {_reason(exc)}") from None
    status = doc.get("status")
    if status not in TCB_LEVELS:
        raise AttestationError(f"TCB status {status!r} is not acceptable")
    advisories = tuple(str(a) for a in doc.get("advisory_ids") or ())
    report_doc = doc.get("report")
    if not isinstance(report_doc, dict) or len(report_doc) != 1:
        raise AttestationError("dcap-qvl returned no report")
    ((kind, body),) = report_doc.items()
    level = TCB_LEVELS[status]
    reason = f"TCB status {status}" + (f" (advisories {', '.join(advisories)})" if advisories else "")
    if kind == "SgxEnclave":
        debug = bool(_hex(body, "attributes")[0] & SGX_FLAG_DEBUG)
        mrenclave, mrsigner = _hex(body, "mr_enclave"), _hex(body, "mr_signer")
        measurements = {"mrenclave": mrenclave.hex(), "mrsigner": mrsigner.hex()}
        report = EnclaveReport(
            tee="sgx",
            code_hash=mrenclave,
            signer=mrsigner,
            product_id=_int(body, "isv_prod_id"),
            security_version=_int(body, "isv_svn"),
            debug=debug,
            report_data=_hex(body, "report_data"),
            security_level=level,
            level_reason=reason,
            issued_at=issued_at,
        )
    elif kind in ("TD10", "TD15"):
        td = body.get("base", body) if kind == "TD15" else body
        debug = bool(_hex(td, "td_attributes")[0] & TDX_ATTR_DEBUG)
        mrtd = _hex(td, "mr_td")
        measurements = {"mrtd": mrtd.hex(), **{f"rtmr{i}": _hex(td, f"rt_mr{i}").hex() for i in range(4)}}
        report = EnclaveReport(
            tee="tdx",
            code_hash=mrtd,
            signer=b"",  # a TD has no MRSIGNER: pin it by MRTD (C:)
            product_id=0,
            security_version=0,
            debug=debug,
            report_data=_hex(td, "report_data"),
            security_level=level,
            level_reason=reason,
            issued_at=issued_at,
        )
    else:
        raise AttestationError(f"unsupported report type {kind!r}")
    if debug:
        report = _insecure(report, "debug enclave: the host can read its memory")
    return QuoteVerdict(report, status, advisories, measurements)


def collateral_issue_date(collateral: bytes) -> datetime:
    """The TCB info's ``issueDate``: when Intel last assessed this platform's TCB."""
    try:
        doc = json.loads(collateral)
        tcb_info = json.loads(doc["tcb_info"])
        when = datetime.strptime(tcb_info["issueDate"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        raise AttestationError("collateral has no readable TCB info issueDate") from None
    return when


def _insecure(report: EnclaveReport, reason: str) -> EnclaveReport:
    from dataclasses import replace

    return replace(report, security_level=SecurityLevel.INSECURE, level_reason=reason)


def _hex(doc: Mapping[str, Any], key: str) -> bytes:
    value = doc.get(key)
    try:
        raw = (
            bytes.fromhex(value)
            if isinstance(value, str)
            else bytes(value)
            if isinstance(value, list)
            else None
        )
    except (ValueError, TypeError):
        raw = None
    if not raw:
        raise AttestationError(f"dcap-qvl report lacks {key}")
    return raw


def _int(doc: Mapping[str, Any], key: str) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise AttestationError(f"dcap-qvl report lacks {key}")
    return value


def _reason(exc: Exception) -> str:
    text = str(exc).removeprefix("Verification failed: ").strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
