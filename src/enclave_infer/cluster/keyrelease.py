"""Attested key release: how an enclave joins a cluster and receives its secrets from a member.

Trusted code, pure logic on bytes; the enclave calls it, the hosts carry its messages. The pattern of
Conclave's KDS, Contrast's coordinator and Trustee's KBS, done enclave to enclave: the secrets go
only to an enclave that is provably the same code with the same measured configuration, and the
joiner takes them only from such an enclave (else a host could hand it a key the host knows).

Messages (JSON, binary fields base64)::

    join request   {"version": 1, "key_config": KC, "nonce": N, "evidence": D_j}
    release        {"version": 1, "sealed": S, "evidence": D_g}

- ``KC``: the RFC 9458 key configuration of a fresh HPKE key pair of the joiner's, used once;
  ``N``: 32 random bytes of the joiner's.
- ``D_j``: the joiner's attestation document (:mod:`enclave_infer.attestation.evidence`, with its
  host's collateral), its report data ``report_data_binding(KC, SHA-256(config), N, label=JOIN_LABEL)``.
- ``S = hdr || enc || HPKE.Seal(secrets)``: sealed to ``KC`` with RFC 9458's per-message setup under
  ``RELEASE_INFO``, the additional data SHA-256 of the join request's bytes.
- ``D_g``: the giver's document, its report data
  ``report_data_binding(SHA-256(join request) || SHA-256(S), SHA-256(config), N, label=RELEASE_LABEL)``:
  the giver's platform vouches for this very answer to this very request, and ``N`` makes it fresh.
- ``secrets`` (:class:`ClusterSecrets`): the cluster id, the OHTTP key pair every member answers
  with, the key that seals the cluster's model files, the model version floor and the TCB floor.

Each side checks the other with :func:`check_peer`: the same TEE, code hash, signer, product,
security version, debug flag, platform settings (for TDX, whose code hash MRTD measures the firmware
only, the runtime measurement registers RTMR0-3 too) and configuration as its own, at least its own
security level, and a platform no older than its own. A replayed join request gains
nothing: the release is sealed to a key only the joining enclave holds.

The TCB floor (:class:`TcbFloor`) is what makes "no older" independent of the collateral and the
clock a giver's host hands it now: the least platform the cluster has known a member on (the
founder's own verified report, the measured configuration's ``[cluster]`` minimum, and every newer
report a member has since verified of its own), component by component; it travels with the
secrets and only rises. A giver releases only when its own report, as its host presents it now,
reaches the floor (else the host has handed it older collateral, or, on SEV-SNP, lowered its
REPORTED_TCB), and only to a joiner whose report reaches it too:

- SGX, TDX: the ``tcbEvaluationDataNumber`` of the collateral's TCB info and of its QE identity
  (Intel raises it with each TCB recovery: Intel PCS API v4, "TCB Info", "Enclave Identity");
- SEV-SNP: each REPORTED_TCB component (boot loader, TEE, SNP firmware, microcode, FMC; AMD SEV-SNP
  ABI specification 56860, "TCB_VERSION"), the level the VCEK certifies;
- simulation: nothing (its evidence is unsigned anyway).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pyhpke import PyHPKEError

from enclave_infer.attestation.evidence import Attestation, Verifier, verify
from enclave_infer.attestation.report import (
    NONCE_BYTES,
    SNP_TCB_COMPONENTS,
    EnclaveReport,
    Tee,
    report_data_binding,
)
from enclave_infer.config import EnclaveConfig
from enclave_infer.errors import AttestationError, DecryptionError, ProtocolError, UsageError
from enclave_infer.protocol import b64, ohttp

__all__ = [
    "JOIN_LABEL",
    "RELEASE_LABEL",
    "ClusterSecrets",
    "KeyReleaseError",
    "PendingJoin",
    "TcbFloor",
    "accept",
    "check_peer",
    "join_request",
    "release",
    "self_report",
]

VERSION = 1
JOIN_LABEL = b"enclave-infer key release v1 join\x00"
RELEASE_LABEL = b"enclave-infer key release v1 release\x00"
RELEASE_INFO = b"enclave-infer key release v1"
CLUSTER_ID_BYTES = 16
SEALING_KEY_BYTES = 32
# Two attestation documents and a few keys: anything larger is not a key release message.
MAX_MESSAGE_BYTES = 1024 * 1024

# The enclave's own attestation: report data in, its attestation document (with collateral) out.
Attest = Callable[[bytes], bytes]


log = logging.getLogger(__name__)


class KeyReleaseError(AttestationError):
    """A key release message was refused; the message says why, in one line."""


# The SEV-SNP TCB components a floor holds, in TCB_VERSION's order of names (SnpTcb's fields).
SNP_COMPONENTS = tuple(field for field, _ in SNP_TCB_COMPONENTS.values())
_SNP_LABELS = dict(SNP_TCB_COMPONENTS.values())
# tcbEvaluationDataNumber is a u32 in Intel's PCS API; an SNP TCB component is one byte.
_MAX_EVALUATION = 0xFFFF_FFFF
_MAX_SNP_COMPONENT = 0xFF


@dataclass(frozen=True)
class TcbFloor:
    """The least platform a member of the cluster may be on (see the module docstring): zeros
    require nothing. Merged component by component (:meth:`merge`): it only rises."""

    tcb_info_evaluation: int = 0  # SGX, TDX: the TCB info's tcbEvaluationDataNumber
    qe_identity_evaluation: int = 0  # SGX, TDX: the QE identity's
    snp: tuple[int, ...] = (0,) * len(SNP_COMPONENTS)  # SEV-SNP: REPORTED_TCB, by SNP_COMPONENTS

    def __post_init__(self) -> None:
        numbers = (self.tcb_info_evaluation, self.qe_identity_evaluation)
        if not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= _MAX_EVALUATION for n in numbers
        ):
            raise ValueError("a TCB evaluation data number is a u32")
        if len(self.snp) != len(SNP_COMPONENTS) or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= _MAX_SNP_COMPONENT for n in self.snp
        ):
            raise ValueError(f"an SEV-SNP TCB floor is {len(SNP_COMPONENTS)} bytes")

    @classmethod
    def of(cls, report: EnclaveReport) -> TcbFloor:
        """The platform a verified report shows: what a member raises the floor to."""
        collateral, tcb = report.dcap_collateral, report.snp_tcb
        return cls(
            collateral.tcb_info_evaluation_data_number if collateral is not None else 0,
            collateral.qe_identity_evaluation_data_number if collateral is not None else 0,
            tuple(getattr(tcb, name) or 0 for name in SNP_COMPONENTS) if tcb is not None else cls().snp,
        )

    @classmethod
    def minimum(cls, config: EnclaveConfig) -> TcbFloor:
        """The measured configuration's ``[cluster]`` minimum."""
        evaluation = config.cluster.min_tcb_evaluation or 0
        named = {SNP_TCB_COMPONENTS[name][0]: value for name, value in config.cluster.snp_tcb_floor}
        return cls(evaluation, evaluation, tuple(named.get(name, 0) for name in SNP_COMPONENTS))

    def merge(self, other: TcbFloor) -> TcbFloor:
        """The component-wise maximum: a floor that neither lowers."""
        return TcbFloor(
            max(self.tcb_info_evaluation, other.tcb_info_evaluation),
            max(self.qe_identity_evaluation, other.qe_identity_evaluation),
            tuple(map(max, self.snp, other.snp)),
        )

    def shortfall(self, platform: TcbFloor) -> list[str]:
        """Where ``platform`` is below this floor, one phrase each; empty when it reaches it."""
        findings = [
            f"{which} TCB evaluation data number {number} < {floor}"
            for which, number, floor in (
                ("the TCB info's", platform.tcb_info_evaluation, self.tcb_info_evaluation),
                ("the QE identity's", platform.qe_identity_evaluation, self.qe_identity_evaluation),
            )
            if number < floor
        ]
        findings += [
            f"SEV-SNP {_SNP_LABELS[name]} {number} < {floor}"
            for name, number, floor in zip(SNP_COMPONENTS, platform.snp, self.snp, strict=True)
            if number < floor
        ]
        return findings

    def below(self, report: EnclaveReport) -> list[str]:
        """Where a verified report is below this floor (empty: it reaches it). A floor the
        evidence cannot show (DCAP numbers for SEV-SNP evidence, say) is not reached: fail closed."""
        findings = self.shortfall(TcbFloor.of(report))
        if (
            findings
            and report.dcap_collateral is None
            and (self.tcb_info_evaluation or self.qe_identity_evaluation)
        ):
            findings.insert(0, f"no TCB evaluation data number ({report.tee} evidence)")
        if findings and report.snp_tcb is None and any(self.snp):
            findings.insert(0, f"no SEV-SNP TCB ({report.tee} evidence)")
        return findings

    def __str__(self) -> str:
        parts = []
        if self.tcb_info_evaluation or self.qe_identity_evaluation:
            parts.append(f"TCB evaluation {self.tcb_info_evaluation}/{self.qe_identity_evaluation}")
        if any(self.snp):
            tcb = ",".join(
                f"{key}={value}" for key, value in zip(SNP_TCB_COMPONENTS, self.snp, strict=True) if value
            )
            parts.append(f"SEV-SNP TCB {tcb}")
        return ", ".join(parts) or "none"

    def to_json(self) -> dict[str, object]:
        return {
            "tcb_info_evaluation": self.tcb_info_evaluation,
            "qe_identity_evaluation": self.qe_identity_evaluation,
            "snp": list(self.snp),
        }

    @classmethod
    def from_json(cls, doc: object) -> TcbFloor:
        """Raises ValueError, KeyError or TypeError on anything but :meth:`to_json`'s form."""
        if not isinstance(doc, dict) or set(doc) != {"tcb_info_evaluation", "qe_identity_evaluation", "snp"}:
            raise ValueError("not a TCB floor")
        if not isinstance(doc["snp"], list):
            raise ValueError("not a TCB floor")
        return cls(doc["tcb_info_evaluation"], doc["qe_identity_evaluation"], tuple(doc["snp"]))


