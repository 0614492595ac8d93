"""Sealed model storage: round trip, tamper detection, and what the enclave serves afterwards."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave_infer.client.owner import public_key_bytes
from enclave_infer.config import EnclaveConfig
from enclave_infer.enclave.models import SEALED_MODEL, ModelError, ModelStore
from enclave_infer.enclave.platform import SimulationPlatform
from enclave_infer.enclave.sealing import Sealer
from enclave_infer.errors import DecryptionError, ProtocolError
from enclave_infer.protocol.manifest import Manifest
from tests.e2e.conftest import COLOUR_LABELS, colour_model, png


def test_seal_round_trip_and_tamper(tmp_path: Path) -> None:
    sealer = Sealer(b"k" * 32)
    path = tmp_path / "blob"
    sealer.write(path, [(b"header", b"a"), (b"x" * 100_000, b"b")])
    assert sealer.read(path, [b"a", b"b"]) == [b"header", b"x" * 100_000]
    assert b"header" not in path.read_bytes()
    with pytest.raises(DecryptionError):
        sealer.read(path, [b"b", b"a"])  # parts swapped under the other's label
    data = bytearray(path.read_bytes())
    for i in (10, 40, len(data) - 1):
        flipped = bytearray(data)
        flipped[i] ^= 0x80
        path.write_bytes(bytes(flipped))
        with pytest.raises((DecryptionError, ProtocolError)):
            sealer.read(path, [b"a", b"b"])
    path.write_bytes(bytes(data[:-5]))
    with pytest.raises(ProtocolError):
        sealer.read(path, [b"a", b"b"])
    with pytest.raises(DecryptionError):
        Sealer(b"j" * 32).unseal(sealer.seal(b"p", b"l"), b"l")
    assert not list(tmp_path.glob("*.partial"))


def make_store(tmp_path: Path, key: Ed25519PrivateKey) -> ModelStore:
    config = EnclaveConfig(owner_public_key=public_key_bytes(key))
    return ModelStore(config, Sealer(SimulationPlatform(config).sealing_key()), tmp_path / "sealed")


def provision(store: ModelStore, key: Ed25519PrivateKey, version: int) -> None:
    model = colour_model()
    manifest = Manifest(
        hashlib.sha256(model).hexdigest(), len(model), "onnx", tuple(COLOUR_LABELS), {}, version
    )
    store.provision(*manifest.sign(key), model)


def test_restart_serves_the_sealed_model(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    store = make_store(tmp_path, key)
    provision(store, key, 3)
    again = make_store(tmp_path, key)
    again.restore()
    assert again.current is not None and again.current.manifest.version == 3
    assert again.classify(png((250, 0, 0)), 1)["results"][0]["label"] == "red"
    with pytest.raises(ModelError, match="not newer"):
        provision(again, key, 3)


def test_tampered_storage_serves_no_model(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = Ed25519PrivateKey.generate()
    provision(make_store(tmp_path, key), key, 1)
    sealed = tmp_path / "sealed" / SEALED_MODEL
    data = bytearray(sealed.read_bytes())
    data[len(data) // 2] ^= 1
    sealed.write_bytes(bytes(data))
    store = make_store(tmp_path, key)
    with caplog.at_level(logging.ERROR):
        store.restore()
    assert store.current is None
    assert "failed verification" in caplog.text
    with pytest.raises(ModelError, match="no model has been provisioned"):
        store.classify(png((0, 0, 0)), 1)
