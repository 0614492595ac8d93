"""Evidence from Intel TDX and AMD SEV-SNP confidential VMs, through Linux configfs-tsm.

Trusted code: runs inside the confidential VM (a TDX trust domain or an SEV-SNP guest), on the
enclave's side of the trust boundary. It talks to the guest kernel's configfs-tsm report interface
(Linux ``Documentation/ABI/testing/configfs-tsm-report``, since v6.7;
``drivers/virt/coco/guest/report.c``), one fresh entry per request:

1. ``mkdir $root/$name``: a private report instance (``ENXIO`` when no TSM provider is registered,
   i.e. not a TDX/SEV-SNP guest or its driver not loaded);
2. read ``generation``: the count of writes to this entry;
3. write the 64 bytes of report data to ``inblob`` (committed when the file is closed);
4. read ``outblob``: the kernel asks the TSM for the report there and then (``EIO`` when the TSM or,
   for TDX, the host's Quote Generation Service fails; ``ENXIO`` without a provider);
5. read ``auxblob`` if the provider shows it (SEV-SNP: the certificate table of the GHCB
   specification, v2.03 §4.1.8.1; may be empty) and ``provider`` (``tdx_guest``, ``sev_guest``);
6. read ``generation`` again: it must be exactly one more than in step 2, or something else wrote
   to the entry meanwhile and the report may not carry our data (the ABI document's own advice).
   It is read after ``auxblob`` so that the check covers both blobs;
7. ``rmdir`` the entry, whatever happened.

Evidence bytes:

* TDX: the quote from ``outblob`` as it is (Intel TDX DCAP quote, v4 or v5).
* SEV-SNP: there are two blobs, so they travel in a small JSON container::

      {"certs": "<base64 of auxblob>" | null, "report": "<base64 of outblob>"}

  ``report`` is the 1184-byte ATTESTATION_REPORT; ``certs`` the GHCB certificate table (VCEK or
  VLEK, ASK, ARK), ``null`` when the host supplied none, in which case a verifier fetches the VCEK
  from AMD's key distribution service. The container has one definition, in
  :mod:`enclave_infer.attestation.snp` (:func:`~enclave_infer.attestation.snp.encode_snp_evidence`
  builds it here, :func:`~enclave_infer.attestation.snp.decode_snp_evidence` reads it).

TDX evidence also carries the boot's CC event log (UEFI 2.10 §38.4, "EFI_CC_MEASUREMENT_PROTOCOL"): the
events TDVF, the boot loader and the kernel's EFI stub extended into RTMR0..2, in the TCG2 "crypto
agile" format (TCG PC Client Platform Firmware Profile, §10), whose "PCR index" field holds the CC
measurement register index (1..3 for RTMR0..2). TDVF publishes its log area in the ACPI CCEL table
(ACPI 6.5 §5.2.34); Linux shows that area as ``/sys/firmware/acpi/tables/data/CCEL``, readable by
root only, so the UKI's /init copies it to ``/run/enclave-infer/ccel-eventlog`` for the service,
which reads the copy, else the original. TDVF fills the area with 0xFF before it logs ("so that the
OS can find the last entry", edk2 ``TdTcg2Dxe.c``); the evidence carries the log without that fill.
The log needs no trust: a verifier replays it and compares the result with the quoted RTMRs.

Layouts are parsed with the client's own parsers, only as far as the enclave needs to know its
identity (verification is the client's job): a TDX quote (v4 or v5) with
:func:`enclave_infer.attestation.dcap.parse_tdx_quote`, an SEV-SNP ATTESTATION_REPORT with
:meth:`enclave_infer.attestation.snp_report.AttestationReport.from_bytes`. Neither TEE has an
MRSIGNER, a product id or an ISV SVN: ``signer`` is empty and the two numbers are zero.
configfs-tsm offers no sealing key either.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

from enclave_infer.attestation.dcap import parse_tdx_quote
from enclave_infer.attestation.report import Tee
from enclave_infer.attestation.snp_report import AttestationReport, encode_snp_evidence
from enclave_infer.enclave import _pseudofs
from enclave_infer.errors import AttestationError, UsageError

__all__ = [
    "CCEL_EVENT_LOGS",
    "DEFAULT_ROOT",
    "PROVIDER_TEES",
    "ConfigfsTsmPlatform",
    "TsmReport",
    "available",
    "read_ccel_event_log",
]

DEFAULT_ROOT = Path("/sys/kernel/config/tsm/report")
# configfs-tsm's provider names (the kernel drivers') and the TEE each one reports from
PROVIDER_TEES = {"tdx_guest": Tee.TDX, "sev_guest": Tee.SEV_SNP}
REPORT_DATA_SIZE = 64

# The kernel caps outblob and auxblob at TSM_REPORT_OUTBLOB_MAX (include/linux/tsm.h): 32 KiB at
# first, 16 MiB in later kernels (DICE-based TDX quotes). Read up to the larger; parsing decides.
MAX_BLOB_BYTES = 16 * 1024 * 1024
READ_CHUNK = 64 * 1024
MAX_TEXT_BYTES = 64

# Where a TDX guest's CC event log is, in the order they are tried: the copy the UKI's /init makes for
# the service, then the kernel's view of the ACPI CCEL table's log area (root only).
CCEL_EVENT_LOGS = (Path("/run/enclave-infer/ccel-eventlog"), Path("/sys/firmware/acpi/tables/data/CCEL"))
# TDVF reserves PcdTcgLogAreaMinLen for the log (64 KiB in OVMF); a bound well above any such area.
MAX_EVENT_LOG_BYTES = 1024 * 1024
# TDVF's fill of the unused log area (edk2 OvmfPkg/Tcg/TdTcg2Dxe SetupCcEventLog)
LOG_AREA_FILL = b"\xff"

_ERRNO_HINTS = {
    errno.ENXIO: "no TSM provider is registered (not a TDX or SEV-SNP guest, or its driver is not loaded)",
    errno.EIO: "the TSM failed to produce the report (for TDX: is the host's Quote Generation Service "
    "reachable?)",
    errno.EFBIG: "the report is larger than configfs-tsm allows",
    errno.EBUSY: "the entry is being written too often",
}


@dataclass(frozen=True)
class TsmReport:
    """What one configfs-tsm request returned."""

    provider: str
    outblob: bytes
    auxblob: bytes | None


def available(root: Path = DEFAULT_ROOT) -> bool:
    """Whether the kernel exposes configfs-tsm reports at ``root``.

    This says nothing of whether a TSM provider is registered; constructing
    :class:`ConfigfsTsmPlatform` finds out, and says so in one line if not.
    """
    return root.is_dir()


class ConfigfsTsmPlatform:
    """TDX quotes or SEV-SNP reports through the guest kernel's configfs-tsm."""

    def __init__(self, root: Path = DEFAULT_ROOT, *, event_logs: Sequence[Path] = CCEL_EVENT_LOGS) -> None:
        """``event_logs``: where a TDX guest's CC event log may be, tried in order (tests give
        their own)."""
        self._root = root
        if not root.is_dir():
            raise AttestationError(
                f"{root} does not exist: the kernel has no configfs-tsm (Linux 6.7+, CONFIG_TSM_REPORTS), "
                "configfs is not mounted, or this is not a confidential VM"
            )
        # One report, with zero report data, tells us what we are and who we are.
        tee, _, measurement, debug = self._evidence(bytes(REPORT_DATA_SIZE))
        self.tee: Tee = tee
        self.code_hash: bytes = measurement
        self.signer: bytes = b""  # neither TDX nor SEV-SNP has an MRSIGNER
        self.product_id: int = 0
        self.security_version: int = 0
        self.debug: bool = debug
        # the boot's CC event log on TDX (empty if the guest has none); SEV-SNP has no such log
        self.event_log: bytes = read_ccel_event_log(event_logs) if tee == Tee.TDX else b""

    def evidence(self, report_data: bytes) -> bytes:
        """A TDX quote, or the SEV-SNP container, whose report data is ``report_data``."""
        if len(report_data) != REPORT_DATA_SIZE:
            raise UsageError(f"report data must be {REPORT_DATA_SIZE} bytes, not {len(report_data)}")
        tee, evidence, measurement, _ = self._evidence(report_data)
        if (tee, measurement) != (self.tee, self.code_hash):
            raise AttestationError("configfs-tsm report names a different TEE or measurement than at start")
        return evidence

    def sealing_key(self) -> bytes:
        raise AttestationError(
            f"no sealing key on this platform: configfs-tsm ({self.tee}) offers none; "
            "provision one from a key broker after attestation"
        )

    def request(self, report_data: bytes) -> TsmReport:
        """One configfs-tsm round trip in a fresh entry, removed afterwards."""
        entry = self._root / f"enclave-infer-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            _mkdir(entry)
        except FileNotFoundError:
            raise AttestationError(f"{self._root} does not exist: the kernel has no configfs-tsm") from None
        except OSError as exc:
            raise _os_error(exc, entry, "creating a configfs-tsm entry") from None
        try:
            report = _fill(entry, report_data)
        except BaseException:
            with contextlib.suppress(OSError):
                _rmdir(entry)
            raise
        try:
            _rmdir(entry)
        except OSError as exc:
            raise _os_error(exc, entry, "removing the configfs-tsm entry") from None
        return report

    def _evidence(self, report_data: bytes) -> tuple[Tee, bytes, bytes, bool]:
        report = self.request(report_data)
        tee = PROVIDER_TEES.get(report.provider)
        if tee == Tee.TDX:
            quote = parse_tdx_quote(report.outblob)
            evidence, measurement, debug, carried = report.outblob, quote.mrtd, quote.debug, quote.report_data
        elif tee == Tee.SEV_SNP:
            snp = AttestationReport.from_bytes(report.outblob)
            evidence = encode_snp_evidence(report.outblob, report.auxblob)
            measurement, debug, carried = snp.measurement, snp.debug, snp.report_data
        else:
            raise AttestationError(
                f"unsupported configfs-tsm provider {report.provider!r} "
                f"(supported: {', '.join(sorted(PROVIDER_TEES))})"
            )
        if carried != report_data:
            raise AttestationError("configfs-tsm report does not carry the report data that was written")
        return tee, evidence, measurement, debug


