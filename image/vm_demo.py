"""Boot the confidential-VM image here, pin it by IMAGE: and classify through it: `make vm-demo`.

    python3 image/vm_demo.py --image build/image [--accel tcg|kvm] [--refusals] [--dev]

QEMU boots the UKI (OUT/uki/enclave-infer.efi, on a small FAT ESP as EFI/BOOT/BOOTX64.EFI) with Debian's
OVMF and a software TPM (swtpm), the root volume (OUT/uki/rootfs.verity.img, erofs + dm-verity) read-only
as the first virtio disk and a data disk (the owner's public key) as the second. The network is QEMU's
user mode with `restrict=on`: the guest reaches nothing; the one way in is the service's port forwarded
from 127.0.0.1. In the guest the service finds the TPM and the boot's event log and serves vTPM
evidence: a TPM 2.0 quote over PCR 0-15 bound to its keys, with the log.

On the host, as a submitter would: `enclave-infer measure --image OUT` derives the reference
measurements and the IMAGE: pin from the artifacts alone; `attest` with only that pin (and SEC:INSECURE:
a software TPM) verifies the quote, replays the log against the quoted PCRs and checks each of the
release's events; then the owner provisions the demo model and the demo photos are classified. With
`--refusals`, two altered UKIs are built and booted (one byte changed in the root file system; another
kernel command line): each boots, and the same client refuses it, naming the first differing event.

`--accel auto` (the default; or ENCLAVE_VM_ACCEL=auto|kvm|tcg) first boots OVMF alone under KVM and uses
KVM if the firmware reaches its boot manager within KVM_PROBE_SECONDS, TCG otherwise: on these machines
/dev/kvm opens, but a nested guest hangs or QEMU stops at its first MSR write.
`--dev` boots a root built with `build_uki.py --rootfs dev` (busybox httpd): it only waits for the port.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
SERVICE_UID = 10001  # the image's enclave-infer user (image/README: what is inside the root)
PHOTOS = ("chelsea.png", "coffee.png")
# TCG needs QEMU from bookworm-backports (10.0; `make uki-tools` installs it): Debian 12's QEMU 7.2 panicked
# the guest's slab allocator in most boots here (flags corrupted around a gs-prefixed CMPXCHG16B under
# interrupts), and cx16 cannot be turned off because NumPy's wheels need x86-64-v2.
TCG_CPU = "max"
TCG_ACCEL = "tcg"
KVM_PROBE_SECONDS = 15.0  # OVMF reaches its boot manager in about 1 s under KVM, 7 s under TCG
READY_TIMEOUT = {"tcg": 300.0, "kvm": 120.0}  # seconds from power-on; the budget is 60 s under TCG


def say(text: str) -> None:
    print(f"vm-demo: {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_esp(uki: Path, esp: Path) -> None:
    """A FAT ESP holding the UKI at the removable-media path OVMF boots without any boot entry."""
    esp.unlink(missing_ok=True)
    size_kib = ((uki.stat().st_size * 2) // (1 << 20) + 16) * 1024
    subprocess.run(
        ["mkfs.fat", "-C", "-i", "454e4349", "--invariant", "-n", "ESP", str(esp), str(size_kib)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    subprocess.run(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"], check=True, env=env)
    subprocess.run(["mcopy", "-i", str(esp), str(uki), "::/EFI/BOOT/BOOTX64.EFI"], check=True, env=env)


def make_data_disk(disk: Path, owner_pub: Path | None) -> None:
    """The data disk: ext4 with the owner's public key (the operator puts it there), owned by the service."""
    disk.unlink(missing_ok=True)
    with disk.open("wb") as f:
        f.truncate(256 << 20)
    if owner_pub is None:
        return  # blank: the guest formats it on first boot
    seed = disk.with_suffix(".d")
    shutil.rmtree(seed, ignore_errors=True)
    seed.mkdir()
    shutil.copyfile(owner_pub, seed / "owner.key.pub")
    os.chown(seed / "owner.key.pub", SERVICE_UID, SERVICE_UID)
    os.chmod(seed / "owner.key.pub", 0o644)
    subprocess.run(
        [
            "mkfs.ext4",
            "-q",
            "-L",
            "enclave-data",
            "-d",
            str(seed),
            "-E",
            f"root_owner={SERVICE_UID}:{SERVICE_UID}",
            str(disk),
        ],
        check=True,
    )


