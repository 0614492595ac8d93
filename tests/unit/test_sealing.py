"""Sealed model storage: round trip, tamper detection, and what the enclave serves afterwards."""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave_infer.client._owner import public_key_bytes
from enclave_infer.config import EnclaveConfig
from enclave_infer.enclave.classifier import Classifier
from enclave_infer.enclave.models import SEALED_MODEL, ModelError, ModelStore
from enclave_infer.enclave.platform import SimulationPlatform
from enclave_infer.enclave.sealing import Sealer, iter_sealed_stream
from enclave_infer.errors import DecryptionError, ProtocolError
from enclave_infer.protocol.manifest import Manifest, ModelFile
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


def read_stream(sealer: Sealer, path: Path, label: bytes, *, max_bytes: int) -> tuple[bytes, bytes]:
    """(header, body) of a sealed stream, gathered from the pieces the enclave reads one by one."""
    pieces = iter_sealed_stream(sealer, path, label, max_bytes=max_bytes)
    header = next(pieces)
    return header, b"".join(pieces)


def again_config(key: Ed25519PrivateKey) -> EnclaveConfig:
    return EnclaveConfig(owner_public_key=public_key_bytes(key))


def make_store(tmp_path: Path, key: Ed25519PrivateKey) -> ModelStore:
    config = again_config(key)
    return ModelStore(config, Sealer(SimulationPlatform(config).sealing_key()), tmp_path / "sealed")


def upload(store: ModelStore, manifest: bytes, signature: bytes, model: bytes) -> None:
    """The enclave's one provisioning path, with the whole model in one piece."""
    pending = store.begin(manifest, signature)
    try:
        pending.write(model)
        pending.finish()
    finally:
        pending.abort()


def provision(store: ModelStore, key: Ed25519PrivateKey, version: int) -> None:
    model = colour_model()
    file = ModelFile("onnx", hashlib.sha256(model).hexdigest(), len(model))
    manifest = Manifest((file,), tuple(COLOUR_LABELS), {}, version)
    upload(store, *manifest.sign(key), model)