def read_ccel_event_log(paths: Sequence[Path]) -> bytes:
    """The CC event log at the first of ``paths`` that exists, without the log area's 0xFF fill;
    empty if none exists.

    The fill is cut from the end: TDVF's last event is the "Exit Boot Services Returned with
    Success" action, whose data is that text, so no event's bytes are cut with it. Were they, the
    verifier could not parse the log and would refuse it: the log is checked, never trusted.
    """
    for path in paths:
        try:
            data = _pseudofs.read_all(path, limit=MAX_EVENT_LOG_BYTES, chunk=READ_CHUNK)
        except FileNotFoundError:
            continue
        except PermissionError:
            raise AttestationError(
                f"permission denied reading the CC event log {path}: it is root's; the UKI's /init "
                f"copies it to {CCEL_EVENT_LOGS[0]} for the service"
            ) from None
        except OSError as exc:
            raise AttestationError(
                f"cannot read the CC event log {path}: {_pseudofs.errno_name(exc)}: {exc.strerror}"
            ) from None
        return data.rstrip(LOG_AREA_FILL)
    return b""


# Indirections, so that tests can play the kernel's part in populating and removing an entry.
def _mkdir(path: Path) -> None:
    os.mkdir(path)


def _rmdir(path: Path) -> None:
    os.rmdir(path)


