"""A release's reference measurements, and the ``IMAGE:`` pin that stands for all of them.

Pure logic on bytes, used by clients. ``enclave-infer measure --image`` derives, from the released
artifacts alone (the UKI, the root file system), every value a verifier compares, and writes them as
one canonical JSON document (keys sorted, no whitespace, UTF-8); ``IMAGE:<hex>`` pins its SHA-256. A
client that pins ``IMAGE:`` needs the document itself to compare against: the host attaches it to the
attestation document (``measurements``) or the client has it from the release; either way its hash
must equal the pin, so whoever carries it needs no trust.

    {"format": "enclave-infer reference measurements v1",
     "release": {"uki_sha256": hex, "kernel_cmdline": str, "verity_root_hash": hex, ...},
     "simulation": {"trusted_files": [[path, sha256 hex], ...]},
     "sgx": {"manifest_sha256": hex, "mrenclave": hex | null},
     "vtpm": {"bank": "sha256", "registers": {"4": [EVENT, ...], "9": [...], "11": [...]},
              "values": {"4": hex, "9": hex, "11": hex}},
     "tdx": {"bank": "sha384", "registers": {"1": [EVENT, ...], "2": [...]}, "values": {...}},
     "sev-snp": {"measurements": [{"measurement": hex, "vcpus": n, "vcpu_type": str,
                                   "ovmf_sha256": hex}, ...]}}
    EVENT = {"type": "EV_EFI_BOOT_SERVICES_APPLICATION", "digest": hex, "what": "the UKI (Authenticode)"}

``values`` is what each register holds once its events are extended (from zero), for those who pin a
register by hand (``PCR4:``, ``RTMR1:``); a document whose values are not its events' is refused.

What ``IMAGE:`` checks, by the TEE the evidence comes from:

* **vTPM** (PCRs, SHA-256) and **TDX** (RTMR1 and RTMR2, SHA-384): the evidence's event log has
  already been replayed against the quoted registers (:func:`enclave_infer.attestation.evidence.verify`);
  here, for every register the document lists, the log's events in that register must be exactly the
  document's, in order, type and digest. The first difference is named ("PCR 11 event 27 (EV_IPL
  .cmdline) has digest 1A2B..., the release's section .cmdline is 4426..."). The register must be
  among those the evidence quotes. Registers the document does not list (the firmware's: PCR 0-3, 5-7;
  RTMR0; MRTD) are not checked by ``IMAGE:``: pin them with ``PCRn:``, ``RTMRn:`` or ``C:``.
* **SEV-SNP**: MEASUREMENT must be one the document lists (each for one OVMF, vCPU count and type).
* **SGX**: MRENCLAVE must be the one the release states (computed with Gramine's signer from the
  manifest whose hash the document gives); a release that states none refuses SGX evidence.
* **simulation**: the code hash must be the one the document's trusted files give with the
  configuration the evidence binds (``measurement.code_hash_from``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from enclave_infer.attestation import eventlog
from enclave_infer.attestation.measurement import code_hash_from
from enclave_infer.attestation.report import EnclaveReport, Tee
from enclave_infer.errors import AttestationError, ConstraintError

__all__ = ["FORMAT", "ExpectedEvent", "ReferenceMeasurements", "check_image", "image_pin"]

FORMAT = "enclave-infer reference measurements v1"
# A document lists a few dozen events and a few hundred trusted files: 4 MiB is far beyond any.
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
_HEX = re.compile(r"[0-9a-f]+")
_BANKS = {Tee.VTPM: ("pcr", "sha256"), Tee.TDX: ("rtmr", "sha384")}
_DIGEST_BYTES = {"sha256": 32, "sha384": 48}
_EVENT_KEYS = ("type", "digest", "what")
_NO_ACTION = eventlog.EventType.EV_NO_ACTION  # informational: never extends a register


@dataclass(frozen=True)
class ExpectedEvent:
    """One event the release's boot records: its type's name, its digest in the register's bank, and
    what it measures, in words."""

    type: str
    digest: bytes
    what: str


@dataclass(frozen=True)
class ReferenceMeasurements:
    """A parsed reference-measurements document; ``raw`` are the exact bytes ``IMAGE:`` pins."""

    raw: bytes
    document: Mapping[str, Any]

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.raw).digest()

    @classmethod
    def parse(cls, raw: bytes) -> ReferenceMeasurements:
        """Parse and check the shape of a document; raises AttestationError. The bytes must be the
        document's canonical form, so that one document has one pin."""
        if len(raw) > MAX_DOCUMENT_BYTES:
            raise AttestationError(f"reference measurements larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise AttestationError("reference measurements are not JSON") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise AttestationError(f"not reference measurements of a known version (expected {FORMAT!r})")
        if canonical(doc) != raw:
            raise AttestationError(
                "reference measurements are not in canonical form (sorted keys, no spaces)"
            )
        for tee in _BANKS:
            if tee in doc:
                _registers(doc, tee)  # shapes checked once, here
        _check_other_sections(doc)
        return cls(raw, doc)

    @classmethod
    def build(cls, document: Mapping[str, Any]) -> ReferenceMeasurements:
        """The canonical bytes of ``document`` (what ``measure --image`` writes), checked by :meth:`parse`."""
        return cls.parse(canonical({"format": FORMAT, **document}))

    def registers(self, tee: Tee) -> dict[int, list[ExpectedEvent]] | None:
        """The events the release's boot records in each register ``IMAGE:`` covers for ``tee``
        (vTPM: PCR index; TDX: RTMR index), or None where the document has no section for it."""
        return _registers(self.document, tee) if tee in self.document else None

    def check(self, report: EnclaveReport, boot_log: eventlog.EventLog | None) -> None:
        """Raise ConstraintError naming the first way the verified ``report`` (and its verified
        ``boot_log``) differs from this release."""
        tee = report.tee
        if tee in _BANKS:
            self._check_registers(report, boot_log)
        elif tee == Tee.SEV_SNP:
            listed = _section(self.document, tee)["measurements"]
            known = {bytes.fromhex(m["measurement"]) for m in listed}
            if report.code_hash not in known:
                raise ConstraintError(
                    f"IMAGE: SEV-SNP MEASUREMENT {report.code_hash.hex().upper()} is none of the "
                    f"{len(known)} the release lists"
                    + ("" if known else " (measure --image --snp-ovmf FILE computes one per OVMF and vCPUs)")
                )
        elif tee == Tee.SGX:
            stated = _section(self.document, tee).get("mrenclave")
            if stated is None:
                raise ConstraintError(
                    "IMAGE: this release states no MRENCLAVE (Gramine's signer computes it from the "
                    "manifest and the files it trusts, which measure --image lists)"
                )
            if not hmac.compare_digest(report.code_hash, _hexbytes(stated, "mrenclave")):
                raise ConstraintError(
                    f"IMAGE: MRENCLAVE {report.code_hash.hex().upper()} is not the release's {stated.upper()}"
                )
        elif tee == Tee.SIMULATION:
            raise ConstraintError(
                "IMAGE: simulation evidence is checked with its configuration: use check_image"
            )
        else:
            raise ConstraintError(f"IMAGE: the release has no reference measurements for {tee}")

    def check_simulation(self, report: EnclaveReport, config_digest: bytes) -> None:
        files = _section(self.document, Tee.SIMULATION).get("trusted_files")
        if not isinstance(files, list) or not files:
            raise ConstraintError("IMAGE: the release lists no trusted files for simulation")
        try:
            pairs = [(str(path), _hexbytes(digest, "trusted file digest")) for path, digest in files]
        except (TypeError, ValueError):
            raise ConstraintError("IMAGE: the release's trusted files are malformed") from None
        expected = code_hash_from(pairs, config_digest)
        if not hmac.compare_digest(report.code_hash, expected):
            raise ConstraintError(
                f"IMAGE: simulated code hash {report.code_hash.hex().upper()} is not the one the release's "
                f"trusted code base gives with this configuration ({expected.hex().upper()})"
            )

    def _check_registers(self, report: EnclaveReport, boot_log: eventlog.EventLog | None) -> None:
        tee = report.tee
        kind, bank = _BANKS[tee]
        if report.registers is None or report.registers.kind != kind:
            raise ConstraintError(f"IMAGE: {tee} evidence without its {kind.upper()} registers")
        if boot_log is None:
            raise ConstraintError(
                f"IMAGE: the {tee} evidence carries no boot event log, so nothing shows what the "
                f"quoted {kind.upper()}s measured"
            )
        alg = eventlog.Alg.from_name(bank)
        expected_registers = self.registers(tee)
        if not expected_registers:  # fail closed: nothing to compare is not a match
            raise ConstraintError(f"IMAGE: the release has no reference measurements for {tee}")
        differences: list[tuple[str, str]] = []
        for register, expected in sorted(expected_registers.items()):
            name = _register_name(kind, register)
            if register not in report.registers.values:
                raise ConstraintError(
                    f"IMAGE: the evidence does not quote {name}, which the release measures"
                )
            log_index = register + 1 if kind == "rtmr" else register  # CC MR index: RTMRn is n+1
            actual = [e for e in boot_log.events if e.register == log_index and e.type != _NO_ACTION]
            differences += _differences(name, actual, expected, alg, _log_name(kind))
        if differences:
            first, _ = differences[0]
            others = [w for w in dict.fromkeys(what for _, what in differences) if w != differences[0][1]]
            raise ConstraintError(first + (f"; also differing: {', '.join(others)}" if others else ""))


def check_image(
    pin: bytes,
    measurements: bytes,
    report: EnclaveReport,
    config_digest: bytes,
    boot_log: eventlog.EventLog | None,
) -> None:
    """The ``IMAGE:`` check: ``measurements`` must hash to ``pin``, then match the verified report
    (and log); raises ConstraintError naming the first difference."""
    if not measurements:
        raise ConstraintError(
            "IMAGE: given but neither the enclave's host nor the client supplied the release's reference "
            "measurements (measure --image writes them; give them with --measurements FILE)"
        )
    digest = hashlib.sha256(measurements).digest()
    if not hmac.compare_digest(digest, pin):
        raise ConstraintError(
            f"IMAGE: the reference measurements supplied hash to {digest.hex().upper()}, not the pinned "
            f"IMAGE:{pin.hex().upper()} (another release's, or altered)"
        )
    try:
        reference = ReferenceMeasurements.parse(measurements)
    except AttestationError as exc:
        raise ConstraintError(f"IMAGE: {exc}") from None
    if report.tee == Tee.SIMULATION:
        reference.check_simulation(report, config_digest)
    else:
        reference.check(report, boot_log)


def image_pin(measurements: bytes) -> str:
    """The constraint token that pins these reference measurements."""
    return f"IMAGE:{hashlib.sha256(measurements).hexdigest().upper()}"


def canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _differences(
    name: str,
    actual: Sequence[eventlog.Event],
    expected: Sequence[ExpectedEvent],
    alg: eventlog.Alg,
    log_name: Callable[[int], str],
) -> list[tuple[str, str]]:
    """Each way ``actual`` (the log's events in one register) differs from the release's, in order,
    as (a sentence naming the event, what the release's event measures)."""
    found: list[tuple[str, str]] = []
    for position, want in enumerate(expected):
        if position >= len(actual):
            found.append(
                (
                    f"IMAGE: {name} lacks the release's event {position + 1} ({want.what}): the log ends "
                    f"after {len(actual)} events",
                    want.what,
                )
            )
            break
        got = actual[position]
        got_digest = got.digests.get(alg)
        type_name = eventlog.type_name(got.type)
        if type_name != want.type or got_digest is None or not hmac.compare_digest(got_digest, want.digest):
            shown = got_digest.hex().upper()[:16] if got_digest is not None else "no digest"
            described = eventlog.describe(got, name=log_name)
            sentence = (
                f"IMAGE: {described} has digest {shown}..., where the release has {want.what} "
                f"({want.type} {want.digest.hex().upper()[:16]}...)"
            )
            found.append((sentence, want.what))
    if len(actual) > len(expected):
        described = eventlog.describe(actual[len(expected)], name=log_name)
        found.append((f"IMAGE: {name} has events the release does not: first {described}", "extra events"))
    return found


def _log_name(kind: str) -> Callable[[int], str]:
    """How an event's register reads in messages: the log numbers RTMRn as CC MR index n+1."""
    if kind == "rtmr":
        return lambda mr: f"RTMR{eventlog.rtmr_of(mr)}"
    return lambda pcr: f"PCR {pcr}"


def _register_name(kind: str, index: int) -> str:
    return f"PCR {index}" if kind == "pcr" else f"RTMR{index}"


def _section(doc: Mapping[str, Any], tee: Tee) -> Mapping[str, Any]:
    section = doc.get(tee.value)
    if not isinstance(section, dict):
        raise ConstraintError(f"IMAGE: the release has no reference measurements for {tee}")
    return section


def _registers(doc: Mapping[str, Any], tee: Tee) -> dict[int, list[ExpectedEvent]]:
    bank = _BANKS[tee][1]
    section = doc.get(tee.value)
    if (
        not isinstance(section, dict)
        or section.get("bank") != bank
        or not isinstance(section.get("registers"), dict)
    ):
        raise AttestationError(f"reference measurements: {tee} must give bank {bank!r} and registers")
    size = _DIGEST_BYTES[bank]
    registers: dict[int, list[ExpectedEvent]] = {}
    for key, events in section["registers"].items():
        if not (isinstance(key, str) and key.isdigit() and int(key) < 24) or not isinstance(events, list):
            raise AttestationError(f"reference measurements: {tee} register {key!r} is malformed")
        parsed = []
        for event in events:
            if not isinstance(event, dict) or not all(isinstance(event.get(k), str) for k in _EVENT_KEYS):
                raise AttestationError(
                    f"reference measurements: an event of {tee} register {key} is malformed"
                )
            digest = _hexbytes(event["digest"], "event digest", error=AttestationError)
            if len(digest) != size:
                raise AttestationError(f"reference measurements: {tee} digests are {size} bytes ({bank})")
            parsed.append(ExpectedEvent(event["type"], digest, event["what"]))
        registers[int(key)] = parsed
    _check_values(section.get("values"), registers, tee, bank)
    return registers


def _check_values(
    values: object, registers: Mapping[int, Sequence[ExpectedEvent]], tee: Tee, bank: str
) -> None:
    """The section's ``values`` (what each register holds after its events, for PCRn:/RTMRn: pins by
    hand) must be exactly what its events replay to."""
    if not isinstance(values, dict) or sorted(values) != sorted(str(r) for r in registers):
        raise AttestationError(f"reference measurements: {tee} must give one value per register")
    for register, events in registers.items():
        value = bytes(_DIGEST_BYTES[bank])
        for event in events:
            value = hashlib.new(bank, value + event.digest).digest()
        if values[str(register)] != value.hex():
            raise AttestationError(
                f"reference measurements: {tee} register {register}'s value is not what its events give"
            )


def _check_other_sections(doc: Mapping[str, Any]) -> None:
    """The shapes of the SEV-SNP, SGX and simulation sections, where present; raises AttestationError."""

    def hex_of(value: object, size: int) -> bool:
        return isinstance(value, str) and len(value) == 2 * size and _HEX.fullmatch(value) is not None

    snp = doc.get(Tee.SEV_SNP.value)
    if snp is not None and not (
        isinstance(snp, dict)
        and isinstance(snp.get("measurements"), list)
        and all(isinstance(m, dict) and hex_of(m.get("measurement"), 48) for m in snp["measurements"])
    ):
        raise AttestationError("reference measurements: sev-snp must list 48-byte measurements")
    sgx = doc.get(Tee.SGX.value)
    if sgx is not None and not (
        isinstance(sgx, dict) and (sgx.get("mrenclave") is None or hex_of(sgx.get("mrenclave"), 32))
    ):
        raise AttestationError("reference measurements: sgx's mrenclave must be null or 32 bytes")
    simulation = doc.get(Tee.SIMULATION.value)
    if simulation is not None and not (
        isinstance(simulation, dict)
        and isinstance(simulation.get("trusted_files"), list)
        and all(
            isinstance(f, list) and len(f) == 2 and isinstance(f[0], str) and hex_of(f[1], 32)
            for f in simulation["trusted_files"]
        )
    ):
        raise AttestationError("reference measurements: simulation must list [path, SHA-256] pairs")


def _hexbytes(value: object, what: str, error: type[Exception] = ConstraintError) -> bytes:
    if not isinstance(value, str) or not _HEX.fullmatch(value) or len(value) % 2:
        raise error(f"reference measurements: {what} is not lower-case hex")
    return bytes.fromhex(value)
