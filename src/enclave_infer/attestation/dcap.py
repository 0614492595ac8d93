"""Intel SGX and TDX DCAP quotes: verification with ``dcap-qvl`` and mapping onto security levels.

Pure logic on bytes, used by clients (and by ``enclave-infer verify-evidence``), and the one parser
of the quote's layout: the enclave's providers (``enclave/gramine.py``, ``enclave/tsm.py``) read
their own identity from their first quote with :func:`parse_sgx_quote_body` and
:func:`parse_tdx_quote`, on the same framing checks. ``dcap-qvl`` checks
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

:func:`verify_quote` runs, at the ``now`` the caller gives:

1. the quote's framing (:func:`parse_quote_layout`), stricter than dcap-qvl: every length and
   certification data type of the signature data must be exact, on bytes, before any cryptography;
2. the collateral's dates: TCB info and QE identity (``issueDate``, ``nextUpdate``,
   ``tcbEvaluationDataNumber``) and the two CRLs (``nextUpdate``);
3. the verification time: ``now`` while all of the collateral is current; once ``now`` reaches the
   earliest ``nextUpdate`` (dcap-qvl would refuse: a CRL has expired *at* its nextUpdate), one
   second before that instant, so that signatures, chains, revocation and TCB level are still
   checked in full, as of the last moment the collateral was current. The report then records how
   long ago the collateral expired (:class:`DcapCollateral`) and the level reason says so; the
   ``GRACE:`` constraint decides whether that is acceptable, and without it nothing stale is. Each
   certificate (the quote's PCK chain, the collateral's issuer chains) must still be valid at
   ``now``: a grace period covers Intel's publication cycle, never an expired certificate;
4. dcap-qvl's verification, at that time, with Intel's root or the one given;
5. the mapping above onto a security level.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509

from enclave_infer.attestation._x509 import PARSE_ERRORS
from enclave_infer.attestation.constraints import format_duration
from enclave_infer.attestation.report import DcapCollateral, EnclaveReport, Registers, SecurityLevel, Tee
from enclave_infer.errors import AttestationError

__all__ = [
    "MAX_QUOTE_BYTES",
    "TCB_LEVELS",
    "QuoteLayout",
    "QuoteVerdict",
    "SgxReportBody",
    "TdReportBody",
    "collateral_issue_date",
    "parse_quote_layout",
    "parse_sgx_quote_body",
    "parse_tdx_quote",
    "verify_quote",
]

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
# The one limit on a quote's size, for the enclave reading its own (enclave/gramine.py) and for
# verifiers: Gramine's quote buffer is 8 KB, a TDX quote with its PCK chain about 5 KB.
MAX_QUOTE_BYTES = 64 * 1024
# dcap-qvl counts time in whole seconds; verifying "just before" an instant means this much before it.
BEFORE_EXPIRY = timedelta(seconds=1)

# --- quote framing ----------------------------------------------------------------------------------
# Intel SGX DCAP "ECDSA Quote Library API", appendix "Quote Format" (quote v3: "Quote Header",
# "ECDSA 256-bit Quote Signature Data Structure", "QE Certification Data"), and Intel TDX DCAP
# "Quoting Library API", appendix "Quote Format" ("Version 4 Quote Format", "Version 5 Quote
# Format": the TD quote body descriptor, "Quote Signature Data", "QE Report Certification Data").
# Intel's own QVL reads the same fields (Quote::parse, Quote::validate in QuoteVerification/Quote.cpp
# of SGX-TDX-DCAP-QuoteVerificationLibrary). All integers little-endian.
HEADER_SIZE = 48
HEADER = struct.Struct("<HHI")  # version, attestation key type, TEE type (v3: reserved, zero)
ATT_KEY_TYPE_ECDSA_P256 = 2  # ECDSA-256-with-P-256: 64-byte signatures and public keys
TEE_TYPE_SGX, TEE_TYPE_TDX = 0x00000000, 0x00000081
SGX_REPORT_BODY_SIZE = 384  # sgx_report_body_t: the ISV enclave's, and the QE's own report
TD_REPORT10_SIZE, TD_REPORT15_SIZE = 584, 648
# v5: a body descriptor (u16 type, u32 size) follows the header; type 1 is an SGX report body,
# which dcap-qvl 0.7 reads only from v3 quotes, so v5 is taken for TDX alone.
V5_BODY_DESCRIPTOR = struct.Struct("<HI")
V5_TD_BODIES = {2: TD_REPORT10_SIZE, 3: TD_REPORT15_SIZE}  # TD report 1.0, TD report 1.5
SIGNATURE_DATA_LENGTH = struct.Struct("<I")
ECDSA_SIGNATURE_SIZE = 64  # r || s
ECDSA_PUBLIC_KEY_SIZE = 64  # x || y
QE_REPORT_SIGNATURE_SIZE = 64
QE_AUTH_DATA_SIZE = struct.Struct("<H")
CERTIFICATION_DATA_HEADER = struct.Struct("<HI")  # certification data type, size
# Certification data types (the same table in both documents): 1-3 PPID (plain or RSA-encrypted),
# 4 the PCK certificate alone, 5 the PEM chain PCK certificate, PCK CA, root; 6 QE report
# certification data (v4, v5), which wraps the QE report and a type 1-5 inside. An offline verifier
# needs the chain, as dcap-qvl does: 5 is the only inner type accepted.
CERT_TYPE_PCK_CHAIN = 5
CERT_TYPE_QE_REPORT = 6
# SGX report body (sgx_report_body_t in the SGX SDK's sgx_report.h), offsets within the body.
SGX_BODY_ATTRIBUTES = 48  # FLAGS u64, then XFRM
SGX_BODY_MRENCLAVE = slice(64, 96)
SGX_BODY_MRSIGNER = slice(128, 160)
SGX_BODY_ISV = struct.Struct("<HH")  # ISVPRODID, ISVSVN
SGX_BODY_ISV_OFFSET = 256
SGX_BODY_REPORT_DATA = slice(320, 384)
# TD report body (sgx_report2_body_t in sgx_quote_4.h; v1.5 adds fields after these), within the body.
TD_BODY_TD_ATTRIBUTES = 120  # u64, bit 0 DEBUG
TD_BODY_MRTD = slice(136, 184)
TD_BODY_REPORT_DATA = slice(520, 584)


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
            "collateral_issued_at": _when(r.issued_at) if r.issued_at else None,
            **_collateral_json(r.dcap_collateral),
        }


def _collateral_json(c: DcapCollateral | None) -> dict[str, Any]:
    if c is None:
        return {}
    return {
        "tcb_evaluation_data_numbers": {
            "tcb_info": c.tcb_info_evaluation_data_number,
            "qe_identity": c.qe_identity_evaluation_data_number,
        },
        "collateral_next_update": _when(c.next_update),
        "collateral_expired": None
        if c.expired is None
        else {"ago": format_duration(c.expired), "first_to_expire": c.next_update_of},
        "verified_as_of": _when(c.verified_at),
    }


def _when(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class QuoteLayout:
    """Where the parts of an SGX or TDX DCAP quote lie, its framing checked; nothing verified."""

    version: int  # 3 (SGX), 4 or 5 (TDX)
    tee: Tee  # SGX or TDX
    body: slice  # the SGX report body or TD report body
    signed_end: int  # header and report body, what the attestation key signs, end here
    signature_data: slice  # after the u32 signature data length
    qe_report: slice
    pck_chain: bytes  # certification data type 5: PEM PCK certificate, PCK CA, root (NUL-ended)
    padding: int  # zero bytes after the signature data


def parse_quote_layout(quote: bytes) -> QuoteLayout:
    """The framing of a DCAP quote, checked exactly (pure logic on bytes; no signature checked).

    The header must name a layout dcap-qvl verifies: SGX in version 3, TDX in versions 4 and 5
    (TD report 1.0 or 1.5), ECDSA P-256 attestation keys. The signature data then must be filled
    exactly by its parts: in v3 ISV signature, attestation key, QE report and its signature, QE
    authentication data, and certification data of type 5 whose size reaches its end; in v4/v5
    ISV signature, attestation key, certification data of type 6 whose size reaches the end of the
    signature data, and inside it QE report, signature, authentication data and certification data
    of type 5 whose size reaches the end of the type 6 data. Nothing but zero bytes may follow the
    signature data: the quote buffers of real TDX v4 quotes are sized for the larger v5 quote, and
    carry 70 zero bytes after it (as Intel's QVL, dcap-qvl reads no further than the signature data).
    Raises :class:`AttestationError` naming the field and both values."""
    if len(quote) < HEADER_SIZE:
        raise AttestationError(
            f"DCAP quote is {len(quote)} bytes, shorter than its {HEADER_SIZE}-byte header"
        )
    version, att_key_type, tee_type = HEADER.unpack_from(quote, 0)
    if att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise AttestationError(
            f"DCAP quote attestation key type {att_key_type} is not "
            f"ECDSA-256-with-P-256 ({ATT_KEY_TYPE_ECDSA_P256})"
        )
    fields = _Fields(quote, HEADER_SIZE, len(quote), "quote")
    if version == 3 and tee_type == TEE_TYPE_SGX:
        tee = Tee.SGX
        body = fields.take(SGX_REPORT_BODY_SIZE, "SGX report body")
    elif version == 4 and tee_type == TEE_TYPE_TDX:
        tee = Tee.TDX
        body = fields.take(TD_REPORT10_SIZE, "TD report body")
    elif version == 5 and tee_type == TEE_TYPE_TDX:
        tee = Tee.TDX
        body_type, body_size = fields.unpack(V5_BODY_DESCRIPTOR, "body descriptor")
        if V5_TD_BODIES.get(body_type) != body_size:
            raise AttestationError(
                f"DCAP quote v5 body type {body_type} of {body_size} bytes is not a TD report "
                f"(type 2 of {TD_REPORT10_SIZE} bytes or type 3 of {TD_REPORT15_SIZE})"
            )
        body = fields.take(body_size, "TD report body")
    else:
        raise AttestationError(
            f"DCAP quote version {version} with TEE type {tee_type:#x} is not supported "
            f"(SGX: version 3, TEE type {TEE_TYPE_SGX:#x}; TDX: version 4 or 5, TEE type {TEE_TYPE_TDX:#x})"
        )
    signed_end = fields.at
    (length,) = fields.unpack(SIGNATURE_DATA_LENGTH, "signature data length")
    start, end = fields.at, fields.at + length
    if end > len(quote):
        raise AttestationError(
            f"DCAP quote signature data length {length} runs past the quote's end "
            f"({len(quote) - start} bytes left)"
        )
    if any(quote[end:]):
        raise AttestationError(
            f"DCAP quote has {len(quote) - end} byte(s) after its {length}-byte signature data "
            "that are not zero padding"
        )
    data = _Fields(quote, start, end, "signature data")
    data.take(ECDSA_SIGNATURE_SIZE, "ISV report signature")
    data.take(ECDSA_PUBLIC_KEY_SIZE, "attestation key")
    if version >= 4:
        data = data.certification_data(CERT_TYPE_QE_REPORT, "QE report certification data")
    qe_report = data.take(SGX_REPORT_BODY_SIZE, "QE report")
    data.take(QE_REPORT_SIGNATURE_SIZE, "QE report signature")
    (auth_size,) = data.unpack(QE_AUTH_DATA_SIZE, "QE authentication data size")
    data.take(auth_size, "QE authentication data")
    chain = data.certification_data(CERT_TYPE_PCK_CHAIN, "PCK certificate chain")
    if chain.at == chain.end:
        raise AttestationError("DCAP quote PCK certificate chain (certification data type 5) is empty")
    return QuoteLayout(
        version=version,
        tee=tee,
        body=body,
        signed_end=signed_end,
        signature_data=slice(start, end),
        qe_report=qe_report,
        pck_chain=quote[chain.at : chain.end],
        padding=len(quote) - end,
    )


@dataclass(frozen=True)
class SgxReportBody:
    """The fields of an SGX quote's report body that identify the enclave; nothing verified."""

    mrenclave: bytes
    mrsigner: bytes
    product_id: int
    security_version: int
    attributes_flags: int
    report_data: bytes

    @property
    def debug(self) -> bool:
        return bool(self.attributes_flags & SGX_FLAG_DEBUG)


@dataclass(frozen=True)
class TdReportBody:
    """The fields of a TDX quote's TD report body that identify the trust domain; nothing verified."""

    version: int  # the quote's: 4 or 5
    mrtd: bytes
    td_attributes: int
    report_data: bytes

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes & TDX_ATTR_DEBUG)


