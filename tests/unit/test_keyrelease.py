"""Attested key release between enclaves, and the cluster's shared model storage: enclaves in this
process, their hosts' frames carried by hand."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave_infer.attestation.evidence import Attestation, Evidence, Verifier
from enclave_infer.attestation.report import EnclaveReport, SecurityLevel
from enclave_infer.client._owner import public_key_bytes
from enclave_infer.cluster import keyrelease
from enclave_infer.cluster.storage import model_file_name as cluster_model_name
from enclave_infer.config import ClusterSettings, EnclaveConfig
from enclave_infer.enclave.models import ModelError
from enclave_infer.enclave.platform import SimulationPlatform
from enclave_infer.enclave.server import Enclave
from enclave_infer.enclave.tsm import ConfigfsTsmPlatform
from enclave_infer.errors import UsageError
from enclave_infer.protocol import framing, ohttp
from enclave_infer.protocol.api import EnclaveStatus, Problem
from enclave_infer.protocol.framing import FrameType
from tests.emulation.dcap import EmulatedDcap
from tests.emulation.pseudofs import FakeTsm
from tests.unit.test_sealing import provision

OWNER = Ed25519PrivateKey.generate()
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
CONFIG = EnclaveConfig(owner_public_key=public_key_bytes(OWNER))


def enclave(tmp_path: Path, name: str, config: EnclaveConfig = CONFIG) -> Enclave:
    shared = tmp_path / "shared"
    shared.mkdir(exist_ok=True)
    return Enclave(
        config, SimulationPlatform(config), tmp_path / name, shared=shared, verifier=Verifier.production()
    )


def ask(e: Enclave, kind: FrameType, message: bytes = b"") -> tuple[FrameType, bytes]:
    reply = e.answer(kind, framing.encode_cluster_payload(b"", message))
    head, _ = framing.parse_header(reply[: framing.HEADER.size])
    return head, reply[framing.HEADER.size :]


def status(e: Enclave) -> EnclaveStatus:
    """The member's status after its host asked it to reload the cluster's newest model."""
    kind, payload = ask(e, FrameType.CLUSTER_RELOAD, framing.ClusterAction.RELOAD.value)
    assert (kind, payload) == (FrameType.CLUSTER_CHECKED, b""), payload
    reply = e.answer(FrameType.GET_STATUS, b"")
    assert framing.parse_header(reply[: framing.HEADER.size])[0] is FrameType.STATUS
    return EnclaveStatus.from_json(json.loads(reply[framing.HEADER.size :]))


def join(joiner: Enclave, giver: Enclave) -> tuple[FrameType, bytes]:
    """What the joiner's host does: a join request from its enclave, to a member, and back."""
    kind, request = ask(joiner, FrameType.CLUSTER_JOIN)
    assert kind is FrameType.CLUSTER_MESSAGE
    kind, answer = ask(giver, FrameType.CLUSTER_RELEASE, request)
    if kind is not FrameType.CLUSTER_MESSAGE:
        return kind, answer
    return ask(joiner, FrameType.CLUSTER_ACCEPT, answer)


def refusal(payload: bytes) -> str:
    details = framing.decode_problem(payload)
    assert details.problem is Problem.KEY_RELEASE_REFUSED, details
    return details.detail


def test_a_joiner_gets_the_cluster_key_and_serves_the_model_provisioned_once(tmp_path: Path) -> None:
    first, second = enclave(tmp_path, "a"), enclave(tmp_path, "b")
    # before joining, a cluster member answers no client
    kind, payload = framing.parse_header(first.answer(FrameType.OHTTP_REQUEST, b"x")[:5])[0], b""
    assert kind is FrameType.ERROR
    assert ask(first, FrameType.CLUSTER_FOUND)[0] is FrameType.CLUSTER_FOUNDED
    provision(first.store, OWNER, 1)
    assert second.key_config != first.key_config
    kind, payload = join(second, first)
    assert kind is FrameType.CLUSTER_JOINED, payload
    assert second.key_config == first.key_config  # one key configuration for the whole cluster
    joined = status(second)
    assert joined.cluster_id == status(first).cluster_id
    assert (joined.model_version, joined.version_floor) == (1, 1)  # loaded from the shared storage
    # provisioned once through the second member: the first loads it on reload
    provision(second.store, OWNER, 2)
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == [
        cluster_model_name(1),
        cluster_model_name(2),
    ]
    assert status(first).model_version == 2
    # the shared files are sealed: no model byte in plaintext
    assert first.store.current is not None
    assert b"red" not in (tmp_path / "shared" / cluster_model_name(2)).read_bytes()
    # a version taken by another member cannot be provisioned again
    with pytest.raises(ModelError, match="not newer"):
        provision(first.store, OWNER, 2)


