"""Evidence and sealing keys from Intel SGX, for an enclave running under Gramine-SGX (DCAP).

Trusted code: runs inside the SGX enclave, on the enclave's side of the trust boundary. It talks
only to Gramine's ``/dev/attestation`` pseudo-filesystem, which Gramine implements inside the
enclave (Gramine documentation, "Attestation and Secret Provisioning", section "Low-level
``/dev/attestation`` interface"; ``libos/src/fs/dev/attestation.c``):

``attestation_type``
    ``none``, ``epid`` or ``dcap``: the manifest's ``sgx.remote_attestation``. We accept only
    ``dcap``: ``none`` means no quote can be had, and EPID attestation (the Intel Attestation
    Service) is end-of-life.
``user_report_data``
    64 bytes, written before reading ``quote``; Gramine keeps them when the file is closed.
``quote``
    produced when opened: the Quoting Enclave's ECDSA quote over an SGX report carrying the
    report data last written. Gramine answers ``EACCES`` when it cannot get one (AESM service or
    DCAP quote provider unreachable). The file is absent when ``attestation_type`` is ``none``.
``keys/_sgx_mrenclave``, ``keys/_sgx_mrsigner``
    16-byte SGX sealing keys (``EGETKEY`` with the MRENCLAVE or MRSIGNER key policy); see the
    manifest syntax documentation, "Encrypted files", special key names.

These pseudo-files are process-local but not thread-safe (Gramine's words), so this module
serialises its own use of them with a lock, and checks that every quote it reads back carries the
report data it wrote.

Each quote is parsed with :func:`enclave_infer.attestation.dcap.parse_sgx_quote_body`, the framing
checks and SGX report body offsets clients use too (quote format v3); only what the enclave needs to
know about itself is read, and verifying the quote (signature, PCK chain, TCB level) is the
client's job.
"""

from __future__ import annotations

import threading
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclave_infer.attestation.dcap import MAX_QUOTE_BYTES, SgxReportBody, parse_sgx_quote_body
from enclave_infer.attestation.report import Tee
from enclave_infer.enclave import _pseudofs
from enclave_infer.errors import AttestationError, UsageError

__all__ = [
    "DEFAULT_ROOT",
    "SEALING_POLICIES",
    "GramineSgxPlatform",
    "available",
]

DEFAULT_ROOT = Path("/dev/attestation")
SEALING_POLICIES = ("mrenclave", "mrsigner")

REPORT_DATA_SIZE = 64
SEAL_KEY_SIZE = 16  # Gramine's special keys are raw 128-bit SGX sealing keys
MAX_TEXT_BYTES = 64

SEALING_SALT = b"enclave-infer gramine-sgx sealing v1"


def available(root: Path = DEFAULT_ROOT) -> bool:
    """Whether we run under Gramine-SGX (its ``attestation_type`` pseudo-file exists).

    True even when remote attestation is disabled in the manifest: constructing
    :class:`GramineSgxPlatform` then fails with a clear error, rather than someone falling back
    to simulation without noticing.
    """
    return (root / "attestation_type").is_file()


