"""The demo's real model through the whole confidential path: what `make demo` shows, asserted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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
    try:
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