def parse_sgx_quote_body(quote: bytes) -> SgxReportBody:
    """The report body of an SGX (v3) quote whose framing :func:`parse_quote_layout` accepts."""
    layout = _layout_of(quote, Tee.SGX)
    body = quote[layout.body]
    product_id, svn = SGX_BODY_ISV.unpack_from(body, SGX_BODY_ISV_OFFSET)
    return SgxReportBody(
        mrenclave=body[SGX_BODY_MRENCLAVE],
        mrsigner=body[SGX_BODY_MRSIGNER],
        product_id=product_id,
        security_version=svn,
        attributes_flags=struct.unpack_from("<Q", body, SGX_BODY_ATTRIBUTES)[0],
        report_data=body[SGX_BODY_REPORT_DATA],
    )


def parse_tdx_quote(quote: bytes) -> TdReportBody:
    """The TD report body of a TDX (v4, v5) quote whose framing :func:`parse_quote_layout` accepts."""
    layout = _layout_of(quote, Tee.TDX)
    body = quote[layout.body]
    return TdReportBody(
        version=layout.version,
        mrtd=body[TD_BODY_MRTD],
        td_attributes=struct.unpack_from("<Q", body, TD_BODY_TD_ATTRIBUTES)[0],
        report_data=body[TD_BODY_REPORT_DATA],
    )


