"""Provisioning an AlexNet-sized model (61 M parameters, ~244 MB) through chunked OHTTP: peak memory
of client, host and enclave, relative to the model's size; restart from sealed storage; and an
upload interrupted midway.

    python bench/provision_memory.py [--json]

Steps, each a separate process as for real users: a random-weight AlexNet is torch.save()d like the
seed's pickle and converted to ONNX on the "owner's machine"; `enclave-infer serve` starts; the
ONNX file is provisioned with `enclave-infer provision`; peak RSS is read from the kernel (host and
enclave: VmHWM after resetting it through /proc/PID/clear_refs; client: wait4's ru_maxrss), and
compared with each process's resident size just before the upload. Then the enclave is killed and
the model must come back from sealed storage, and a second upload is killed after a second: the
first model must still be served and no partial file left.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from harness import free_port, wait_healthy

CLI = str(Path(sys.executable).with_name("enclave-infer"))
ROOT = Path(__file__).resolve().parent.parent


def alexnet() -> Any:
    """torchvision's AlexNet (61,100,840 parameters), written as one nn.Sequential so that its
    torch.save() pickle refers to torch classes only, as a pickle from torchvision would."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.AdaptiveAvgPool2d((6, 6)), nn.Flatten(),
        nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
        nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, 1000),
    )  # fmt: skip


def rss(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for {pid}")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def measured_cli(*args: str) -> tuple[subprocess.CompletedProcess[str], int, float]:
    code = (
        "import os, subprocess, sys, time, json\n"
        "t = time.monotonic()\n"
        "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)\n"
        "out, err = p.communicate()\n"
        "import resource\n"
        "print(json.dumps({'rc': p.returncode, 'out': out.decode(), 'err': err.decode(),"
        " 'maxrss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,"
        " 'seconds': time.monotonic() - t}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, CLI, *args], capture_output=True, text=True, check=True
    )
    doc = json.loads(done.stdout)
    result = subprocess.CompletedProcess([CLI, *args], doc["rc"], doc["out"], doc["err"])
    return result, int(doc["maxrss"]), float(doc["seconds"])


def served_model(url: str, constraint: str) -> dict[str, Any] | None:
    from enclave_infer import Client

    with Client(url, constraint) as client:
        info = client.model_info()
    return None if info is None else {"sha256": info.sha256, "version": info.version}


def enclave_pid(host_pid: int) -> int:
    out = subprocess.run(["pgrep", "-P", str(host_pid), "-f", "enclave_infer.enclave"], capture_output=True,
                         text=True, check=False).stdout.split()  # fmt: skip
    if not out:
        raise RuntimeError("enclave process not found")
    return int(out[0])


def run(work: Path) -> dict[str, Any]:
    import torch

    from enclave_infer.client.export import convert_to_onnx

    figures: dict[str, Any] = {}
    torch.manual_seed(0)
    pickle = work / "alexnet-random.pt"
    torch.save(alexnet(), pickle)
    onnx = work / "alexnet-random.onnx"
    started = time.monotonic()
    convert_to_onnx(pickle, onnx)
    figures["convert_seconds"] = round(time.monotonic() - started, 1)
    size = onnx.stat().st_size
    figures["model_bytes"] = size
    labels = work / "labels.txt"
    labels.write_text((ROOT / "demo" / "imagenet-classes.txt").read_text())
    key = work / "owner.key"
    subprocess.run([CLI, "keygen", str(key)], check=True, capture_output=True)
    code_hash = subprocess.run([CLI, "measure", "--owner-public-key", f"{key}.pub"], check=True,
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
    constraint = f"C:{code_hash} SEC:INSECURE"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(work / "serve.log", "wb") as log:
        server = subprocess.Popen(
            [CLI, "serve", "--port", str(port), "--data-dir", str(work / "data"),
             "--owner-public-key", f"{key}.pub"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_healthy(url)
        enclave = enclave_pid(server.pid)
        before = {"host": rss(server.pid, "VmRSS"), "enclave": rss(enclave, "VmRSS")}
        reset_peak(server.pid)
        reset_peak(enclave)
        done, client_peak, seconds = measured_cli(
            "provision",
            url,
            constraint,
            str(onnx),
            str(labels),
            "--owner-key",
            str(key),
            "--quiet",
            "--allow-duplicate-labels",
        )
        if done.returncode != 0:
            raise SystemExit(f"provision failed: {done.stderr}")
        figures["upload_seconds"] = round(seconds, 1)
        figures["upload_MB_per_s"] = round(size / seconds / 1e6, 1)
        peaks = {"host": rss(server.pid, "VmHWM"), "enclave": rss(enclave, "VmHWM")}
        figures["client_peak_bytes"] = client_peak
        for side in ("host", "enclave"):
            figures[f"{side}_baseline_bytes"] = before[side]
            figures[f"{side}_peak_bytes"] = peaks[side]
            figures[f"{side}_growth_bytes"] = peaks[side] - before[side]
        meta = httpx.get(url + "/healthz").json()
        assert meta["status"] == "ok"

        # restart: the enclave dies; the host restarts it and the sealed model comes back
        os.kill(enclave, signal.SIGKILL)
        started = time.monotonic()
        served = served_model(url, constraint)
        figures["restart_and_restore_seconds"] = round(time.monotonic() - started, 1)
        figures["served_after_restart"] = served
        first = served

        # an interrupted upload: the client is killed after a second
        upload = subprocess.Popen(
            [CLI, "provision", url, constraint, str(onnx), str(labels), "--owner-key", str(key), "--quiet",
             "--allow-duplicate-labels"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)
        upload.kill()
        upload.wait()
        time.sleep(1.0)
        partial = sorted(p.name for p in (work / "data" / "sealed").glob("*.partial"))
        figures["partial_files_after_interrupted_upload"] = partial
        figures["served_after_interrupted_upload"] = served_model(url, constraint)
        figures["previous_model_still_served"] = figures["served_after_interrupted_upload"] == first
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = run(Path(tmp))
    if args.json:
        print(json.dumps(figures))
        return 0
    mb = figures["model_bytes"]
    print(f"model: random-weight AlexNet, ONNX {mb / 1e6:.1f} MB (pickle → ONNX on the owner's side: "
          f"{figures['convert_seconds']} s)")  # fmt: skip
    print(f"upload through chunked OHTTP: {figures['upload_seconds']} s ({figures['upload_MB_per_s']} MB/s)")
    client = figures["client_peak_bytes"]
    print(f"client peak RSS:  {client / 1e6:7.1f} MB  ({client / mb:.2f}× model)")
    for side in ("host", "enclave"):
        g = figures[f"{side}_growth_bytes"]
        peak, base = figures[f"{side}_peak_bytes"], figures[f"{side}_baseline_bytes"]
        growth = f"+{g / 1e6:.1f} MB over {base / 1e6:.1f} MB before; {g / mb:.2f}× model"
        print(f"{side:7} peak RSS: {peak / 1e6:7.1f} MB  ({growth})")
    restore = figures["restart_and_restore_seconds"]
    print(f"enclave killed → restarted and model restored from sealed storage: {restore} s")
    print(f"served after the restart: {figures['served_after_restart']}")
    print(f"interrupted upload: partial files left {figures['partial_files_after_interrupted_upload']}, "
          f"previous model still served: {figures['previous_model_still_served']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
