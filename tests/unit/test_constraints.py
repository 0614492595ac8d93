from datetime import UTC, datetime, timedelta

import pytest

from enclave_infer.attestation import constraints
from enclave_infer.attestation.report import DcapCollateral, EnclaveReport, SecurityLevel, SnpTcb
from enclave_infer.errors import ConstraintError, UsageError

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
CODE = bytes.fromhex("33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb")
SIGNER = bytes.fromhex("815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6")
OWNER = bytes(range(32))


def report(**changes: object) -> EnclaveReport:
    base = dict(
        tee="sgx", code_hash=CODE, signer=SIGNER, product_id=1, security_version=3, debug=False,
        report_data=bytes(64), security_level=SecurityLevel.STALE, level_reason="TCB out of date",
        issued_at=NOW - timedelta(minutes=5), owner_key_id=OWNER,
    )  # fmt: skip
    base.update(changes)
    return EnclaveReport(**base)  # type: ignore[arg-type]


def test_code_hash_and_level() -> None:
    c = constraints.parse(f"C:{CODE.hex()} SEC:STALE")
    c.check(report(), now=NOW)
    with pytest.raises(ConstraintError, match="below SEC:SECURE"):
        constraints.parse(f"C:{CODE.hex()}").check(report(), now=NOW)  # SECURE is the default


def test_several_code_hashes_any_of() -> None:
    other = "ab" * 32
    constraints.parse(f"C:{other} C:{CODE.hex().upper()} SEC:INSECURE").check(report(), now=NOW)
    with pytest.raises(
        ConstraintError, match=f"code hash {CODE.hex().upper()} is not one of the accepted C: values"
    ):
        constraints.parse(f"C:{other} SEC:INSECURE").check(report(), now=NOW)


def test_signer_needs_product() -> None:
    with pytest.raises(UsageError, match="S: requires PROD:"):
        constraints.parse(f"S:{SIGNER.hex()}")
    constraints.parse(f"S:{SIGNER.hex()} PROD:1 SEC:STALE").check(report(), now=NOW)
    with pytest.raises(ConstraintError, match="product id 1 is not PROD:2"):
        constraints.parse(f"S:{SIGNER.hex()} PROD:2 SEC:STALE").check(report(), now=NOW)
    with pytest.raises(ConstraintError, match="signer"):
        constraints.parse(f"S:{'00' * 32} PROD:1 SEC:STALE").check(report(), now=NOW)


def test_revoke_expire_owner() -> None:
    base = f"C:{CODE.hex()} SEC:INSECURE"
    constraints.parse(base + " REVOKE:3").check(report(), now=NOW)
    with pytest.raises(ConstraintError, match="below REVOKE:4"):
        constraints.parse(base + " REVOKE:4").check(report(), now=NOW)
    constraints.parse(base + " EXPIRE:PT10M").check(report(), now=NOW)
    with pytest.raises(ConstraintError, match="older than EXPIRE"):
        constraints.parse(base + " EXPIRE:PT1M").check(report(), now=NOW)
    constraints.parse(base + f" OWNER:{OWNER.hex()}").check(report(), now=NOW)
    with pytest.raises(ConstraintError, match="OWNER"):
        constraints.parse(base + f" OWNER:{'ff' * 32}").check(report(), now=NOW)