def start_swtpm(work: Path) -> tuple[subprocess.Popen[bytes], Path]:
    state = work / "tpm"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir()
    sock = work / "swtpm.sock"
    sock.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            "swtpm",
            "socket",
            "--tpm2",
            "--tpmstate",
            f"dir={state}",
            "--ctrl",
            f"type=unixio,path={sock}",
            "--flags",
            "not-need-init,startup-clear",
            "--log",
            f"file={work / 'swtpm.log'}",
        ]
    )
    for _ in range(100):
        if sock.exists():
            return proc, sock
        time.sleep(0.05)
    proc.kill()
    sys.exit("vm-demo: swtpm did not open its socket")


def machine_args(accel: str, memory_mib: int, vars_fd: Path, console: Path) -> list[str]:
    """What every boot here shares: the q35 machine under ACCEL, OVMF with its own copy of the
    variables, no display or monitor, the serial console to a file."""
    return [
        "qemu-system-x86_64",
        "-machine",
        "q35",
        "-accel",
        TCG_ACCEL if accel == "tcg" else accel,
        "-cpu",
        "host" if accel == "kvm" else TCG_CPU,
        "-m",
        str(memory_mib),
        "-drive",
        f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
        "-drive",
        f"if=pflash,format=raw,unit=1,file={vars_fd}",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        f"file:{console}",
    ]


def qemu_command(
    accel: str, work: Path, image: Path, sock: Path, port: int, console: Path, esp: Path
) -> list[str]:
    return [
        *machine_args(accel, 2048, work / "vars.fd", console),
        "-smp",
        "2",
        "-chardev",
        f"socket,id=chrtpm,path={sock}",
        "-tpmdev",
        "emulator,id=tpm0,chardev=chrtpm",
        "-device",
        "tpm-tis,tpmdev=tpm0",
        # The ESP on the AHCI controller, so that the guest's first virtio disk is the root.
        "-drive",
        f"if=none,id=esp,format=raw,file={esp}",
        "-device",
        "ide-hd,drive=esp,bus=ide.0,bootindex=0",
        "-drive",
        f"if=none,id=root,format=raw,readonly=on,file={image / 'uki/rootfs.verity.img'}",
        "-device",
        "virtio-blk-pci,drive=root",
        "-drive",
        f"if=none,id=data,format=raw,file={work / 'data.img'}",
        "-device",
        "virtio-blk-pci,drive=data",
        "-netdev",
        f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:8080",
        "-device",
        "virtio-net-pci,netdev=net0,romfile=",
        "-no-reboot",
    ]


# Console lines whose first appearance times the boot's stages (seconds from power-on).
MILESTONES = {
    "OVMF starts the UKI": "BdsDxe: starting",
    "the stub measured the initrd": "EFI stub: Measured initrd",
    "the initrd's /init runs": "init: started",
    "the verified root is mounted": "starting the service",
    "the service listens": "Started enclave-infer",
}


def watch_console(console: Path, t0: float, seen: dict[str, float]) -> None:
    """Record when each milestone first shows on the serial console."""
    try:
        text = console.read_text(errors="replace")
    except OSError:
        return
    for name, marker in MILESTONES.items():
        if name not in seen and marker in text:
            seen[name] = time.monotonic() - t0


