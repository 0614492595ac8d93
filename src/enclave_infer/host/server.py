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
from enclave_infer.attestation.evidence import Attestation, appraise
from enclave_infer.config import EnclaveConfig
from enclave_infer.errors import EnclaveInferError, TransportError, UsageError
from enclave_infer.host.app import create_app
from enclave_infer.host.enclave_process import EnclaveProcess
from enclave_infer.protocol import ohttp
from enclave_infer.protocol.framing import Address, FrameType

__all__ = ["run"]

log = logging.getLogger("enclave_infer.host")


async def self_attest(enclave: EnclaveProcess) -> Attestation:
    """What the Conclave host does at start: fetch its enclave's evidence and appraise it."""
    kind, keys = await enclave.call(FrameType.GET_KEYS)
    nonce = secrets.token_bytes(32)
    kind2, document = await enclave.call(FrameType.GET_EVIDENCE, nonce)
    if kind is not FrameType.KEYS or kind2 is not FrameType.EVIDENCE:
        raise TransportError("the enclave did not answer the start-up attestation")
    key_config = ohttp.decode_key_configs(keys)[0].encode()
    return appraise(document, key_config=key_config, nonce=nonce, now=datetime.now(UTC))


def run(
    config: EnclaveConfig,
    data_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    platform: str = "auto",
    external: Address | None = None,
    log_format: str = "text",
) -> None:
    started = time.monotonic()
    logs.configure("host", log_format)
    listener = _listen(host, port)  # before the enclave starts: a busy port fails fast, in one line
    port = listener.getsockname()[1]  # --port 0: the one the system chose
    enclave = EnclaveProcess(config, data_dir, platform=platform, external=external, log_format=log_format)
    try:
        enclave.start()
    except EnclaveInferError:
        listener.close()
        raise
    try:
        attestation = asyncio.run(self_attest(enclave))
    except EnclaveInferError:
        enclave.stop()
        listener.close()
        raise
    if attestation.report.tee == "simulation":
        log.warning("SIMULATION MODE: no hardware TEE; the enclave's evidence is INSECURE")
    log.info("%s", attestation.summary(now=datetime.now(UTC)))
    server = _Server(
        uvicorn.Config(create_app(enclave), host=host, port=port, log_level="info", log_config=None)
    )
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "Started enclave-infer in %.2f seconds; listening on http://%s:%d",
        time.monotonic() - started,
        shown,
        port,
    )
    try:
        server.run(sockets=[listener])
    finally:
        enclave.stop()
        listener.close()


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
