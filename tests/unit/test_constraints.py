from datetime import UTC, datetime, timedelta

import pytest

from enclave_infer.attestation import constraints
from enclave_infer.attestation.report import EnclaveReport, SecurityLevel, SnpTcb
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