def kvm_works(work: Path) -> bool:
    """Boot OVMF alone under KVM, no disks: does the firmware reach its boot manager (BdsDxe) in time?"""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    probe = work / "kvm-probe"
    probe.mkdir(exist_ok=True)
    shutil.copyfile(OVMF_VARS, probe / "vars.fd")
    console = probe / "console.log"
    vm = subprocess.Popen(
        [*machine_args("kvm", 256, probe / "vars.fd", console), "-nic", "none"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + KVM_PROBE_SECONDS
        while time.monotonic() < deadline and vm.poll() is None:
            if console.exists() and "BdsDxe" in console.read_text(errors="replace"):
                return True
            time.sleep(0.25)
        return False
    finally:
        vm.kill()
        vm.wait()


def wait_ready(
    url: str,
    vm: subprocess.Popen[bytes],
    timeout: float,
    console: Path | None = None,
    t0: float = 0.0,
    seen: dict[str, float] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if console is not None and seen is not None:
            watch_console(console, t0, seen)
        if vm.poll() is not None:
            sys.exit(f"vm-demo: the VM stopped (status {vm.returncode}); see console.log and qemu.log")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    sys.exit(f"vm-demo: the service did not answer {url} within {timeout:.0f} s")


def cli(*args: str, capture: bool = False) -> str:
    exe = REPO / ".venv/bin/enclave-infer"
    done = subprocess.run([str(exe), *args], check=False, text=True, capture_output=capture)
    if done.returncode:
        sys.exit(
            f"vm-demo: enclave-infer {args[0]} failed ({done.returncode}): {done.stderr if capture else ''}"
        )
    return done.stdout if capture else ""


@contextlib.contextmanager
def running_vm(accel: str, work: Path, image: Path, wait_path: str, boot: int) -> Iterator[str]:
    """Power on (fresh swtpm, same disks), wait until WAIT_PATH answers 200, yield the URL; power off."""
    tpm, sock = start_swtpm(work)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    uki = image / "uki/enclave-infer.efi"
    esp = work / f"esp-{boot}.img"
    make_esp(uki, esp)
    shutil.copyfile(OVMF_VARS, work / "vars.fd")
    console = work / f"console-{boot}.log"
    say(f"boot {boot}: {uki} under {accel.upper()} (console: {console})")
    qemu_log = (work / f"qemu-{boot}.log").open("wb")
    t0 = time.monotonic()
    vm = subprocess.Popen(qemu_command(accel, work, image, sock, port, console, esp), stderr=qemu_log)
    try:
        seen: dict[str, float] = {}
        wait_ready(url + wait_path, vm, READY_TIMEOUT[accel], console, t0, seen)
        ready = time.monotonic() - t0
        watch_console(console, t0, seen)
        stages = ", ".join(f"{name} {t:.1f} s" for name, t in sorted(seen.items(), key=lambda kv: kv[1]))
        say(f"power-on to ready {ready:.1f} s ({accel.upper()}): {stages}")
        yield url
    finally:
        vm.terminate()  # power off: the data disk is mounted `sync`, nothing is left in the guest's cache
        try:
            vm.wait(timeout=10)
        except subprocess.TimeoutExpired:
            vm.kill()
        tpm.terminate()
        tpm.wait(timeout=10)
        qemu_log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=Path, default=Path("build/image"), help="the release folder (OUT)")
    ap.add_argument("--work", type=Path, default=Path("build/vm-demo"))
    ap.add_argument(
        "--accel", choices=["auto", "tcg", "kvm"], default=os.environ.get("ENCLAVE_VM_ACCEL", "auto")
    )
    ap.add_argument("--model", type=Path, default=REPO / "build/demo/efficientnet-lite0.onnx")
    ap.add_argument("--dev", action="store_true", help="the busybox development root: wait for the port only")
    ap.add_argument(
        "--refusals",
        action="store_true",
        help="then build and boot two altered UKIs (one byte changed in the root file system; another "
        "kernel command line) and show that a client pinning IMAGE: refuses each",
    )
    ap.add_argument("--keep", action="store_true", help="leave the VM running until interrupted")
    args = ap.parse_args()
    work: Path = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    image: Path = args.image
    if args.accel == "auto":
        args.accel = "kvm" if kvm_works(work) else "tcg"
        say(f"KVM {'works' if args.accel == 'kvm' else 'does not boot a guest here'}: {args.accel.upper()}")

    if args.dev:
        make_data_disk(work / "data.img", None)
        with running_vm(args.accel, work, image, "/", 1) as url:
            if args.keep:
                say(f"the VM serves {url}; Ctrl-C stops it")
                signal.pause()
        return 0

    say("a submitter derives the pin from the release's artifacts alone: enclave-infer measure --image")
    measurements = work / "measurements.json"
    pin = cli("measure", "--image", str(image), "--out", str(measurements), capture=True).strip()
    constraint = f"{pin} SEC:INSECURE"  # a software TPM: nothing binds it to hardware
    key = work / "owner.key"
    say("the model owner makes a signing key; the operator puts its public half on the data disk")
    cli("keygen", str(key), capture=True)
    make_data_disk(work / "data.img", key.with_suffix(".key.pub"))
    with running_vm(args.accel, work, image, "/healthz", 1) as url:
        say(f"constraint: {constraint} (the vTPM's quote, its event log replayed, each event the release's)")
        print(cli("attest", url, constraint, "--measurements", str(measurements), capture=True).strip())
        say("the owner provisions EfficientNet-Lite0 (ONNX) and the ImageNet labels into the VM")
        cli(
            "provision",
            url,
            constraint,
            str(args.model),
            str(REPO / "demo/imagenet-classes.txt"),
            "--owner-key",
            str(key),
            "--mean",
            "0.498039,0.498039,0.498039",
            "--std",
            "0.501961,0.501961,0.501961",
            "--allow-duplicate-labels",
            "--measurements",
            str(measurements),
            capture=True,
        )
        classify(url, constraint, measurements)
        if args.keep:
            say(f"the VM serves {url}; Ctrl-C stops it")
            signal.pause()
    if args.refusals:
        refusals(args.accel, work, image, constraint, measurements)
    return 0


def refusals(accel: str, work: Path, image: Path, constraint: str, measurements: Path) -> None:
    """Two altered releases boot, and a client pinning the genuine IMAGE: refuses both."""
    altered = {
        "one byte changed in the root file system": ("rootfs", altered_rootfs(image, work), ""),
        "another kernel command line": ("cmdline", image / "rootfs.tar", "quiet"),
    }
    for boot, (what, (name, rootfs, extra)) in enumerate(altered.items(), start=2):
        say(f"building a UKI with {what}")
        out = work / f"altered-{name}"
        subprocess.run(
            [
                sys.executable,
                str(REPO / "image/uki/build_uki.py"),
                "--rootfs",
                str(rootfs),
                "--out",
                str(out),
                "--cmdline-extra",
                extra,
            ],
            check=True,
            env={**os.environ, "SOURCE_DATE_EPOCH": (image / "SOURCE_DATE_EPOCH").read_text().strip()},
            stderr=subprocess.DEVNULL,
        )
        with running_vm(accel, work, out, "/healthz", boot) as url:
            exe = REPO / ".venv/bin/enclave-infer"
            done = subprocess.run(
                [str(exe), "attest", url, constraint, "--measurements", str(measurements)],
                text=True,
                capture_output=True,
                check=False,
            )
            if done.returncode == 0:
                sys.exit(f"vm-demo: a UKI with {what} was ACCEPTED under {constraint}")
            reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "(no message)"
            say(f"with {what}, the VM boots and the client refuses it: {reason}")


def altered_rootfs(image: Path, work: Path) -> Path:
    """The release's root file system tarball with one byte of one file changed (its configuration's
    first comment), written beside the work folder."""
    member_name = "etc/enclave-infer/enclave.toml"
    target = work / "rootfs-altered.tar"
    with (
        tarfile.open(image / "rootfs.tar") as src,
        tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as dst,
    ):
        for member in src:
            data = src.extractfile(member) if member.isfile() else None
            if data is not None and member.name.removeprefix("./") == member_name:
                content = bytearray(data.read())
                content[2] ^= 0x20  # "# The ..." -> "# the ...": same size, one byte
                dst.addfile(member, io.BytesIO(bytes(content)))
            else:
                dst.addfile(member, data)
    return target


def classify(url: str, constraint: str, measurements: Path) -> None:
    import skimage  # the demo photos, as demo/run.py takes them (the host venv's wheel)

    photo_dir = Path(skimage.__file__).parent / "data"
    say("a submitter classifies the demo photos through the VM")
    photos = [str(photo_dir / n) for n in PHOTOS]
    for line in cli(
        "classify", url, constraint, *photos, "--measurements", str(measurements), capture=True
    ).splitlines():
        print(line.replace(f"{photo_dir}/", ""))


if __name__ == "__main__":
    sys.exit(main())
