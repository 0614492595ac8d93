"""IMAGE:, PCRn: and RTMRn:: a release's reference measurements against verified evidence."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from enclave_infer.attestation import constraints, eventlog
from enclave_infer.attestation.measurement import code_hash_from, trusted_file_digests
from enclave_infer.attestation.reference import ReferenceMeasurements, check_image, image_pin
from enclave_infer.attestation.report import EnclaveReport, Registers, SecurityLevel, Tee
from enclave_infer.errors import AttestationError, ConstraintError, UsageError

NOW = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)
SHA256 = eventlog.Alg.SHA256
SHA384 = eventlog.Alg.SHA384
CONFIG_DIGEST = hashlib.sha256(b"a configuration").digest()


def h(alg: eventlog.Alg, data: bytes) -> bytes:
    return alg.hash(data)


# A boot in the shape of the real one: PCR 4 (action, separator, UKI, kernel), PCR 11 (sections),
# PCR 9 (load options, initrd), PCR 5 and the firmware's PCR 0 (not covered by IMAGE:).
BOOT = [
    (0, "EV_S_CRTM_VERSION", b"firmware version", "firmware"),
    (4, "EV_EFI_ACTION", b"Calling EFI Application from Boot Option", "boot option action"),
    (4, "EV_SEPARATOR", b"\0\0\0\0", "separator"),
    (4, "EV_EFI_BOOT_SERVICES_APPLICATION", b"the UKI", "the UKI (Authenticode)"),
    (11, "EV_IPL", b".cmdline\0", "section name .cmdline"),
    (11, "EV_IPL", b"console=ttyS0 roothash=aa", "section .cmdline"),
    (4, "EV_EFI_BOOT_SERVICES_APPLICATION", b"the kernel", "the kernel (Authenticode)"),
    (9, "EV_EVENT_TAG", b"the initrd", "the initrd"),
    (5, "EV_EFI_ACTION", b"Exit Boot Services Invocation", "exit boot services"),
]
COVERED = (4, 9, 11)


def event_type(name: str) -> int:
    return int(eventlog.EventType[name])


def boot_log(boot: list[tuple[int, str, bytes, str]], offset: int = 0) -> eventlog.EventLog:
    events = [
        eventlog.Event(
            number=i + 1,
            register=register + offset,
            type=event_type(type_name),
            digests={SHA256: h(SHA256, data), SHA384: h(SHA384, data)},
            data=what.encode(),
        )
        for i, (register, type_name, data, what) in enumerate(boot)
    ]
    return eventlog.parse(eventlog.encode(eventlog.EventLog((SHA256, SHA384), tuple(events))))


def reference(boot: list[tuple[int, str, bytes, str]] = BOOT, **extra: object) -> ReferenceMeasurements:
    def registers(alg: eventlog.Alg, index: dict[int, int]) -> dict[str, list[dict[str, str]]]:
        out: dict[str, list[dict[str, str]]] = {}
        for register, type_name, data, what in boot:
            if register in index:
                out.setdefault(str(index[register]), []).append(
                    {"type": type_name, "digest": h(alg, data).hex(), "what": what}
                )
        return out

    def section(alg: eventlog.Alg, index: dict[int, int]) -> dict[str, object]:
        events = registers(alg, index)
        values = {}
        for key, listed in events.items():
            value = bytes(alg.digest_size)
            for event in listed:
                value = alg.hash(value + bytes.fromhex(event["digest"]))
            values[key] = value.hex()
        return {"bank": alg.hash_name, "registers": events, "values": values}

    return ReferenceMeasurements.build(
        {
            "vtpm": section(SHA256, {r: r for r in COVERED}),
            # TDX: PCR 4, 5 -> RTMR1, PCR 9, 11 -> RTMR2 (the CC measurement protocol's map)
            "tdx": section(SHA384, {4: 1, 5: 1, 9: 2, 11: 2}),
            **extra,
        }
    )


def quoted(log: eventlog.EventLog, tee: Tee) -> EnclaveReport:
    """A verified report whose registers the log replays to: a vTPM's PCR 0-15, or TDX's RTMR0-3
    (the CC event log numbers RTMRn as n+1)."""
    kind, alg, count, offset = ("pcr", SHA256, 16, 0) if tee == Tee.VTPM else ("rtmr", SHA384, 4, 1)
    values = eventlog.replay(log, alg)
    return EnclaveReport(
        tee=tee,
        code_hash=bytes(alg.digest_size),
        signer=b"",
        product_id=0,
        security_version=0,
        debug=False,
        report_data=bytes(64),
        security_level=SecurityLevel.INSECURE,
        level_reason="emulated",
        issued_at=NOW,
        registers=Registers(
            kind, alg.hash_name, {i: values.get(i + offset, bytes(alg.digest_size)) for i in range(count)}
        ),
    )


def vtpm_report(log: eventlog.EventLog) -> EnclaveReport:
    return quoted(log, Tee.VTPM)


def tdx_report(log: eventlog.EventLog) -> EnclaveReport:
    return quoted(log, Tee.TDX)


def check(ref: ReferenceMeasurements, report: EnclaveReport, log: eventlog.EventLog | None) -> None:
    check_image(ref.digest, ref.raw, report, CONFIG_DIGEST, log)


def tdx_boot() -> list[tuple[int, str, bytes, str]]:
    # the same events, numbered as the CC event log numbers them: MR index = RTMR index + 1
    mapped = {0: 0, 4: 2, 5: 2, 9: 3, 11: 3}
    return [(mapped[r], t, d, w) for r, t, d, w in BOOT]


def test_the_release_boot_passes_on_a_vtpm_and_on_tdx() -> None:
    ref = reference()
    log = boot_log(BOOT)
    check(ref, vtpm_report(log), log)
    tdx_log = boot_log(tdx_boot())
    check(ref, tdx_report(tdx_log), tdx_log)


def test_the_first_differing_event_is_named() -> None:
    ref = reference()
    other = list(BOOT)
    other[5] = (11, "EV_IPL", b"console=ttyS0 roothash=bb", "section .cmdline")  # another command line
    log = boot_log(other)
    with pytest.raises(
        ConstraintError,
        match=r"PCR 11 event 6 EV_IPL.* has digest .*, where the release has section \.cmdline \(EV_IPL ",
    ):
        check(ref, vtpm_report(log), log)


def test_an_extra_or_a_missing_event_is_refused() -> None:
    ref = reference()
    extra = [*BOOT, (4, "EV_EFI_BOOT_SERVICES_APPLICATION", b"a shell", "a shell")]
    log = boot_log(extra)
    with pytest.raises(ConstraintError, match="PCR 4 has events the release does not"):
        check(ref, vtpm_report(log), log)
    missing = [e for e in BOOT if e[3] != "the initrd"]
    log = boot_log(missing)
    with pytest.raises(ConstraintError, match=r"PCR 9 lacks the release's event 1 \(the initrd\)"):
        check(ref, vtpm_report(log), log)


def test_firmware_registers_are_not_image_s_business() -> None:
    ref = reference()
    other_firmware = [(0, "EV_S_CRTM_VERSION", b"another firmware", "firmware"), *BOOT[1:]]
    log = boot_log(other_firmware)
    check(ref, vtpm_report(log), log)


def test_evidence_without_a_log_or_registers_is_refused() -> None:
    ref = reference()
    log = boot_log(BOOT)
    with pytest.raises(ConstraintError, match="carries no boot event log"):
        check(ref, vtpm_report(log), None)
    bare = vtpm_report(log)
    unquoted = EnclaveReport(**{**bare.__dict__, "registers": Registers("pcr", "sha256", {0: bytes(32)})})
    with pytest.raises(ConstraintError, match="does not quote PCR 4"):
        check(ref, unquoted, log)


def test_measurements_must_hash_to_the_pin() -> None:
    ref = reference()
    log = boot_log(BOOT)
    with pytest.raises(ConstraintError, match="not the pinned IMAGE:"):
        check_image(bytes(32), ref.raw, vtpm_report(log), CONFIG_DIGEST, log)
    with pytest.raises(ConstraintError, match="supplied the release's reference measurements"):
        check_image(ref.digest, b"", vtpm_report(log), CONFIG_DIGEST, log)


def test_documents_are_canonical_and_checked() -> None:
    ref = reference()
    assert ReferenceMeasurements.parse(ref.raw).digest == ref.digest
    assert image_pin(ref.raw) == f"IMAGE:{ref.digest.hex().upper()}"
    with pytest.raises(AttestationError, match="canonical"):
        ReferenceMeasurements.parse(ref.raw.replace(b",", b", ", 1))
    with pytest.raises(AttestationError, match="known version"):
        ReferenceMeasurements.parse(b'{"format":"something else"}')
    with pytest.raises(AttestationError, match="not JSON"):
        ReferenceMeasurements.parse(b"\xff")
    bad = {
        "vtpm": {
            "bank": "sha256",
            "registers": {"4": [{"type": "EV_IPL", "digest": "00", "what": "x"}]},
            "values": {"4": "00"},
        }
    }
    with pytest.raises(AttestationError, match="32 bytes"):
        ReferenceMeasurements.build(bad)
    with pytest.raises(AttestationError, match="bank"):
        ReferenceMeasurements.build({"tdx": {"bank": "sha256", "registers": {}}})
    vtpm = dict(ref.document["vtpm"])
    wrong = {**vtpm, "values": {**vtpm["values"], "4": "00" * 32}}
    with pytest.raises(AttestationError, match="register 4's value is not what its events give"):
        ReferenceMeasurements.build({"vtpm": wrong})
    with pytest.raises(AttestationError, match="one value per register"):
        ReferenceMeasurements.build({"vtpm": {**vtpm, "values": {}}})


def test_simulation_code_hash_from_the_release_s_trusted_files() -> None:
    files = trusted_file_digests()
    ref = reference(simulation={"trusted_files": [[p, d.hex()] for p, d in files]})
    report = EnclaveReport(
        tee=Tee.SIMULATION,
        code_hash=code_hash_from(files, CONFIG_DIGEST),
        signer=bytes(32),
        product_id=1,
        security_version=1,
        debug=False,
        report_data=bytes(64),
        security_level=SecurityLevel.INSECURE,
        level_reason="simulation",
        issued_at=NOW,
    )
    check(ref, report, None)
    altered = [(p, hashlib.sha256(b"changed").digest() if i == 0 else d) for i, (p, d) in enumerate(files)]
    ref2 = reference(simulation={"trusted_files": [[p, d.hex()] for p, d in altered]})
    with pytest.raises(ConstraintError, match="trusted code base"):
        check(ref2, report, None)


def test_sgx_needs_a_stated_mrenclave_and_snp_a_listed_measurement() -> None:
    base = vtpm_report(boot_log(BOOT))
    sgx = EnclaveReport(**{**base.__dict__, "tee": Tee.SGX, "code_hash": b"\x01" * 32, "registers": None})
    ref = reference(sgx={"mrenclave": None, "trusted_files": 3, "trusted_files_sha256": "00" * 32})
    with pytest.raises(ConstraintError, match="states no MRENCLAVE"):
        check(ref, sgx, None)
    ref = reference(sgx={"mrenclave": "01" * 32})
    check(ref, sgx, None)
    snp = EnclaveReport(**{**base.__dict__, "tee": Tee.SEV_SNP, "code_hash": b"\x02" * 48, "registers": None})
    listed = {"measurement": "02" * 48, "vcpus": 1, "vcpu_type": "EPYC-v4", "ovmf_sha256": "00" * 32}
    check(reference(**{"sev-snp": {"measurements": [listed]}}), snp, None)
    with pytest.raises(ConstraintError, match="none of the 0 the release lists"):
        check(reference(**{"sev-snp": {"measurements": []}}), snp, None)


def test_tokens_parse_and_fail_closed() -> None:
    pin = "AB" * 32
    c = constraints.parse(f"IMAGE:{pin} SEC:INSECURE")  # IMAGE: names an enclave on its own
    assert c.image == bytes.fromhex(pin)
    c = constraints.parse(f"C:{'00' * 48} RTMR1:{'11' * 48} PCR7:{'22' * 32} PCR11:{'33' * 32}")
    assert c.registers == (("pcr", 7, b"\x22" * 32), ("pcr", 11, b"\x33" * 32), ("rtmr", 1, b"\x11" * 48))
    for bad, message in [
        (f"PCR4:{'00' * 32}", "names no enclave"),
        (f"IMAGE:{'00' * 31}", "IMAGE: takes 64 hex digits"),
        (f"IMAGE:{pin} IMAGE:{pin}", "more than once"),
        (f"C:{'00' * 32} PCR24:{'00' * 32}", "no such register"),
        (f"C:{'00' * 32} RTMR4:{'00' * 48}", "no such register"),
        (f"C:{'00' * 32} RTMR1:{'00' * 32}", "96 hex digits"),
        (f"C:{'00' * 32} PCR1:{'00' * 32} PCR1:{'00' * 32}", "more than once"),
    ]:
        with pytest.raises(UsageError, match=message):
            constraints.parse(bad)


def test_register_tokens_check_the_quoted_values() -> None:
    log = boot_log(BOOT)
    report = vtpm_report(log)
    pcr4 = report.registers.values[4].hex() if report.registers else ""
    constraints.parse(f"C:{'00' * 32} SEC:INSECURE PCR4:{pcr4}").check(report, now=NOW)
    with pytest.raises(ConstraintError, match=r"PCR 4 is .*, not PCR4:"):
        constraints.parse(f"C:{'00' * 32} SEC:INSECURE PCR4:{'00' * 32}").check(report, now=NOW)
    with pytest.raises(ConstraintError, match="is not a TDX quote"):
        constraints.parse(f"C:{'00' * 32} SEC:INSECURE RTMR1:{'00' * 48}").check(report, now=NOW)
    tdx = tdx_report(boot_log(tdx_boot()))
    rtmr1 = tdx.registers.values[1].hex() if tdx.registers else ""
    constraints.parse(f"C:{'00' * 48} SEC:INSECURE RTMR1:{rtmr1}").check(tdx, now=NOW)


def test_a_release_without_the_tee_s_section_fails_closed() -> None:
    log = boot_log(tdx_boot())
    only_vtpm = ReferenceMeasurements.build({"vtpm": reference().document["vtpm"]})
    with pytest.raises(ConstraintError, match="the release has no reference measurements for tdx"):
        check(only_vtpm, tdx_report(log), log)
    for section, message in [
        ({"sev-snp": {"measurements": [{"measurement": "00"}]}}, "48-byte measurements"),
        ({"sgx": {"mrenclave": "xyz"}}, "null or 32 bytes"),
        ({"simulation": {"trusted_files": [["a.py"]]}}, r"\[path, SHA-256\] pairs"),
    ]:
        with pytest.raises(AttestationError, match=message):
            ReferenceMeasurements.build(section)
