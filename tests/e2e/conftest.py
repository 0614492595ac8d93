"""End-to-end fixtures: a real `enclave-infer serve` process on loopback, a tiny real ONNX model."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from enclave_infer import Client, ModelInfo
from enclave_infer.attestation.measurement import code_hash
from enclave_infer.client._owner import generate_owner_key, load_owner_key
from enclave_infer.config import EnclaveConfig, load_public_key_file

CLI = str(Path(sys.executable).with_name("enclave-infer"))
COLOUR_LABELS = ["red", "green", "blue", "grey"]
LISTENING = re.compile(r"listening on (https?://127\.0\.0\.1:\d+)")
# Small limits so that "too large" is cheap to test; everything else at its defaults.
SMALL_LIMITS = """
[limits]
max_image_bytes = 262144
max_model_bytes = 1048576
"""


def colour_model(batch: int | str = "N") -> bytes:
    """A real ONNX classifier: mean of each normalised channel → linear layer → 4 logits. ``batch``:
    its input's batch dimension, symbolic (batches of any size) or a fixed number."""
    weights = np.array([[4, -2, -2, 0], [-2, 4, -2, 0], [-2, -2, 4, 0]], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input", "axes"], ["pooled"], keepdims=0),
            helper.make_node("MatMul", ["pooled", "W"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], ["logits"]),
        ],
        "colours",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4])],
        initializer=[
            numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
            numpy_helper.from_array(weights, "W"),
            numpy_helper.from_array(np.array([0, 0, 0, 1], dtype=np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def png(colour: tuple[int, int, int], size: tuple[int, int] = (320, 240)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def free_port() -> int:
    """A port free now (for commands that must fail before they listen)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass
class Deployment:
    url: str
    constraint: str
    code_hash: str
    owner_key: Path
    data_dir: Path
    workdir: Path
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(
    workdir: Path,
    owner_key: Path,
    *,
    config: Path | None = None,
    data_dir: Path | str | None = None,
    cwd: Path | None = None,
    extra: tuple[str, ...] = (),
) -> Deployment:
    """``enclave-infer serve --port 0`` as an operator runs it; the port is the one it logs."""
    pub = Path(f"{owner_key}.pub")
    options = ["--config", str(config)] if config else []
    enclave_config = EnclaveConfig.load(config, owner_public_key=load_public_key_file(pub))
    digest = code_hash(enclave_config).hex().upper()
    data = data_dir if data_dir is not None else workdir / "data"
    log = workdir / "serve.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [CLI, "serve", "--port", "0", "--data-dir", str(data), "--owner-public-key", str(pub),
             *options, *extra],
            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=cwd,
        )  # fmt: skip
    url = wait_until_listening(proc, log)
    data_path = (cwd or Path.cwd()) / data if not Path(data).is_absolute() else Path(data)
    return Deployment(url, f"C:{digest} SEC:INSECURE", digest, owner_key, data_path, workdir, proc, log)


def wait_until_listening(proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> str:
    """The URL a starting ``serve`` logs once it listens and its enclave is attested."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = LISTENING.search(log.read_text(errors="replace"))
        if found:
            return found.group(1)
        if proc.poll() is not None:
            raise AssertionError("server exited at start:\n" + log.read_text(errors="replace"))
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("server did not start:\n" + log.read_text(errors="replace"))


def stop_server(d: Deployment) -> None:
    d.process.send_signal(signal.SIGINT)
    try:
        d.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        d.process.kill()
        d.process.wait()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def owner_key(workdir: Path) -> Path:
    key = workdir / "owner.key"
    generate_owner_key(key)
    return key


@pytest.fixture(scope="module")
def files(workdir: Path) -> dict[str, Path]:
    out = {
        "model": workdir / "colours.onnx",
        "labels": workdir / "colours.txt",
        "red": workdir / "red.png",
        "blue": workdir / "blue.png",
        "config": workdir / "enclave.toml",
    }
    out["model"].write_bytes(colour_model())
    out["labels"].write_text("\n".join(COLOUR_LABELS) + "\n")
    out["red"].write_bytes(png((230, 20, 20)))
    out["blue"].write_bytes(png((20, 20, 230)))
    out["config"].write_text(SMALL_LIMITS)
    return out


@pytest.fixture(scope="module")
def deployment(workdir: Path, owner_key: Path, files: dict[str, Path]) -> Iterator[Deployment]:
    d = start_server(workdir, owner_key, config=files["config"])
    yield d
    stop_server(d)


@pytest.fixture
def served(deployment: Deployment, files: dict[str, Path]) -> ModelInfo:
    """The deployment with a model served: the colour model is provisioned unless one already is,
    so that every test that classifies passes alone and in any order."""
    with Client(deployment.url, deployment.constraint) as client:
        info = client.model_info()
        if info is None:
            key = load_owner_key(deployment.owner_key)
            info = client.provision(files["model"].read_bytes(), COLOUR_LABELS, key).model
    return info
