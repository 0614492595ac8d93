"""Collateral for the enclave's evidence: fetched, cached and refreshed by the host.

Untrusted code, as the Conclave host and Azure's DCAP client do it: a client needs more than the
evidence to verify it, and the host, which runs next to the platform, fetches it once for everyone.

============  ================================================================================
TEE           collateral
============  ================================================================================
SGX, TDX      Intel's TCB info, QE identity, CRLs and their issuer chains for the quote's platform
              (dcap-qvl's ``QuoteCollateralV3`` JSON), from a PCCS or Intel's PCS
SEV-SNP       the VCEK for the report's chip and reported TCB, with the ASK and ARK (a PEM
              bundle), from AMD's Key Distribution Service (KDS)
============  ================================================================================

Collateral is signed by Intel or AMD, so it needs no trust in whoever delivers it: clients verify it
against the roots their :class:`~enclave_infer.attestation.evidence.Verifier` pins. ``--collateral
FILE`` serves a file instead (air-gapped sites). :class:`CollateralKeeper` holds the current
collateral, caches it on disk, and refreshes it in a background thread before its ``nextUpdate``;
when it has none, attestation requests get a 503 with the reason, never evidence that cannot be
verified.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import httpx
from cryptography import x509

from enclave_infer.attestation import snp
from enclave_infer.attestation.report import Tee
from enclave_infer.errors import AttestationError, EnclaveInferError, TransportError, UsageError

__all__ = [
    "DEFAULT_KDS_URL",
    "DEFAULT_PCS_URL",
    "FIRST_RETRY_SECONDS",
    "Collateral",
    "CollateralKeeper",
    "CollateralSource",
    "FileSource",
    "KdsSource",
    "PccsSource",
    "needs_collateral",
]

log = logging.getLogger("enclave_infer.host")

DEFAULT_PCS_URL = "https://api.trustedservices.intel.com"  # Intel's Provisioning Certification Service
DEFAULT_KDS_URL = "https://kdsintf.amd.com"  # AMD's Key Distribution Service
# Refresh this long before the earliest nextUpdate, so clients never see collateral about to expire.
REFRESH_MARGIN = timedelta(hours=1)
# ... and at least this often (a PCCS may publish a new TCB evaluation before the old one expires;
# a VCEK bundle has no nextUpdate at all).
MAX_REFRESH_INTERVAL = timedelta(hours=24)
# After a failed fetch: the first retry, and the longest wait between retries (doubling).
FIRST_RETRY_SECONDS = 15.0
MAX_RETRY_SECONDS = 600.0
# What a collateral service may send: DCAP collateral is tens of KB, a certificate chain a few KB.
MAX_COLLATERAL_BYTES = 1024 * 1024
FETCH_TIMEOUT_SECONDS = 30.0


def needs_collateral(tee: Tee) -> bool:
    return tee in (Tee.SGX, Tee.TDX, Tee.SEV_SNP)


@dataclass(frozen=True)
class Collateral:
    data: bytes
    next_update: datetime  # when it stops being valid (the earliest of its parts)
    source: str  # where it came from, for the log

    def refresh_at(self, now: datetime) -> datetime:
        return min(self.next_update - REFRESH_MARGIN, now + MAX_REFRESH_INTERVAL)


class CollateralSource(Protocol):
    def fetch(self, tee: Tee, evidence: bytes) -> Collateral:
        """Collateral for ``evidence``; raises EnclaveInferError with a one-line reason."""
        ...


class PccsSource:
    """DCAP collateral from a PCCS or Intel's PCS (Intel PCS API v4), through dcap-qvl."""

    def __init__(self, url: str = DEFAULT_PCS_URL) -> None:
        self.url = url

    def fetch(self, tee: Tee, evidence: bytes) -> Collateral:
        if tee not in (Tee.SGX, Tee.TDX):
            raise UsageError(
                f"--pccs serves DCAP collateral (SGX, TDX), not {tee}: use --kds or --collateral"
            )
        import dcap_qvl

        async def fetch() -> str:
            collateral = await asyncio.wait_for(
                dcap_qvl.get_collateral(self.url, evidence), FETCH_TIMEOUT_SECONDS
            )
            return str(collateral.to_json())

        try:
            data = asyncio.run(fetch()).encode()
        except (ValueError, RuntimeError, OSError, TimeoutError) as exc:
            raise TransportError(
                f"cannot fetch DCAP collateral from {self.url}: {_first_line(exc)}"
            ) from None
        return Collateral(data, dcap_next_update(data), f"PCCS {self.url}")


