"""Tests for the owner's tooling for the enclave's runtimes: TorchScript, ExportedProgram, and
export_formats from every kind of model file, with the messages a model that does not fit gets."""

from __future__ import annotations

import pickle
import re
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import onnx
import torch
from numpy.typing import NDArray

from enclave_infer.client._tooling import uses_external_data
from enclave_infer.client.export import (
    OWNER_FORMATS,
    RUNTIMES,
    ModelInput,
    detect_format,
    export_formats,
    export_onnx,
    export_program,
    export_torchscript,
)
from enclave_infer.enclave.preprocess import decode_image, to_tensor
from enclave_infer.enclave.runtimes import RuntimeLoadError, check_scores, load_onnx, load_torch
from enclave_infer.errors import UsageError
from enclave_infer.protocol.api import Preprocessing
from tests.helpers import (
    ChannelsLast,
    FixedBatch,
    FixedSize,
    TinyCNN,
    ValueDependent,
    images,
    png,
    poison_onnx,
    run_torch,
    split_onnx,
)

SIZE = 32
CLASSES = 4
README = Path(__file__).resolve().parents[2] / "README.md"


def inputs(batch: int, seed: int = 3) -> torch.Tensor:
    return torch.from_numpy(images(batch, SIZE, seed=seed))


def expected(model: torch.nn.Module, x: torch.Tensor) -> NDArray[np.float32]:
    return run_torch(model, x.numpy())


def run_enclave(path: Path, tmp_path: Path, x: torch.Tensor) -> np.ndarray:
    """``x`` through ``path`` the way the enclave runs it (ONNX Runtime for .onnx, else TorchScript)."""
    no_files = tmp_path / "no-files"
    no_files.mkdir(exist_ok=True)
    if path.suffix == ".onnx":
        return load_onnx(path, threads=1, no_files_dir=str(no_files)).run(x.numpy())
    return load_torch(path, fmt="torchscript", threads=1).run(x.numpy())


@pytest.fixture(scope="module")
def model() -> TinyCNN:
    return TinyCNN(CLASSES).eval()


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
    export_onnx(model, paths["onnx"], ModelInput(SIZE))
    torch.save(model, paths["pickle"])
    export_torchscript(model, paths["torchscript"], ModelInput(SIZE))
    export_program(model, paths["exported_program"], ModelInput(SIZE))
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
    export_torchscript(model, tmp_path / "m.pt", ModelInput(SIZE))
    assert model.training


def test_tracing_refuses_control_flow_on_tensor_values(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="control flow depends on tensor values"):
        export_torchscript(ValueDependent(), tmp_path / "m.pt", ModelInput(SIZE))
    assert not (tmp_path / "m.pt").exists()


def test_tracing_refuses_a_baked_in_batch_size(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="on a batch of 1"):
        export_torchscript(FixedBatch(), tmp_path / "m.pt", ModelInput(SIZE))
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_export_argument_errors(tmp_path: Path) -> None:
    for export in (export_torchscript, export_program):
        with pytest.raises(UsageError, match=r"expected a torch\.nn\.Module"):
            export("model", tmp_path / "m")  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="input_size must be an integer"):
            export(TinyCNN(), tmp_path / "m", ModelInput(0))
        with pytest.raises(UsageError, match="is a directory"):
            export(TinyCNN(), tmp_path, ModelInput(SIZE))
        with pytest.raises(UsageError, match="no such directory"):
            export(TinyCNN(), tmp_path / "missing" / "m", ModelInput(SIZE))


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
    out = export_formats(files["pickle"], tmp_path / "out", {"onnx", "torch"}, ModelInput(SIZE))
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
    out = export_formats(files["torchscript"], tmp_path, {"onnx", "torch"}, ModelInput(SIZE))
    assert out == {"onnx": tmp_path / "model.onnx", "torchscript": tmp_path / "model.torchscript.pt"}
    assert out["torchscript"].read_bytes() == files["torchscript"].read_bytes()
    x = inputs(1)
    np.testing.assert_allclose(run_enclave(out["onnx"], tmp_path, x), expected(model, x), atol=1e-4, rtol=0)
    # Onto itself: checked, left alone.
    assert export_formats(out["torchscript"], tmp_path, {"torch"}, ModelInput(SIZE)) == {
        "torchscript": out["torchscript"]
    }


def test_from_an_exported_program(model: TinyCNN, files: dict[str, Path], tmp_path: Path) -> None:
    out = export_formats(files["exported_program"], tmp_path, {"onnx"}, ModelInput(SIZE))
    x = inputs(1)
    np.testing.assert_allclose(run_enclave(out["onnx"], tmp_path, x), expected(model, x), atol=1e-4, rtol=0)
    with pytest.raises(UsageError) as info:
        export_formats(files["exported_program"], tmp_path, {"torch"}, ModelInput(SIZE))
    assert str(info.value) == (
        f"{files['exported_program']}: an ExportedProgram (torch.export.save) cannot be turned into a "
        "TorchScript archive (torch 2.13 cannot trace an exported graph); for the torch runtime give "
        "a torch.save(model) pickle or a TorchScript archive (torch.jit.save)"
    )