@dataclass(frozen=True)
class ClusterSecrets:
    """What members share. ``floor``: no member serves a model version below it; ``tcb``: no
    enclave on a platform below it receives these secrets (:class:`TcbFloor`)."""

    cluster_id: bytes
    ohttp_key: ohttp.GatewayKey
    sealing_key: bytes
    floor: int
    tcb: TcbFloor = TcbFloor()

    def __repr__(self) -> str:
        return (
            f"ClusterSecrets(cluster_id={self.cluster_id.hex()}, floor={self.floor}, tcb=({self.tcb}),"
            " <keys hidden>)"
        )

    @classmethod
    def found(cls, ohttp_key: ohttp.GatewayKey, tcb: TcbFloor = TcbFloor()) -> ClusterSecrets:
        """A new cluster around the founding enclave's own OHTTP key, its TCB floor ``tcb`` (the
        founder's own platform and the configuration's minimum)."""
        return cls(
            secrets.token_bytes(CLUSTER_ID_BYTES), ohttp_key, secrets.token_bytes(SEALING_KEY_BYTES), 0, tcb
        )

    def with_floor(self, floor: int) -> ClusterSecrets:
        return dataclasses.replace(self, floor=max(self.floor, floor))

    def with_tcb(self, tcb: TcbFloor) -> ClusterSecrets:
        return dataclasses.replace(self, tcb=self.tcb.merge(tcb))

    def encode(self) -> bytes:
        return json.dumps(
            {
                "cluster_id": self.cluster_id.hex(),
                "ohttp_key_id": self.ohttp_key.config.key_id,
                "ohttp_private_key": b64.encode(self.ohttp_key.private_bytes()),
                "sealing_key": b64.encode(self.sealing_key),
                "floor": self.floor,
                "tcb_floor": self.tcb.to_json(),
            }
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> ClusterSecrets:
        try:
            doc = json.loads(data)
            cluster_id = bytes.fromhex(doc["cluster_id"])
            key_id, floor = doc["ohttp_key_id"], doc["floor"]
            if not (isinstance(key_id, int) and isinstance(floor, int) and 0 <= key_id <= 255 and floor >= 0):
                raise ValueError
            key = ohttp.GatewayKey.from_private_bytes(key_id, b64.decode(doc["ohttp_private_key"]))
            sealing_key = b64.decode(doc["sealing_key"])
            tcb = TcbFloor.from_json(doc["tcb_floor"])
        except (ValueError, KeyError, TypeError, UsageError, RecursionError):
            raise KeyReleaseError("key release refused: the released secrets are malformed") from None
        if len(cluster_id) != CLUSTER_ID_BYTES or len(sealing_key) != SEALING_KEY_BYTES:
            raise KeyReleaseError("key release refused: the released secrets are malformed")
        return cls(cluster_id, key, sealing_key, floor, tcb)


@dataclass(frozen=True)
class PendingJoin:
    """The joiner's half of one attempt: its one-time key and nonce, and the request it sent."""

    key: ohttp.GatewayKey
    nonce: bytes
    request: bytes

    def __repr__(self) -> str:
        return "PendingJoin(<key hidden>)"


def join_request(attest: Attest, config: EnclaveConfig) -> PendingJoin:
    """A fresh key pair and nonce, and the join request that carries them with evidence."""
    key = ohttp.GatewayKey.generate(key_id=0)
    key_config, nonce = key.config.encode(), secrets.token_bytes(NONCE_BYTES)
    document = attest(_binding(key_config, config, nonce, JOIN_LABEL))
    request = _encode({"key_config": key_config, "nonce": nonce, "evidence": document})
    return PendingJoin(key, nonce, request)


def release(
    request: bytes,
    cluster: ClusterSecrets,
    *,
    own: EnclaveReport,
    config: EnclaveConfig,
    attest: Attest,
    verifier: Verifier,
    now: datetime,
    pending: PendingJoin | None = None,
) -> bytes:
    """The giver's answer to a join request: the cluster's secrets sealed to the joiner, with the
    giver's evidence. Raises :class:`KeyReleaseError` unless the joiner is the same enclave as
    ``own`` (the giver's own verified report) at the same or a higher security level, and both
    reach the cluster's TCB floor (``cluster.tcb``). ``pending``: the giver's own join request,
    if it has one out (a member asking for a refresh): a request with its nonce is refused, since a
    release to itself would teach it nothing and count as a refresh."""
    below = cluster.tcb.below(own)
    if below:
        raise KeyReleaseError(
            f"key release refused: this enclave's own evidence is below the cluster's TCB floor: {below[0]}"
            " (its host gave it older collateral or a lower reported TCB)"
        )
    fields = _decode(request, ("key_config", "nonce", "evidence"))
    key_config, nonce = fields["key_config"], fields["nonce"]
    if len(nonce) != NONCE_BYTES:
        raise KeyReleaseError(f"key release refused: the join request's nonce is not {NONCE_BYTES} bytes")
    if pending is not None and hmac.compare_digest(nonce, pending.nonce):
        raise KeyReleaseError(
            "key release refused: the join request is this enclave's own (a refresh learns the floor"
            " from other members only)"
        )
    try:
        peer_key = ohttp.KeyConfig.decode(key_config)
        verify(
            fields["evidence"],
            _SamePeer(own, config, "joiner", cluster.tcb),
            verifier=verifier,
            key_config=key_config,
            nonce=nonce,
            now=now,
            label=JOIN_LABEL,
        )
    except KeyReleaseError:
        raise
    except (AttestationError, ProtocolError) as exc:
        raise KeyReleaseError(f"key release refused: the joiner's evidence: {exc}") from None
    request_digest = hashlib.sha256(request).digest()
    try:
        hdr, enc, context, _ = ohttp.setup_sender(peer_key, RELEASE_INFO, None)
    except ProtocolError as exc:
        raise KeyReleaseError(f"key release refused: the joiner's key: {exc}") from None
    sealed = hdr + enc + context.seal(cluster.encode(), request_digest)
    bound = request_digest + hashlib.sha256(sealed).digest()
    document = attest(_binding(bound, config, nonce, RELEASE_LABEL))
    return _encode({"sealed": sealed, "evidence": document})


def accept(
    answer: bytes,
    pending: PendingJoin,
    *,
    own: EnclaveReport,
    config: EnclaveConfig,
    verifier: Verifier,
    now: datetime,
) -> ClusterSecrets:
    """The joiner's check of a release: the giver's evidence verifies, binds this answer to this
    request, and shows the same enclave as ``own``; only then are the secrets opened."""
    fields = _decode(answer, ("sealed", "evidence"))
    sealed = fields["sealed"]
    request_digest = hashlib.sha256(pending.request).digest()
    bound = request_digest + hashlib.sha256(sealed).digest()
    try:
        verify(
            fields["evidence"],
            _SamePeer(own, config, "giver"),
            verifier=verifier,
            key_config=bound,
            nonce=pending.nonce,
            now=now,
            label=RELEASE_LABEL,
        )
    except KeyReleaseError:
        raise
    except AttestationError as exc:
        raise KeyReleaseError(f"key release refused: the giver's evidence: {exc}") from None
    try:
        _, context, _, ciphertext = ohttp.setup_recipient(pending.key, sealed, RELEASE_INFO)
        plaintext = context.open(ciphertext, request_digest)
    except (ProtocolError, DecryptionError, PyHPKEError):
        raise KeyReleaseError("key release refused: the released secrets do not decrypt") from None
    return ClusterSecrets.decode(plaintext)


def check_peer(
    own: EnclaveReport, config: EnclaveConfig, peer: Attestation, *, who: str, now: datetime
) -> None:
    """Raise unless ``peer`` is the same enclave as ``own``, at the same or a higher level: and, as
    far as the evidence says, on a platform no older than its own (a client's ``TCBEVAL:``,
    ``SNPTCB:`` and ``GRACE:`` hold for the replica it attests; Ray may route it to any member)."""
    p = peer.report
    if p.tee != Tee.SIMULATION and not p.platform_settings:
        raise KeyReleaseError(f"key release refused: the {who}'s evidence names no platform settings")
    differences = [
        name
        for name, mine, theirs in (
            ("TEE", own.tee, p.tee),
            ("code hash", own.code_hash, p.code_hash),
            ("signer", own.signer, p.signer),
            ("product id", own.product_id, p.product_id),
            ("security version", own.security_version, p.security_version),
            ("debug flag", own.debug, p.debug),
            (
                "platform settings (SGX attributes, KSS; SEV-SNP policy, VMPL; TDX RTMRs, attributes)",
                own.platform_settings,
                p.platform_settings,
            ),
        )
        if mine != theirs
    ]
    if not hmac.compare_digest(peer.config.canonical(), config.canonical()):
        differences.append("configuration")
    if differences:
        raise KeyReleaseError(f"key release refused: the {who} differs in {', '.join(differences)}")
    if p.security_level < own.security_level:
        raise KeyReleaseError(
            f"key release refused: the {who} is {p.security_level.name}, below this enclave's"
            f" {own.security_level.name}"
        )
    _no_older(own, p, who=who, now=now)


def _no_older(own: EnclaveReport, peer: EnclaveReport, *, who: str, now: datetime) -> None:
    """DCAP: the peer's collateral current (no grace: the peer's host chose it), its TCB evaluation
    data numbers at least this enclave's; SEV-SNP: every TCB component at least this enclave's."""
    mine, theirs = own.dcap_collateral, peer.dcap_collateral
    if theirs is not None:
        if theirs.expired_for(now) is not None:
            raise KeyReleaseError(
                f"key release refused: the {who}'s collateral expired at"
                f" {theirs.next_update:%Y-%m-%dT%H:%M:%SZ}"
            )
        if mine is not None and (
            theirs.tcb_info_evaluation_data_number < mine.tcb_info_evaluation_data_number
            or theirs.qe_identity_evaluation_data_number < mine.qe_identity_evaluation_data_number
        ):
            raise KeyReleaseError(
                f"key release refused: the {who}'s collateral is older (TCB evaluation data number) than"
                " this enclave's"
            )
    if own.snp_tcb is not None:
        if peer.snp_tcb is None:
            raise KeyReleaseError(f"key release refused: the {who}'s evidence carries no SEV-SNP TCB")
        older = [
            name
            for name in ("bootloader", "tee", "snp", "microcode", "fmc")
            if (getattr(peer.snp_tcb, name) or 0) < (getattr(own.snp_tcb, name) or 0)
        ]
        if older:
            raise KeyReleaseError(
                f"key release refused: the {who}'s SEV-SNP TCB is older in {', '.join(older)}"
            )


def self_report(attest: Attest, config: EnclaveConfig, *, verifier: Verifier, now: datetime) -> EnclaveReport:
    """This enclave's own report, verified as a peer would verify it (the baseline of check_peer)."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    probe = b"enclave-infer key release self-check"
    document = attest(_binding(probe, config, nonce, JOIN_LABEL))
    return verify(
        document, _OWN_EVIDENCE, verifier=verifier, key_config=probe, nonce=nonce, now=now, label=JOIN_LABEL
    ).report


@dataclass(frozen=True)
class _SamePeer:
    """Key release's policy: :func:`check_peer` against this enclave's own report."""

    own: EnclaveReport
    config: EnclaveConfig
    who: str
    tcb: TcbFloor = TcbFloor()  # the giver's check of a joiner: the cluster's TCB floor

    def verify(self, attestation: Attestation, *, now: datetime) -> None:
        check_peer(self.own, self.config, attestation, who=self.who, now=now)
        below = self.tcb.below(attestation.report)
        if below:
            raise KeyReleaseError(
                f"key release refused: the {self.who} is below the cluster's TCB floor: {below[0]}"
            )


class _OwnEvidence:
    """No policy, explicitly: :func:`self_report`'s evidence is this enclave's own, made a moment ago
    by its own platform, and is the baseline peers are compared with; there is nothing to compare
    it with."""

    def verify(self, attestation: Attestation, *, now: datetime) -> None:
        log.debug("own evidence verified as a peer would verify it (the key release baseline)")


_OWN_EVIDENCE = _OwnEvidence()


def _binding(bound: bytes, config: EnclaveConfig, nonce: bytes, label: bytes) -> bytes:
    return report_data_binding(bound, config.digest(), nonce, label=label)


def _encode(fields: dict[str, bytes]) -> bytes:
    return json.dumps({"version": VERSION, **{k: b64.encode(v) for k, v in fields.items()}}).encode()


def _decode(message: bytes, names: tuple[str, ...]) -> dict[str, bytes]:
    if len(message) > MAX_MESSAGE_BYTES:
        raise KeyReleaseError("key release refused: message too large")
    try:
        doc = json.loads(message)
        if not isinstance(doc, dict) or doc.get("version") != VERSION or set(doc) != {"version", *names}:
            raise ValueError
        return {name: b64.decode(doc[name]) for name in names}
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError):
        raise KeyReleaseError("key release refused: malformed message") from None
