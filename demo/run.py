"""`make demo`: the whole confidential path on one machine, driven through the real CLI.

Starts `enclave-infer serve` (host + simulated enclave) on a free loopback port, provisions the
demo model as its owner, classifies two photos as a submitter, and stops the server. Each step is a
separate process, as it would be for three different people.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import skimage

HERE = Path(__file__).resolve().parent
LABELS = HERE / "imagenet-classes.txt"
PHOTOS = ("chelsea.png", "coffee.png")
# EfficientNet-Lite0 normalises (x - 127) / 128 on 0..255 pixels: mean 127/255, std 128/255 on 0..1.
MEAN = ",".join([f"{127 / 255:.6f}"] * 3)
STD = ",".join([f"{128 / 255:.6f}"] * 3)


def cli(*args: str, capture: bool = False) -> str:
    exe = Path(sys.executable).with_name("enclave-infer")
    done = subprocess.run([str(exe), *args], check=False, text=True, capture_output=capture)
    if done.returncode != 0:
        sys.exit(f"demo: `enclave-infer {args[0]}` failed{': ' + done.stderr.strip() if capture else ''}")
    return done.stdout if capture else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, server: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"demo: the server exited with status {server.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit("demo: the server did not come up in time")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=Path("build/demo"))
    args = parser.parse_args()
    work = args.workdir / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    say = lambda text: print(f"demo: {text}", file=sys.stderr)  # noqa: E731
    key = work / "owner.key"
    say("the model owner makes a signing key")
    cli("keygen", str(key), capture=True)
    code_hash = cli("measure", "--owner-public-key", f"{key}.pub", capture=True).strip()
    constraint = f"C:{code_hash} SEC:INSECURE"
    say(f"constraint: {constraint}")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(work / "serve.log", "wb")  # noqa: SIM115
    say(f"the operator starts the host and the simulated enclave on {url} (log: {work / 'serve.log'})")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("enclave-infer")), "serve", "--port", str(port),
         "--data-dir", str(work / "data"), "--owner-public-key", f"{key}.pub"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        wait_ready(url, server)
        say("the owner provisions EfficientNet-Lite0 (ONNX) and the ImageNet labels")
        cli("provision", url, constraint, str(args.model), str(LABELS), "--owner-key", str(key),
            "--mean", MEAN, "--std", STD, "--allow-duplicate-labels")  # fmt: skip
        photos = []
        for name in PHOTOS:
            shutil.copy(Path(skimage.data_dir) / name, work / name)
            photos.append(str(work / name))
        say("a submitter classifies two photos")
        cli("classify", url, constraint, *photos)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    browser_page(work, key, constraint)
    return 0


def browser_page(work: Path, key: Path, constraint: str) -> None:
    """Where to try the browser client (web/README.md): the demo's server has stopped, so say how to
    start it again on its sealed model, and the page's two addresses, from the host and from disk."""
    page = work / "enclave-infer.html"
    url = "http://127.0.0.1:8080"
    digest, from_disk = cli(
        "page", "--write", str(page), "--url", url, "--constraint", constraint, capture=True
    ).splitlines()
    from_host = cli("page", "--url", url, "--constraint", constraint, capture=True).splitlines()[1]
    serve = f"enclave-infer serve --port 8080 --data-dir {work / 'data'} --owner-public-key {key}.pub"
    print(
        f"demo: to classify in a browser, start the server again (it keeps the provisioned model): {serve}\n"
        f"demo: then open {from_host}\n"
        f"demo: or the same page from disk (SHA-256 {digest.split()[0]}): {from_disk}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