def test_a_joiner_with_another_measurement_gets_nothing(tmp_path: Path) -> None:
    giver = enclave(tmp_path, "a")
    ask(giver, FrameType.CLUSTER_FOUND)
    for other in (
        dataclasses.replace(CONFIG, product_id=2),  # other code hash and product
        dataclasses.replace(CONFIG, security_version=CONFIG.security_version + 1),
        dataclasses.replace(CONFIG, max_threads=CONFIG.max_threads + 1),  # same code, other configuration
    ):
        stranger = enclave(tmp_path, f"s{other.digest().hex()[:8]}", other)
        kind, payload = join(stranger, giver)
        assert kind is FrameType.ERROR
        assert "the joiner differs in" in refusal(payload)
        assert stranger.cluster is None and stranger.key_config != giver.key_config


def test_a_release_that_fails_verification_is_refused(tmp_path: Path) -> None:
    """The joiner's host (or a forged giver) cannot hand it a key the host knows."""
    giver, joiner = enclave(tmp_path, "a"), enclave(tmp_path, "b")
    ask(giver, FrameType.CLUSTER_FOUND)
    kind, request = ask(joiner, FrameType.CLUSTER_JOIN)
    _, release = ask(giver, FrameType.CLUSTER_RELEASE, request)
    doc = json.loads(release)

    # 1. secrets the host chose, sealed to the joiner's key, with evidence of an enclave of
    #    another measurement that does bind them
    other = dataclasses.replace(CONFIG, product_id=9)
    forged = forge_release(request, other)
    # 2. the real release with one byte of the sealed secrets changed
    sealed = bytearray(json_bytes(doc, "sealed"))
    sealed[-1] ^= 1
    tampered = with_field(doc, "sealed", bytes(sealed))
    # 3. the real giver's evidence, with the host's own secrets spliced in
    spliced = with_field(doc, "sealed", json_bytes(json.loads(forge_release(request, CONFIG)), "sealed"))
    # 4. malformed
    for answer, reason in (
        (forged, "the giver differs in code hash, product id"),
        (tampered, "evidence is not bound"),
        (spliced, "evidence is not bound"),
        (b"{}", "malformed"),
    ):
        kind, payload = ask(joiner, FrameType.CLUSTER_ACCEPT, answer)
        assert kind is FrameType.ERROR
        assert reason in refusal(payload)
        assert joiner.cluster is None
    # the real one still works afterwards, once
    assert ask(joiner, FrameType.CLUSTER_ACCEPT, release)[0] is FrameType.CLUSTER_JOINED
    assert joiner.key_config == giver.key_config
    # a release made for another join request (a replayed answer) is refused by a later joiner
    late = enclave(tmp_path, "c")
    ask(late, FrameType.CLUSTER_JOIN)
    kind, payload = ask(late, FrameType.CLUSTER_ACCEPT, release)
    assert "not bound" in refusal(payload)


def forge_release(request: bytes, config: EnclaveConfig) -> bytes:
    """A release as a host (or an enclave of another measurement) would make one, with secrets of
    its own choosing, bound correctly to the request by evidence of ``config``'s enclave."""
    fields = json.loads(request)
    joiner_key = ohttp.KeyConfig.decode(json_bytes(fields, "key_config"))
    nonce = json_bytes(fields, "nonce")
    secrets = keyrelease.ClusterSecrets.found(ohttp.GatewayKey.generate(1))
    digest = hashlib.sha256(request).digest()
    hdr, enc, context, _ = ohttp.setup_sender(joiner_key, keyrelease.RELEASE_INFO, None)
    sealed = hdr + enc + context.seal(secrets.encode(), digest)
    from enclave_infer.attestation.report import report_data_binding

    report_data = report_data_binding(
        digest + hashlib.sha256(sealed).digest(), config.digest(), nonce, label=keyrelease.RELEASE_LABEL
    )
    platform = SimulationPlatform(config)
    evidence = Evidence("simulation", platform.evidence(report_data), config.canonical()).encode()
    return keyrelease._encode({"sealed": sealed, "evidence": evidence})