def test_insecure_accepted_only_when_asked() -> None:
    sim = report(security_level=SecurityLevel.INSECURE, level_reason="simulation")
    with pytest.raises(ConstraintError, match="INSECURE is below SEC:STALE"):
        constraints.parse(f"C:{CODE.hex()} SEC:STALE").check(sim, now=NOW)
    constraints.parse(f"C:{CODE.hex()} SEC:INSECURE").check(sim, now=NOW)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("SEC:INSECURE", "names no enclave"),
        ("C:1234", "64 hex digits"),
        (f"C:{'g' * 64}", "64 hex digits"),
        (f"C:{CODE.hex()} FOO:1", "unknown constraint token"),
        (f"C:{CODE.hex()} PROD", "malformed"),
        (f"C:{CODE.hex()} PROD:x", "PROD: takes an integer"),
        (f"C:{CODE.hex()} PROD:70000", "PROD: takes an integer"),
        (f"C:{CODE.hex()} PROD:1 PROD:2", "more than once"),
        (f"C:{CODE.hex()} SEC:MAYBE", "SEC: takes"),
        (f"C:{CODE.hex()} EXPIRE:1h", "ISO-8601"),
        (f"C:{CODE.hex()} EXPIRE:PT", "ISO-8601"),
        (f"C:{CODE.hex()} REVOKE:-1", "REVOKE: takes"),
        (f"C:{CODE.hex()} SNPTCB:", "malformed"),
        (f"C:{CODE.hex()} SNPTCB:8", "SNPTCB: takes name=n pairs"),
        (f"C:{CODE.hex()} SNPTCB:snp=8,", "SNPTCB: takes name=n pairs"),
        (f"C:{CODE.hex()} SNPTCB:snp=-1", "SNPTCB: takes name=n pairs"),
        (f"C:{CODE.hex()} SNPTCB:snp=1000", "SNPTCB: takes name=n pairs"),
        (f"C:{CODE.hex()} SNPTCB:snp=256", "snp takes 0 to 255"),
        (f"C:{CODE.hex()} SNPTCB:microcode=1", "unknown component 'microcode'"),
        (f"C:{CODE.hex()} SNPTCB:snp=1,snp=2", "names snp more than once"),
        (f"C:{CODE.hex()} SNPTCB:snp=1 SNPTCB:bl=1", "SNPTCB: given more than once"),
        (f"C:{CODE.hex()} TCBEVAL:", "malformed"),
        (f"C:{CODE.hex()} TCBEVAL:x", "TCBEVAL: takes an integer from 0 to 4294967295"),
        (f"C:{CODE.hex()} TCBEVAL:-1", "TCBEVAL: takes an integer"),
        (f"C:{CODE.hex()} TCBEVAL:4294967296", "TCBEVAL: takes an integer"),
        (f"C:{CODE.hex()} TCBEVAL:\u00b2", "TCBEVAL: takes an integer"),  # a digit to isdigit(), not to int()
        (f"C:{CODE.hex()} TCBEVAL:17 TCBEVAL:18", "TCBEVAL: given more than once"),
        (f"C:{CODE.hex()} PROD:\u00b9", "PROD: takes an integer"),
        (f"C:{CODE.hex()} GRACE:1d", "GRACE: takes an ISO-8601 duration"),
        (f"C:{CODE.hex()} GRACE:PT", "GRACE: takes an ISO-8601 duration"),
        (f"C:{CODE.hex()} GRACE:P1W", "GRACE: takes an ISO-8601 duration"),
        (f"C:{CODE.hex()} GRACE:PT1H GRACE:PT2H", "GRACE: given more than once"),
    ],
)
def test_malformed_constraints_are_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        constraints.parse(text)


def test_durations() -> None:
    assert constraints.parse(f"C:{CODE.hex()} EXPIRE:P1DT2H30M").max_age == timedelta(
        days=1, hours=2, minutes=30
    )
    assert constraints.parse(f"C:{CODE.hex()} EXPIRE:PT0.5S").max_age == timedelta(seconds=0.5)


def test_snp_tcb_floor() -> None:
    snp = report(tee="sev-snp", snp_tcb=SnpTcb(bootloader=3, tee=0, snp=8, microcode=115))
    c = constraints.parse(f"C:{CODE.hex()} SEC:STALE SNPTCB:bl=3,tee=0,snp=8,ucode=115")
    assert c.snp_tcb_floor == (("bl", 3), ("tee", 0), ("snp", 8), ("ucode", 115))
    c.check(snp, now=NOW)
    with pytest.raises(
        ConstraintError, match=r"^reported SNP firmware 7 is below the floor 8 \(SNPTCB:snp=8\)$"
    ):
        c.check(report(tee="sev-snp", snp_tcb=SnpTcb(bootloader=3, tee=0, snp=7, microcode=115)), now=NOW)
    with pytest.raises(ConstraintError, match="reported microcode 114 is below the floor 115"):
        c.check(report(tee="sev-snp", snp_tcb=SnpTcb(bootloader=3, tee=0, snp=9, microcode=114)), now=NOW)
    with pytest.raises(ConstraintError, match="not an SEV-SNP report"):
        c.check(report(), now=NOW)  # an SGX report has no SNP TCB: the floor fails closed
    turin = report(tee="sev-snp", snp_tcb=SnpTcb(bootloader=3, tee=0, snp=8, microcode=115, fmc=2))
    constraints.parse(f"C:{CODE.hex()} SEC:STALE SNPTCB:fmc=2").check(turin, now=NOW)
    with pytest.raises(ConstraintError, match="reported FMC 2 is below the floor 3"):
        constraints.parse(f"C:{CODE.hex()} SEC:STALE SNPTCB:fmc=3").check(turin, now=NOW)
    with pytest.raises(ConstraintError, match="no FMC"):
        constraints.parse(f"C:{CODE.hex()} SEC:STALE SNPTCB:fmc=0").check(snp, now=NOW)


