"""An emulated Intel DCAP platform: what Intel's PCS and a Quoting Enclave produce, under a test root.

TEST-ONLY. Everything here chains up to "Emulated SGX Root CA", a P-256 key generated in the test
process. enclave-infer's verifier pins Intel's SGX Root CA and refuses all of it (a test asserts
so); only a test that hands :attr:`EmulatedDcap.root_ca_der` to ``dcap_qvl.verify_with_root_ca``
(or to ``verify_quote(..., root_ca_der=...)``) accepts it.

What is emulated, and after which specification:

* the PKI of Intel's "SGX PCK Certificate and Certificate Revocation List Profile": Root CA → PCK
  Processor (or Platform) CA → PCK certificate carrying the SGX extensions (OID
  1.2.840.113741.1.13.1: PPID, TCB components, PCESVN, CPUSVN, PCE-ID, FMSPC, SGX Type, and for the
  Platform CA the platform instance id and configuration); Root CA → TCB Signing certificate; the
  Root CA CRL and the PCK CA CRL (v2, CRL number and authority key identifier, as Intel's);
* TCB info v3 (SGX; TDX with ``tdxModule``, ``tdxModuleIdentities`` and ``tdxtcbcomponents``) and
  enclave identity v2 (``QE``, ``TD_QE``) as Intel PCS API v4 serves them, signed as Intel signs
  them: ECDSA P-256 with SHA-256 over the exact text of the inner JSON object (what follows
  ``{"tcbInfo":``), the signature as hex of r‖s (32 bytes each, big-endian);
* quotes, as the Quoting Enclave builds them ("Intel SGX ECDSA Quote Library API", quote v3;
  "Intel TDX DCAP Quoting Library API", quote v4 and v5): an attestation key (P-256) signs the
  header and report body; the QE's own SGX report carries SHA-256(attestation key ‖ QE auth data)
  in its report data and is signed by the PCK key; certification data type 5 carries the PEM chain
  PCK certificate, PCK CA, root. A TDX (v4, v5) quote wraps that in certification data type 6.

Layout of the signature data, v3 (after ``u32 signature_data_len``)::

    ecdsa_signature (64) ‖ attestation_key (64) ‖ qe_report (384) ‖ qe_report_signature (64)
    ‖ u16 qe_auth_data_len ‖ qe_auth_data ‖ u16 cert_type = 5 ‖ u32 size ‖ PEM chain

and v4/v5::

    ecdsa_signature (64) ‖ attestation_key (64) ‖ u16 cert_type = 6 ‖ u32 size
    ‖ [ qe_report ‖ qe_report_signature ‖ u16 len ‖ qe_auth_data ‖ u16 5 ‖ u32 size ‖ PEM chain ]

A platform gets one TCB status from its TCB info: :meth:`EmulatedDcap.tcb_info` writes levels such
that the PCK certificate's CPUSVN and PCESVN (and, for TDX, the TD's TEE_TCB_SVN) reach exactly the
level with the status asked for.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, TypedDict, Unpack

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

__all__ = [
    "CERT_NOT_AFTER",
    "CERT_NOT_BEFORE",
    "EVALUATION_DATA_NUMBER",
    "ISSUE_DATE",
    "NEXT_UPDATE",
    "NOW",
    "ROOT_CA_NAME",
    "TCB_STATUSES",
    "Collateral",
    "CollateralOptions",
    "EmulatedDcap",
    "Platform",
    "SignedDocument",
    "Tee",
    "sgx_extension",
    "sgx_report_body",
]

Tee = Literal["sgx", "tdx"]

ROOT_CA_NAME = "Emulated SGX Root CA"
# The statuses a TCB info level may carry (PCS API v4, appendix A, "tcbStatus").
TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)

# The default clock: collateral issued at ISSUE_DATE and valid until NEXT_UPDATE; tests pin NOW.
ISSUE_DATE = datetime(2026, 1, 1, tzinfo=UTC)
NEXT_UPDATE = ISSUE_DATE + timedelta(days=30)
NOW = ISSUE_DATE + timedelta(days=1)
EVALUATION_DATA_NUMBER = 18  # the collateral's tcbEvaluationDataNumber unless a test asks for another
CERT_NOT_BEFORE = datetime(2025, 1, 1, tzinfo=UTC)
CERT_NOT_AFTER = datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)

# --- quote constants (Intel SGX ECDSA Quote Library API; Intel TDX DCAP Quoting Library API) -------
ATT_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
CERT_TYPE_PCK_CHAIN = 5  # PEM: PCK certificate, PCK CA, root
CERT_TYPE_QE_REPORT = 6  # QE report certification data, wrapping type 5 (quote v4, v5)
V5_BODY_TD10, V5_BODY_TD15 = 2, 3
TD10_BODY_SIZE, TD15_BODY_SIZE = 584, 648
SGX_REPORT_BODY_SIZE = 384
# SGX ATTRIBUTES.FLAGS (Intel SDM vol. 3D, "ATTRIBUTES"): INIT, DEBUG, MODE64BIT, PROVISIONKEY.
SGX_FLAG_INIT, SGX_FLAG_DEBUG, SGX_FLAG_MODE64BIT, SGX_FLAG_PROVISION_KEY = 0x01, 0x02, 0x04, 0x10
# TD_ATTRIBUTES (TDX module ABI): bit 0 DEBUG; bit 28 SEPT_VE_DISABLE, which dcap-qvl requires.
TD_ATTR_DEBUG = 1 << 0
TD_ATTR_SEPT_VE_DISABLE = 1 << 28
QE_AUTH_DATA = bytes(range(32))  # what Intel's QE puts there; dcap-qvl insists on 32 bytes

# The emulated Quoting Enclaves (SGX QE: ISVPRODID 1; TD QE: ISVPRODID 2, as Intel's).
QE_MRSIGNER = hashlib.sha256(b"emulated Intel quoting enclave signer").digest()
QE_MRENCLAVE = hashlib.sha256(b"emulated Intel quoting enclave").digest()
QE_PROD_IDS = {"sgx": 1, "tdx": 2}
QE_ISVSVNS = {"sgx": 8, "tdx": 4}
QE_FLAGS = SGX_FLAG_INIT | SGX_FLAG_MODE64BIT | SGX_FLAG_PROVISION_KEY
QE_XFRM = 0xE7
# Identity masks as in Intel's QE identity: MISCSELECT all bits, ATTRIBUTES.FLAGS all but DEBUG.
QE_MISCSELECT_MASK = "FFFFFFFF"
QE_ATTRIBUTES_MASK = "FBFFFFFFFFFFFFFF0000000000000000"

# --- the SGX extensions of a PCK certificate (PCK Certificate and CRL Profile, section 1.5) --------
SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"


@dataclass(frozen=True)
class Platform:
    """What the PCK certificate says about the machine, and the TDX module it runs.

    ``cpu_svn`` is the 16 SGX TCB component SVNs (CPUSVN). ``tee_tcb_svn`` is the TDX module's
    TEE_TCB_SVN: byte 0 the module's SVN, byte 1 its major version (which names the module
    identity ``TDX_01`` etc. in the TCB info), the rest further TDX TCB components.
    """

    fmspc: bytes = bytes.fromhex("00906ed50000")
    pce_id: bytes = bytes(2)
    cpu_svn: bytes = bytes([3, 3, 2, 2, 4, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0])
    pce_svn: int = 13
    sgx_type: int = 1  # 0 Standard, 1 Scalable, 2 Scalable with integrity
    ppid: bytes = hashlib.sha256(b"emulated PPID").digest()[:16]
    ca: Literal["processor", "platform"] = "platform"
    platform_instance_id: bytes = hashlib.sha256(b"emulated platform instance").digest()[:16]
    tee_tcb_svn: bytes = bytes([7, 1, 3] + [0] * 13)

    def __post_init__(self) -> None:
        if len(self.fmspc) != 6 or len(self.pce_id) != 2 or len(self.ppid) != 16:
            raise ValueError("FMSPC is 6 bytes, PCE-ID 2, PPID 16")
        if len(self.cpu_svn) != 16 or len(self.tee_tcb_svn) != 16:
            raise ValueError("CPUSVN and TEE_TCB_SVN are 16 bytes")
        if self.ca not in ("processor", "platform"):
            raise ValueError("the PCK CA is 'processor' or 'platform'")


def _der(tag: int, content: bytes) -> bytes:
    """One DER TLV (ITU-T X.690 §8.1): definite length, short form below 128 bytes."""
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + content


def _seq(*items: bytes) -> bytes:
    return _der(0x30, b"".join(items))


def _oid(dotted: str) -> bytes:
    first, second, *rest = (int(p) for p in dotted.split("."))
    body = bytearray([40 * first + second])
    for arc in rest:
        groups = [arc & 0x7F]
        while arc := arc >> 7:
            groups.append(0x80 | (arc & 0x7F))
        body += bytes(reversed(groups))
    return _der(0x06, bytes(body))


def _integer(n: int) -> bytes:
    return _der(0x02, n.to_bytes(n.bit_length() // 8 + 1, "big"))  # non-negative, minimal


def _entry(arc: str, value: bytes) -> bytes:
    return _seq(_oid(f"{SGX_EXTENSION_OID}.{arc}"), value)


def sgx_extension(platform: Platform) -> bytes:
    """The DER value of the SGX extension (a SEQUENCE of (OID, value) pairs), as Intel writes it."""
    tcb = [_entry(f"2.{i + 1}", _integer(svn)) for i, svn in enumerate(platform.cpu_svn)]
    tcb += [_entry("2.17", _integer(platform.pce_svn)), _entry("2.18", _der(0x04, platform.cpu_svn))]
    entries = [
        _entry("1", _der(0x04, platform.ppid)),
        _entry("2", _seq(*tcb)),
        _entry("3", _der(0x04, platform.pce_id)),
        _entry("4", _der(0x04, platform.fmspc)),
        _entry("5", _der(0x0A, bytes([platform.sgx_type]))),  # ENUMERATED
    ]
    if platform.ca == "platform":  # multi-package platforms: instance id and configuration
        false = _der(0x01, b"\x00")
        entries += [
            _entry("6", _der(0x04, platform.platform_instance_id)),
            _entry("7", _seq(_entry("7.1", false), _entry("7.2", false), _entry("7.3", false))),
        ]
    return _seq(*entries)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "enclave-infer tests (not Intel)"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


def _raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256/SHA-256 as Intel encodes it in quotes and collateral: r ‖ s, 32 bytes each."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _raw_public_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return point[1:]  # x ‖ y, without the 0x04 prefix


def _pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _compact(doc: object) -> str:
    return json.dumps(doc, separators=(",", ":"))


@dataclass(frozen=True)
class SignedDocument:
    """A TCB info or enclave identity: the exact signed text of the inner object and its signature."""

    key: str  # "tcbInfo" or "enclaveIdentity"
    body: str
    signature: bytes  # r ‖ s

    def response(self) -> str:
        """The PCS response body: ``{"tcbInfo":<body>,"signature":"<hex>"}``."""
        return f'{{"{self.key}":{self.body},"signature":"{self.signature.hex()}"}}'

    @property
    def document(self) -> dict[str, object]:
        doc = json.loads(self.body)
        assert isinstance(doc, dict)
        return doc


@dataclass(frozen=True)
class Collateral:
    """What a verifier needs besides the quote, as a PCS serves it piece by piece."""

    tcb_info: SignedDocument
    qe_identity: SignedDocument
    pck_crl: bytes  # DER
    root_ca_crl: bytes  # DER
    pck_crl_issuer_chain: str  # PEM: PCK CA, root
    tcb_info_issuer_chain: str  # PEM: TCB Signing, root; the QE identity's issuer chain too

    def to_json(self) -> bytes:
        """dcap-qvl's ``QuoteCollateralV3`` JSON: chains as PEM text, CRLs and signatures as hex."""
        doc = {
            "pck_crl_issuer_chain": self.pck_crl_issuer_chain,
            "root_ca_crl": self.root_ca_crl.hex(),
            "pck_crl": self.pck_crl.hex(),
            "tcb_info_issuer_chain": self.tcb_info_issuer_chain,
            "tcb_info": self.tcb_info.body,
            "tcb_info_signature": self.tcb_info.signature.hex(),
            "qe_identity_issuer_chain": self.tcb_info_issuer_chain,
            "qe_identity": self.qe_identity.body,
            "qe_identity_signature": self.qe_identity.signature.hex(),
        }
        return json.dumps(doc).encode()


