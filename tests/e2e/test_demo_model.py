"""The demo's real model through the whole confidential path: what `make demo` shows, asserted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from enclave_infer import Client, ProvisionRefusedError
from enclave_infer.client._owner import load_owner_key, read_labels

from .conftest import Deployment, run_cli, start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "build" / "demo" / "efficientnet-lite0.onnx"
LABELS = ROOT / "demo" / "imagenet-classes.txt"


@pytest.mark.slow
def test_efficientnet_lite0_classifies_the_photos(tmp_path: Path, owner_key: Path) -> None:
    if not MODEL.exists():
        pytest.skip("build/demo/efficientnet-lite0.onnx not built: run `make test`, which builds it first")
    skimage = pytest.importorskip("skimage")
    d: Deployment = start_server(tmp_path, owner_key)
    normalise = ("--mean", ",".join([str(127 / 255)] * 3), "--std", ",".join([str(128 / 255)] * 3))
    try:
        # A damaged copy (4 bytes of a weight flipped to a NaN) is refused before the upload by the
        # owner's tooling, and by the enclave's load trial when uploaded all the same.
        from tests.helpers import poison_onnx

        damaged = tmp_path / "damaged.onnx"
        poison_onnx(MODEL, damaged)
        out = run_cli(
            "provision", d.url, d.constraint, str(damaged), str(LABELS), "--owner-key", str(owner_key),
            "--allow-duplicate-labels", *normalise,
        )  # fmt: skip
        assert out.returncode != 0 and "not finite (NaN or infinity): the enclave refuses it" in out.stderr
        labels = read_labels(LABELS, allow_duplicates=True)
        with Client(d.url, d.constraint) as client:
            with pytest.raises(ProvisionRefusedError, match=r"not finite \(NaN or infinity\)"):
                client.provision(damaged.read_bytes(), labels, load_owner_key(owner_key))
            assert client.model_info() is None
        out = run_cli(
            "provision", d.url, d.constraint, str(MODEL), str(LABELS), "--owner-key", str(owner_key),
            "--allow-duplicate-labels",
            "--mean", ",".join([str(127 / 255)] * 3), "--std", ",".join([str(128 / 255)] * 3),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        photos = []
        for name in ("chelsea.png", "coffee.png"):
            shutil.copy(Path(skimage.data_dir) / name, tmp_path / name)
            photos.append(str(tmp_path / name))
        out = run_cli("classify", d.url, d.constraint, *photos, "--top", "3")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].startswith(f"{photos[0]}: tiger cat (")
        assert {line.split(": ")[1].rsplit(" (", 1)[0] for line in lines[:3]} == {
            "tiger cat", "Egyptian cat", "tabby, tabby cat",
        }  # fmt: skip
        assert lines[3].startswith(f"{photos[1]}: espresso (9")
    finally:
        stop_server(d)
