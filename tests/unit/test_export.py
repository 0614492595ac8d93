"""Tests for the owner's tooling for the enclave's runtimes: TorchScript, ExportedProgram, and
export_formats from every kind of model file."""

from __future__ import annotations

import pickle
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import onnx
import torch
from torch import nn

from enclave_infer.client.convert import _uses_external_data, export_onnx
from enclave_infer.client.export import detect_format, export_formats, export_program, export_torchscript
from enclave_infer.enclave.runtimes import load_onnx, load_torch
from enclave_infer.errors import UsageError

SIZE = 32
CLASSES = 4


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        bn = nn.BatchNorm2d(6)
        assert bn.running_mean is not None and bn.running_var is not None
        with torch.no_grad():
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), bn, nn.ReLU(), nn.MaxPool2d(2))
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(6, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        out: torch.Tensor = self.fc(self.dropout(torch.flatten(pooled, 1)))
        return out


class ValueDependent(TinyCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out if out.sum() > 0 else -out  # tracing would keep one branch only


class FixedBatch(TinyCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(nn.functional.adaptive_avg_pool2d(self.features(x), 1).view(2, -1))  # type: ignore[no-any-return]


def inputs(batch: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def expected(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(x).numpy()  # type: ignore[no-any-return]


def run_enclave(path: Path, tmp_path: Path, x: torch.Tensor) -> np.ndarray:
    """``x`` through ``path`` the way the enclave runs it (ONNX Runtime for .onnx, else TorchScript)."""
    no_files = tmp_path / "no-files"
    no_files.mkdir(exist_ok=True)
    if path.suffix == ".onnx":
        return load_onnx(path, threads=1, no_files_dir=str(no_files)).run(x.numpy())
    return load_torch(path, fmt="torchscript", threads=1).run(x.numpy())


@pytest.fixture(scope="module")
def model() -> TinyCNN:
    return TinyCNN().eval()


@pytest.fixture(scope="module")
def files(model: TinyCNN, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same model as an ONNX file, a torch.save pickle, a TorchScript archive, an ExportedProgram."""
    folder = tmp_path_factory.mktemp("owner")
    paths = {
        "onnx": folder / "model.onnx",
        "pickle": folder / "model.pth",
        "torchscript": folder / "model.torchscript.pt",
        "exported_program": folder / "model.pt2",
    }
    export_onnx(model, paths["onnx"], input_size=SIZE)
    torch.save(model, paths["pickle"])
    export_torchscript(model, paths["torchscript"], input_size=SIZE)
    export_program(model, paths["exported_program"], input_size=SIZE)
    return paths


# --- export_torchscript / export_program --------------------------------------------------------


def test_torchscript_archive_reloads_and_matches(model: TinyCNN, files: dict[str, Path]) -> None:
    path = files["torchscript"]
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    assert not [n for n in names if n.endswith(".debug_pkl")]  # no owner paths or source lines
    assert not [n for n in names if "traced_inputs" in n]  # nor the example input
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        reloaded = torch.jit.load(str(path))  # type: ignore[no-untyped-call]
    x = inputs(5)
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(x).numpy(), expected(model, x), atol=1e-5, rtol=1e-5)


def test_exported_program_reloads_and_matches(model: TinyCNN, files: dict[str, Path]) -> None:
    program = torch.export.load(str(files["exported_program"]))  # our own file
    x = inputs(4)
    with torch.no_grad():
        np.testing.assert_allclose(program.module()(x).numpy(), expected(model, x), atol=1e-5, rtol=1e-5)


def test_exports_restore_training_mode(tmp_path: Path) -> None:
    model = TinyCNN().train()
    export_torchscript(model, tmp_path / "m.pt", input_size=SIZE)
    assert model.training


def test_tracing_refuses_control_flow_on_tensor_values(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="control flow depends on tensor values"):
        export_torchscript(ValueDependent(), tmp_path / "m.pt", input_size=SIZE)
    assert not (tmp_path / "m.pt").exists()


def test_tracing_refuses_a_baked_in_batch_size(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="on a batch of 1"):
        export_torchscript(FixedBatch(), tmp_path / "m.pt", input_size=SIZE)
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_export_argument_errors(tmp_path: Path) -> None:
    for export in (export_torchscript, export_program):
        with pytest.raises(UsageError, match=r"expected a torch\.nn\.Module"):
            export("model", tmp_path / "m")  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="input_size must be an integer"):
            export(TinyCNN(), tmp_path / "m", input_size=0)
        with pytest.raises(UsageError, match="is a directory"):
            export(TinyCNN(), tmp_path, input_size=SIZE)
        with pytest.raises(UsageError, match="no such directory"):
            export(TinyCNN(), tmp_path / "missing" / "m", input_size=SIZE)


# --- detect_format --------------------------------------------------------------------------------


def test_formats_are_detected_by_content(files: dict[str, Path], tmp_path: Path) -> None:
    for kind, path in files.items():
        disguised = tmp_path / f"{kind}.bin"
        shutil.copyfile(path, disguised)
        assert detect_format(disguised) == kind
    legacy = tmp_path / "legacy.onnx"
    torch.save(TinyCNN(), legacy, _use_new_zipfile_serialization=False)
    assert detect_format(legacy) == "pickle"
    state_dict = tmp_path / "weights.pt"
    torch.save(TinyCNN().state_dict(), state_dict)
    assert detect_format(state_dict) == "pickle"  # export_formats then says it is only weights


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"hello", "not a model file this tool knows"),
        (b"PK\x03\x04broken", "damaged zip archive"),
        (pickle.dumps(1, protocol=0), "not a model file this tool knows"),
    ],
)
def test_unknown_files_are_refused(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=fragment):
        detect_format(path)


def test_zip_that_is_no_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "model.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a/readme.txt", "hi")
    with pytest.raises(UsageError, match=r"not a torch\.save, TorchScript or ExportedProgram file"):
        detect_format(path)


# --- export_formats ------------------------------------------------------------------------------


def test_from_a_pickle_both_runtimes_agree(model: TinyCNN, files: dict[str, Path], tmp_path: Path) -> None:
    out = export_formats(files["pickle"], tmp_path / "out", {"onnx", "torch"}, input_size=SIZE)
    assert out == {
        "onnx": tmp_path / "out" / "model.onnx",
        "torchscript": tmp_path / "out" / "model.torchscript.pt",
    }
    assert detect_format(out["onnx"]) == "onnx" and detect_format(out["torchscript"]) == "torchscript"
    x = inputs(1)
    from_onnx = run_enclave(out["onnx"], tmp_path, x)
    from_torch = run_enclave(out["torchscript"], tmp_path, x)
    np.testing.assert_allclose(from_onnx, from_torch, atol=1e-4, rtol=0)
    np.testing.assert_allclose(from_torch, expected(model, x), atol=1e-5, rtol=0)


def test_from_torchscript(model: TinyCNN, files: dict[str, Path], tmp_path: Path) -> None:
    out = export_formats(files["torchscript"], tmp_path, {"onnx", "torch"}, input_size=SIZE)
    assert out == {"onnx": tmp_path / "model.onnx", "torchscript": tmp_path / "model.torchscript.pt"}
    assert out["torchscript"].read_bytes() == files["torchscript"].read_bytes()
    x = inputs(1)
    np.testing.assert_allclose(run_enclave(out["onnx"], tmp_path, x), expected(model, x), atol=1e-4, rtol=0)
    # Onto itself: checked, left alone.
    assert export_formats(out["torchscript"], tmp_path, {"torch"}, input_size=SIZE) == {
        "torchscript": out["torchscript"]
    }


def test_from_an_exported_program(model: TinyCNN, files: dict[str, Path], tmp_path: Path) -> None:
    out = export_formats(files["exported_program"], tmp_path, {"onnx"}, input_size=SIZE)
    x = inputs(1)
    np.testing.assert_allclose(run_enclave(out["onnx"], tmp_path, x), expected(model, x), atol=1e-4, rtol=0)
    with pytest.raises(UsageError, match="an ExportedProgram cannot be turned into a TorchScript archive"):
        export_formats(files["exported_program"], tmp_path, {"torch"}, input_size=SIZE)


def test_onnx_with_external_data_is_folded_into_one_file(
    model: TinyCNN, files: dict[str, Path], tmp_path: Path
) -> None:
    given = tmp_path / "given"
    given.mkdir()
    split = given / "split.onnx"
    onnx.save(
        onnx.load(str(files["onnx"])),
        str(split),
        save_as_external_data=True,
        size_threshold=0,
        location="w.bin",
    )
    assert _uses_external_data(onnx.load(str(split), load_external_data=False).graph)
    out = export_formats(split, tmp_path / "out", {"onnx"})
    assert out == {"onnx": tmp_path / "out" / "split.onnx"}
    assert not _uses_external_data(onnx.load(str(out["onnx"]), load_external_data=False).graph)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["split.onnx"]
    x = inputs(1)
    np.testing.assert_allclose(run_enclave(out["onnx"], tmp_path, x), expected(model, x), atol=1e-4, rtol=0)
    # In place: the file is replaced by its self-contained form.
    assert export_formats(split, given, {"onnx"}) == {"onnx": split}
    assert not _uses_external_data(onnx.load(str(split), load_external_data=False).graph)
    (given / "w.bin").unlink()
    np.testing.assert_allclose(run_enclave(split, tmp_path, x), expected(model, x), atol=1e-4, rtol=0)


def test_external_data_that_is_missing(files: dict[str, Path], tmp_path: Path) -> None:
    split = tmp_path / "split.onnx"
    onnx.save(
        onnx.load(str(files["onnx"])),
        str(split),
        save_as_external_data=True,
        size_threshold=0,
        location="w.bin",
    )
    (tmp_path / "w.bin").unlink()
    with pytest.raises(UsageError, match="cannot read its external data"):
        export_formats(split, tmp_path / "out", {"onnx"})


def test_self_contained_onnx_is_validated_and_copied(files: dict[str, Path], tmp_path: Path) -> None:
    out = export_formats(files["onnx"], tmp_path, {"onnx"})
    assert out["onnx"].read_bytes() == files["onnx"].read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(UsageError, match=r"bad\.onnx"):
        export_formats(bad, tmp_path / "out", {"onnx"})


def test_export_formats_usage_errors(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="an ONNX model cannot be turned into a TorchScript archive"):
        export_formats(files["onnx"], tmp_path, {"onnx", "torch"})
    with pytest.raises(UsageError, match="runtimes must be some of onnx, torch, got tflite"):
        export_formats(files["onnx"], tmp_path, {"onnx", "tflite"})
    with pytest.raises(UsageError, match="got none"):
        export_formats(files["onnx"], tmp_path, set())
    with pytest.raises(UsageError, match="no such file"):
        export_formats(tmp_path / "missing.onnx", tmp_path, {"onnx"})
    with pytest.raises(UsageError, match="is not a directory"):
        export_formats(files["onnx"], files["pickle"], {"onnx"})
    weights = tmp_path / "weights.pt"
    torch.save(TinyCNN().state_dict(), weights)
    with pytest.raises(UsageError, match="state_dict"):
        export_formats(weights, tmp_path, {"torch"}, input_size=SIZE)
