"""Run the OCI image here without a container engine, and classify the demo photos through it.

    python image/run_oci.py --image build/image --model build/demo/efficientnet-lite0.onnx

Runs as root, with the project's venv's python (its `enclave-infer` plays the model owner and the
submitter, from outside the image). Steps:

1. `umoci unpack` the layout (OUT/oci) into a runtime bundle (OUT/run/bundle: rootfs/ and config.json);
   the process to start is the bundle's: the image's entrypoint, command, environment and user.
2. In new mount and PID namespaces (`unshare --mount --pid --fork`), no cgroups needed: the root made
   read-only, a tmpfs for DATA_DIR (/var/lib/enclave-infer), the sealed-model folder bound from the
   host (OUT/run/sealed, holding owner.key.pub) at DATA_DIR/sealed, /proc, a /dev with null, zero,
   random and urandom, tmpfs /tmp and /run; then chroot, drop to the image's user, exec the entrypoint.
   The network is the host's: the only changes to the command are `--host 127.0.0.1` and a free port
   instead of the image's 0.0.0.0:8080.
3. The owner computes the code hash from the source (`enclave-infer measure` with image/enclave.toml and
   the owner key), which must be the one the image's enclave reports; provisions the demo model; the
   submitter classifies the two photos; the server is stopped with SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PHOTOS = ("chelsea.png", "coffee.png")
MEAN = ",".join([f"{127 / 255:.6f}"] * 3)  # as demo/run.py: EfficientNet-Lite0's normalisation
STD = ",".join([f"{128 / 255:.6f}"] * 3)
DEVICES = ("null", "zero", "random", "urandom")


def say(text: str) -> None:
    print(f"run_oci: {text}", file=sys.stderr, flush=True)


def mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True)


def inner(bundle: Path, sealed: Path, host: str, port: int) -> int:
    """PID 1 of the new namespaces: mounts, then the entrypoint as a child; SIGTERM is passed on."""
    config = json.loads((bundle / "config.json").read_text())
    process = config["process"]
    rootfs = (bundle / config["root"]["path"]).resolve()
    env = dict(e.split("=", 1) for e in process["env"])
    data_dir = Path(process["args"][process["args"].index("--data-dir") + 1])
    uid, gid = process["user"]["uid"], process["user"]["gid"]
    args = list(process["args"])
    args[args.index("--host") + 1] = host
    args[args.index("--port") + 1] = str(port)

    mount("--make-rprivate", "/")
    mount("--bind", str(rootfs), str(rootfs))
    mount("-o", "remount,bind,ro", str(rootfs))

    def inside(path: str | Path) -> str:
        return str(rootfs / str(path).lstrip("/"))

    mount("-t", "tmpfs", "-o", f"mode=0700,uid={uid},gid={gid},size=64m", "tmpfs", inside(data_dir))
    os.mkdir(inside(data_dir / "sealed"), 0o700)  # the mount point, in the tmpfs as in the VM
    mount("--bind", str(sealed), inside(data_dir / "sealed"))
    mount("-t", "proc", "proc", inside("/proc"))
    mount("-t", "tmpfs", "-o", "mode=0755,size=1m", "tmpfs", inside("/dev"))
    for dev in DEVICES:
        Path(inside(f"/dev/{dev}")).touch()
        mount("--bind", f"/dev/{dev}", inside(f"/dev/{dev}"))
    for tmp in ("/tmp", "/run"):
        mount("-t", "tmpfs", "-o", "mode=1777,size=64m", "tmpfs", inside(tmp))

    pid = os.fork()
    if pid == 0:
        try:
            os.chroot(rootfs)
            os.chdir(process.get("cwd", "/"))
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            os.execve(args[0], args, env)
        finally:
            os._exit(127)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGTERM))
    signal.signal(signal.SIGINT, lambda *_: os.kill(pid, signal.SIGTERM))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)
        except InterruptedError:
            continue


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str) -> str:
    exe = Path(sys.executable).with_name("enclave-infer")
    done = subprocess.run([str(exe), *args], check=False, text=True, capture_output=True)
    if done.returncode != 0:
        sys.exit(f"run_oci: `enclave-infer {args[0]}` failed: {done.stderr.strip()}")
    return done.stdout


def wait_ready(url: str, server: subprocess.Popen[bytes], log: Path, timeout: float = 120.0) -> float:
    import httpx

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server.poll() is not None:
            sys.exit(f"run_oci: the image's server exited with status {server.returncode}; see {log}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit(f"run_oci: the image's server did not come up in {timeout:.0f} s; see {log}")


def stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the namespace's PID 1 (passed on to the server, which drains); unshare itself
    ignores SIGTERM while it waits for its child."""
    try:
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    except OSError:
        children = []
    if children:
        os.kill(int(children[0]), signal.SIGTERM)
    else:
        server.kill()  # --kill-child passes SIGTERM on


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--image", type=Path, default=ROOT / "build" / "image", help="the build's output folder"
    )
    parser.add_argument("--model", type=Path, default=ROOT / "build" / "demo" / "efficientnet-lite0.onnx")
    parser.add_argument("--workdir", type=Path, help="where to unpack and run (default: IMAGE/run)")
    parser.add_argument(
        "--inner", nargs=4, metavar=("BUNDLE", "SEALED", "HOST", "PORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.inner:
        bundle, sealed, host, port = args.inner
        return inner(Path(bundle), Path(sealed), host, int(port))
    if os.geteuid() != 0:
        sys.exit("run_oci: run as root (unshare, mount, chroot)")
    out = args.image.resolve()
    ref = json.loads((out / "oci.json").read_text())["ref"]
    work = (args.workdir or out / "run").resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    say(f"unpacking {out / 'oci'}:{ref}")
    subprocess.run(["umoci", "unpack", "--image", f"{out / 'oci'}:{ref}", str(work / "bundle")], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    process = json.loads((work / "bundle" / "config.json").read_text())["process"]
    say(f"entrypoint: {' '.join(process['args'])} (user {process['user']['uid']}:{process['user']['gid']})")

    key = work / "owner.key"
    cli("keygen", str(key))
    sealed = work / "sealed"
    sealed.mkdir(mode=0o700)
    shutil.copy(f"{key}.pub", sealed / "owner.key.pub")
    uid, gid = process["user"]["uid"], process["user"]["gid"]
    for path in (sealed, sealed / "owner.key.pub"):
        os.chown(path, uid, gid)
    code_hash = cli(
        "measure", "--owner-public-key", f"{key}.pub", "--config", str(HERE / "enclave.toml")
    ).strip()
    constraint = f"C:{code_hash} SEC:INSECURE"
    say(f"constraint computed from the source: {constraint}")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = work / "serve.log"
    with log.open("wb") as log_file:
        server = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "--kill-child=SIGTERM", "--",
             sys.executable, str(Path(__file__).resolve()), "--inner", str(work / "bundle"), str(sealed),
             "127.0.0.1", str(port)],
            stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            ready = wait_ready(url, server, log)
            say(f"the image's server answers on {url} ({ready:.1f} s from start to ready; log {log})")
            labels = ROOT / "demo" / "imagenet-classes.txt"
            cli("provision", url, constraint, str(args.model), str(labels), "--owner-key", str(key),
                "--mean", MEAN, "--std", STD, "--allow-duplicate-labels")  # fmt: skip
            say("provisioned the demo model (sealed in the image's sealed folder)")
            import skimage

            photos = []
            for name in PHOTOS:
                shutil.copy(Path(skimage.data_dir) / name, work / name)  # type: ignore[attr-defined]
                photos.append(str(work / name))
            print(cli("classify", url, constraint, *photos), end="")
        finally:
            stop(server)
            try:
                server.wait(timeout=40)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    say(f"stopped; sealed folder now holds: {', '.join(sorted(p.name for p in sealed.iterdir()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