def _layout_of(quote: bytes, tee: Tee) -> QuoteLayout:
    if len(quote) > MAX_QUOTE_BYTES:
        raise AttestationError(f"DCAP quote is {len(quote)} bytes, more than {MAX_QUOTE_BYTES}")
    layout = parse_quote_layout(quote)
    if layout.tee != tee:
        raise AttestationError(f"not a {tee.upper()} quote: a {layout.tee.upper()} quote")
    return layout


class _Fields:
    """A cursor over ``data[at:end]``, the part of the quote called ``within``; every read is
    bounds-checked and names what it reads."""

    def __init__(self, data: bytes, at: int, end: int, within: str) -> None:
        self.data, self.at, self.end, self.within = data, at, end, within

    def take(self, size: int, what: str) -> slice:
        if self.at + size > self.end:
            raise AttestationError(
                f"DCAP quote {what} ({size} bytes) runs past the end of its {self.within} "
                f"({self.end - self.at} bytes left)"
            )
        self.at += size
        return slice(self.at - size, self.at)

    def unpack(self, layout: struct.Struct, what: str) -> tuple[int, ...]:
        part = self.take(layout.size, what)
        return tuple(layout.unpack_from(self.data, part.start))

    def certification_data(self, cert_type: int, what: str) -> _Fields:
        """A certification data header of ``cert_type`` whose size fills the rest exactly."""
        found, size = self.unpack(CERTIFICATION_DATA_HEADER, f"{what} header")
        if found != cert_type:
            raise AttestationError(
                f"DCAP quote certification data type is {found}, expected {cert_type} ({what})"
            )
        if size != self.end - self.at:
            raise AttestationError(
                f"DCAP quote {what} (certification data type {cert_type}) declares {size} bytes, "
                f"but {self.end - self.at} remain in its {self.within}"
            )
        return _Fields(self.data, self.at, self.end, f"{what} (type {cert_type})")


