"""The enclave constraint language of Conclave, extended with ``OWNER:``.

Pure logic, used by clients: :func:`parse` turns ``"C:<hash> PROD:1 SEC:INSECURE"`` into a
:class:`Constraint`; :meth:`Constraint.check` raises :class:`ConstraintError` naming the first
requirement a verified :class:`EnclaveReport` does not meet. A constraint is the policy
``evidence.verify`` takes (:meth:`Constraint.verify`).

Tokens (space separated, each at most once unless noted):

==================  =====================================================================
``C:<hex>``         accepted code hash: 64 hex digits (MRENCLAVE, simulation, a vTPM quote's
                    digest of PCR 0-15) or 96 (a TDX MRTD, an SEV-SNP MEASUREMENT); may repeat,
                    any of them matches
``S:<hex>``         accepted signer (64 hex digits); may repeat; requires ``PROD:``
``PROD:<n>``        product id, 0..65535
``REVOKE:<n>``      minimum security version (revocation level), 0..65535
``SEC:<level>``     minimum security level: INSECURE, STALE or SECURE (default SECURE)
``EXPIRE:<dur>``    maximum age of the evidence, an ISO-8601 duration such as ``PT1H``
``OWNER:<hex>``     SHA-256 of the model owner's public key in the measured configuration
``SNPTCB:<floor>``  SEV-SNP only: minimum patch level of each named component of REPORTED_TCB
                    (the TCB the VCEK/VLEK certifies), as ``name=n`` pairs joined by commas,
                    each 0..255, at least one: ``bl`` boot loader, ``tee`` PSP OS, ``snp`` SNP
                    firmware, ``ucode`` microcode, ``fmc`` FMC (Turin only); components not
                    named are not checked. Example: ``SNPTCB:bl=3,tee=0,snp=8,ucode=115``
``TCBEVAL:<n>``     SGX and TDX only: minimum ``tcbEvaluationDataNumber`` of the DCAP collateral's
                    TCB info and of its QE identity, 0..4294967295; any other evidence is
                    refused. Intel raises the number with each TCB recovery, so a floor refuses
                    collateral that predates one. Example: ``TCBEVAL:18``
``GRACE:<dur>``     SGX and TDX only: how long past its ``nextUpdate`` the DCAP collateral may be
                    (the earliest of its TCB info, QE identity and CRLs), an ISO-8601 duration
                    as for ``EXPIRE:``. Without it stale collateral is refused: the default grace
                    is none. Example: ``GRACE:PT24H``
``IMAGE:<hex>``      the release: SHA-256 (64 hex digits) of the reference measurements
                    ``enclave-infer measure --image`` derives from the released artifacts; checks
                    the register set of the TEE at hand against them (:mod:`.reference`): a vTPM's
                    PCR 4, 9 and 11 and TDX's RTMR1 and RTMR2 event by event, an SEV-SNP
                    MEASUREMENT, an SGX MRENCLAVE, a simulated code hash. Names an enclave on its
                    own, like ``C:``
``PCR<n>:<hex>``    a vTPM only: the quoted SHA-256 PCR n (0..23) must be this value (64 hex
                    digits); may be given for several PCRs. Example: ``PCR7:65CA...``
``RTMR<n>:<hex>``   TDX only: RTMR n (0..3) must be this value (96 hex digits)
==================  =====================================================================

Fails closed: a floor such as ``SNPTCB:`` or ``TCBEVAL:`` refuses evidence that does not carry the
value it checks; an empty constraint, an unknown or malformed token, or a constraint that names neither
a code hash, a signer nor ``IMAGE:`` is a :class:`UsageError`, never silently ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from enclave_infer.attestation.reference import check_image
from enclave_infer.attestation.report import (
    SNP_TCB_COMPONENTS,
    EnclaveReport,
    SecurityLevel,
    SnpTcb,
    parse_snp_tcb_floor,
)
from enclave_infer.errors import ConstraintError, UsageError

if TYPE_CHECKING:  # evidence imports dcap, which imports this module
    from enclave_infer.attestation.evidence import Attestation

__all__ = ["Constraint", "check_dcap_collateral", "format_duration", "parse"]

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_HEX96 = re.compile(r"[0-9a-fA-F]{96}")
_REGISTER = re.compile(r"(PCR|RTMR)(\d{1,2})")
_MAX_PCR = 23  # a PC Client TPM has 24 PCRs
_MAX_RTMR = 3  # TDX has RTMR0-3
_CODE_HASH = re.compile(r"[0-9a-fA-F]{64}|[0-9a-fA-F]{96}")
_UINT16_MAX = 0xFFFF
_UINT32_MAX = 0xFFFF_FFFF  # tcbEvaluationDataNumber is a u32 in Intel's PCS API
# ISO 8601 durations as Java's Duration/Period print them: PnDTnHnMnS (weeks and years are
# ambiguous in length and so refused).
_DURATION = re.compile(
    r"P(?:(?P<days>\d+)D)?(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?"
)


@dataclass(frozen=True)
class Constraint:
    code_hashes: frozenset[bytes] = frozenset()
    signers: frozenset[bytes] = frozenset()
    product_id: int | None = None
    min_security_version: int | None = None
    min_level: SecurityLevel = SecurityLevel.SECURE
    max_age: timedelta | None = None
    owner_key_ids: frozenset[bytes] = frozenset()
    snp_tcb_floor: tuple[tuple[str, int], ...] = ()  # (SNPTCB: name, minimum), e.g. ("snp", 8)
    min_tcb_evaluation: int | None = None  # TCBEVAL:
    collateral_grace: timedelta | None = None  # GRACE:; None refuses any stale DCAP collateral
    image: bytes | None = None  # IMAGE:, the SHA-256 of a release's reference measurements
    registers: tuple[tuple[str, int, bytes], ...] = ()  # PCRn:/RTMRn: as ("pcr"|"rtmr", n, value)

    def __post_init__(self) -> None:
        # Fail closed for constraints built in code too, not only for parsed ones.
        if not self.code_hashes and not self.signers and self.image is None:
            raise UsageError(_NAMES_NO_ENCLAVE)
        if self.signers and self.product_id is None:
            raise UsageError("S: requires PROD: (a signer signs many products)")

    def verify(self, attestation: Attestation, *, now: datetime) -> None:
        """As an ``evidence.verify`` policy: :meth:`check` of the attestation's report, then ``IMAGE:``
        against the release's reference measurements the attestation carries."""
        self.check(attestation.report, now=now)
        if self.image is not None:
            check_image(
                self.image,
                attestation.measurements,
                attestation.report,
                attestation.config.digest(),
                attestation.boot_log,
            )

    def check(self, report: EnclaveReport, *, now: datetime) -> None:
        """Raise :class:`ConstraintError` unless ``report`` satisfies every requirement."""
        if self.code_hashes or self.signers:
            by_code = report.code_hash in self.code_hashes
            by_signer = report.signer in self.signers and report.product_id == self.product_id
            if not (by_code or by_signer):
                if self.code_hashes and not self.signers:
                    raise ConstraintError(
                        f"code hash {report.code_hash.hex().upper()} is not one of the accepted C: values"
                    )
                if self.signers and report.signer not in self.signers:
                    raise ConstraintError(
                        f"signer {report.signer.hex().upper()} is not one of the accepted S: values"
                        + (" and the code hash matches no C: value" if self.code_hashes else "")
                    )
                raise ConstraintError(
                    f"product id {report.product_id} is not PROD:{self.product_id}"
                    + (" and the code hash matches no C: value" if self.code_hashes else "")
                )
        if self.product_id is not None and report.product_id != self.product_id:
            raise ConstraintError(f"product id {report.product_id} is not PROD:{self.product_id}")
        if self.min_security_version is not None and report.security_version < self.min_security_version:
            raise ConstraintError(
                f"security version {report.security_version} is below REVOKE:{self.min_security_version}"
            )
        if self.snp_tcb_floor:
            _check_snp_tcb(report.snp_tcb, self.snp_tcb_floor)
        if report.security_level < self.min_level:
            raise ConstraintError(
                f"security level {report.security_level.name} is below SEC:{self.min_level.name}"
                f" ({report.level_reason})"
            )
        if self.max_age is not None:
            if report.issued_at is None:
                raise ConstraintError("EXPIRE: given but the evidence carries no time")
            age = now - report.issued_at
            if age > self.max_age:
                raise ConstraintError(f"evidence is {age} old, older than EXPIRE allows ({self.max_age})")
        if self.min_tcb_evaluation is not None:
            _check_tcb_evaluation(report, self.min_tcb_evaluation)
        check_dcap_collateral(report, now=now, grace=self.collateral_grace)
        for kind, index, value in self.registers:
            _check_register(report, kind, index, value)
        if self.owner_key_ids and report.owner_key_id not in self.owner_key_ids:
            raise ConstraintError(
                f"owner key {report.owner_key_id.hex().upper()} is not one of the accepted OWNER: values"
            )