class CollateralOptions(TypedDict, total=False):
    """What :meth:`EmulatedDcap.collateral_parts` takes besides the TEE, with its defaults there;
    :meth:`EmulatedDcap.collateral` and :class:`tests.emulation.pccs.FakePccs` take the same."""

    status: str
    advisory_ids: Sequence[str]
    issue_date: datetime
    next_update: datetime
    evaluation_data_number: int
    revoke_pck: bool


@dataclass
class EmulatedDcap:
    """A test root CA and everything under it: PCK chain, TCB signing, CRLs, collateral, quotes.

    Keys are generated at construction; build one per test module (or session) and share it.
    """

    platform: Platform = field(default_factory=Platform)
    cert_not_before: datetime = CERT_NOT_BEFORE
    cert_not_after: datetime = CERT_NOT_AFTER

    def __post_init__(self) -> None:
        def key() -> ec.EllipticCurvePrivateKey:
            return ec.generate_private_key(ec.SECP256R1())

        self.root_key, self.pck_ca_key, self.pck_key, self.tcb_signing_key = key(), key(), key(), key()
        self.attestation_key = key()  # the Quoting Enclave's ECDSA attestation key
        base = "https://emulated-pcs.invalid"  # .invalid (RFC 6761): never resolves
        ca_kind = self.platform.ca.capitalize()
        root_crl_url = f"{base}/IntelSGXRootCA.der"
        self.root_ca = self._certificate(
            ROOT_CA_NAME, self.root_key, None, path_length=1, crl_url=root_crl_url
        )
        by_root = (self.root_ca, self.root_key)
        self.pck_ca = self._certificate(
            f"Emulated SGX PCK {ca_kind} CA", self.pck_ca_key, by_root, path_length=0, crl_url=root_crl_url
        )
        self.pck_certificate = self._certificate(
            "Emulated SGX PCK Certificate",
            self.pck_key,
            (self.pck_ca, self.pck_ca_key),
            crl_url=f"{base}/sgx/certification/v4/pckcrl?ca={self.platform.ca}&encoding=der",
            sgx=sgx_extension(self.platform),
        )
        self.tcb_signing = self._certificate(
            "Emulated SGX TCB Signing", self.tcb_signing_key, by_root, crl_url=root_crl_url
        )

    # --- certificates and CRLs -------------------------------------------------------------------

    def _certificate(
        self,
        cn: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,  # None: self-signed
        *,
        crl_url: str,
        path_length: int | None = None,
        sgx: bytes | None = None,
    ) -> x509.Certificate:
        is_ca = path_length is not None
        issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer is not None else (_name(cn), key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.cert_not_before)
            .not_valid_after(self.cert_not_after)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
            )
            .add_extension(
                x509.CRLDistributionPoints(
                    [x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=not is_ca,
                    content_commitment=not is_ca,  # "Non Repudiation" in Intel's profile
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=is_ca,
                    crl_sign=is_ca,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=path_length), critical=True)
        )
        if sgx is not None:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSION_OID), sgx), critical=False
            )
        return builder.sign(issuer_key, hashes.SHA256())

    @property
    def root_ca_der(self) -> bytes:
        return self.root_ca.public_bytes(serialization.Encoding.DER)

    @property
    def pck_chain_pem(self) -> str:
        """PCK certificate, PCK CA, root: certification data type 5 of a quote."""
        return _pem(self.pck_certificate, self.pck_ca, self.root_ca)

    @property
    def pck_crl_issuer_chain(self) -> str:
        return _pem(self.pck_ca, self.root_ca)

    @property
    def tcb_info_issuer_chain(self) -> str:
        """TCB Signing certificate and root: the issuer chain of TCB info and of QE identity."""
        return _pem(self.tcb_signing, self.root_ca)

    def _crl(
        self,
        issuer: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        this_update: datetime,
        next_update: datetime,
        revoked: Sequence[x509.Certificate],
    ) -> bytes:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.subject)
            .last_update(this_update)
            .next_update(next_update)
            .add_extension(x509.CRLNumber(1), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
            )
        )
        for cert in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(cert.serial_number)
                .revocation_date(this_update)
                .build()
            )
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    def root_ca_crl(
        self,
        *,
        this_update: datetime = ISSUE_DATE,
        next_update: datetime = NEXT_UPDATE,
        revoke_pck_ca: bool = False,
        revoke_tcb_signing: bool = False,
    ) -> bytes:
        """The Root CA's CRL (DER); it may revoke the PCK CA or the TCB Signing certificate."""
        revoked = [c for c, r in ((self.pck_ca, revoke_pck_ca), (self.tcb_signing, revoke_tcb_signing)) if r]
        return self._crl(self.root_ca, self.root_key, this_update, next_update, revoked)

    def pck_crl(
        self,
        *,
        this_update: datetime = ISSUE_DATE,
        next_update: datetime = NEXT_UPDATE,
        revoke_pck: bool = False,
    ) -> bytes:
        """The PCK CA's CRL (DER); ``revoke_pck`` lists this platform's PCK certificate."""
        return self._crl(
            self.pck_ca,
            self.pck_ca_key,
            this_update,
            next_update,
            [self.pck_certificate] if revoke_pck else [],
        )

    # --- TCB info and QE identity ----------------------------------------------------------------

    def _sign(self, key: str, doc: dict[str, object]) -> SignedDocument:
        body = _compact(doc)
        return SignedDocument(key, body, _raw_signature(self.tcb_signing_key, body.encode()))

    def tcb_info(
        self,
        tee: Tee,
        *,
        status: str = "UpToDate",
        advisory_ids: Sequence[str] = (),
        issue_date: datetime = ISSUE_DATE,
        next_update: datetime = NEXT_UPDATE,
        evaluation_data_number: int = EVALUATION_DATA_NUMBER,
        module_status: str = "UpToDate",
    ) -> SignedDocument:
        """TCB info v3 for this platform's FMSPC, whose levels give the platform ``status``.

        Levels, highest first as Intel lists them: unless ``status`` is UpToDate, a newer UpToDate
        level the platform does not reach (CPUSVN component 0 one higher); the platform's own level
        with ``status``; an older OutOfDate level below it. For TDX each level also has
        ``tdxtcbcomponents`` and the module identity ``TDX_<major>`` gives the module
        ``module_status`` (dcap-qvl reports the worse of the two).
        """
        if status not in TCB_STATUSES or module_status not in TCB_STATUSES:
            raise ValueError(f"unknown TCB status: {status!r} / {module_status!r}")
        p = self.platform
        tdx = tee == "tdx"
        # TEE_TCB_SVN byte 1 is the module's major version; Intel's levels carry 0 there.
        tdx_svns = bytes([p.tee_tcb_svn[0], 0, *p.tee_tcb_svn[2:]])

        def level(
            cpu_svn: bytes, pce_svn: int, tdx_svn: bytes, when: str, level_status: str, ids: Sequence[str]
        ) -> dict[str, object]:
            tcb: dict[str, object] = {
                "sgxtcbcomponents": [{"svn": svn} for svn in cpu_svn],
                "pcesvn": pce_svn,
            }
            if tdx:
                tcb["tdxtcbcomponents"] = [{"svn": svn} for svn in tdx_svn]
            out: dict[str, object] = {"tcb": tcb, "tcbDate": when, "tcbStatus": level_status}
            if ids:
                out["advisoryIDs"] = list(ids)
            return out

        levels: list[dict[str, object]] = []
        if status != "UpToDate":
            if p.cpu_svn[0] == 0xFF:
                raise ValueError("CPUSVN component 0 is 255: no newer level can be written above it")
            newer = bytes([p.cpu_svn[0] + 1, *p.cpu_svn[1:]])
            levels.append(level(newer, p.pce_svn, tdx_svns, "2025-11-12T00:00:00Z", "UpToDate", ()))
        levels.append(level(p.cpu_svn, p.pce_svn, tdx_svns, "2025-05-14T00:00:00Z", status, advisory_ids))
        levels.append(
            level(bytes(16), 0, bytes(16), "2018-01-04T00:00:00Z", "OutOfDate", ("INTEL-SA-00106",))
        )

        doc: dict[str, object] = {
            "id": "TDX" if tdx else "SGX",
            "version": 3,
            "issueDate": _iso(issue_date),
            "nextUpdate": _iso(next_update),
            "fmspc": p.fmspc.hex(),
            "pceId": p.pce_id.hex(),
            "tcbType": 0,
            "tcbEvaluationDataNumber": evaluation_data_number,
        }
        if tdx:
            zero_signer = "00" * 48  # Intel's TDX module MRSIGNER (MRSIGNERSEAM) is all zero
            doc["tdxModule"] = {"mrsigner": zero_signer, "attributes": "00" * 8, "attributesMask": "FF" * 8}
            module_levels: list[dict[str, object]] = [
                {
                    "tcb": {"isvsvn": p.tee_tcb_svn[0]},
                    "tcbDate": "2025-05-14T00:00:00Z",
                    "tcbStatus": module_status,
                }
            ]
            if p.tee_tcb_svn[0] > 0:
                module_levels.append(
                    {
                        "tcb": {"isvsvn": 0},
                        "tcbDate": "2023-08-09T00:00:00Z",
                        "tcbStatus": "OutOfDate",
                        "advisoryIDs": ["INTEL-SA-01036"],
                    }
                )
            doc["tdxModuleIdentities"] = [
                {
                    "id": f"TDX_{p.tee_tcb_svn[1]:02X}",
                    "mrsigner": zero_signer,
                    "attributes": "00" * 8,
                    "attributesMask": "FF" * 8,
                    "tcbLevels": module_levels,
                }
            ]
        doc["tcbLevels"] = levels
        return self._sign("tcbInfo", doc)

    def qe_identity(
        self,
        tee: Tee,
        *,
        status: str = "UpToDate",
        issue_date: datetime = ISSUE_DATE,
        next_update: datetime = NEXT_UPDATE,
        evaluation_data_number: int = EVALUATION_DATA_NUMBER,
    ) -> SignedDocument:
        """Enclave identity v2 of the emulated QE (``QE`` for SGX, ``TD_QE`` for TDX).

        The QE's ISVSVN reaches the first level, which has ``status``."""
        svn = QE_ISVSVNS[tee]
        doc: dict[str, object] = {
            "id": "TD_QE" if tee == "tdx" else "QE",
            "version": 2,
            "issueDate": _iso(issue_date),
            "nextUpdate": _iso(next_update),
            "tcbEvaluationDataNumber": evaluation_data_number,
            "miscselect": "00000000",
            "miscselectMask": QE_MISCSELECT_MASK,
            "attributes": struct.pack("<QQ", QE_FLAGS, 0).hex().upper(),
            "attributesMask": QE_ATTRIBUTES_MASK,
            "mrsigner": QE_MRSIGNER.hex().upper(),
            "isvprodid": QE_PROD_IDS[tee],
            "tcbLevels": [
                {"tcb": {"isvsvn": svn}, "tcbDate": "2025-05-14T00:00:00Z", "tcbStatus": status},
                {
                    "tcb": {"isvsvn": svn - 2},
                    "tcbDate": "2021-11-10T00:00:00Z",
                    "tcbStatus": "OutOfDate",
                    "advisoryIDs": ["INTEL-SA-00615"],
                },
            ],
        }
        return self._sign("enclaveIdentity", doc)

    def collateral_parts(
        self,
        tee: Tee,
        *,
        status: str = "UpToDate",
        advisory_ids: Sequence[str] = (),
        issue_date: datetime = ISSUE_DATE,
        next_update: datetime = NEXT_UPDATE,
        evaluation_data_number: int = EVALUATION_DATA_NUMBER,
        revoke_pck: bool = False,
    ) -> Collateral:
        """TCB info (giving the platform ``status``), QE identity, CRLs and their issuer chains,
        all valid from ``issue_date`` to ``next_update`` (the CRLs' thisUpdate and nextUpdate too)."""
        return Collateral(
            tcb_info=self.tcb_info(
                tee,
                status=status,
                advisory_ids=advisory_ids,
                issue_date=issue_date,
                next_update=next_update,
                evaluation_data_number=evaluation_data_number,
            ),
            qe_identity=self.qe_identity(
                tee,
                issue_date=issue_date,
                next_update=next_update,
                evaluation_data_number=evaluation_data_number,
            ),
            pck_crl=self.pck_crl(this_update=issue_date, next_update=next_update, revoke_pck=revoke_pck),
            root_ca_crl=self.root_ca_crl(this_update=issue_date, next_update=next_update),
            pck_crl_issuer_chain=self.pck_crl_issuer_chain,
            tcb_info_issuer_chain=self.tcb_info_issuer_chain,
        )

    def collateral(self, tee: Tee, **options: Unpack[CollateralOptions]) -> bytes:
        """dcap-qvl ``QuoteCollateralV3`` JSON of :meth:`collateral_parts` (same options)."""
        return self.collateral_parts(tee, **options).to_json()

    # --- quotes ----------------------------------------------------------------------------------

    def _header(self, version: int, tee: Tee) -> bytes:
        """The 48-byte quote header; QE ID (user data) is per platform. TDX headers leave the
        QE and PCE SVN fields zero, as Intel's TD QE does."""
        qe_id = hashlib.sha256(b"emulated QE ID" + self.platform.ppid).digest()[:16]
        qe_svn, pce_svn = (QE_ISVSVNS["sgx"], self.platform.pce_svn) if tee == "sgx" else (0, 0)
        tee_type = TEE_TYPE_TDX if tee == "tdx" else TEE_TYPE_SGX
        return struct.pack(
            "<HHIHH16s20s",
            version,
            ATT_KEY_TYPE_ECDSA_P256,
            tee_type,
            qe_svn,
            pce_svn,
            INTEL_QE_VENDOR_ID,
            qe_id,
        )

    def _signature_data(self, signed: bytes, tee: Tee) -> bytes:
        """``u32 len ‖ signature data`` for the quote whose header and body are ``signed``."""
        attestation_key = _raw_public_key(self.attestation_key)
        qe_report = sgx_report_body(
            cpu_svn=self.platform.cpu_svn,
            flags=QE_FLAGS,
            xfrm=QE_XFRM,
            mrenclave=QE_MRENCLAVE,
            mrsigner=QE_MRSIGNER,
            isv_prod_id=QE_PROD_IDS[tee],
            isv_svn=QE_ISVSVNS[tee],
            report_data=hashlib.sha256(attestation_key + QE_AUTH_DATA).digest() + bytes(32),
        )
        chain = self.pck_chain_pem.encode() + b"\x00"  # the QE's buffer is NUL-terminated
        pck_data = struct.pack("<HI", CERT_TYPE_PCK_CHAIN, len(chain)) + chain
        qe_part = (
            qe_report
            + _raw_signature(self.pck_key, qe_report)
            + struct.pack("<H", len(QE_AUTH_DATA))
            + QE_AUTH_DATA
            + pck_data
        )
        if tee == "tdx":
            qe_part = struct.pack("<HI", CERT_TYPE_QE_REPORT, len(qe_part)) + qe_part
        data = _raw_signature(self.attestation_key, signed) + attestation_key + qe_part
        return struct.pack("<I", len(data)) + data

    def sgx_quote(
        self,
        report_data: bytes,
        *,
        mrenclave: bytes = hashlib.sha256(b"emulated enclave").digest(),
        mrsigner: bytes = hashlib.sha256(b"emulated enclave signer").digest(),
        isv_prod_id: int = 0,
        isv_svn: int = 0,
        debug: bool = False,
        flags: int = SGX_FLAG_INIT | SGX_FLAG_MODE64BIT,
        xfrm: int = 0x03,
    ) -> bytes:
        """An SGX quote v3 over an enclave report with these fields (``debug`` sets FLAGS.DEBUG)."""
        body = sgx_report_body(
            cpu_svn=self.platform.cpu_svn,
            flags=flags | (SGX_FLAG_DEBUG if debug else 0),
            xfrm=xfrm,
            mrenclave=mrenclave,
            mrsigner=mrsigner,
            isv_prod_id=isv_prod_id,
            isv_svn=isv_svn,
            report_data=report_data,
        )
        signed = self._header(3, "sgx") + body
        return signed + self._signature_data(signed, "sgx")

    def tdx_quote(
        self,
        report_data: bytes,
        *,
        version: Literal[4, 5] = 4,
        mrtd: bytes = hashlib.sha384(b"emulated TD").digest(),
        rtmrs: Sequence[bytes] = (bytes(48),) * 4,
        mr_config_id: bytes = bytes(48),
        mr_owner: bytes = bytes(48),
        mr_owner_config: bytes = bytes(48),
        debug: bool = False,
        td_attributes: int = TD_ATTR_SEPT_VE_DISABLE,
        xfam: int = 0x00000000000602E7,
        mr_seam: bytes = hashlib.sha384(b"emulated TDX module").digest(),
    ) -> bytes:
        """A TDX quote: v4 (TD report 1.0) or v5 (body type 3, TD report 1.5) over these fields."""
        if len(rtmrs) != 4:
            raise ValueError("a TD has four RTMRs")
        tee_tcb_svn = self.platform.tee_tcb_svn
        body = struct.pack(
            "<16s48s48s8sQQ48s48s48s48s48s48s48s48s64s",
            tee_tcb_svn,
            mr_seam,
            bytes(48),  # MRSIGNERSEAM: zero for Intel's TDX module
            bytes(8),  # SEAMATTRIBUTES
            td_attributes | (TD_ATTR_DEBUG if debug else 0),
            xfam,
            mrtd,
            mr_config_id,
            mr_owner,
            mr_owner_config,
            *rtmrs,
            _exact(report_data, 64, "report data"),
        )
        assert len(body) == TD10_BODY_SIZE
        if version == 5:
            body += tee_tcb_svn + bytes(48)  # TEE_TCB_SVN2 (no TD-preserving update), MRSERVICETD
            signed = self._header(5, "tdx") + struct.pack("<HI", V5_BODY_TD15, TD15_BODY_SIZE) + body
        elif version == 4:
            signed = self._header(4, "tdx") + body
        else:
            raise ValueError(f"TDX quote version {version} (4 or 5)")
        return signed + self._signature_data(signed, "tdx")


def sgx_report_body(
    *,
    cpu_svn: bytes,
    flags: int,
    xfrm: int,
    mrenclave: bytes,
    mrsigner: bytes,
    isv_prod_id: int,
    isv_svn: int,
    report_data: bytes,
    misc_select: int = 0,
) -> bytes:
    """An SGX report body (sgx_report_body_t, 384 bytes): the ISV enclave's or the QE's."""
    body = struct.pack(
        "<16sI28sQQ32s32s32s96sHH60s64s",
        cpu_svn,
        misc_select,
        b"",
        flags,
        xfrm,
        _exact(mrenclave, 32, "MRENCLAVE"),
        b"",
        _exact(mrsigner, 32, "MRSIGNER"),
        b"",
        isv_prod_id,
        isv_svn,
        b"",
        _exact(report_data, 64, "report data"),
    )
    assert len(body) == SGX_REPORT_BODY_SIZE
    return body


def _exact(value: bytes, size: int, what: str) -> bytes:
    if len(value) != size:
        raise ValueError(f"{what} must be {size} bytes, not {len(value)}")
    return value