def verify_quote(
    quote: bytes, collateral: bytes, *, now: datetime, root_ca_der: bytes | None = None
) -> QuoteVerdict:
    """Verify ``quote`` against ``collateral`` (dcap-qvl's QuoteCollateralV3 JSON) at ``now``.

    ``root_ca_der`` is the root every certificate chain must end in. None, the default, means
    Intel's SGX Root CA as dcap-qvl pins it (``dcap_qvl.verify``); other bytes, a DER certificate
    handed to ``dcap_qvl.verify_with_root_ca``, exist for tests of an emulated platform. It is a
    parameter only, for a verifier object to own: no flag, environment variable or configuration
    file may reach it.

    Collateral past its ``nextUpdate`` is verified as of one second before the earliest one and
    the report records how long ago it expired (see the module docstring): refusing it is the
    constraint's part (``GRACE:``), which fails closed.

    Raises :class:`AttestationError` naming the framing field, or with dcap-qvl's reason, when
    anything fails to verify.
    """
    import dcap_qvl  # a compiled extension: imported where it is needed

    if not quote or len(quote) > MAX_QUOTE_BYTES:
        raise AttestationError("quote is empty or too large")
    if len(collateral) > MAX_COLLATERAL_BYTES:
        raise AttestationError("collateral is too large")
    # 1. framing, on bytes
    layout = parse_quote_layout(quote)
    # 2. the collateral's dates
    issued_at = collateral_issue_date(collateral)
    dates = _CollateralDates.parse(collateral)
    # 3. the time to verify as of
    first, next_update = min(dates.next_updates.items(), key=lambda item: item[1])
    verified_at, expired = now, None
    if now >= next_update:
        verified_at, expired = next_update - BEFORE_EXPIRY, now - next_update
        _check_verifiable_when_stale(dates, layout, first, next_update, now)
    try:
        parsed = dcap_qvl.QuoteCollateralV3.from_json(collateral.decode())
    except (ValueError, UnicodeDecodeError):
        raise AttestationError("collateral is not dcap-qvl QuoteCollateralV3 JSON") from None
    # 4. dcap-qvl
    at = int(verified_at.timestamp())
    try:
        if root_ca_der is None:
            verified = dcap_qvl.verify(quote, parsed, at)
        else:
            verified = dcap_qvl.verify_with_root_ca(quote, parsed, root_ca_der, at)
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
            tee=Tee.SGX,
            code_hash=mrenclave,
            signer=mrsigner,
            product_id=_int(body, "isv_prod_id"),
            security_version=_int(body, "isv_svn"),
            debug=debug,
            report_data=_hex(body, "report_data"),
            security_level=level,
            level_reason=reason,
            issued_at=issued_at,
            platform_settings=json.dumps(
                {
                    k: body.get(k)
                    for k in ("attributes", "misc_select", *(f"reserved{i}" for i in range(1, 5)))
                },
                sort_keys=True,
            ).encode(),
        )
    elif kind in ("TD10", "TD15"):
        td = body.get("base", body) if kind == "TD15" else body
        debug = bool(_hex(td, "td_attributes")[0] & TDX_ATTR_DEBUG)
        mrtd = _hex(td, "mr_td")
        measurements = {"mrtd": mrtd.hex(), **{f"rtmr{i}": _hex(td, f"rt_mr{i}").hex() for i in range(4)}}
        report = EnclaveReport(
            tee=Tee.TDX,
            code_hash=mrtd,
            signer=b"",  # a TD has no MRSIGNER: pin it by MRTD (C:)
            product_id=0,
            security_version=0,
            debug=debug,
            report_data=_hex(td, "report_data"),
            security_level=level,
            level_reason=reason,
            issued_at=issued_at,
            # MRTD measures the firmware only: what the TD booted (RTMR0-3) and its settings
            platform_settings=json.dumps({k: td.get(k) for k in TDX_SETTINGS}, sort_keys=True).encode(),
            # what the CC event log replays to (evidence.verify), and RTMRn: pins
            registers=Registers("rtmr", "sha384", {i: _hex(td, f"rt_mr{i}") for i in range(4)}),
        )
    else:
        raise AttestationError(f"unsupported report type {kind!r}")
    if report.tee != layout.tee:  # the header's TEE type is signed; this only guards the two parsers
        raise AttestationError(f"dcap-qvl read a {kind} report from a {layout.tee.upper()} quote")
    if debug:
        report = _insecure(report, "debug enclave: the host can read its memory")
    freshness = DcapCollateral(
        tcb_info_evaluation_data_number=dates.evaluation_data_numbers[0],
        qe_identity_evaluation_data_number=dates.evaluation_data_numbers[1],
        next_update=next_update,
        next_update_of=first,
        verified_at=verified_at,
        expired=expired,
    )
    reason = report.level_reason
    if expired is not None:
        reason += (
            f"; the collateral expired {format_duration(expired)} ago (the {first}'s nextUpdate "
            f"{_when(next_update)}) and was verified as of {_when(verified_at)}"
        )
    report = replace(report, level_reason=reason, dcap_collateral=freshness)
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


