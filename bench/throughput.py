"""Images per second: in-process inference vs. the whole confidential path, in one run.

    python bench/throughput.py --model build/demo/efficientnet-lite0.onnx [--images 40]

In-process: decode + preprocess + ONNX Runtime, the enclave's own functions, one thread.
Confidential path: `enclave-infer serve` (host + simulated enclave) on loopback, and the SDK client
doing, per image, OHTTP encapsulation → HTTP → host → unix socket → enclave → back, one at a time.
Both loops classify the same photos from scikit-image's wheel, interleaved in rounds so machine noise
hits both alike; the ratio is what to compare across machines.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import skimage
from harness import free_port, wait_healthy

from enclave_infer import Client
from enclave_infer.attestation.measurement import code_hash
from enclave_infer.client.convert import DEMO_PREPROCESSING
from enclave_infer.client.owner import generate_owner_key, load_owner_key, read_labels
from enclave_infer.config import EnclaveConfig, load_public_key_file
from enclave_infer.enclave.preprocess import decode_image, to_tensor
from enclave_infer.protocol.api import Preprocessing

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "astronaut.png")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--images", type=int, default=40, help="images per round and path")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    photos = [(Path(skimage.data_dir) / p).read_bytes() for p in PHOTOS]
    model = args.model.read_bytes()
    pre = Preprocessing.from_json(DEMO_PREPROCESSING)

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def in_process(image: bytes) -> None:
        session.run(None, {name: to_tensor(decode_image(image, max_pixels=50_000_000), pre)})

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate_owner_key(work / "owner.key")
        config = EnclaveConfig.load(owner_public_key=load_public_key_file(work / "owner.key.pub"))
        constraint = f"C:{code_hash(config).hex()} SEC:INSECURE"
        port = free_port()
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("enclave-infer")), "serve", "--port", str(port),
             "--data-dir", str(work / "data"), "--owner-public-key", str(work / "owner.key.pub")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ},
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url)
            with Client(url, constraint) as client:
                labels = read_labels(ROOT / "demo" / "imagenet-classes.txt", allow_duplicates=True)
                key = load_owner_key(work / "owner.key")
                started = time.perf_counter()
                client.provision(model, labels, key, preprocessing=DEMO_PREPROCESSING)
                provision_s = time.perf_counter() - started
                for image in photos:  # warm both paths
                    in_process(image)
                    client.classify(image)
                local, remote = [], []
                for _ in range(args.rounds):
                    local.append(_rate(in_process, photos, args.images))
                    remote.append(_rate(lambda img: client.classify(img), photos, args.images))
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=20)

    lo, re_ = statistics.median(local), statistics.median(remote)
    print(
        f"model: {args.model.name} ({len(model) / 1e6:.1f} MB); provision through OHTTP: {provision_s:.2f} s"
    )
    print(f"in-process (decode + preprocess + ONNX Runtime): {lo:6.1f} images/s  (rounds: {_fmt(local)})")
    print(f"confidential path (OHTTP via host to enclave):   {re_:6.1f} images/s  (rounds: {_fmt(remote)})")
    print(f"ratio confidential / in-process: {re_ / lo:.2f}")
    return 0


def _rate(fn, photos: list[bytes], n: int) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    for i in range(n):
        fn(photos[i % len(photos)])
    return n / (time.perf_counter() - started)


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    sys.exit(main())