class GramineSgxPlatform:
    """SGX DCAP quotes and sealing keys through Gramine's ``/dev/attestation``."""

    tee = Tee.SGX
    event_log = b""

    def __init__(self, root: Path = DEFAULT_ROOT, *, sealing_policy: str = "mrenclave") -> None:
        if sealing_policy not in SEALING_POLICIES:
            raise UsageError(
                f"unknown SGX sealing policy {sealing_policy!r}: choose {' or '.join(SEALING_POLICIES)}"
            )
        self._root = root
        self._sealing_policy = sealing_policy
        self._lock = threading.Lock()
        kind = _read_text(root / "attestation_type", what="attestation type")
        if kind == "none":
            raise AttestationError(
                "SGX remote attestation is not enabled in the Gramine manifest: "
                'set sgx.remote_attestation = "dcap"'
            )
        if kind == "epid":
            raise AttestationError(
                "Gramine is configured for EPID attestation, which Intel has ended: "
                'set sgx.remote_attestation = "dcap"'
            )
        if kind != "dcap":
            raise AttestationError(f"unsupported Gramine attestation type {kind!r} (expected 'dcap')")
        # One quote, with zero report data, tells us who we are.
        with self._lock:
            _, body = self._quote(bytes(REPORT_DATA_SIZE))
        self.code_hash = body.mrenclave
        self.signer = body.mrsigner
        self.product_id = body.product_id
        self.security_version = body.security_version
        self.debug = body.debug

    def evidence(self, report_data: bytes) -> bytes:
        """A DCAP quote (v3) whose report data is ``report_data``."""
        if len(report_data) != REPORT_DATA_SIZE:
            raise UsageError(f"report data must be {REPORT_DATA_SIZE} bytes, not {len(report_data)}")
        with self._lock:
            quote, body = self._quote(report_data)
        if (body.mrenclave, body.mrsigner) != (self.code_hash, self.signer):
            raise AttestationError("SGX quote names a different enclave than the one this process started as")
        return quote

    def sealing_key(self) -> bytes:
        """32 bytes derived from Gramine's SGX sealing key for the configured policy."""
        path = self._root / "keys" / f"_sgx_{self._sealing_policy}"
        try:
            raw = _pseudofs.read_once(path, SEAL_KEY_SIZE + 1)
        except OSError as exc:
            raise _os_error(exc, path, "reading the SGX sealing key") from None
        if len(raw) != SEAL_KEY_SIZE:
            raise AttestationError(f"{path}: expected a {SEAL_KEY_SIZE}-byte sealing key, read {len(raw)}")
        return HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=SEALING_SALT,
            info=f"enclave-infer sealing key, SGX policy {self._sealing_policy}".encode(),
        ).derive(raw)

    def _quote(self, report_data: bytes) -> tuple[bytes, SgxReportBody]:
        """Write the report data, read a quote, and check it carries them; retry once. Hold the lock."""
        for _ in range(2):
            _write_exact(self._root / "user_report_data", report_data)
            quote = _read_quote(self._root / "quote")
            body = parse_sgx_quote_body(quote)
            if body.report_data == report_data:
                return quote, body
        raise AttestationError(
            "the SGX quote carried different report data than was written, twice: "
            "something else in this process is using /dev/attestation concurrently"
        )


def _read_text(path: Path, *, what: str) -> str:
    try:
        text = _pseudofs.read_text(path, MAX_TEXT_BYTES)
    except FileNotFoundError:
        raise AttestationError(
            f"not running under Gramine-SGX: {path} does not exist ({what} unavailable)"
        ) from None
    except OSError as exc:
        raise _os_error(exc, path, f"reading the {what}") from None
    return text.strip("\x00")


def _write_exact(path: Path, data: bytes) -> None:
    _pseudofs.write_exact(
        path,
        data,
        os_error=_os_error,
        missing=f"not running under Gramine-SGX: {path} does not exist",
        opening="opening the user report data",
        writing="writing the user report data",
        committing="storing the user report data",  # Gramine stores the report data on close
    )


def _read_quote(path: Path) -> bytes:
    try:
        quote = _pseudofs.read_all(path, limit=MAX_QUOTE_BYTES, too_large="quote larger than")
    except FileNotFoundError:
        raise AttestationError(
            f"{path} does not exist: SGX remote attestation is not enabled in the Gramine manifest"
        ) from None
    except PermissionError:
        raise AttestationError(
            f"Gramine could not obtain an SGX quote ({path}: EACCES): is the AESM service running "
            "and the DCAP quote provider library configured on the host?"
        ) from None
    except OSError as exc:
        raise _os_error(exc, path, "reading the SGX quote") from None
    if not quote:
        raise AttestationError(f"{path}: empty quote")
    return quote


def _os_error(exc: OSError, path: Path, doing: str) -> AttestationError:
    name = _pseudofs.errno_name(exc)
    if isinstance(exc, PermissionError):
        return AttestationError(f"permission denied {doing} ({path}: {name})")
    return AttestationError(f"failed {doing} ({path}: {name}: {exc.strerror})")