@dataclass(frozen=True)
class _CollateralDates:
    """What the collateral says of its own validity, read from the same text dcap-qvl verifies."""

    issue_dates: Mapping[str, datetime]  # "TCB info", "QE identity"
    next_updates: Mapping[str, datetime]  # the same, "PCK CRL", "root CA CRL"
    evaluation_data_numbers: tuple[int, int]  # TCB info, QE identity
    issuer_chains: tuple[str, ...]  # PEM: the PCK CRL's, TCB info's, QE identity's (and a PCK chain)

    @classmethod
    def parse(cls, collateral: bytes) -> _CollateralDates:
        doc = _json_object(collateral, "collateral")
        issue_dates, next_updates, numbers = {}, {}, []
        for key, name in (("tcb_info", "TCB info"), ("qe_identity", "QE identity")):
            body = doc.get(key)
            signed = _json_object(body.encode() if isinstance(body, str) else b"", name)
            issue_dates[name] = _time(signed.get("issueDate"), f"{name} issueDate")
            next_updates[name] = _time(signed.get("nextUpdate"), f"{name} nextUpdate")
            number = signed.get("tcbEvaluationDataNumber")
            if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= 0xFFFF_FFFF:
                raise AttestationError(f"collateral's {name} has no tcbEvaluationDataNumber")
            numbers.append(number)
        for key, name in (("pck_crl", "PCK CRL"), ("root_ca_crl", "root CA CRL")):
            next_updates[name] = _crl_next_update(doc.get(key), name)
        chains = tuple(
            doc.get(k) for k in ("pck_crl_issuer_chain", "tcb_info_issuer_chain", "qe_identity_issuer_chain")
        )
        if not all(isinstance(c, str) for c in chains):
            raise AttestationError("collateral lacks an issuer chain")
        # dcap-qvl verifies the PCK chain the collateral carries (get_collateral copies the quote's
        # there), in preference to the quote's own unsigned copy: its expiry must be checked too
        pck_chain = doc.get("pck_certificate_chain")
        if pck_chain is not None:
            if not isinstance(pck_chain, str):
                raise AttestationError("collateral's pck_certificate_chain is not PEM text")
            chains = (*chains, pck_chain)
        return cls(issue_dates, next_updates, (numbers[0], numbers[1]), tuple(str(c) for c in chains))


