"""The released image (image/README.md): the OCI image classifies without a container engine, and two
builds give the same artifacts. `make test` never builds an image: the first test runs only where
`make image` has built one, the second only when asked to build (ENCLAVE_INFER_IMAGE_BUILD=1)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "build" / "image"
MODEL = ROOT / "build" / "demo" / "efficientnet-lite0.onnx"


def _built_from_head() -> None:
    """The image's code hash is computed from this checkout's source: an image of another commit
    would (rightly) be refused, so it is not tested."""
    if not (IMAGE / "oci.json").exists():
        pytest.skip("no built image in build/image: `make image` (as root) builds it; `make test` never does")
    built = json.loads((IMAGE / "rootfs.json").read_text()).get("source_commit")
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout
    if built != head.strip():
        pytest.skip("build/image was built from another commit than HEAD: `make image` rebuilds it")


def _need_root_and(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("the image tests run as root (unshare, mount, chroot, mmdebstrap --mode=root)")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"image tools missing ({', '.join(missing)}): `make image-tools` installs them")


@pytest.mark.slow
def test_the_oci_image_classifies_without_a_container_engine(tmp_path: Path) -> None:
    _built_from_head()
    if not MODEL.exists():
        pytest.skip("build/demo/efficientnet-lite0.onnx not built: run `make test`, which builds it first")
    _need_root_and("umoci", "unshare", "mount")
    done = subprocess.run(
        [sys.executable, str(ROOT / "image" / "run_oci.py"), "--image", str(IMAGE), "--model", str(MODEL),
         "--workdir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.rsplit("/", 1)[1] for line in lines] == [
        "chelsea.png: tiger cat (37.9%)",
        "coffee.png: espresso (95.7%)",
    ]
    # the model was sealed into the folder the image's sealed mount came from, not into its tmpfs
    assert (tmp_path / "run" / "sealed" / "model.sealed").exists()


def test_skopeo_reads_the_layout_and_the_archive(tmp_path: Path) -> None:
    _built_from_head()
    _need_root_and("skopeo")
    oci = json.loads((IMAGE / "oci.json").read_text())
    inspect = subprocess.run(
        ["skopeo", "inspect", f"oci:{IMAGE / 'oci'}:{oci['ref']}"], capture_output=True, text=True, check=True
    )
    assert json.loads(inspect.stdout)["Digest"] == oci["manifest_digest"]
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"oci-archive:{IMAGE / oci['archive']}", f"dir:{tmp_path / 'copy'}"],
        check=True,
    )
    assert (tmp_path / "copy" / oci["layer_digest"].removeprefix("sha256:")).exists()


def test_podman_loads_the_archive_with_the_manifest_digest(tmp_path: Path) -> None:
    """The archive is one ``podman load`` accepts, and it keeps the digest release.json states
    (podman's own storage under tmp_path, so nothing of the machine's is touched)."""
    _built_from_head()
    _need_root_and("podman")
    oci = json.loads((IMAGE / "oci.json").read_text())
    # podman refuses a runroot path longer than 50 characters: a short folder of its own
    with tempfile.TemporaryDirectory(prefix="ei-podman-") as run:
        podman = ["podman", "--root", str(tmp_path / "root"), "--runroot", run, "--storage-driver", "vfs"]
        subprocess.run([*podman, "load", "-q", "-i", str(IMAGE / oci["archive"])], check=True, timeout=300)
        name = f"localhost/{oci['ref']}"
        argv = [*podman, "image", "inspect", name]
        inspect = subprocess.run(argv, capture_output=True, text=True, check=True)
    [image] = json.loads(inspect.stdout)
    assert image["Digest"] == oci["manifest_digest"]
    assert image["Config"]["Entrypoint"][0] == "/opt/enclave-infer/bin/enclave-infer"


@pytest.mark.slow
def test_two_builds_give_the_same_artifacts(tmp_path: Path) -> None:
    if os.environ.get("ENCLAVE_INFER_IMAGE_BUILD") != "1":
        pytest.skip(
            "builds the image twice (~2 min, network for Debian packages): set ENCLAVE_INFER_IMAGE_BUILD=1"
        )
    _need_root_and("mmdebstrap", "git", "mkfs.erofs", "veritysetup")
    for out in (tmp_path / "a", tmp_path / "b"):
        for step in ("build_rootfs.py", "oci.py", "ray_image.py", "uki", "release.py"):
            if step == "uki":  # as image/uki/uki.mk runs it
                epoch = (out / "SOURCE_DATE_EPOCH").read_text().strip()
                argv = [str(ROOT / "image" / "uki" / "build_uki.py"), "--rootfs", str(out / "rootfs.tar"),
                        "--out", str(out)]  # fmt: skip
                env = {**os.environ, "SOURCE_DATE_EPOCH": epoch}
            else:
                argv, env = [str(ROOT / "image" / step), str(out)], dict(os.environ)
            subprocess.run([sys.executable, *argv], check=True, capture_output=True, env=env)
    done = subprocess.run(
        [sys.executable, str(ROOT / "image" / "compare.py"), str(tmp_path / "a"), str(tmp_path / "b")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout
    assert "release.json" in done.stdout and "enclave-infer.oci.tar" in done.stdout
    assert "enclave-infer-ray.oci.tar" in done.stdout and "deploy/rayservice.yaml" in done.stdout
    assert "uki/enclave-infer.efi" in done.stdout and "uki/rootfs.verity.img" in done.stdout


@pytest.mark.slow
def test_the_uki_boots_in_a_vm_pinned_by_image_and_altered_ukis_are_refused(tmp_path: Path) -> None:
    """`make vm-demo` as a test: the released UKI boots under QEMU (OVMF, swtpm) and serves vTPM
    evidence; a client that pins only the IMAGE: `measure --image` derives verifies the quote, replays
    the log and classifies the demo photos; a UKI with one byte changed in its root and one with
    another command line boot and are refused, naming the first differing event. Several minutes
    under TCG, so only when asked (ENCLAVE_INFER_VM=1) on an image of HEAD."""
    if os.environ.get("ENCLAVE_INFER_VM") != "1":
        pytest.skip("boots three UKIs in QEMU (several minutes under TCG): set ENCLAVE_INFER_VM=1")
    _built_from_head()
    if not (IMAGE / "uki" / "enclave-infer.efi").exists() or not MODEL.exists():
        pytest.skip("no UKI in build/image or no demo model: `make image` and `make demo-model` build them")
    _need_root_and("qemu-system-x86_64", "swtpm")
    done = subprocess.run(
        [sys.executable, str(ROOT / "image" / "vm_demo.py"), "--image", str(IMAGE), "--model", str(MODEL),
         "--work", str(tmp_path / "vm"), "--refusals"],
        capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Constraint holds: IMAGE:" in done.stdout
    assert "Mode: RELEASE (vtpm)" in done.stdout
    assert "chelsea.png: tiger cat (37.9%)" in done.stdout and "coffee.png: espresso (95.7%)" in done.stdout
    refusals = [line for line in done.stderr.splitlines() if "the client refuses it" in line]
    assert len(refusals) == 2, done.stderr
    assert all("IMAGE: PCR 4 event" in line and "the UKI (Authenticode)" in line for line in refusals), (
        refusals
    )
