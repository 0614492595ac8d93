"""Receipts signed inside the enclave (``attestation/receipt.py`` has the format and the verifier).

Trusted code. The instance's Ed25519 key never leaves it; its evidence, bound to the key, is made
once per key configuration and collateral (a quote per receipt would cost more than the inference)
and travels in every receipt.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave_infer.attestation import receipt
from enclave_infer.attestation.evidence import Evidence
from enclave_infer.attestation.report import NONCE_BYTES, attestation_binding
from enclave_infer.config import EnclaveConfig
from enclave_infer.enclave.platform import Platform
from enclave_infer.protocol import bhttp
from enclave_infer.protocol.manifest import sf_binary

__all__ = ["Receipts"]


class Receipts:
    def __init__(
        self,
        key: Ed25519PrivateKey,
        platform: Platform,
        config: EnclaveConfig,
        key_config: Callable[[], bytes],
    ) -> None:
        self._key, self._platform, self._config, self._key_config = key, platform, config, key_config
        self.public_key = key.public_key().public_bytes_raw()
        self._lock = threading.Lock()
        self._collateral = b""
        self._evidence: tuple[bytes, bytes, bytes, bytes] | None = None  # key config, collateral, nonce, doc
        self._length: tuple[bytes, int, int] | None = None  # evidence document, model version, length

    def set_collateral(self, collateral: bytes) -> None:
        """What the host fetched for this platform's evidence (signed by Intel or AMD): receipts carry
        it, so that they verify offline."""
        with self._lock:
            self._collateral = collateral

    def header(
        self, request: bhttp.Request, response_content: bytes, model_sha256: str, model_version: int
    ) -> tuple[str, str]:
        """The answer's ``receipt`` header for ``request`` answered with ``response_content``."""
        statement = receipt.Statement(
            image_sha256=hashlib.sha256(request.content).hexdigest(),
            request_sha256=hashlib.sha256(bhttp.encode_request(request)).hexdigest(),
            response_sha256=hashlib.sha256(response_content).hexdigest(),
            model_sha256=model_sha256,
            model_version=model_version,
            time=datetime.now(UTC),
        )
        key_config, nonce, document = self._current_evidence()
        signed = receipt.sign(self._key, statement, evidence=document, key_config=key_config, nonce=nonce)
        return receipt.RECEIPT_HEADER, sf_binary(signed.encode())

    def header_length(self, model_sha256: str, model_version: int) -> int:
        """The length of every receipt header this instance gives for this model now: hashes, key,
        signature and time have fixed sizes, and the evidence is this instance's one. (Padding
        makes answers with a receipt this much longer, without signing anything per request.)"""
        document = self._current_evidence()[2]
        known = self._length
        if known is None or known[:2] != (document, model_version):
            probe = bhttp.Request("POST", "", "", "", (), b"")
            length = len(self.header(probe, b"", model_sha256, model_version)[1])
            known = self._length = (document, model_version, length)
        return known[2]

    def _current_evidence(self) -> tuple[bytes, bytes, bytes]:
        key_config = self._key_config()
        with self._lock:
            cached, collateral = self._evidence, self._collateral
        if cached is not None and cached[0] == key_config and cached[1] == collateral:
            return key_config, cached[2], cached[3]
        nonce = secrets.token_bytes(NONCE_BYTES)
        report_data = attestation_binding(key_config, self.public_key, self._config.digest(), nonce)
        document = Evidence(
            self._platform.tee,
            self._platform.evidence(report_data),
            self._config.canonical(),
            collateral,
            self.public_key,
            self._platform.event_log,
        ).encode()
        with self._lock:
            self._evidence = (key_config, collateral, nonce, document)
        return key_config, nonce, document