def _check_verifiable_when_stale(
    dates: _CollateralDates, layout: QuoteLayout, first: str, next_update: datetime, now: datetime
) -> None:
    """Verifying as of before ``next_update`` needs all of the collateral issued by then, and
    leaves the certificates' expiry to be checked at ``now`` here."""
    name, latest = max(dates.issue_dates.items(), key=lambda item: item[1])
    if latest >= next_update:
        raise AttestationError(
            f"DCAP collateral is never current as a whole: the {name} was issued at {_when(latest)}"
            f"{', in the future,' if latest > now else ''} and the {first} expired at {_when(next_update)}"
        )
    for pem in (layout.pck_chain, *(c.encode() for c in dates.issuer_chains)):
        try:
            certificates = x509.load_pem_x509_certificates(pem)
            expired = [
                (_subject(cert), cert.not_valid_after_utc)
                for cert in certificates
                if now > cert.not_valid_after_utc
            ]
        except PARSE_ERRORS:
            raise AttestationError("a certificate chain of the quote or collateral does not parse") from None
        if expired:
            subject, not_after = expired[0]
            raise AttestationError(
                f"certificate {subject!r} expired at {_when(not_after)}, before {_when(now)}: stale"
                " collateral is verified as of its expiry, but its certificates must be valid now"
            )


def _subject(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _json_object(text: bytes, what: str) -> dict[str, Any]:
    """A JSON object; a key given twice is refused (serde, which dcap-qvl uses, refuses it too)."""

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            raise ValueError("duplicate key")
        return out

    try:
        doc = json.loads(text, object_pairs_hook=unique)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise AttestationError(f"{what} is not JSON with each key once") from None
    if not isinstance(doc, dict):
        raise AttestationError(f"{what} is not a JSON object")
    return doc


def _time(value: object, what: str) -> datetime:
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise AttestationError(f"collateral's {what} is not an RFC 3339 time")
    return when.astimezone(UTC)


def _crl_next_update(value: object, what: str) -> datetime:
    try:
        crl = x509.load_der_x509_crl(bytes.fromhex(value)) if isinstance(value, str) else None
        next_update = None if crl is None else crl.next_update_utc
    except PARSE_ERRORS:  # the host chose this CRL: e.g. a version cryptography does not know
        next_update = None
    if next_update is None:
        raise AttestationError(f"collateral's {what} is not a DER CRL (hex) with a nextUpdate")
    return next_update


def _insecure(report: EnclaveReport, reason: str) -> EnclaveReport:
    return replace(report, security_level=SecurityLevel.INSECURE, level_reason=reason)


# What key release compares between two TDs besides MRTD (attestation/report.py platform_settings):
# their attributes, XFAM, the host-given configuration ids, and the runtime measurement registers
# (RTMR0: firmware configuration; RTMR1: kernel; RTMR2: command line and initrd; RTMR3: the guest's).
# Not the TDX module's identity (MRSEAM, TEE_TCB_SVN): members may run on hosts with other modules,
# whose security the TCB status already judges.
TDX_SETTINGS = (
    "td_attributes", "xfam", "mr_config_id", "mr_owner", "mr_owner_config",
    "rt_mr0", "rt_mr1", "rt_mr2", "rt_mr3",
)  # fmt: skip


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