def test_restart_serves_the_sealed_model(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    store = make_store(tmp_path, key)
    provision(store, key, 3)
    again = make_store(tmp_path, key)
    again.restore()
    assert again.current is not None and again.current.manifest.version == 3
    assert Classifier(again_config(key), again.state).classify(png((250, 0, 0)), 1).results[0].label == "red"
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
    assert "cannot be read" in caplog.text and "re-provision" in caplog.text
    with pytest.raises(ModelError, match="no model has been provisioned"):
        Classifier(again_config(key), store.state).classify(png((0, 0, 0)), 1)


def test_a_configuration_change_says_to_re_provision(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = Ed25519PrivateKey.generate()
    provision(make_store(tmp_path, key), key, 1)
    changed = EnclaveConfig(owner_public_key=public_key_bytes(key), security_version=2)  # a new measurement
    store = ModelStore(changed, Sealer(SimulationPlatform(changed).sealing_key()), tmp_path / "sealed")
    with caplog.at_level(logging.ERROR):
        store.restore()
    assert store.current is None
    assert "sealed under a different measurement" in caplog.text and "re-provision" in caplog.text


def test_sealed_files_are_private(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    provision(make_store(tmp_path, key), key, 1)
    assert ((tmp_path / "sealed" / SEALED_MODEL).stat().st_mode & 0o777) == 0o600


def test_a_full_disk_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from enclave_infer.enclave import sealing

    def full(self: object, chunk: bytes, *, last: bool) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "secret-path"))

    monkeypatch.setattr(sealing.SealedStreamWriter, "_emit", full)
    key = Ed25519PrivateKey.generate()
    store = make_store(tmp_path, key)
    with pytest.raises(ModelError, match="no space left on device") as info:
        provision(store, key, 1)
    assert info.value.details.status == 507 and "secret-path" not in str(info.value)
    assert store.current is None


def test_model_with_external_data_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Security review: weights in an external file the host controls would escape the signed hash."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import set_external_data

    monkeypatch.chdir(tmp_path)
    weights = numpy_helper.from_array(np.ones((3, 4), dtype=np.float32), "W")
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input", "axes"], ["p"], keepdims=0),
            helper.make_node("MatMul", ["p", "W"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"), weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    w = model.graph.initializer[1]
    (tmp_path / "weights.bin").write_bytes(np.full((3, 4), -7.0, np.float32).tobytes())  # planted by the host
    set_external_data(w, location="weights.bin")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    data = model.SerializeToString()
    key = Ed25519PrivateKey.generate()
    store = make_store(tmp_path, key)
    manifest = Manifest(
        (ModelFile("onnx", hashlib.sha256(data).hexdigest(), len(data)),), tuple(COLOUR_LABELS), {}, 1
    )
    with pytest.raises(ModelError, match="external data"):
        upload(store, *manifest.sign(key), data)
    assert store.current is None


def test_sealed_stream_round_trip_and_tamper(tmp_path: Path) -> None:
    import os as _os

    from enclave_infer.enclave import sealing

    sealer = Sealer(b"s" * 32)
    path = tmp_path / "model.sealed"
    body = _os.urandom(3 * sealing.STREAM_CHUNK_BYTES + 12345)
    with sealing.SealedStreamWriter(sealer, path, b"manifest", b"L") as w:
        for i in range(0, len(body), 70_000):
            w.write(body[i : i + 70_000])
        w.commit()
    assert not list(tmp_path.glob("*.partial"))
    assert read_stream(sealer, path, b"L", max_bytes=len(body)) == (b"manifest", body)
    with pytest.raises(ProtocolError, match="larger than"):
        read_stream(sealer, path, b"L", max_bytes=len(body) - 1)
    data = path.read_bytes()
    chunk = 4 + sealing.STREAM_CHUNK_BYTES + 16
    first = len(data) - 3 * chunk - (4 + 12345 + 16)  # offset of the first body chunk
    variants = {
        "flip": data[:first + 100] + bytes([data[first + 100] ^ 1]) + data[first + 101:],
        "drop last chunk": data[: len(data) - (4 + 12345 + 16)],  # the new last chunk lacks the flag
        "swap chunks": data[:first] + data[first + chunk : first + 2 * chunk] + data[first : first + chunk]
        + data[first + 2 * chunk :],
        "duplicate chunk": data[:first] + data[first : first + chunk] + data[first:],
        "append": data + b"\0\0\0\0",
        "header": data[:20] + bytes([data[20] ^ 1]) + data[21:],
    }  # fmt: skip
    for name, tampered in variants.items():
        path.write_bytes(tampered)
        with pytest.raises((DecryptionError, ProtocolError)):
            read_stream(sealer, path, b"L", max_bytes=len(body))
        assert name
    with sealing.SealedStreamWriter(sealer, tmp_path / "aborted", b"h", b"L") as w:
        w.write(b"x" * 10)
        w.abort()
    assert not list(tmp_path.glob("aborted*"))

    def interrupted_upload() -> None:
        with sealing.SealedStreamWriter(sealer, tmp_path / "raised", b"h", b"L") as w:
            w.write(b"x")
            raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        interrupted_upload()
    assert not list(tmp_path.glob("raised*"))


def test_restart_removes_an_unfinished_upload(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    provision(make_store(tmp_path, key), key, 1)
    stale = tmp_path / "sealed" / f"{SEALED_MODEL}.0123456789abcdef.partial"
    stale.write_bytes(b"half a model, the enclave died here")
    store = make_store(tmp_path, key)
    store.restore()
    assert not stale.exists()
    assert store.current is not None and store.current.manifest.version == 1


def test_sealed_stream_chunks_cannot_be_spliced_behind_another_header(tmp_path: Path) -> None:
    from enclave_infer.enclave import sealing

    sealer = Sealer(b"s" * 32)
    a, b = tmp_path / "a", tmp_path / "b"
    for path, header in ((a, b"manifest A"), (b, b"manifest B")):
        with sealing.SealedStreamWriter(sealer, path, header, b"L") as w:
            w.write(b"model bytes" * 1000)
            w.commit()
    blob_a, blob_b = a.read_bytes(), b.read_bytes()
    header_end = len(sealing.STREAM_MAGIC) + 8 + int.from_bytes(blob_a[7:15], "big")
    spliced = tmp_path / "spliced"
    spliced.write_bytes(blob_a[:header_end] + blob_b[header_end:])  # A's header, B's prefix and chunks
    with pytest.raises(DecryptionError):
        read_stream(sealer, spliced, b"L", max_bytes=10**6)


def test_an_enclave_leaves_no_folder_in_the_temporary_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every enclave start left an empty folder in /tmp (ONNX Runtime's external-data folder, made
    when the store was built and never removed: the enclave exits with os._exit)."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    key = Ed25519PrivateKey.generate()
    provision(make_store(tmp_path, key), key, 1)
    again = make_store(tmp_path, key)
    again.restore()
    assert again.current is not None
    assert sorted(p.name for p in temp.iterdir()) == []