def json_bytes(doc: dict[str, object], name: str) -> bytes:
    import base64

    value = doc[name]
    assert isinstance(value, str)
    return base64.b64decode(value)


def with_field(doc: dict[str, object], name: str, value: bytes) -> bytes:
    import base64

    return json.dumps({**doc, name: base64.b64encode(value).decode()}).encode()


def test_a_restarted_member_learns_the_floor_and_refuses_a_rolled_back_file(tmp_path: Path) -> None:
    first = enclave(tmp_path, "a")
    ask(first, FrameType.CLUSTER_FOUND)
    provision(first.store, OWNER, 1)
    provision(first.store, OWNER, 2)
    # the host hides version 2 and restarts a member: it learns floor 2 from its peer and serves
    # nothing rather than version 1
    newest = tmp_path / "shared" / cluster_model_name(2)
    hidden = newest.read_bytes()
    newest.unlink()
    restarted = enclave(tmp_path, "b")
    assert join(restarted, first)[0] is FrameType.CLUSTER_JOINED
    assert status(restarted).model_version is None
    assert status(restarted).version_floor == 2
    # the file comes back: it is served
    newest.write_bytes(hidden)
    assert status(restarted).model_version == 2
    # a file renamed to another version is refused
    (tmp_path / "shared" / cluster_model_name(3)).write_bytes(hidden)
    assert status(restarted).model_version == 2


def test_a_member_kept_from_a_new_version_learns_the_floor_from_a_peer(tmp_path: Path) -> None:
    """A host that never tells its member to reload, and hides the new file, cannot keep it serving
    the old version past a floor refresh: a release from a peer that holds the new one."""
    first, second = enclave(tmp_path, "a"), enclave(tmp_path, "b")
    ask(first, FrameType.CLUSTER_FOUND)
    provision(first.store, OWNER, 1)
    assert join(second, first)[0] is FrameType.CLUSTER_JOINED
    assert status(second).model_version == 1
    provision(first.store, OWNER, 2)
    newest = tmp_path / "shared" / cluster_model_name(2)
    hidden = newest.read_bytes()
    newest.unlink()  # the second's host hides it, and sends no reload
    assert second.store.current is not None and second.store.current.manifest.version == 1
    kind, payload = join(second, first)  # the refresh: join request, release, accept
    assert kind is FrameType.CLUSTER_JOINED, payload
    refreshed = status(second)
    assert (refreshed.version_floor, refreshed.model_version) == (2, None)  # version 1 is no longer served
    assert second.key_config == first.key_config
    newest.write_bytes(hidden)
    assert status(second).model_version == 2
    # a release from another cluster's member only: refused, and nothing changes
    (tmp_path / "elsewhere").mkdir()
    other = enclave(tmp_path / "elsewhere", "c")
    ask(other, FrameType.CLUSTER_FOUND)
    kind, payload = join(second, other)
    assert kind is FrameType.ERROR and "another cluster" in refusal(payload)
    assert second.key_config == first.key_config


def test_members_refuse_what_is_not_theirs_to_do(tmp_path: Path) -> None:
    alone = Enclave(CONFIG, SimulationPlatform(CONFIG), tmp_path / "alone", verifier=Verifier.production())
    assert alone.answer(FrameType.CLUSTER_FOUND, framing.encode_cluster_payload(b""))[0] == FrameType.ERROR
    member, joiner = enclave(tmp_path, "a"), enclave(tmp_path, "b")
    _, request = ask(joiner, FrameType.CLUSTER_JOIN)
    # not yet a member: nothing to release
    _, payload = ask(member, FrameType.CLUSTER_RELEASE, request)
    assert framing.decode_problem(payload).problem is Problem.ENCLAVE_UNAVAILABLE
    ask(member, FrameType.CLUSTER_FOUND)
    # a member does not found again (its key would change under its clients); it may ask for a
    # release (a floor refresh), which changes nothing else
    before = member.key_config
    assert ask(member, FrameType.CLUSTER_FOUND)[0] is FrameType.ERROR
    assert ask(member, FrameType.CLUSTER_JOIN)[0] is FrameType.CLUSTER_MESSAGE
    assert member.key_config == before
    # a frame whose collateral length runs past its end
    reply = member.answer(FrameType.CLUSTER_RELEASE, b"\x00\x00\x10\x00abc")
    assert framing.parse_header(reply[:5])[0] is FrameType.ERROR
    # a reload without its action (an empty message meant "reload" once) or with an unknown one
    for message in (b"", b"\x02", framing.ClusterAction.RELOAD.value + b"\x00"):
        _, payload = ask(member, FrameType.CLUSTER_RELOAD, message)
        assert framing.decode_problem(payload).problem is Problem.MALFORMED_REQUEST