def dcap_report(
    *, tcb_info: int = 18, qe_identity: int = 18, expired: timedelta | None = None
) -> EnclaveReport:
    """An SGX report whose collateral expires (or expired ``expired`` ago) relative to NOW."""
    next_update = NOW - expired if expired is not None else NOW + timedelta(days=20)
    collateral = DcapCollateral(
        tcb_info_evaluation_data_number=tcb_info,
        qe_identity_evaluation_data_number=qe_identity,
        next_update=next_update,
        next_update_of="PCK CRL",
        verified_at=min(NOW, next_update - timedelta(seconds=1)),
        expired=expired,
    )
    return report(dcap_collateral=collateral)


def test_tcb_evaluation_floor() -> None:
    base = f"C:{CODE.hex()} SEC:STALE"
    c = constraints.parse(base + " TCBEVAL:18")
    assert c.min_tcb_evaluation == 18
    c.check(dcap_report(), now=NOW)
    c.check(dcap_report(tcb_info=19, qe_identity=20), now=NOW)
    with pytest.raises(
        ConstraintError,
        match=r"^the TCB info's TCB evaluation data number 17 is below the floor 18 \(TCBEVAL:18\)$",
    ):
        c.check(dcap_report(tcb_info=17), now=NOW)
    with pytest.raises(
        ConstraintError, match="QE identity's TCB evaluation data number 16 is below the floor 18"
    ):
        c.check(dcap_report(qe_identity=16), now=NOW)
    constraints.parse(base + " TCBEVAL:0").check(dcap_report(tcb_info=0, qe_identity=0), now=NOW)
    # fails closed: evidence without DCAP collateral (simulation, SEV-SNP) has no number to check
    for other in (report(), report(tee="simulation"), report(tee="sev-snp", snp_tcb=SnpTcb(3, 0, 8, 115))):
        with pytest.raises(
            ConstraintError, match=r"TCBEVAL: given but the evidence \(\S+\) is not a DCAP quote"
        ):
            c.check(other, now=NOW)


def test_stale_collateral_needs_grace() -> None:
    base = f"C:{CODE.hex()} SEC:STALE"
    day = timedelta(days=1)
    constraints.parse(base).check(dcap_report(), now=NOW)  # current collateral: nothing to allow
    stale = dcap_report(expired=day)
    with pytest.raises(
        ConstraintError,
        match=r"^DCAP collateral expired P1D ago \(the PCK CRL's nextUpdate 2026-11-21T12:00:00Z\); "
        r"without GRACE:<duration> no staleness is allowed$",
    ):
        constraints.parse(base).check(stale, now=NOW)
    with pytest.raises(ConstraintError, match="expired PT0S ago"):  # expired at nextUpdate itself
        constraints.parse(base).check(dcap_report(expired=timedelta(0)), now=NOW)
    constraints.parse(base + " GRACE:P1D").check(stale, now=NOW)
    constraints.parse(base + " GRACE:PT24H").check(stale, now=NOW)
    with pytest.raises(
        ConstraintError, match=r"expired P1D ago .*, longer ago than GRACE:PT23H59M59S allows$"
    ):
        constraints.parse(base + " GRACE:PT23H59M59S").check(stale, now=NOW)
    # measured at the constraint's own clock, not the verifier's
    with pytest.raises(ConstraintError, match="expired P1DT1H ago"):
        constraints.parse(base + " GRACE:P1D").check(stale, now=NOW + timedelta(hours=1))
    # evidence without DCAP collateral: GRACE: only ever widens, so it has nothing to refuse
    constraints.parse(base + " GRACE:PT1H").check(report(), now=NOW)
    assert constraints.parse(base).collateral_grace is None


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(0), "PT0S"),
        (timedelta(days=1), "P1D"),
        (timedelta(hours=24), "P1D"),
        (timedelta(days=1, hours=2, minutes=30), "P1DT2H30M"),
        (timedelta(minutes=5), "PT5M"),
        (timedelta(seconds=1.5), "PT1.5S"),
        (timedelta(days=400, seconds=1), "P400DT1S"),
    ],
)
def test_format_duration_is_what_parse_reads(value: timedelta, text: str) -> None:
    assert constraints.format_duration(value) == text
    assert constraints.parse(f"C:{CODE.hex()} GRACE:{text}").collateral_grace == value
