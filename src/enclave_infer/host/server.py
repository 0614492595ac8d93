"""``enclave-infer serve``: start the enclave, attest it, log the report, serve HTTP with uvicorn.

Untrusted code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import uvicorn

from enclave_infer import logs
from enclave_infer.attestation.evidence import Attestation, Evidence, UnsafeNoPolicy, Verifier, verify
from enclave_infer.attestation.report import NONCE_BYTES
from enclave_infer.config import EnclaveConfig
from enclave_infer.errors import AttestationError, EnclaveInferError, TransportError, UsageError
from enclave_infer.host.app import DEFAULT_MAX_IN_FLIGHT, create_app
from enclave_infer.host.collateral import (
    FIRST_RETRY_SECONDS,
    Collateral,
    CollateralKeeper,
    CollateralSource,
    KdsSource,
    PccsSource,
    needs_collateral,
)
from enclave_infer.host.enclave_process import EnclaveProcess
from enclave_infer.protocol import ohttp
from enclave_infer.protocol.framing import Address, FrameType

__all__ = ["run"]

log = logging.getLogger("enclave_infer.host")

# SIGTERM: no new connections; requests in progress get this long to finish, then the enclave stops.
DRAIN_SECONDS = 30.0


async def _fetch_evidence(enclave: EnclaveProcess) -> tuple[bytes, bytes, bytes]:
    """The enclave's key configuration, a fresh nonce, and its evidence document for them."""
    kind, keys = await enclave.call(FrameType.GET_KEYS)
    nonce = secrets.token_bytes(NONCE_BYTES)
    kind2, document = await enclave.call(FrameType.GET_EVIDENCE, nonce)
    if kind is not FrameType.KEYS or kind2 is not FrameType.EVIDENCE:
        raise TransportError("the enclave did not answer the start-up attestation")
    return ohttp.decode_key_configs(keys)[0].encode(), nonce, document


_NO_CLIENT_POLICY = UnsafeNoPolicy(
    "the host's check of its own enclave at start; clients check their constraints"
)


def self_attest(enclave: EnclaveProcess, verifier: Verifier, collateral: bytes | None = None) -> Attestation:
    """What the Conclave host does at start: fetch its enclave's evidence, appraise it with the
    collateral the host serves, and log the report. Raises when it does not verify. The host has no
    policy of its own (each client checks its constraint), and says so in its log."""
    key_config, nonce, document = asyncio.run(_fetch_evidence(enclave))
    attestation = verify(
        document,
        _NO_CLIENT_POLICY,
        verifier=verifier,
        key_config=key_config,
        nonce=nonce,
        now=datetime.now(UTC),
        collateral=collateral,
    )
    if attestation.report.tee == "simulation":
        log.warning("SIMULATION MODE: no hardware TEE; the enclave's evidence is INSECURE")
    log.info("%s", attestation.summary(now=datetime.now(UTC)))
    return attestation


def run(
    config: EnclaveConfig,
    data_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    platform: str = "auto",
    external: Address | None = None,
    log_format: str = "text",
    collateral: CollateralSource | None = None,
    verifier: Verifier,
    tls: tuple[Path, Path] | None = None,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    drain_seconds: float = DRAIN_SECONDS,
    collateral_first_retry: float = FIRST_RETRY_SECONDS,
) -> None:
    """``collateral``: where the host gets collateral for its enclave's evidence (default: Intel's
    PCS for SGX and TDX, AMD's KDS for SEV-SNP). ``verifier``: the roots the host appraises its own
    enclave with at start (:meth:`Verifier.production`; only code, never an option, gives another).
    ``tls``: (certificate chain, private key) PEM files to serve HTTPS with.
    ``max_in_flight``: requests at once before 503. ``drain_seconds``: how long SIGTERM waits for
    requests in progress before the enclave stops. ``collateral_first_retry``: seconds before the
    first retry of a failed collateral fetch (then doubling); tests shorten it."""
    started = time.monotonic()
    logs.configure("host", log_format)
    listener = _listen(host, port)  # before the enclave starts: a busy port fails fast, in one line
    port = listener.getsockname()[1]  # --port 0: the one the system chose
    enclave = EnclaveProcess(config, data_dir, platform=platform, external=external, log_format=log_format)
    try:
        enclave.start()
        keeper = attest_at_start(enclave, verifier, collateral, first_retry=collateral_first_retry)
    except EnclaveInferError:
        enclave.stop()
        listener.close()
        raise
    app = create_app(enclave, keeper, max_in_flight=max_in_flight)
    server = _Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="info",
            log_config=None,
            timeout_graceful_shutdown=int(drain_seconds),
            ssl_certfile=str(tls[0]) if tls else None,
            ssl_keyfile=str(tls[1]) if tls else None,
        )
    )
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "Started enclave-infer in %.2f seconds; listening on %s://%s:%d",
        time.monotonic() - started,
        "https" if tls else "http",
        shown,
        port,
    )
    try:
        server.run(sockets=[listener])
    finally:
        if keeper is not None:
            keeper.stop()
        enclave.stop()
        listener.close()


def attest_at_start(
    enclave: EnclaveProcess,
    verifier: Verifier,
    collateral: CollateralSource | None,
    *,
    first_retry: float = FIRST_RETRY_SECONDS,
) -> CollateralKeeper | None:
    """The started enclave's evidence appraised, as clients will appraise it; for SGX, TDX and
    SEV-SNP, the collateral kept for it (a keeper fetching in the background). Raises when the
    evidence does not verify."""
    tee, evidence = _platform_evidence(enclave)
    if not needs_collateral(tee):
        self_attest(enclave, verifier)
        return None

    def appraise_with(fresh: Collateral) -> None:
        self_attest(enclave, verifier, fresh.data)
        enclave.set_collateral(fresh.data)  # receipts carry it, to verify offline

    keeper = CollateralKeeper(
        collateral or _default_source(tee),
        enclave.data_dir / COLLATERAL_CACHE,
        on_ready=appraise_with,
        first_retry=first_retry,
    )
    keeper.start(tee, evidence)
    if keeper.refused:
        keeper.stop()
        raise AttestationError(keeper.problem)
    return keeper


# The collateral cache, in the data dir: public data, signed by Intel or AMD.
COLLATERAL_CACHE = "collateral.json"


def _platform_evidence(enclave: EnclaveProcess) -> tuple[str, bytes]:
    """The TEE type and the platform evidence of the running enclave (for its collateral)."""
    document = asyncio.run(_fetch_evidence(enclave))[2]
    parsed = Evidence.decode(document)
    return parsed.tee, parsed.evidence


def _default_source(tee: str) -> CollateralSource:
    return KdsSource() if tee == "sev-snp" else PccsSource()


class _Server(uvicorn.Server):
    """uvicorn, stopped by SIGINT or SIGTERM without re-raising the signal afterwards (which would
    end the process with a traceback instead of a clean exit); a second signal forces the exit."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        def stop(signum: int, frame: object) -> None:
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True
            log.info("%s received: stopping", signal.Signals(signum).name)

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _listen(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise UsageError(f"cannot resolve --host {host!r}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock
