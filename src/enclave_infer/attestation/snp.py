"""AMD SEV-SNP attestation reports: verification on bytes, and mapping onto security levels.

Pure logic on bytes, used by clients (and by ``enclave-infer verify-evidence``). The report is the
ATTESTATION_REPORT of the AMD SEV Secure Nested Paging Firmware ABI Specification (publication
56860, §7.3 "Attestation", Table 22 "ATTESTATION_REPORT Structure" in revision 1.55), versions 2
to 5; the certificates are those of AMD's "Versioned Chip Endorsement Key (VCEK) Certificate and
KDS Interface Specification" (publication 57230). The report and its input forms are parsed in
:mod:`.snp_report`, the certificates in :mod:`.snp_certs`; this module is the verifier, and
re-exports their public names. :func:`verify_snp_report` runs, at the ``now`` the caller gives:

1. unwrap the input: a raw 1184-byte report, an Azure HCL report that wraps one, or the evidence
   container that :mod:`enclave_infer.enclave.tsm` sends (``{"report": ..., "certs": ...}``,
   :func:`encode_snp_evidence` and :func:`decode_snp_evidence`);
2. parse the report (:meth:`AttestationReport.from_bytes`): a known version, SIGNATURE_ALGO 1
   (ECDSA P-384 with SHA-384), POLICY's reserved bit 17 set and no bit this module does not know,
   SIGNING_KEY VCEK or VLEK, every reserved byte zero (the unsigned tail of the signature too);
3. an Azure HCL report: the hash of its runtime claims must equal REPORT_DATA (the rest zero);
4. the chain, out of the collateral (:func:`parse_snp_collateral`): VCEK ← ASK ← ARK, or VLEK ←
   ASVK ← ARK, where the ARK is one of AMD's roots pinned in :mod:`._amd_roots`, chosen by the
   intermediate's issuer name (an ARK in the collateral must be that one, byte for byte, and any
   other intermediate must be issued by it too); names, CA flags, every certificate inside its
   validity at ``now``, and each signature's outer and inner AlgorithmIdentifier exactly AMD's
   RSASSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt. Checks without cryptography first,
   so that garbage costs little;
5. each link's RSASSA-PSS signature, from the ARK down;
6. when a CRL is given: AMD's CRL, signed by that ARK, current at ``now``, not revoking the ASK or
   ASVK;
7. the report's signature: ECDSA P-384 with SHA-384 over bytes 0x000..0x29F, R and S stored
   little-endian at 0x2A0 and 0x2E8, under the key of the VCEK (or VLEK);
8. the VCEK/VLEK's AMD extensions (OID arc 1.3.6.1.4.1.3704.1) against the report: product name;
   boot loader, TEE, SNP, microcode (and, on Turin, FMC) patch levels equal to REPORTED_TCB;
   hwID equal to CHIP_ID for a VCEK (a VLEK has none); CPUID family of the product (reports v3+);
9. map the findings onto a security level:

=============================================================  ===============
finding                                                        level
=============================================================  ===============
every check passed, REPORTED_TCB not below COMMITTED_TCB       SECURE
REPORTED_TCB below COMMITTED_TCB in some component: the        STALE
report is signed with an endorsement key for older firmware
than the platform has committed to, a key that this older,
maybe vulnerable, firmware can derive too (AMD publishes no
TCB status to compare with: a client sets its own floor with
the ``SNPTCB:`` constraint)
guest POLICY allows debugging (bit 19), whatever the TCB       INSECURE
any check of steps 1 to 8 failing                              AttestationError
=============================================================  ===============

Findings that do not change the level are listed in :attr:`SnpVerdict.findings`: SMT, a migration
agent or CXL allowed by the policy, a VMPL other than 0, a VLEK (and its cloud provider), a masked
CHIP_ID, REPORTED_TCB below CURRENT_TCB, no ID block, no CRL checked, an Azure HCL wrapper.

The :class:`EnclaveReport`: ``code_hash`` is MEASUREMENT (48 bytes; ``C:`` with 96 hex digits),
``report_data`` is REPORT_DATA, ``snp_tcb`` is REPORTED_TCB (what ``SNPTCB:`` checks). ``signer``
is empty and ``product_id`` and ``security_version`` are zero: GUEST_SVN and FAMILY_ID/IMAGE_ID
come from an ID block that anyone may sign, so they are reported (with ID_KEY_DIGEST and
AUTHOR_KEY_DIGEST) but not mapped onto ``REVOKE:``. ``issued_at`` (what ``EXPIRE:`` measures) is
the CRL's thisUpdate, the age of AMD's latest word on its keys; without a CRL there is none.

Azure HCL reports (what an Azure confidential VM's vTPM holds at NV index 0x1400001): a 32-byte
header, the SNP report, a 20-byte runtime-data header and JSON runtime claims; layout as in
``az-cvm-vtpm/src/hcl/mod.rs`` (kinvolk/azure-cvm-tooling). The report's REPORT_DATA then binds the
hash of those claims (vTPM keys, VM configuration, the guest's ``user-data``), not a value the
guest chose directly, and MEASUREMENT is that of Azure's paravisor, not of the guest OS (which only
the vTPM's PCRs measure; not checked here). The verdict says so; ``report_data`` stays the raw
REPORT_DATA, so it binds an enclave-infer key only through a vTPM quote this module does not check.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from enclave_infer.attestation._amd_roots import ARK_PEM, ARK_SHA256
from enclave_infer.attestation.report import EnclaveReport, SecurityLevel, SnpTcb, Tee
from enclave_infer.attestation.snp_certs import (
    MAX_COLLATERAL_BYTES,
    MAX_COLLATERAL_CERTS,
    MAX_CRL_BYTES,
    OID_BL_SPL,
    OID_CSP_ID,
    OID_FMC_SPL,
    OID_HWID,
    OID_PRODUCT_NAME,
    OID_SNP_SPL,
    OID_TEE_SPL,
    OID_UCODE_SPL,
    TURIN_HWID_SIZE,
    Refused,
    SnpCollateral,
    amd_extensions,
    certificate_table,
    check_crl,
    check_issued_layout,
    common_name,
    crl_of,
    der_ia5,
    der_uint8,
    is_ca,
    load_certificate,
    parse_snp_collateral,
    sort_certificates,
    validity,
    verify_issued_signature,
)
from enclave_infer.attestation.snp_report import (
    HCL_SIGNATURE,
    MAX_REPORT_BYTES,
    PLATFORM_INFO_BITS,
    POLICY_CIPHERTEXT_HIDING,
    POLICY_CXL_ALLOW,
    POLICY_DEBUG,
    POLICY_MEM_AES_256_XTS,
    POLICY_MIGRATE_MA,
    POLICY_PAGE_SWAP_DISABLE,
    POLICY_RAPL_DIS,
    POLICY_SINGLE_SOCKET,
    POLICY_SMT,
    PRODUCT_FAMILIES,
    REPORT_SIZE,
    SIGNATURE_R,
    SIGNATURE_S,
    SIGNED,
    AttestationReport,
    HclRuntimeClaims,
    carries_certificates,
    decode_snp_evidence,
    decode_tcb,
    encode_snp_evidence,
    looks_like_snp_report,
    product_of,
    report_of,
    tcb_parts,
    tcb_reserved_zero,
    tcb_text,
    unwrap_hcl,
)
from enclave_infer.errors import AttestationError, UsageError

# The report and certificate parsers are re-exported: ``snp`` is the one name the rest of the
# project imports for SEV-SNP.
__all__ = [
    "MAX_COLLATERAL_BYTES",
    "MAX_COLLATERAL_CERTS",
    "MAX_CRL_BYTES",
    "MAX_REPORT_BYTES",
    "REPORT_SIZE",
    "AttestationReport",
    "HclRuntimeClaims",
    "SnpCollateral",
    "SnpVerdict",
    "SnpVerifier",
    "carries_certificates",
    "crl_of",
    "decode_snp_evidence",
    "decode_tcb",
    "encode_snp_evidence",
    "looks_like_snp_report",
    "parse_snp_collateral",
    "product_of",
    "report_of",
    "verify_snp_report",
]

# --- verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnpVerdict:
    """What a verified SEV-SNP report says, in the form ``verify-evidence`` prints."""

    report: EnclaveReport
    attestation_report: AttestationReport
    product: str  # "Milan", "Genoa" or "Turin": the pinned ARK the chain ends in
    product_name: str  # the VCEK/VLEK's productName extension, e.g. "Milan-B0"
    endorsement_key_validity: tuple[datetime, datetime]
    csp_id: str | None  # a VLEK's cloud provider
    tcb: Mapping[str, SnpTcb]  # reported, current, committed, launch
    findings: tuple[str, ...]
    source: str  # "report", "azure-hcl" or "evidence"
    crl_updates: tuple[datetime, datetime] | None  # thisUpdate, nextUpdate of the CRL checked
    hcl: HclRuntimeClaims | None

    def to_json(self) -> dict[str, Any]:
        r, a = self.report, self.attestation_report

        def when(t: datetime) -> str:
            return t.strftime("%Y-%m-%dT%H:%M:%SZ")

        return {
            "tee": r.tee,
            "source": self.source,
            "product": self.product,
            "product_name": self.product_name,
            "signing_key": a.signing_key,
            "csp_id": self.csp_id,
            "version": a.version,
            "measurement": a.measurement.hex(),
            "report_data": r.report_data.hex(),
            "host_data": a.host_data.hex(),
            "id_key_digest": a.id_key_digest.hex(),
            "author_key_digest": a.author_key_digest.hex(),
            "family_id": a.family_id.hex(),
            "image_id": a.image_id.hex(),
            "guest_svn": a.guest_svn,
            "vmpl": a.vmpl,
            "policy": f"{a.policy:#x}",
            "policy_decoded": _policy_json(a.policy),
            "platform_info": f"{a.platform_info:#x}",
            "platform_info_decoded": {
                n: bool(a.platform_info >> b & 1) for b, n in PLATFORM_INFO_BITS.items()
            },
            "chip_id": a.chip_id.hex(),
            "mask_chip_key": a.mask_chip_key,
            "author_key_en": a.author_key_en,
            "report_id": a.report_id.hex(),
            "report_id_ma": a.report_id_ma.hex(),
            "cpuid": None
            if a.cpuid is None
            else dict(zip(("family", "model", "stepping"), a.cpuid, strict=True)),
            **{f"{name}_tcb": tcb_parts(tcb) for name, tcb in self.tcb.items()},
            "current_firmware": _firmware(a.current_build),
            "committed_firmware": _firmware(a.committed_build),
            "launch_mit_vector": a.launch_mit_vector,
            "current_mit_vector": a.current_mit_vector,
            "endorsement_key_validity": [when(t) for t in self.endorsement_key_validity],
            "crl": None
            if self.crl_updates is None
            else dict(zip(("this_update", "next_update"), map(when, self.crl_updates), strict=True)),
            "azure_hcl": None
            if self.hcl is None
            else {
                "runtime_claims_hash": self.hcl.hash_name,
                "runtime_claims_digest": self.hcl.digest.hex(),
                "user_data": None if self.hcl.user_data is None else self.hcl.user_data.hex(),
                "runtime_claims": dict(self.hcl.document),
            },
            "debug": r.debug,
            "findings": list(self.findings),
            "security_level": r.security_level.name,
            "security_level_reason": r.level_reason,
            "collateral_issued_at": when(r.issued_at) if r.issued_at else None,
        }


def _firmware(build: tuple[int, int, int]) -> str:
    return f"{build[2]}.{build[1]} build {build[0]}"


def _policy_json(policy: int) -> dict[str, Any]:
    return {
        "abi_minor": policy & 0xFF,
        "abi_major": policy >> 8 & 0xFF,
        "smt_allowed": bool(policy & POLICY_SMT),
        "migrate_ma": bool(policy & POLICY_MIGRATE_MA),
        "debug_allowed": bool(policy & POLICY_DEBUG),
        "single_socket": bool(policy & POLICY_SINGLE_SOCKET),
        "cxl_allowed": bool(policy & POLICY_CXL_ALLOW),
        "mem_aes_256_xts": bool(policy & POLICY_MEM_AES_256_XTS),
        "rapl_disabled": bool(policy & POLICY_RAPL_DIS),
        "ciphertext_hiding": bool(policy & POLICY_CIPHERTEXT_HIDING),
        "page_swap_disabled": bool(policy & POLICY_PAGE_SWAP_DISABLE),
    }


class SnpVerifier:
    """Verifies SEV-SNP reports against AMD root keys it owns: :meth:`production` pins AMD's."""

    def __init__(self, roots: Mapping[str, bytes]) -> None:
        """``roots``: product name ("Milan", ...) to the DER of its self-signed ARK."""
        self._roots: dict[str, tuple[bytes, x509.Certificate]] = {}
        for product, der in roots.items():
            ark = load_certificate(der)
            check_issued_layout(ark, ark, f"ARK-{product}", f"ARK-{product} itself")
            verify_issued_signature(ark, ark, f"ARK-{product}", f"ARK-{product} itself")
            if common_name(ark) != f"ARK-{product}" or not is_ca(ark):
                raise UsageError(f"root for {product} is not a CA certificate named ARK-{product}")
            self._roots[product] = (der, ark)

    @classmethod
    def production(cls) -> SnpVerifier:
        """AMD's ARKs for Milan, Genoa and Turin, pinned in :mod:`._amd_roots` (built once)."""
        return _production()

    def verify(
        self, report: bytes, collateral: bytes, *, now: datetime, crl: bytes | None = None
    ) -> SnpVerdict:
        """Steps 1 to 9 of the module docstring; raises :class:`AttestationError` with one line."""
        if now.tzinfo is None:
            raise UsageError("now must be a timezone-aware datetime")
        # 1. input form
        if not report or len(report) > MAX_REPORT_BYTES:
            raise AttestationError("SEV-SNP report is empty or too large")
        hcl: HclRuntimeClaims | None = None
        table: bytes | None = None
        if report.startswith(HCL_SIGNATURE):
            source, (raw, hcl) = "azure-hcl", unwrap_hcl(report)
        elif report[:1] == b"{":
            source, (raw, table) = "evidence", decode_snp_evidence(report)
        else:
            source, raw = "report", report
        # 2. structure
        parsed = AttestationReport.from_bytes(raw)
        key_name = parsed.signing_key
        # 3. Azure's binding of its runtime claims (cheap, so before any signature)
        if hcl is not None:
            digest = hcl.digest
            if parsed.report_data[: len(digest)] != digest or any(parsed.report_data[len(digest) :]):
                raise AttestationError(
                    "Azure HCL runtime claims are not the ones the report's REPORT_DATA binds"
                )
        # 4. the chain in the collateral, without its signatures
        if collateral:
            bundle = parse_snp_collateral(collateral)
        elif table is not None:
            bundle = sort_certificates(certificate_table(table))
        else:
            raise AttestationError(
                "SEV-SNP report without collateral: give the VCEK or VLEK, ASK or ASVK, and ARK"
            )
        vek = bundle.endorsement_key
        chain = self._chain(bundle, key_name, now)
        product = chain.product
        # 5. the chain's signatures, 6. revocation, 7. the report's signature
        chain.verify_signatures()
        if crl is None and collateral:
            crl = crl_of(collateral)
        crl_updates = None if crl is None else check_crl(crl, chain.ark, chain.intermediate, product, now)
        _verify_report_signature(parsed, vek)
        # 8. what the VCEK/VLEK certifies against what the report says
        product_name, csp_id = _check_endorsement(parsed, vek, product)
        # 9. security level
        tcb = {
            name: decode_tcb(value, product)
            for name, value in (
                ("reported", parsed.reported_tcb),
                ("current", parsed.current_tcb),
                ("committed", parsed.committed_tcb),
                ("launch", parsed.launch_tcb),
            )
        }
        findings = _findings(parsed, tcb, csp_id, crl_updates is not None, hcl)
        level, reason = _level(parsed, tcb, key_name, crl_updates is not None)
        enclave_report = EnclaveReport(
            tee=Tee.SEV_SNP,
            code_hash=parsed.measurement,
            signer=b"",  # no MRSIGNER: pin by MEASUREMENT (C:)
            product_id=0,
            security_version=0,
            debug=parsed.debug,
            report_data=parsed.report_data,
            security_level=level,
            level_reason=reason,
            issued_at=crl_updates[0] if crl_updates else None,
            snp_tcb=tcb["reported"],
            platform_settings=struct.pack("<QI", parsed.policy, parsed.vmpl),
        )
        return SnpVerdict(
            report=enclave_report,
            attestation_report=parsed,
            product=product,
            product_name=product_name,
            endorsement_key_validity=(vek.not_valid_before_utc, vek.not_valid_after_utc),
            csp_id=csp_id,
            tcb=tcb,
            findings=findings,
            source=source,
            crl_updates=crl_updates,
            hcl=hcl,
        )

    def _chain(self, bundle: SnpCollateral, key_name: str, now: datetime) -> _Chain:
        """Step 4: VCEK/VLEK ← ASK/ASVK ← pinned ARK picked out of the collateral, with names, CA
        flags, validity at ``now`` and signature layouts checked; no signature verified yet."""
        vek = bundle.endorsement_key
        if common_name(vek) != f"SEV-{key_name}":
            raise AttestationError(
                f"the report is signed by a {key_name}, but the collateral's key is not one"
            )
        issuers = [c for c in bundle.intermediates if c.subject == vek.issuer]
        if len(issuers) != 1:
            raise AttestationError(f"no single certificate in the collateral issued the {key_name}")
        intermediate = issuers[0]
        roots = [(p, der, ark) for p, (der, ark) in self._roots.items() if ark.subject == intermediate.issuer]
        if len(roots) != 1:
            raise AttestationError(
                f"the {key_name}'s issuer is not signed by a pinned AMD root "
                f"({', '.join(f'ARK-{p}' for p in self._roots)})"
            )
        ((product, ark_der, ark),) = roots
        if bundle.ark is not None and bundle.ark.public_bytes(Encoding.DER) != ark_der:
            raise AttestationError(f"the collateral's ARK is not AMD's ARK-{product}, which issued its chain")
        ask_name = f"SEV-{product}" if key_name == "VCEK" else f"SEV-VLEK-{product}"
        role = "ASK" if key_name == "VCEK" else "ASVK"
        if common_name(intermediate) != ask_name:
            raise AttestationError(f"the {key_name}'s issuer is not the {role} {ask_name}")
        links = [(vek, intermediate, f"the {key_name}", f"the {role}")]
        # every other intermediate (trustee's bundle carries the ASK beside the ASVK) must be AMD's too
        links += [(c, ark, f"the collateral's {common_name(c) or 'certificate'}", f"ARK-{product}")
                  for c in bundle.intermediates]  # fmt: skip
        validity(ark, f"ARK-{product}", now)
        for cert, issuer, what, by in reversed(links):  # from the root down
            check_issued_layout(cert, issuer, what, by)
            if cert is not vek and not is_ca(cert):
                raise AttestationError(f"{what} is not a CA certificate")
            validity(cert, what, now)
        return _Chain(product, ark, intermediate, tuple(reversed(links)))