def test_onnx_with_external_data_is_folded_into_one_file(
    model: TinyCNN, files: dict[str, Path], tmp_path: Path
) -> None:
    given = tmp_path / "given"
    given.mkdir()
    split = given / "split.onnx"
    split_onnx(files["onnx"], split)
    assert uses_external_data(onnx.load(str(split), load_external_data=False).graph)
    out = export_formats(split, tmp_path / "out", {"onnx"}, ModelInput(SIZE))
    assert out == {"onnx": tmp_path / "out" / "split.onnx"}
    assert not uses_external_data(onnx.load(str(out["onnx"]), load_external_data=False).graph)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["split.onnx"]
    x = inputs(1)
    np.testing.assert_allclose(run_enclave(out["onnx"], tmp_path, x), expected(model, x), atol=1e-4, rtol=0)
    # In place: the file is replaced by its self-contained form.
    assert export_formats(split, given, {"onnx"}, ModelInput(SIZE)) == {"onnx": split}
    assert not uses_external_data(onnx.load(str(split), load_external_data=False).graph)
    (given / "w.bin").unlink()
    np.testing.assert_allclose(run_enclave(split, tmp_path, x), expected(model, x), atol=1e-4, rtol=0)


def test_external_data_that_is_missing(files: dict[str, Path], tmp_path: Path) -> None:
    split = tmp_path / "split.onnx"
    split_onnx(files["onnx"], split)
    (tmp_path / "w.bin").unlink()
    with pytest.raises(UsageError, match="cannot read its external data"):
        export_formats(split, tmp_path / "out", {"onnx"}, ModelInput(SIZE))


def test_self_contained_onnx_is_validated_and_copied(files: dict[str, Path], tmp_path: Path) -> None:
    out = export_formats(files["onnx"], tmp_path, {"onnx"}, ModelInput(SIZE))
    assert out["onnx"].read_bytes() == files["onnx"].read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(UsageError, match=r"bad\.onnx"):
        export_formats(bad, tmp_path / "out", {"onnx"}, ModelInput(SIZE))


def test_export_formats_usage_errors(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="an ONNX model cannot be turned into a TorchScript archive"):
        export_formats(files["onnx"], tmp_path, {"onnx", "torch"}, ModelInput(SIZE))
    with pytest.raises(UsageError, match="runtimes must be some of onnx, torch, got tflite"):
        export_formats(files["onnx"], tmp_path, {"onnx", "tflite"}, ModelInput(SIZE))
    with pytest.raises(UsageError, match="got none"):
        export_formats(files["onnx"], tmp_path, set(), ModelInput(SIZE))
    with pytest.raises(UsageError, match="no such file"):
        export_formats(tmp_path / "missing.onnx", tmp_path, {"onnx"}, ModelInput(SIZE))
    with pytest.raises(UsageError, match="is not a directory"):
        export_formats(files["onnx"], files["pickle"], {"onnx"}, ModelInput(SIZE))
    weights = tmp_path / "weights.pt"
    torch.save(TinyCNN().state_dict(), weights)
    with pytest.raises(UsageError, match="state_dict"):
        export_formats(weights, tmp_path, {"torch"}, ModelInput(SIZE))


def test_unknown_files_are_told_every_accepted_format(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"hello")
    with pytest.raises(UsageError) as info:
        detect_format(path)
    assert str(info.value) == (
        f"{path}: not a model file this tool knows; expected an ONNX model, a torch.save(model) pickle, "
        "a TorchScript archive (torch.jit.save) or an ExportedProgram (torch.export.save)"
    )


# --- the accepted formats: one table, quoted by the errors and shown in README.md ------------------


def test_readme_shows_the_formats_table_row_for_row() -> None:
    readme = README.read_text(encoding="utf-8").replace("`", "")
    header = "| the owner's file | --runtime onnx | --runtime torch | --runtime both |"
    assert header in readme
    rows = readme[readme.index(header) :].splitlines()[2:]
    shown = rows[: rows.index("")] if "" in rows else rows
    wanted = []
    for fmt in OWNER_FORMATS:
        cells = [fmt.how(runtime) or f"no: {fmt.why_not}" for runtime in RUNTIMES]
        both = "yes" if all(fmt.how(runtime) for runtime in RUNTIMES) else "no"
        wanted.append(f"| {fmt.name} | {' | '.join(cells)} | {both} |")
    assert shown == wanted