def parse(text: str) -> Constraint:
    """Parse a constraint; raises :class:`UsageError` with a one-line reason."""
    tokens = text.split()
    if not tokens:
        raise UsageError("empty enclave constraint: give at least C:<code hash> or S:<signer> PROD:<id>")
    code_hashes: set[bytes] = set()
    signers: set[bytes] = set()
    owners: set[bytes] = set()
    single: dict[str, str] = {}
    registers: dict[tuple[str, int], bytes] = {}
    for token in tokens:
        key, sep, value = token.partition(":")
        key = key.upper()
        if not sep or not value:
            raise UsageError(f"malformed constraint token {token!r}: expected KEY:VALUE")
        register = _REGISTER.fullmatch(key)
        if register is not None:
            kind, index = register[1].lower(), int(register[2])
            if index > (_MAX_PCR if kind == "pcr" else _MAX_RTMR):
                raise UsageError(f"{key}: no such register (PCR0..PCR{_MAX_PCR}, RTMR0..RTMR{_MAX_RTMR})")
            if not (_HEX64 if kind == "pcr" else _HEX96).fullmatch(value):
                digits = 64 if kind == "pcr" else 96
                raise UsageError(f"{key}: takes {digits} hex digits, got {value!r}")
            if (kind, index) in registers:
                raise UsageError(f"{key}: given more than once")
            registers[(kind, index)] = bytes.fromhex(value)
        elif key == "IMAGE":
            if not _HEX64.fullmatch(value):
                raise UsageError(f"IMAGE: takes 64 hex digits (measure --image prints it), got {value!r}")
            if "IMAGE" in single:
                raise UsageError("IMAGE: given more than once")
            single["IMAGE"] = value
        elif key == "C":
            if not _CODE_HASH.fullmatch(value):
                raise UsageError(f"C: takes 64 hex digits (or 96 for a TDX MRTD), got {value!r}")
            code_hashes.add(bytes.fromhex(value))
        elif key in ("S", "OWNER"):
            if not _HEX64.fullmatch(value):
                raise UsageError(f"{key}: takes 64 hex digits, got {value!r}")
            {"S": signers, "OWNER": owners}[key].add(bytes.fromhex(value))
        elif key in ("PROD", "REVOKE", "SEC", "EXPIRE", "SNPTCB", "TCBEVAL", "GRACE"):
            if key in single:
                raise UsageError(f"{key}: given more than once")
            single[key] = value
        else:
            raise UsageError(f"unknown constraint token {token!r}")
    if not code_hashes and not signers and "IMAGE" not in single:
        raise UsageError(_NAMES_NO_ENCLAVE)
    if signers and "PROD" not in single:
        raise UsageError("S: requires PROD: (a signer signs many products)")
    level = SecurityLevel.SECURE
    if "SEC" in single:
        try:
            level = SecurityLevel[single["SEC"].upper()]
        except KeyError:
            raise UsageError(f"SEC: takes INSECURE, STALE or SECURE, got {single['SEC']!r}") from None
    return Constraint(
        code_hashes=frozenset(code_hashes),
        signers=frozenset(signers),
        product_id=_uint16("PROD", single.get("PROD")),
        min_security_version=_uint16("REVOKE", single.get("REVOKE")),
        min_level=level,
        max_age=_duration("EXPIRE", single["EXPIRE"]) if "EXPIRE" in single else None,
        owner_key_ids=frozenset(owners),
        snp_tcb_floor=_snp_tcb_floor(single["SNPTCB"].lower()) if "SNPTCB" in single else (),
        min_tcb_evaluation=_uint32("TCBEVAL", single.get("TCBEVAL")),
        collateral_grace=_duration("GRACE", single["GRACE"]) if "GRACE" in single else None,
        image=bytes.fromhex(single["IMAGE"]) if "IMAGE" in single else None,
        registers=tuple((kind, index, value) for (kind, index), value in sorted(registers.items())),
    )


