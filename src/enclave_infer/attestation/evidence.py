"""The attestation document served at ``GET /v1/attestation``, and its verification.

Pure logic on bytes. The document is JSON::

    {"version": 2, "tee": "simulation", "evidence": "<base64>", "config": "<base64>",
     "receipt_key": "<base64>", "collateral": "<base64>",     # collateral: optional
     "event_log": "<base64>", "measurements": "<base64>"}     # both optional

``receipt_key`` is the raw Ed25519 public key the enclave instance signs receipts with (absent from
the evidence enclaves exchange for key release), and ``evidence`` is the platform's own format
(simulation JSON, an SGX or TDX DCAP quote, an SEV-SNP report or the configfs-tsm container that
carries one, or the vTPM container of :mod:`~enclave_infer.attestation.tpm`), ``config`` the
canonical measured enclave configuration, ``collateral`` what the platform's verifier needs
besides (Intel's TCB info, QE identity and CRLs for a DCAP quote, as dcap-qvl's JSON; for SEV-SNP
a PEM bundle of the VCEK or VLEK, ASK or ASVK and ARK, which may be left out when the SNP container
carries the host's certificate table). The host may attach collateral: it is signed by Intel or
AMD, so it needs no trust in whoever delivers it.
``event_log`` is the boot's TCG event log where the evidence quotes measurement registers (a vTPM's
PCRs: the TPM's log; TDX's RTMRs: the CC event log of the CCEL ACPI table); it is replayed against
the quoted registers, so it needs no trust in its carrier either. ``measurements`` is the release's
reference measurements (what ``enclave-infer measure --image`` writes), which the host may attach for
clients that pin ``IMAGE:`` (the pin is their SHA-256).

:func:`verify` is shaped as sigstore's ``Verifier.verify_artifact``: the document, and a
:class:`Policy` the caller must give (a :class:`~enclave_infer.attestation.constraints.Constraint`,
key release's peer check, ...), checked with the roots of a :class:`Verifier` the caller must give
too (:meth:`Verifier.production` in production, nowhere a default). Where no policy applies (the
host's check of its own enclave at start, ``attest`` without a constraint) the caller says so with
:class:`UnsafeNoPolicy`, which logs a warning each time it lets evidence through. It runs, in order:

1. parse the document; an unknown TEE type is refused (:meth:`~.report.Tee.parse`);
2. verify the platform evidence with that TEE's verifier (signature chain, TCB level, ...); where
   the document carries an event log, replay it against every register it extends, as the verified
   evidence quotes them (:func:`_replayed_log`);
3. check that the report data equals the binding of (key configuration, receipt key,
   configuration digest, nonce): this proves the key we are about to encrypt to, the key receipts are
   signed with, and this configuration, belong to the enclave the evidence describes, and that the
   evidence is fresh;
4. check the policy.

Every failure raises; a return value means every step passed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from enclave_infer.attestation import dcap, eventlog, simulation, snp, tpm
from enclave_infer.attestation.report import EnclaveReport, Tee, attestation_binding, report_data_binding
from enclave_infer.config import EnclaveConfig
from enclave_infer.errors import AttestationError, UsageError
from enclave_infer.protocol import b64

__all__ = ["Attestation", "Evidence", "Policy", "UnsafeNoPolicy", "Verifier", "verify"]

log = logging.getLogger(__name__)

VERSION = 2
# An attestation document is small (an SGX quote with certificates is ~5 KB); refuse anything huge.
MAX_DOCUMENT_BYTES = 256 * 1024


@dataclass(frozen=True)
class Verifier:
    """The trust a client verifies evidence with: the roots, given once and used for every check
    (sigstore's ``Verifier``). :meth:`production` trusts Intel's SGX Root CA (as dcap-qvl pins it)
    and AMD's ARKs (pinned in :mod:`._amd_roots`); tests build one with their own roots. No CLI
    option, environment variable or configuration key reaches these fields.
    """

    intel_root_ca_der: bytes | None = None  # None: Intel's SGX Root CA, pinned by dcap-qvl
    snp_roots: Mapping[str, bytes] | None = None  # None: AMD's ARKs; else product -> ARK DER

    @classmethod
    def production(cls) -> Verifier:
        return cls()

    def platform_report(self, tee: Tee, evidence: bytes, collateral: bytes, now: datetime) -> EnclaveReport:
        """Verify the platform's own evidence; raises AttestationError. ``tee`` is what the document
        claims, and the evidence must be of that kind."""
        if tee == Tee.SIMULATION:
            report = simulation.verify(evidence)
        elif tee in (Tee.SGX, Tee.TDX):
            if not collateral:
                raise AttestationError(
                    "DCAP evidence without collateral: the host attached none;"
                    " give --collateral FILE or --pccs URL"
                )
            report = dcap.verify_quote(
                evidence, collateral, now=now, root_ca_der=self.intel_root_ca_der
            ).report
        elif tee == Tee.SEV_SNP:
            verifier = (
                snp.SnpVerifier.production() if self.snp_roots is None else _snp_verifier(self.snp_roots)
            )
            report = verifier.verify(evidence, collateral, now=now).report
        elif tee == Tee.VTPM:
            # a hardware binding (an Azure HCL report) is checked against the same AMD roots
            report = tpm.verify(
                evidence,
                collateral,
                now=now,
                snp_verifier=snp.SnpVerifier.production()
                if self.snp_roots is None
                else _snp_verifier(self.snp_roots),
            )
        else:
            raise AttestationError(f"unsupported TEE type {tee!r}")
        if report.tee != tee:
            raise AttestationError(f"the document says {tee} evidence but it is {report.tee} evidence")
        return report


def _replayed_log(report: EnclaveReport, log: bytes) -> eventlog.EventLog:
    """The parsed event log, once every register it extends replays to the value the evidence
    quotes; raises AttestationError (a tampered, truncated or reordered log, or one of another boot).

    Registers the log does not extend are left as quoted: the OS may extend some at run time (IMA's
    PCR 10, RTMR3) with no firmware event, and a register no event explains proves nothing but its
    value, which ``PCRn:``/``RTMRn:`` check directly. ``IMAGE:`` then requires, register by register,
    exactly the release's events."""
    registers = report.registers
    if registers is None:
        raise AttestationError(f"an event log came with {report.tee} evidence, which quotes no registers")
    parsed = eventlog.parse(log)
    alg = eventlog.Alg.from_name(registers.alg)
    # the CC event log numbers RTMRn as MR index n+1 (MR index 0, MRTD, is never extended)
    offset = 1 if registers.kind == "rtmr" else 0
    extended = {e.register for e in parsed.events if e.type != eventlog.EventType.EV_NO_ACTION}
    quoted = {index + offset: value for index, value in registers.values.items()}
    unquoted = sorted(extended - quoted.keys())
    if unquoted:
        kind = registers.kind.upper()
        raise AttestationError(
            f"the event log extends {kind} {unquoted[0] - offset}, which the evidence does not quote"
        )

    def name(index: int) -> str:
        return f"RTMR{index - 1}" if offset else f"PCR {index}"

    eventlog.check_replay(parsed, alg, {r: quoted[r] for r in extended}, name=name)
    return parsed


def _snp_verifier(roots: Mapping[str, bytes]) -> snp.SnpVerifier:
    return snp.SnpVerifier(roots)


@dataclass(frozen=True)
class Evidence:
    tee: Tee
    evidence: bytes
    config: bytes
    collateral: bytes = b""
    receipt_key: bytes = b""
    event_log: bytes = b""
    measurements: bytes = b""

    def encode(self) -> bytes:
        doc = {
            "version": VERSION,
            "tee": self.tee,
            "evidence": b64.encode(self.evidence),
            "config": b64.encode(self.config),
        }
        if self.receipt_key:
            doc["receipt_key"] = b64.encode(self.receipt_key)
        if self.collateral:
            doc["collateral"] = b64.encode(self.collateral)
        if self.event_log:
            doc["event_log"] = b64.encode(self.event_log)
        if self.measurements:
            doc["measurements"] = b64.encode(self.measurements)
        return json.dumps(doc).encode()

    @classmethod
    def decode(cls, data: bytes) -> Evidence:
        if len(data) > MAX_DOCUMENT_BYTES:
            raise AttestationError("attestation document too large")
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("version") != VERSION:
                raise ValueError
            tee = Tee.parse(doc["tee"])
            return cls(
                tee,
                b64.decode(doc["evidence"]),
                b64.decode(doc["config"]),
                b64.decode(doc.get("collateral", "")),
                b64.decode(doc.get("receipt_key", "")),
                b64.decode(doc.get("event_log", "")),
                b64.decode(doc.get("measurements", "")),
            )
        except (ValueError, KeyError, UnicodeDecodeError, RecursionError):
            raise AttestationError("malformed attestation document") from None


@dataclass(frozen=True)
class Attestation:
    """A verified enclave: what it is, its configuration, and the key configuration it owns."""

    report: EnclaveReport
    config: EnclaveConfig
    key_config: bytes
    receipt_key: bytes = b""  # the Ed25519 public key this instance signs receipts with
    # the boot's event log, replayed against the quoted registers (None where the evidence has none)
    boot_log: eventlog.EventLog | None = None
    # the release's reference measurements (IMAGE: checks their hash), from the host or the client
    measurements: bytes = b""

    def summary(self, *, now: datetime) -> str:
        """The report as the Conclave host logs it."""
        r = self.report
        mode = "SIMULATION" if r.tee == Tee.SIMULATION else ("DEBUG" if r.debug else "RELEASE")
        key_id = self.key_config[0] if self.key_config else 0
        key_digest = hashlib.sha256(self.key_config).hexdigest()
        return "\n".join(
            [
                f"Remote attestation for enclave {r.code_hash.hex().upper()}:",
                f"  - Mode: {mode} ({r.tee})",
                f"  - Code signer: {r.signer.hex().upper()}",
                f"  - Key configuration: id {key_id}, SHA-256 {key_digest.upper()}",
                f"  - Product ID: {r.product_id}",
                f"  - Revocation level (security version): {r.security_version}",
                f"  - Debug: {'yes' if r.debug else 'no'}",
                f"  - Model owner key (OWNER:): {r.owner_key_id.hex().upper()}",
                *self._boot_lines(),
                f"Assessed security level at {now.strftime('%Y-%m-%dT%H:%M:%SZ')} is {r.security_level.name}",
                f"  - {r.level_reason}",
            ]
        )

    def _boot_lines(self) -> list[str]:
        registers, log = self.report.registers, self.boot_log
        if registers is None or log is None:
            return []
        kind = "PCRs" if registers.kind == "pcr" else "RTMRs"
        return [f"  - Boot event log: {len(log.events)} events, replayed to the quoted {kind}"]


class Policy(Protocol):
    """What a verified enclave must be (sigstore's ``VerificationPolicy``): :meth:`verify` raises
    (ConstraintError, or its own AttestationError subclass) naming the first requirement not met."""

    def verify(self, attestation: Attestation, *, now: datetime) -> None: ...


@dataclass(frozen=True)
class UnsafeNoPolicy:
    """No policy: any enclave whose evidence verifies passes. For the few callers that have no
    policy to apply, which must say why (``reason``); every use is logged as a warning, with the
    enclave it let through (sigstore's ``UnsafeNoOp``)."""

    reason: str

    def verify(self, attestation: Attestation, *, now: datetime) -> None:
        log.warning(
            "no policy checked: enclave %s (%s, %s) is asked nothing beyond evidence that verifies: %s",
            attestation.report.code_hash.hex().upper(),
            attestation.report.tee,
            attestation.report.security_level.name,
            self.reason,
        )


def verify(
    document: bytes,
    policy: Policy,
    *,
    verifier: Verifier,
    key_config: bytes,
    nonce: bytes,
    now: datetime,
    collateral: bytes | None = None,
    label: bytes | None = None,
    measurements: bytes | None = None,
) -> Attestation:
    """The four steps of the module docstring; raises AttestationError (or the policy's
    ConstraintError), returns only on success.

    ``verifier`` holds the roots; ``policy`` is checked last, on the verified attestation.
    ``collateral``, when given, replaces what the document carries (e.g. the client's own, fetched
    from its PCCS). ``label``: None for the evidence clients ask for (bound to the key configuration
    and the receipt key); else the purpose key release made it for, ``key_config`` then the value it
    binds. ``measurements``, when given, replaces the reference measurements the document carries
    (the client's own copy of the release's)."""
    # 1. parse
    evidence = Evidence.decode(document)
    # 2. platform verification, with the verifier's roots
    report = verifier.platform_report(
        evidence.tee, evidence.evidence, collateral if collateral is not None else evidence.collateral, now
    )
    try:
        config = EnclaveConfig.from_canonical(evidence.config)
    except UsageError as exc:
        raise AttestationError(f"enclave configuration in the evidence is invalid: {exc}") from None
    # 3. binding to key configuration, enclave configuration and our nonce
    if label is None:
        expected = attestation_binding(key_config, evidence.receipt_key, config.digest(), nonce)
    elif evidence.receipt_key:
        raise AttestationError("key release evidence carries no receipt key")
    else:
        expected = report_data_binding(key_config, config.digest(), nonce, label=label)
    if not hmac.compare_digest(report.report_data, expected):
        raise AttestationError(
            "evidence is not bound to this key configuration, configuration and nonce"
            " (stale, replayed or substituted)"
        )
    # 2b. the boot's event log, replayed against the registers the verified evidence quotes
    boot_log = _replayed_log(report, evidence.event_log) if evidence.event_log else None
    report = dataclasses.replace(report, owner_key_id=bytes.fromhex(config.owner_key_id))
    attestation = Attestation(
        report=report,
        config=config,
        key_config=key_config,
        receipt_key=evidence.receipt_key,
        boot_log=boot_log,
        measurements=measurements if measurements is not None else evidence.measurements,
    )
    # 4. the caller's policy
    policy.verify(attestation, now=now)
    return attestation