def test_every_refusal_names_what_the_runtime_accepts(files: dict[str, Path], tmp_path: Path) -> None:
    torch_sources = [fmt.name for fmt in OWNER_FORMATS if fmt.torch]
    assert torch_sources == ["a torch.save(model) pickle", "a TorchScript archive (torch.jit.save)"]
    for kind in ("onnx", "exported_program"):
        with pytest.raises(UsageError, match=re.escape(" or ".join(torch_sources))):
            export_formats(files[kind], tmp_path, {"onnx", "torch"}, ModelInput(SIZE))


# --- the model must take what the enclave gives it -----------------------------------------------


def test_a_pickle_that_takes_another_size(tmp_path: Path) -> None:
    src = tmp_path / "model.pt"
    torch.save(FixedSize(48), src)
    with pytest.raises(UsageError) as info:
        export_formats(src, tmp_path, {"onnx"}, ModelInput(SIZE))
    assert re.fullmatch(
        re.escape(f"{src}: the model fails on input 2x3x32x32 (RuntimeError: ")
        + r"mat1 and mat2 shapes cannot be multiplied \(2x3072 and 6912x4\)"
        + re.escape("); if it takes another input, say so with --crop, --layout or --grayscale"),
        str(info.value),
    )
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_a_grey_model_given_colour_images_is_told_to_pass_grayscale(tmp_path: Path) -> None:
    grey = TinyCNN(channels=1).eval()
    src = tmp_path / "grey.pt"
    torch.save(grey, src)
    archive = tmp_path / "grey.torchscript.pt"
    export_torchscript(grey, archive, ModelInput(SIZE, channels=1))
    for given in (src, archive):  # a module, and a TorchScript archive (whose error is on its last line)
        with pytest.raises(UsageError) as info:
            export_formats(given, tmp_path / "out", {"torch"}, ModelInput(SIZE))
        assert str(info.value).startswith(
            f"{given}: the model's first convolution takes 1 channel but preprocessing gives "
            "Nx3x32x32: pass --grayscale (RuntimeError: Given groups=1, weight of size [8, 1, 3, 3]"
        )


def test_a_grey_model_is_exported_and_served(tmp_path: Path) -> None:
    grey = TinyCNN(channels=1).eval()
    src = tmp_path / "grey.pt"
    torch.save(grey, src)
    out = export_formats(src, tmp_path, {"onnx", "torch"}, ModelInput(SIZE, channels=1), classes=CLASSES)
    dims = onnx.load(str(out["onnx"])).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [1, SIZE, SIZE]
    pre = Preprocessing(resize=40, crop=SIZE, mean=(0.5,), std=(0.25,), channels=1)
    tensor = to_tensor(decode_image(png(), max_pixels=10**6), pre)
    assert tensor.shape == pre.input_shape() == (1, 1, SIZE, SIZE)
    no_files = tmp_path / "no-files"
    no_files.mkdir()
    onnx_runtime = load_onnx(out["onnx"], threads=1, no_files_dir=str(no_files))
    torch_runtime = load_torch(out["torchscript"], fmt="torchscript", threads=1)
    for runtime in (onnx_runtime, torch_runtime):
        check_scores(runtime, np.zeros(pre.input_shape(), np.float32), CLASSES)  # what the enclave does
    np.testing.assert_allclose(onnx_runtime.run(tensor), run_torch(grey, tensor), atol=1e-4, rtol=0)
    np.testing.assert_allclose(torch_runtime.run(tensor), run_torch(grey, tensor), atol=1e-5, rtol=0)


def test_a_channels_last_model(tmp_path: Path) -> None:
    model = ChannelsLast().eval()
    src = tmp_path / "nhwc.pt"
    torch.save(model, src)
    with pytest.raises(UsageError, match=re.escape(f"{src}: the model fails on input 2x3x32x32 (")):
        export_formats(src, tmp_path, {"onnx"}, ModelInput(SIZE))
    out = export_formats(src, tmp_path, {"onnx"}, ModelInput(SIZE, layout="NHWC"))
    dims = onnx.load(str(out["onnx"])).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [SIZE, SIZE, 3]
    x = images(1, SIZE, layout="NHWC")
    np.testing.assert_allclose(
        run_enclave(out["onnx"], tmp_path, torch.from_numpy(x)), run_torch(model, x), atol=1e-4
    )


def test_the_labels_must_match_the_scores(files: dict[str, Path], tmp_path: Path) -> None:
    for kind in ("pickle", "torchscript", "exported_program", "onnx"):
        with pytest.raises(UsageError) as info:
            export_formats(files[kind], tmp_path, {"onnx"}, ModelInput(SIZE), classes=CLASSES + 1)
        assert str(info.value) == f"{files[kind]}: the model gives 4 scores per image but there are 5 labels"
    assert list(tmp_path.iterdir()) == []