def _check_register(report: EnclaveReport, kind: str, index: int, value: bytes) -> None:
    token = f"{kind.upper()}{index}:"
    registers = report.registers
    if registers is None or registers.kind != kind:
        what = "a vTPM quote" if kind == "pcr" else "a TDX quote"
        raise ConstraintError(f"{token} given but the evidence ({report.tee}) is not {what}")
    quoted = registers.values.get(index)
    if quoted is None:
        raise ConstraintError(f"{token} given but the evidence does not quote {kind.upper()} {index}")
    if quoted != value:
        raise ConstraintError(
            f"{kind.upper()} {index} is {quoted.hex().upper()}, not {token}{value.hex().upper()}"
        )


_NAMES_NO_ENCLAVE = "constraint names no enclave: give C:<code hash>, S:<signer> PROD:<id> or IMAGE:<release>"


def check_dcap_collateral(report: EnclaveReport, *, now: datetime, grace: timedelta | None = None) -> None:
    """Raise :class:`ConstraintError` if the report's DCAP collateral had expired at ``now``
    longer ago than ``grace`` allows; ``grace`` None (no ``GRACE:``) allows no staleness at all.

    What ``Constraint.check`` runs for ``GRACE:``, and what ``verify-evidence`` runs without a
    constraint. Evidence without DCAP collateral passes: ``GRACE:`` only ever widens."""
    collateral = report.dcap_collateral
    expired = None if collateral is None else collateral.expired_for(now)
    if collateral is None or expired is None:
        return
    since = (
        f"DCAP collateral expired {format_duration(expired)} ago (the {collateral.next_update_of}'s "
        f"nextUpdate {collateral.next_update:%Y-%m-%dT%H:%M:%SZ})"
    )
    if grace is None:
        raise ConstraintError(f"{since}; without GRACE:<duration> no staleness is allowed")
    if expired > grace:
        raise ConstraintError(f"{since}, longer ago than GRACE:{format_duration(grace)} allows")