class KdsSource:
    """SEV-SNP certificates from AMD's KDS: the VCEK for the report's chip and reported TCB
    (``/vcek/v1/{product}/{hwid}?blSPL=…``), and the ASK and ARK (``/vcek/v1/{product}/cert_chain``);
    AMD's "VCEK Certificate and KDS Interface Specification" (57230)."""

    def __init__(self, url: str = DEFAULT_KDS_URL, *, transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self._transport = transport

    def fetch(self, tee: Tee, evidence: bytes) -> Collateral:
        if tee != Tee.SEV_SNP:
            raise UsageError(
                f"--kds serves SEV-SNP certificates, not {tee} collateral: use --pccs or --collateral"
            )
        report = snp.AttestationReport.from_bytes(snp.report_of(evidence))
        if snp.carries_certificates(evidence):
            # the guest's certificate table (configfs-tsm's auxblob) already holds the VCEK or VLEK and
            # its chain: clients verify with that, and the host has nothing to add
            return Collateral(
                b"", datetime.now(UTC) + MAX_REFRESH_INTERVAL + REFRESH_MARGIN, "the guest's certificates"
            )
        if report.signing_key != "VCEK":
            raise UsageError(
                "the report is signed with a VLEK, which AMD's KDS does not serve, and the guest has no"
                " certificate table: give --collateral with the VLEK, ASVK and ARK (PEM)"
            )
        product = snp.product_of(report)
        tcb = snp.decode_tcb(report.reported_tcb, product)
        hwid = report.chip_id[:8] if product == "Turin" else report.chip_id
        query = f"blSPL={tcb.bootloader}&teeSPL={tcb.tee}&snpSPL={tcb.snp}&ucodeSPL={tcb.microcode}"
        if product == "Turin":
            query += f"&fmcSPL={tcb.fmc}"
        with httpx.Client(timeout=FETCH_TIMEOUT_SECONDS, transport=self._transport, trust_env=False) as http:
            vcek = self._get(http, f"/vcek/v1/{product}/{hwid.hex()}?{query}")
            chain = self._get(http, f"/vcek/v1/{product}/cert_chain")
            crl = self._get(http, f"/vcek/v1/{product}/crl")  # without it clients see at most STALE
        bundle = ssl.DER_cert_to_PEM_cert(vcek).encode() + chain + _crl_pem(crl)
        try:
            snp.parse_snp_collateral(bundle)  # the verifier's own reading of it
        except AttestationError as exc:
            raise TransportError(f"{self.url} did not answer with AMD certificates: {exc}") from None
        now = datetime.now(UTC)
        until = now + MAX_REFRESH_INTERVAL + REFRESH_MARGIN
        crl_next = _crl_next_update(crl)
        return Collateral(bundle, min(until, crl_next) if crl_next else until, f"KDS {self.url}")

    def _get(self, http: httpx.Client, path: str) -> bytes:
        try:
            with http.stream("GET", self.url + path) as reply:
                if reply.status_code != 200:
                    raise TransportError(f"{self.url}{path.split('?')[0]} answered {reply.status_code}")
                body = bytearray()
                for chunk in reply.iter_bytes():
                    body += chunk
                    if len(body) > MAX_COLLATERAL_BYTES:
                        raise TransportError(f"{self.url} sent more than {MAX_COLLATERAL_BYTES} bytes")
                return bytes(body)
        except httpx.HTTPError as exc:
            raise TransportError(f"cannot reach {self.url}: {type(exc).__name__}") from None


class FileSource:
    """Collateral from a file the operator keeps current: dcap-qvl JSON for SGX and TDX, a PEM bundle
    (VCEK or VLEK, ASK or ASVK, ARK) for SEV-SNP. Read again at every refresh."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fetch(self, tee: Tee, evidence: bytes) -> Collateral:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read --collateral {self.path}: {exc.strerror}") from None
        if tee == Tee.SEV_SNP:
            snp.parse_snp_collateral(data)
            return Collateral(
                data, datetime.now(UTC) + MAX_REFRESH_INTERVAL + REFRESH_MARGIN, f"file {self.path}"
            )
        return Collateral(data, dcap_next_update(data), f"file {self.path}")


def _crl_pem(der: bytes) -> bytes:
    """AMD's CRL (DER, as KDS sends it) as a PEM block for the collateral bundle."""
    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN X509 CRL-----\n{lines}\n-----END X509 CRL-----\n".encode()


def _crl_next_update(der: bytes) -> datetime | None:
    try:
        return x509.load_der_x509_crl(der).next_update_utc
    except ValueError:
        raise TransportError("AMD's KDS did not answer with a CRL") from None


def dcap_next_update(collateral: bytes) -> datetime:
    """The earliest ``nextUpdate`` of DCAP collateral: TCB info, QE identity and the two CRLs."""
    try:
        doc = json.loads(collateral)
        when = [
            _iso(json.loads(doc["tcb_info"])["nextUpdate"]),
            _iso(json.loads(doc["qe_identity"])["nextUpdate"]),
        ]
        for name in ("root_ca_crl", "pck_crl"):
            crl = x509.load_der_x509_crl(bytes.fromhex(doc[name]))
            if crl.next_update_utc is not None:
                when.append(crl.next_update_utc)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        raise AttestationError(
            "collateral is not dcap-qvl QuoteCollateralV3 JSON with nextUpdate dates"
        ) from None
    return min(when)


class CollateralKeeper:
    """The collateral the host serves with its enclave's evidence, kept current.

    :meth:`start` loads it from the cache file, or fetches it; if that fails the keeper says why in
    one line and retries in the background (after ``first_retry`` seconds, then doubling the wait,
    up to ``MAX_RETRY_SECONDS``), and :attr:`problem` holds the reason meanwhile. Once it has
    collateral it refreshes it before it expires; a failed refresh keeps serving the old collateral
    while it is still valid. ``on_ready`` runs (in the keeper's thread) each time new collateral is
    taken, and may refuse it by raising EnclaveInferError: the host appraises its own enclave with it
    there.
    """

    def __init__(
        self,
        source: CollateralSource,
        cache: Path,
        *,
        on_ready: Callable[[Collateral], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        first_retry: float = FIRST_RETRY_SECONDS,
    ) -> None:
        self._source, self._cache, self._on_ready, self._clock = source, cache, on_ready, clock
        self._first_retry = first_retry
        self._lock = threading.Lock()
        self._current: Collateral | None = None
        self._problem = "collateral not fetched yet"
        self._wake = threading.Event()
        self._stopped = False
        self._refused = False
        self._thread: threading.Thread | None = None
        self._tee: Tee | None = None  # start() says which TEE, with its evidence
        self._evidence = b""

    @property
    def current(self) -> Collateral | None:
        """The collateral to serve, or None when there is none that is still valid."""
        with self._lock:
            current = self._current
        if current is not None and current.next_update <= self._clock():
            return None
        return current

    @property
    def problem(self) -> str:
        with self._lock:
            return self._problem

    @property
    def refused(self) -> bool:
        """Whether the last collateral taken made ``on_ready`` refuse: the enclave's evidence does not
        verify with it (a configuration or platform problem, not a network one)."""
        with self._lock:
            return self._refused

    def start(self, tee: Tee, evidence: bytes) -> bool:
        """Get collateral for ``evidence`` now if possible; keep it current from then on. Returns
        whether there is collateral to serve."""
        self._tee, self._evidence = tee, evidence
        ready = self._load_cache() or self._refresh()
        if not ready:
            log.warning(
                "no collateral for the %s evidence: %s; attestation requests get 503 until it is fetched"
                " (retrying in the background)",
                tee,
                self.problem,
            )
        self._thread = threading.Thread(target=self._run, name="collateral", daemon=True)
        self._thread.start()
        return ready

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=FETCH_TIMEOUT_SECONDS + 5)

    def _load_cache(self) -> bool:
        try:
            doc = json.loads(self._cache.read_text(encoding="utf-8"))
            cached = Collateral(bytes.fromhex(doc["data"]), _iso(doc["next_update"]), str(doc["source"]))
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if self._tee in (Tee.SGX, Tee.TDX):  # what the data says, not what the (host-written) file claims
            try:
                cached = Collateral(cached.data, dcap_next_update(cached.data), cached.source)
            except AttestationError:
                return False
        if cached.refresh_at(self._clock()) <= self._clock():
            return False
        return self._take(Collateral(cached.data, cached.next_update, f"cache ({cached.source})"))

    def _refresh(self) -> bool:
        assert self._tee is not None, "start() first"
        try:
            collateral = self._source.fetch(self._tee, self._evidence)
        except EnclaveInferError as exc:
            with self._lock:
                self._problem = str(exc)
            return False
        if collateral.next_update <= self._clock():
            with self._lock:
                self._problem = (
                    f"the collateral from {collateral.source} expired at {_text(collateral.next_update)}"
                )
            return False
        if not self._take(collateral):
            return False
        self._save(collateral)
        return True

    def _take(self, collateral: Collateral) -> bool:
        try:
            if self._on_ready is not None:
                self._on_ready(collateral)
        except EnclaveInferError as exc:
            with self._lock:
                self._problem = f"the enclave's evidence does not verify with this collateral: {exc}"
                self._refused = True
                # Newer collateral refuses this platform (a TCB recovery, a revoked key): the older,
                # kinder one must not be served on until it expires.
                self._current = None
            log.error("%s", self._problem)
            return False
        with self._lock:
            self._current, self._problem, self._refused = collateral, "", False
        log.info("collateral from %s, valid until %s", collateral.source, _text(collateral.next_update))
        return True

    def _save(self, collateral: Collateral) -> None:
        doc = {
            "data": collateral.data.hex(),
            "next_update": _text(collateral.next_update),
            "source": collateral.source,
        }
        tmp = self._cache.with_name(self._cache.name + ".partial")
        try:
            tmp.write_text(json.dumps(doc), encoding="utf-8")
            tmp.replace(self._cache)
        except OSError as exc:
            log.warning("cannot cache collateral in %s: %s", self._cache, exc.strerror)

    def _run(self) -> None:
        retry, failing = self._first_retry, not self.current
        while not self._stopped:
            current = self.current
            if current is not None and not failing:
                wait = max(0.0, (current.refresh_at(self._clock()) - self._clock()).total_seconds())
            else:  # no collateral, or refreshing it failed: back off, even while the old one is valid
                wait, retry = retry, min(retry * 2, MAX_RETRY_SECONDS)
            self._wake.wait(wait)
            self._wake.clear()
            if self._stopped:
                return
            failing = not self._refresh()
            if failing:
                log.warning("collateral refresh failed: %s", self.problem)
            else:
                retry = self._first_retry


def _iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _text(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