@dataclass(frozen=True)
class _Chain:
    product: str
    ark: x509.Certificate
    intermediate: x509.Certificate  # the ASK or ASVK that issued the VCEK/VLEK
    links: tuple[tuple[x509.Certificate, x509.Certificate, str, str], ...]  # cert, issuer, names

    def verify_signatures(self) -> None:
        """Step 5: each link's RSASSA-PSS signature, from the ARK down."""
        for cert, issuer, what, by in self.links:
            verify_issued_signature(cert, issuer, what, by)


def _verify_report_signature(parsed: AttestationReport, vek: x509.Certificate) -> None:
    """ECDSA P-384 with SHA-384 over bytes 0x000..0x29F; R and S little-endian, 72 bytes each (ABI
    56860, "ECDSA P-384 with SHA-384 Signature" format)."""
    key_name, key = parsed.signing_key, vek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise AttestationError(f"the {key_name} does not hold an ECDSA P-384 key")
    raw = parsed.raw
    signature = encode_dss_signature(
        int.from_bytes(raw[SIGNATURE_R], "little"), int.from_bytes(raw[SIGNATURE_S], "little")
    )
    try:
        key.verify(signature, raw[SIGNED], ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise AttestationError(f"report signature does not verify under the {key_name}") from None


def _check_endorsement(
    parsed: AttestationReport, vek: x509.Certificate, product: str
) -> tuple[str, str | None]:
    """(productName, cspID): the VCEK/VLEK's AMD extensions agree with the report."""
    key_name = parsed.signing_key
    ext = amd_extensions(vek, f"the {key_name}")
    try:
        product_name = der_ia5(ext[OID_PRODUCT_NAME])
        oids = {"bootloader": OID_BL_SPL, "tee": OID_TEE_SPL, "snp": OID_SNP_SPL, "microcode": OID_UCODE_SPL}
        if product == "Turin":
            oids["fmc"] = OID_FMC_SPL
        spl = {name: der_uint8(ext[oid]) for name, oid in oids.items()}
        csp_id = der_ia5(ext[OID_CSP_ID]) if OID_CSP_ID in ext else None
    except KeyError as missing:
        raise AttestationError(f"the {key_name} lacks AMD extension {missing.args[0]}") from None
    except Refused:
        raise AttestationError(f"the {key_name} has a malformed AMD extension") from None
    if product_name != product and not product_name.startswith(product + "-"):
        raise AttestationError(f"the {key_name} is for product {product_name!r}, its chain for {product}")
    reported = decode_tcb(parsed.reported_tcb, product)
    if tcb_parts(reported) != spl or not tcb_reserved_zero(parsed.reported_tcb, product):
        raise AttestationError(
            f"REPORTED_TCB ({tcb_text(reported)}) is not the TCB the {key_name} certifies "
            f"({', '.join(f'{k} {v}' for k, v in spl.items())})"
        )
    if parsed.cpuid is not None and parsed.cpuid[0] != PRODUCT_FAMILIES[product]:
        raise AttestationError(f"report's CPUID family {parsed.cpuid[0]:#x} is not that of {product}")
    if key_name == "VCEK":
        if parsed.mask_chip_key or not any(parsed.chip_id):
            raise AttestationError("CHIP_ID is masked: a VCEK-signed report cannot be tied to its chip")
        hwid = ext.get(OID_HWID)
        turin_short = (
            product == "Turin"
            and hwid is not None
            and len(hwid) == TURIN_HWID_SIZE
            and parsed.chip_id[:TURIN_HWID_SIZE] == hwid
            and not any(parsed.chip_id[TURIN_HWID_SIZE:])
        )
        if hwid != parsed.chip_id and not turin_short:
            raise AttestationError("the VCEK's hwID is not the report's CHIP_ID")
    elif OID_HWID in ext:
        raise AttestationError("the VLEK carries a hwID; VLEKs are not bound to a chip")
    return product_name, csp_id


def _below(a: SnpTcb, b: SnpTcb) -> list[str]:
    """The components in which ``a`` is lower than ``b``."""
    pa, pb = tcb_parts(a), tcb_parts(b)
    return [name for name in pa if pa[name] < pb.get(name, 0)]


def _level(
    parsed: AttestationReport, tcb: Mapping[str, SnpTcb], key_name: str, crl_checked: bool
) -> tuple[SecurityLevel, str]:
    if parsed.debug:
        return (
            SecurityLevel.INSECURE,
            "guest policy allows debugging: the hypervisor can read and write its memory",
        )
    lower = _below(tcb["reported"], tcb["committed"])
    if lower:
        return SecurityLevel.STALE, (
            f"REPORTED_TCB ({tcb_text(tcb['reported'])}) is below COMMITTED_TCB "
            f"({tcb_text(tcb['committed'])}) in {', '.join(lower)}: signed with a {key_name} for older "
            "firmware than the platform has committed to"
        )
    if not crl_checked:
        return SecurityLevel.STALE, (
            "no AMD CRL given: a revoked ASK or ASVK would pass, so the evidence is at most STALE"
            " (the host serves KDS's CRL with the certificates; a client may give one with --crl)"
        )
    return SecurityLevel.SECURE, (
        f"signature and AMD certificate chain verify, AMD's CRL revokes neither; REPORTED_TCB"
        f" ({tcb_text(tcb['reported'])}) is the {key_name}'s and not below COMMITTED_TCB"
    )


def _findings(
    parsed: AttestationReport,
    tcb: Mapping[str, SnpTcb],
    csp_id: str | None,
    crl_checked: bool,
    hcl: HclRuntimeClaims | None,
) -> tuple[str, ...]:
    policy, out = parsed.policy, []
    if policy & POLICY_DEBUG:
        out.append("POLICY allows debugging (bit 19): the hypervisor can read and write guest memory")
    if policy & POLICY_MIGRATE_MA:
        out.append("POLICY allows a migration agent (bit 18), which can export the guest's memory")
    if policy & POLICY_SMT:
        out.append("POLICY allows SMT (bit 16): a sibling hyperthread may run another guest")
    if policy & POLICY_CXL_ALLOW:
        out.append("POLICY allows CXL-attached memory (bit 21)")
    if parsed.vmpl != 0:
        out.append(
            f"requested from VMPL {parsed.vmpl}: software at a more privileged VMPL (an SVSM or "
            "paravisor) controls the guest"
        )
    if parsed.signing_key == "VLEK":
        out.append(
            f"signed by a VLEK issued to cloud provider {csp_id or '(not named)'}, not bound to a chip"
        )
    if parsed.mask_chip_key:
        out.append("CHIP_ID is masked by the host (MASK_CHIP_KEY)")
    lower = _below(tcb["reported"], tcb["current"])
    if lower:
        out.append(
            f"REPORTED_TCB is below CURRENT_TCB in {', '.join(lower)}: the platform runs newer firmware"
        )
    if not any(parsed.id_key_digest):
        out.append("launched without an ID block: FAMILY_ID, IMAGE_ID and GUEST_SVN are not vouched for")
    if not crl_checked:
        out.append("no AMD CRL given: revocation of the ASK/ASVK was not checked")
    if hcl is not None:
        out.append(
            f"Azure HCL report: REPORT_DATA binds the {hcl.hash_name} of Azure's runtime claims (checked), "
            "not data of the guest's choosing; MEASUREMENT is Azure's paravisor, not the guest OS, which "
            "only the vTPM's PCRs measure (not checked)"
        )
    return tuple(out)


@cache
def _production() -> SnpVerifier:
    roots = {}
    for product, pem in ARK_PEM.items():
        der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)
        if hashlib.sha256(der).hexdigest() != ARK_SHA256[product]:
            raise AssertionError(f"pinned ARK-{product} does not match its recorded SHA-256")
        roots[product] = der
    return SnpVerifier(roots)


def verify_snp_report(
    report: bytes, collateral: bytes, *, now: datetime, crl: bytes | None = None
) -> SnpVerdict:
    """Verify an SEV-SNP report (raw, Azure HCL, or the evidence container) with AMD's pinned roots.

    ``collateral`` is the VCEK or VLEK with its ASK or ASVK and optionally the ARK
    (:func:`parse_snp_collateral`); it may be empty when the evidence container carries a
    certificate table. ``crl``, when given, is AMD's CRL for the product (PEM or DER). Raises
    :class:`AttestationError` with a one-line reason when anything fails to verify."""
    return SnpVerifier.production().verify(report, collateral, now=now, crl=crl)