def report(**changes: object) -> EnclaveReport:
    base = EnclaveReport(
        tee="sgx",
        platform_settings=b"{}",
        code_hash=b"c" * 32,
        signer=b"s" * 32,
        product_id=1,
        security_version=1,
        debug=False,
        report_data=b"\x00" * 64,
        security_level=SecurityLevel.SECURE,
        level_reason="",
        issued_at=None,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_check_peer_wants_the_same_enclave_at_the_same_level_or_higher() -> None:
    own = report()

    def peer(**changes: object) -> Attestation:
        return Attestation(report(**changes), CONFIG, b"")

    keyrelease.check_peer(own, CONFIG, peer(), who="joiner", now=NOW)
    keyrelease.check_peer(report(security_level=SecurityLevel.STALE), CONFIG, peer(), who="joiner", now=NOW)
    with pytest.raises(keyrelease.KeyReleaseError, match="STALE, below this enclave's SECURE"):
        keyrelease.check_peer(own, CONFIG, peer(security_level=SecurityLevel.STALE), who="joiner", now=NOW)
    with pytest.raises(keyrelease.KeyReleaseError, match="differs in platform settings"):
        # an SNP guest of the same MEASUREMENT launched with a migration agent allowed: another POLICY
        keyrelease.check_peer(own, CONFIG, peer(platform_settings=b"\x01"), who="joiner", now=NOW)
    with pytest.raises(keyrelease.KeyReleaseError, match="differs in signer, debug flag"):
        keyrelease.check_peer(own, CONFIG, peer(signer=b"x" * 32, debug=True), who="giver", now=NOW)
    other = Attestation(report(), dataclasses.replace(CONFIG, max_threads=99), b"")
    with pytest.raises(keyrelease.KeyReleaseError, match="differs in configuration"):
        keyrelease.check_peer(own, CONFIG, other, who="giver", now=NOW)
    # TDX: MRTD is the firmware only; the RTMRs (in the platform settings) must be equal too
    td = report(tee="tdx", platform_settings=b'{"rt_mr1": "aa"}')
    keyrelease.check_peer(td, CONFIG, Attestation(td, CONFIG, b""), who="joiner", now=NOW)
    other_kernel = Attestation(report(tee="tdx", platform_settings=b'{"rt_mr1": "bb"}'), CONFIG, b"")
    with pytest.raises(keyrelease.KeyReleaseError, match="TDX RTMRs"):
        keyrelease.check_peer(td, CONFIG, other_kernel, who="joiner", now=NOW)
    with pytest.raises(keyrelease.KeyReleaseError, match="no platform settings"):
        keyrelease.check_peer(report(), CONFIG, peer(platform_settings=b""), who="joiner", now=NOW)


def test_check_peer_refuses_an_older_platform() -> None:
    """A host could present old collateral (from before a TCB recovery or a revocation) that still
    says SECURE: the peer's collateral must be current, and its TCB no older than the checker's."""
    from datetime import timedelta

    from enclave_infer.attestation.report import DcapCollateral, SnpTcb

    def collateral(number: int, next_update: datetime) -> DcapCollateral:
        return DcapCollateral(number, number, next_update, "TCB info", NOW)

    own = report(dcap_collateral=collateral(17, NOW + timedelta(days=20)))
    fresh = Attestation(report(dcap_collateral=collateral(17, NOW + timedelta(days=20))), CONFIG, b"")
    keyrelease.check_peer(own, CONFIG, fresh, who="joiner", now=NOW)
    expired = Attestation(report(dcap_collateral=collateral(17, NOW - timedelta(hours=1))), CONFIG, b"")
    with pytest.raises(keyrelease.KeyReleaseError, match="collateral expired"):
        keyrelease.check_peer(own, CONFIG, expired, who="joiner", now=NOW)
    older = Attestation(report(dcap_collateral=collateral(16, NOW + timedelta(days=20))), CONFIG, b"")
    with pytest.raises(keyrelease.KeyReleaseError, match="evaluation data number"):
        keyrelease.check_peer(own, CONFIG, older, who="giver", now=NOW)
    snp_own = report(tee="sev-snp", snp_tcb=SnpTcb(3, 0, 8, 115))
    keyrelease.check_peer(snp_own, CONFIG, Attestation(snp_own, CONFIG, b""), who="joiner", now=NOW)
    behind = Attestation(report(tee="sev-snp", snp_tcb=SnpTcb(3, 0, 8, 114)), CONFIG, b"")
    with pytest.raises(keyrelease.KeyReleaseError, match="older in microcode"):
        keyrelease.check_peer(snp_own, CONFIG, behind, who="joiner", now=NOW)


def test_secrets_never_show_in_repr() -> None:
    secrets = keyrelease.ClusterSecrets.found(ohttp.GatewayKey.generate(1))
    assert secrets.sealing_key.hex() not in repr(secrets)
    assert secrets.ohttp_key.private_bytes().hex() not in repr(secrets)
    assert keyrelease.ClusterSecrets.decode(secrets.encode()).encode() == secrets.encode()
    with pytest.raises(keyrelease.KeyReleaseError, match="malformed"):
        keyrelease.ClusterSecrets.decode(b'{"cluster_id": "00"}')


def test_tds_release_keys_only_to_a_td_that_booted_the_same(
    tmp_path: Path, fake_tsm: Callable[..., FakeTsm]
) -> None:
    """Real (emulated) TDX quotes under a test root, through the enclave's frames: MRTD pins the
    firmware only, so a TD with another kernel (RTMR1) gets nothing; one that booted the same joins."""
    dcap = EmulatedDcap()
    today = datetime.now(UTC).replace(microsecond=0)
    collateral = dcap.collateral(
        "tdx", issue_date=today - timedelta(days=1), next_update=today + timedelta(days=30)
    )
    kernel = {"rtmr1": b"\x01" * 48}
    fake = fake_tsm(
        provider="tdx_guest",
        make_outblob=lambda rd: dcap.tdx_quote(rd, rtmrs=(bytes(48), kernel["rtmr1"], bytes(48), bytes(48))),
    )
    verifier = Verifier(intel_root_ca_der=dcap.root_ca_der)
    shared = tmp_path / "shared"
    shared.mkdir()

    def td(name: str) -> Enclave:
        return Enclave(
            CONFIG, ConfigfsTsmPlatform(fake.root), tmp_path / name, shared=shared, verifier=verifier
        )

    def frame(e: Enclave, kind: FrameType, booted: bytes, message: bytes = b"") -> tuple[FrameType, bytes]:
        kernel["rtmr1"] = booted  # what this TD's quotes say it booted
        reply = e.answer(kind, framing.encode_cluster_payload(collateral, message))
        return framing.parse_header(reply[: framing.HEADER.size])[0], reply[framing.HEADER.size :]

    same, other = b"\x01" * 48, b"\x02" * 48
    giver = td("giver")
    assert frame(giver, FrameType.CLUSTER_FOUND, same)[0] is FrameType.CLUSTER_FOUNDED
    stranger = td("stranger")
    _, request = frame(stranger, FrameType.CLUSTER_JOIN, other)
    kind, payload = frame(giver, FrameType.CLUSTER_RELEASE, same, request)
    assert kind is FrameType.ERROR and "TDX RTMRs" in refusal(payload)
    joiner = td("joiner")
    _, request = frame(joiner, FrameType.CLUSTER_JOIN, same)
    kind, release = frame(giver, FrameType.CLUSTER_RELEASE, same, request)
    assert kind is FrameType.CLUSTER_MESSAGE
    assert frame(joiner, FrameType.CLUSTER_ACCEPT, same, release)[0] is FrameType.CLUSTER_JOINED
    assert joiner.key_config == giver.key_config


# -- the cluster's TCB floor (issue 18: "the TCB bar for key release is the host's choice") ---------

OLDER_MODULE = bytes([7, 1, 2] + [0] * 13)  # a TDX TCB component one below the emulated platform's


class Tds:
    """TDs on emulated TDX (real quotes under a test root), their hosts' collateral and clock in the
    test's hands: each frame says which platform quotes, with which collateral, at which time."""

    def __init__(self, tmp_path: Path, fake_tsm: Callable[..., FakeTsm]) -> None:
        self.dcap = EmulatedDcap()
        # the same machine type under the same root, with an older TDX module: its own TCB level
        self.older = copy.copy(self.dcap)
        self.older.platform = dataclasses.replace(self.dcap.platform, tee_tcb_svn=OLDER_MODULE)
        self.today = datetime.now(UTC).replace(microsecond=0)
        self.now = self.today
        self.quoting = self.dcap
        fake = fake_tsm(provider="tdx_guest", make_outblob=lambda rd: self.quoting.tdx_quote(rd))
        self.root, self.tmp_path = fake.root, tmp_path
        self.verifier = Verifier(intel_root_ca_der=self.dcap.root_ca_der)
        (tmp_path / "shared").mkdir(exist_ok=True)

    def collateral(self, number: int, *, days_ago: int = 1, written_for: EmulatedDcap | None = None) -> bytes:
        """Intel's collateral of evaluation data number ``number``, issued ``days_ago`` and current
        for 30 days; written for this platform's TCB (the older module is OutOfDate under it)."""
        issued = self.today - timedelta(days=days_ago)
        return (written_for or self.dcap).collateral(
            "tdx", issue_date=issued, next_update=issued + timedelta(days=30), evaluation_data_number=number
        )

    def td(self, name: str, config: EnclaveConfig = CONFIG) -> Enclave:
        return Enclave(
            config,
            ConfigfsTsmPlatform(self.root),
            self.tmp_path / name,
            shared=self.tmp_path / "shared",
            verifier=self.verifier,
            clock=lambda: self.now,
        )

    def frame(
        self, e: Enclave, kind: FrameType, collateral: bytes, message: bytes = b"", *, older: bool = False
    ) -> tuple[FrameType, bytes]:
        self.quoting = self.older if older else self.dcap
        reply = e.answer(kind, framing.encode_cluster_payload(collateral, message))
        return framing.parse_header(reply[: framing.HEADER.size])[0], reply[framing.HEADER.size :]

    def join(
        self, joiner: Enclave, giver: Enclave, *, joiner_has: bytes, giver_has: bytes, older: bool = False
    ) -> tuple[FrameType, bytes]:
        """A join through two hosts that hand their enclaves ``joiner_has`` and ``giver_has``."""
        _, request = self.frame(joiner, FrameType.CLUSTER_JOIN, joiner_has, older=older)
        kind, answer = self.frame(giver, FrameType.CLUSTER_RELEASE, giver_has, request)
        if kind is not FrameType.CLUSTER_MESSAGE:
            return kind, answer
        return self.frame(joiner, FrameType.CLUSTER_ACCEPT, joiner_has, answer, older=older)


def test_old_collateral_and_a_wound_back_clock_release_nothing_below_the_tcb_floor(
    tmp_path: Path, fake_tsm: Callable[..., FakeTsm]
) -> None:
    """The issue's sequence: the cluster was founded on collateral 18, under which a TD on an older
    TDX module is OutOfDate (a client with SEC:SECURE or TCBEVAL:18 refuses it). Its host and the
    giver's hand both enclaves collateral 17, from before that TCB recovery (under which the older
    module was UpToDate), and wind the clock back to when it was current. Before the floor, the
    giver compared the joiner with its own report of collateral 17 and released."""
    tds = Tds(tmp_path, fake_tsm)
    current = tds.collateral(18)
    founder = tds.td("founder")
    assert tds.frame(founder, FrameType.CLUSTER_FOUND, current)[0] is FrameType.CLUSTER_FOUNDED
    joiner = tds.td("joiner")
    kind, payload = tds.join(joiner, founder, joiner_has=current, giver_has=current, older=True)
    assert kind is FrameType.ERROR and "STALE, below this enclave's SECURE" in refusal(payload)
    # collateral 17, issued 75 days ago and current for 30 days, at a clock wound back 60 days
    old = tds.collateral(17, days_ago=75, written_for=tds.older)
    tds.now = tds.today - timedelta(days=60)
    kind, payload = tds.join(joiner, founder, joiner_has=old, giver_has=old, older=True)
    assert kind is FrameType.ERROR, "released to a TD below the cluster's TCB floor"
    assert "this enclave's own evidence is below the cluster's TCB floor" in refusal(payload)
    assert "TCB evaluation data number 17 < 18" in refusal(payload)
    assert joiner.cluster is None
    # a TD on the current module, with current collateral at the true time, joins
    tds.now = tds.today
    member = tds.td("member")
    assert tds.join(member, founder, joiner_has=current, giver_has=current)[0] is FrameType.CLUSTER_JOINED
    assert member.key_config == founder.key_config


def test_the_tcb_floor_rises_with_a_members_newer_collateral_and_travels_by_refresh(
    tmp_path: Path, fake_tsm: Callable[..., FakeTsm]
) -> None:
    """Collateral 19 reaches the founder only; a member learns floor 19 by a refresh, and from then
    on neither releases with collateral 18 nor releases to a TD that shows only 18."""
    tds = Tds(tmp_path, fake_tsm)
    c18, c19 = tds.collateral(18), tds.collateral(19)
    founder, member = tds.td("founder"), tds.td("member")
    tds.frame(founder, FrameType.CLUSTER_FOUND, c18)
    assert tds.join(member, founder, joiner_has=c18, giver_has=c18)[0] is FrameType.CLUSTER_JOINED
    # the founder's host gets collateral 19: the founder's next release raises its floor
    assert tds.join(member, founder, joiner_has=c19, giver_has=c19)[0] is FrameType.CLUSTER_JOINED
    assert founder.state.tcb_floor == keyrelease.TcbFloor(19, 19)
    assert member.state.tcb_floor == keyrelease.TcbFloor(19, 19)  # the refresh carried it
    # a release from a giver whose floor is still lower leaves it where it is
    laggard = tds.td("laggard")
    assert tds.join(laggard, member, joiner_has=c19, giver_has=c19)[0] is FrameType.CLUSTER_JOINED
    other = tds.td("other")
    tds.frame(other, FrameType.CLUSTER_FOUND, c18)  # a cluster of its own: refused, nothing changes
    assert tds.join(member, other, joiner_has=c18, giver_has=c18)[0] is FrameType.ERROR
    assert member.state.tcb_floor == keyrelease.TcbFloor(19, 19)
    # the member's host goes back to collateral 18: the member releases nothing, to nobody
    late = tds.td("late")
    kind, payload = tds.join(late, member, joiner_has=c18, giver_has=c18)
    assert kind is FrameType.ERROR and "18 < 19" in refusal(payload)
    kind, payload = tds.join(late, member, joiner_has=c18, giver_has=c19)
    assert kind is FrameType.ERROR and late.cluster is None
    assert tds.join(late, member, joiner_has=c19, giver_has=c19)[0] is FrameType.CLUSTER_JOINED


def test_a_configured_tcb_minimum_is_part_of_the_floor(
    tmp_path: Path, fake_tsm: Callable[..., FakeTsm]
) -> None:
    """``[cluster] min_tcb_evaluation = 19``: measured, so every member has it; no cluster is
    founded on a platform below it, and no TD below it joins."""
    tds = Tds(tmp_path, fake_tsm)
    config = dataclasses.replace(CONFIG, cluster=ClusterSettings(min_tcb_evaluation=19))
    c18, c19 = tds.collateral(18), tds.collateral(19)
    founder = tds.td("founder", config)
    kind, payload = tds.frame(founder, FrameType.CLUSTER_FOUND, c18)
    assert kind is FrameType.ERROR and "TCB evaluation data number 18 < 19" in refusal(payload)
    assert founder.cluster is None
    assert tds.frame(founder, FrameType.CLUSTER_FOUND, c19)[0] is FrameType.CLUSTER_FOUNDED
    assert founder.state.tcb_floor == keyrelease.TcbFloor(19, 19)
    joiner = tds.td("joiner", config)
    kind, payload = tds.join(joiner, founder, joiner_has=c18, giver_has=c18)
    assert kind is FrameType.ERROR and "below the cluster's TCB floor" in refusal(payload)
    assert tds.join(joiner, founder, joiner_has=c19, giver_has=c19)[0] is FrameType.CLUSTER_JOINED
    # the same minimum on simulation, whose evidence shows no TCB: no cluster at all (fail closed)
    simulated = enclave(tmp_path, "simulated", config)
    kind, payload = ask(simulated, FrameType.CLUSTER_FOUND)
    assert kind is FrameType.ERROR and "TCB evaluation data number 0 < 19" in refusal(payload)


def test_the_configured_minimum_is_measured_only_when_given() -> None:
    assert "cluster" not in json.loads(CONFIG.canonical())  # the digests of existing configurations stand
    given = EnclaveConfig.from_json(
        {**CONFIG.to_json(), "cluster": {"min_tcb_evaluation": 18, "min_snp_tcb": "SNP=8,bl=3"}}
    )
    assert json.loads(given.canonical())["cluster"] == {"min_snp_tcb": "bl=3,snp=8", "min_tcb_evaluation": 18}
    assert EnclaveConfig.from_canonical(given.canonical()) == given and given.digest() != CONFIG.digest()
    assert keyrelease.TcbFloor.minimum(given) == keyrelease.TcbFloor(18, 18, (3, 0, 8, 0, 0))
    for bad in ({"min_snp_tcb": "snp=256"}, {"min_tcb_evaluation": -1}, {"min_tcb": 1}):
        with pytest.raises(UsageError):
            EnclaveConfig.from_json({**CONFIG.to_json(), "cluster": bad})


def test_a_tcb_floor_reads_a_verified_report_and_refuses_what_it_cannot_show() -> None:
    from enclave_infer.attestation.report import DcapCollateral, SnpTcb

    genoa = report(tee="sev-snp", snp_tcb=SnpTcb(3, 0, 8, 115))
    floor = keyrelease.TcbFloor.of(genoa)
    assert floor == keyrelease.TcbFloor(snp=(3, 0, 8, 115, 0)) and floor.below(genoa) == []
    # the host lowers the giver's REPORTED_TCB (and fetches the VCEK for it): below the floor
    assert floor.below(report(tee="sev-snp", snp_tcb=SnpTcb(3, 0, 7, 115))) == ["SEV-SNP SNP firmware 7 < 8"]
    turin = keyrelease.TcbFloor.of(report(tee="sev-snp", snp_tcb=SnpTcb(3, 0, 8, 115, fmc=2)))
    assert floor.merge(turin) == turin and turin.below(genoa) == ["SEV-SNP FMC 0 < 2"]
    dcap = keyrelease.TcbFloor.of(report(dcap_collateral=DcapCollateral(18, 17, NOW, "TCB info", NOW)))
    assert dcap == keyrelease.TcbFloor(18, 17)
    assert dcap.below(genoa)[0] == "no TCB evaluation data number (sev-snp evidence)"
    assert floor.below(report())[0] == "no SEV-SNP TCB (sgx evidence)"
    assert keyrelease.TcbFloor().below(report()) == []  # simulation's floor requires nothing
    secrets = keyrelease.ClusterSecrets.found(ohttp.GatewayKey.generate(1), floor.merge(dcap))
    assert keyrelease.ClusterSecrets.decode(secrets.encode()).tcb == floor.merge(dcap)


def test_a_refresh_routed_back_to_the_asker_is_refused(tmp_path: Path) -> None:
    """A member that asks for a refresh learns the floor from another member, never from itself:
    a host that carried each member's refresh back to it alone (issue 18) gets refusals."""
    first, second = enclave(tmp_path, "a"), enclave(tmp_path, "b")
    ask(first, FrameType.CLUSTER_FOUND)
    assert join(second, first)[0] is FrameType.CLUSTER_JOINED
    kind, request = ask(second, FrameType.CLUSTER_JOIN)
    kind, payload = ask(second, FrameType.CLUSTER_RELEASE, request)
    assert kind is FrameType.ERROR and "this enclave's own" in refusal(payload)
    kind, answer = ask(first, FrameType.CLUSTER_RELEASE, request)  # the same request, to another member
    assert ask(second, FrameType.CLUSTER_ACCEPT, answer)[0] is FrameType.CLUSTER_JOINED
    # an earlier request of its own (no longer the one it waits for) is answered, and its release
    # is refused where it matters: by the asker, as bound to another request
    assert ask(second, FrameType.CLUSTER_JOIN)[0] is FrameType.CLUSTER_MESSAGE
    kind, stale = ask(second, FrameType.CLUSTER_RELEASE, request)
    assert kind is FrameType.CLUSTER_MESSAGE
    kind, payload = ask(second, FrameType.CLUSTER_ACCEPT, stale)
    assert kind is FrameType.ERROR and "not bound" in refusal(payload)