def test_a_fixed_batch_exported_program_is_told_how_to_export_it(tmp_path: Path) -> None:
    model = TinyCNN().eval()
    fixed = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, SIZE, SIZE),)), fixed)
    with pytest.raises(UsageError) as info:
        export_formats(fixed, tmp_path, {"onnx"}, ModelInput(SIZE))
    message = str(info.value)
    assert message == (
        f"{fixed}: the ExportedProgram takes only batches of 1 (exported without a dynamic batch); "
        "export it with one, on an example batch of 2: torch.export.export(model, "
        "(torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: torch.export.Dim('batch')},))"
    )
    # The advice works as written.
    program = eval(message.rpartition("batch of 2: ")[2], {"torch": torch, "model": model})
    (placeholder,) = [
        n
        for n in program.graph.nodes
        if n.op == "placeholder" and n.name in program.graph_signature.user_inputs
    ]
    assert not isinstance(placeholder.meta["val"].shape[0], int)


def test_an_exported_program_of_another_size(tmp_path: Path) -> None:
    other = tmp_path / "other.pt2"
    torch.export.save(torch.export.export(TinyCNN().eval(), (torch.randn(1, 3, 48, 48),)), other)
    with pytest.raises(UsageError) as info:
        export_formats(other, tmp_path, {"onnx"}, ModelInput(SIZE))
    assert str(info.value) == (
        f"{other}: the model takes input 1x3x48x48 but preprocessing crops to 32: "
        "pass --crop 48 (and a --resize of at least 48)"
    )


# --- progress -------------------------------------------------------------------------------------


def test_progress_names_each_step(files: dict[str, Path], tmp_path: Path) -> None:
    stages: list[str] = []
    export_formats(files["pickle"], tmp_path, {"onnx", "torch"}, ModelInput(SIZE), progress=stages.append)
    assert stages == [
        "loading the pickle model.pth (this runs its code)",
        "exporting model.onnx with torch.onnx for input Nx3x32x32",
        "checking model.onnx against the model",
        "tracing model.torchscript.pt with torch.jit.trace for input Nx3x32x32",
        "writing model.torchscript.pt",
        "checking model.torchscript.pt against the model",
    ]
    stages.clear()
    export_formats(files["torchscript"], tmp_path / "ts", {"torch"}, ModelInput(SIZE), progress=stages.append)
    assert stages == ["checking model.torchscript.pt", "writing model.torchscript.pt"]


# --- what the enclave would refuse, refused before the upload ------------------------------------


def test_a_model_with_a_nan_weight_is_refused_before_the_upload(
    files: dict[str, Path], tmp_path: Path
) -> None:
    poisoned = tmp_path / "nan.onnx"
    poison_onnx(files["onnx"], poisoned)
    for classes in (CLASSES, None):
        with pytest.raises(UsageError, match=r"not finite \(NaN or infinity\): the enclave refuses it"):
            export_formats(poisoned, tmp_path / "out", {"onnx"}, ModelInput(SIZE), classes=classes)
    broken = TinyCNN(CLASSES).eval()
    with torch.no_grad():
        broken.fc.bias[0] = float("nan")
    for export in (export_onnx, export_torchscript):
        with pytest.raises(UsageError, match="not finite"):
            export(broken, tmp_path / "broken.model", ModelInput(SIZE))
    assert not (tmp_path / "broken.model").exists()


def _scripted_file(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path


class _Counting(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x.mean((2, 3)).repeat(1, 2)[:, :4] * self.calls  # CLASSES


def test_a_scripted_model_is_checked_as_the_enclave_does(model: TinyCNN, tmp_path: Path) -> None:
    """A scripted batch norm model goes through (the enclave serves it frozen in eval mode); one that
    counts its calls in an attribute is refused here, before the upload, with what to do."""
    scripted = _scripted_file(model, tmp_path / "bn.torchscript.pt")
    out = export_formats(scripted, tmp_path / "out", {"torch"}, ModelInput(SIZE), classes=CLASSES)
    np.testing.assert_allclose(
        run_enclave(out["torchscript"], tmp_path, inputs(2)), expected(model, inputs(2)), atol=1e-5
    )
    counting = _scripted_file(_Counting(), tmp_path / "counting.torchscript.pt")
    with pytest.raises(UsageError) as info:
        export_formats(counting, tmp_path / "out2", {"torch"}, ModelInput(SIZE), classes=CLASSES)
    message = str(info.value)
    assert "keeping state, which the enclave refuses" in message and "torch.jit.trace(model.eval()" in message
    assert not (tmp_path / "out2" / "counting.torchscript.pt").exists()
    with pytest.raises(RuntimeLoadError, match="keeping state"):  # what the enclave would have said
        load_torch(counting, fmt="torchscript", threads=1)