def _fill(entry: Path, report_data: bytes) -> TsmReport:
    before = _read_generation(entry)
    _write_inblob(entry / "inblob", report_data)
    outblob = _read_blob(entry / "outblob")
    if not outblob:
        raise AttestationError(f"{entry / 'outblob'}: the TSM returned an empty report")
    auxblob = _read_blob(entry / "auxblob", missing_ok=True)  # TDX shows no auxblob
    provider = _read_text(entry / "provider")
    after = _read_generation(entry)
    if after != before + 1:
        raise AttestationError(
            f"configfs-tsm entry was changed concurrently (generation {before} -> {after}, expected "
            f"{before + 1}): {entry}"
        )
    return TsmReport(provider=provider, outblob=outblob, auxblob=auxblob or None)


def _read_generation(entry: Path) -> int:
    text = _read_text(entry / "generation")
    try:
        return int(text)
    except ValueError:
        raise AttestationError(f"{entry / 'generation'}: not a number: {text!r}") from None


def _read_text(path: Path) -> str:
    try:
        return _pseudofs.read_text(path, MAX_TEXT_BYTES)
    except OSError as exc:
        raise _os_error(exc, path, "reading") from None


@overload
def _read_blob(path: Path) -> bytes: ...
@overload
def _read_blob(path: Path, *, missing_ok: bool) -> bytes | None: ...
def _read_blob(path: Path, *, missing_ok: bool = False) -> bytes | None:
    """Everything in a configfs binary attribute (None if absent and ``missing_ok``)."""
    try:
        return _pseudofs.read_all(path, limit=MAX_BLOB_BYTES, chunk=READ_CHUNK)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise AttestationError(f"{path} does not exist: not a configfs-tsm report entry") from None
    except OSError as exc:
        raise _os_error(exc, path, "reading") from None


def _write_inblob(path: Path, data: bytes) -> None:
    # configfs commits a binary attribute when it is closed
    _pseudofs.write_exact(
        path, data, os_error=_os_error, opening="opening", writing="writing", committing="committing"
    )


def _os_error(exc: OSError, path: Path, doing: str) -> AttestationError:
    name = _pseudofs.errno_name(exc)
    if isinstance(exc, PermissionError):
        return AttestationError(f"permission denied {doing} {path} ({name}): configfs-tsm needs root")
    hint = _ERRNO_HINTS.get(exc.errno or 0, exc.strerror or "")
    return AttestationError(f"configfs-tsm failed {doing} {path}: {name}: {hint}")