def format_duration(value: timedelta) -> str:
    """``value`` as the ISO-8601 duration ``EXPIRE:`` and ``GRACE:`` take: ``P1DT2H30M``, ``PT0S``."""
    if value < timedelta(0):
        raise ValueError(f"negative duration {value}")
    hours, rest = divmod(value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    fraction = f".{value.microseconds:06d}".rstrip("0") if value.microseconds else ""
    time = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M")) if n)
    time += f"{seconds}{fraction}S" if seconds or fraction else ""
    text = "P" + (f"{value.days}D" if value.days else "") + (f"T{time}" if time else "")
    return text if text != "P" else "PT0S"


def _check_tcb_evaluation(report: EnclaveReport, floor: int) -> None:
    collateral = report.dcap_collateral
    if collateral is None:
        raise ConstraintError(
            f"TCBEVAL: given but the evidence ({report.tee}) is not a DCAP quote verified with collateral"
        )
    for which, number in (
        ("TCB info", collateral.tcb_info_evaluation_data_number),
        ("QE identity", collateral.qe_identity_evaluation_data_number),
    ):
        if number < floor:
            raise ConstraintError(
                f"the {which}'s TCB evaluation data number {number} is below the floor {floor} "
                f"(TCBEVAL:{floor})"
            )


def _snp_tcb_floor(value: str) -> tuple[tuple[str, int], ...]:
    return parse_snp_tcb_floor(value, what="SNPTCB:")


def _check_snp_tcb(tcb: SnpTcb | None, floor: tuple[tuple[str, int], ...]) -> None:
    if tcb is None:
        raise ConstraintError("SNPTCB: given but the evidence is not an SEV-SNP report")
    for name, minimum in floor:
        field, label = SNP_TCB_COMPONENTS[name]
        reported = getattr(tcb, field)
        if reported is None:
            raise ConstraintError(f"SNPTCB:{name} given but this platform's TCB has no {label} (Turin has)")
        if reported < minimum:
            raise ConstraintError(
                f"reported {label} {reported} is below the floor {minimum} (SNPTCB:{name}={minimum})"
            )


def _uint16(key: str, value: str | None) -> int | None:
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 5 or int(value) > _UINT16_MAX:
        raise UsageError(f"{key}: takes an integer from 0 to {_UINT16_MAX}, got {value!r}")
    return int(value)


def _uint32(key: str, value: str | None) -> int | None:
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 10 or int(value) > _UINT32_MAX:
        raise UsageError(f"{key}: takes an integer from 0 to {_UINT32_MAX}, got {value!r}")
    return int(value)


def _duration(key: str, value: str) -> timedelta:
    m = _DURATION.fullmatch(value.upper())
    if m is None or value.upper() in ("P", "PT") or value.upper().endswith("T"):
        raise UsageError(f"{key}: takes an ISO-8601 duration such as PT1H or P1DT12H, got {value!r}")
    return timedelta(
        days=int(m["days"] or 0),
        hours=int(m["hours"] or 0),
        minutes=int(m["minutes"] or 0),
        seconds=float(m["seconds"] or 0),
    )
