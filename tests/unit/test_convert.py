"""Tests for the model owner's converter: torch model or pickle → one ONNX file."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from numpy.typing import NDArray

pytest.importorskip("torch")

import onnx
import onnxruntime
import torch
from torch import nn

import enclave_infer.client.export as convert
from enclave_infer.client.export import (
    DEMO_PREPROCESSING,
    ModelInput,
    build_demo_model,
    check_onnx,
    convert_to_onnx,
    export_onnx,
    load_pickled_model,
)
from enclave_infer.enclave.preprocess import decode_image, to_tensor
from enclave_infer.errors import UsageError
from enclave_infer.protocol.api import Preprocessing
from tests.helpers import (
    FixedBatch,
    TinyCNN,
    TwoOutputs,
    ValueDependent,
    images,
    run_torch,
    split_onnx,
    tiny_onnx,
)

SRC = Path(convert.__file__).resolve().parents[2]


class AlexNet(nn.Module):
    """AlexNet as torchvision defines it (61,100,840 parameters), written out: no torchvision."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=0.5),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
        return out


def run_onnx(path: Path, x: NDArray[np.float32]) -> NDArray[np.float32]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out: NDArray[np.float32] = session.run(["logits"], {"input": x})[0]
    return out


def softmax(logits: NDArray[np.float32]) -> NDArray[np.float64]:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: NDArray[np.float64] = e / e.sum(axis=-1, keepdims=True)
    return out


# --- export_onnx -------------------------------------------------------------------------------


def test_module_imports_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None\n"
        "import enclave_infer.client.export as c\n"
        "assert c.DEMO_PREPROCESSING['crop'] == 224\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_export_tiny_cnn_matches_torch(tmp_path: Path) -> None:
    model = TinyCNN(10)
    dest = tmp_path / "small.onnx"
    export_onnx(model, dest, ModelInput(64))

    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.onnx"]  # one file, no leftovers
    proto = onnx.load(str(dest))
    onnx.checker.check_model(proto, full_check=True)
    (graph_input,) = proto.graph.input
    (graph_output,) = proto.graph.output
    assert (graph_input.name, graph_output.name) == ("input", "logits")
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 64, 64]
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer)

    for batch in (1, 2, 5):
        x = images(batch, 64, seed=batch)
        np.testing.assert_allclose(run_onnx(dest, x), run_torch(model, x), atol=1e-4, rtol=0)


def test_export_restores_training_mode(tmp_path: Path) -> None:
    model = TinyCNN(10).train()
    export_onnx(model, tmp_path / "m.onnx", ModelInput(32))
    assert model.training
    eval_model = TinyCNN(10).eval()
    export_onnx(eval_model, tmp_path / "e.onnx", ModelInput(32))
    assert not eval_model.training


def test_export_with_explicit_opset(tmp_path: Path) -> None:
    dest = tmp_path / "m.onnx"
    export_onnx(TinyCNN(10), dest, ModelInput(32), opset=18)
    versions = {o.domain: o.version for o in onnx.load(str(dest)).opset_import}
    assert versions[""] == 18


def test_export_overwrites_existing_file(tmp_path: Path) -> None:
    dest = tmp_path / "m.onnx"
    dest.write_bytes(b"old")
    export_onnx(TinyCNN(10), dest, ModelInput(32))
    onnx.checker.check_model(onnx.load(str(dest)))


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        (FixedBatch(), "only accepts batches of 2"),
        (TwoOutputs(), "the model must return one tensor, it returned tuple"),
        (ValueDependent(), "could not be exported"),
    ],
    ids=["fixed-batch", "two-outputs", "data-dependent"],
)
def test_export_refuses_models_the_enclave_cannot_serve(
    tmp_path: Path, model: torch.nn.Module, fragment: str
) -> None:
    dest = tmp_path / "m.onnx"
    with pytest.raises(UsageError, match=fragment) as info:
        export_onnx(model, dest, ModelInput(16))
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_export_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"torch\.nn\.Module"):
        export_onnx({"weights": 1}, tmp_path / "m.onnx")  # type: ignore[arg-type]
    for size in (0, -1, True, 10_000):
        with pytest.raises(UsageError, match="input_size"):
            export_onnx(TinyCNN(10), tmp_path / "m.onnx", ModelInput(size))
    with pytest.raises(UsageError, match="opset"):
        export_onnx(TinyCNN(10), tmp_path / "m.onnx", opset=0)
    with pytest.raises(UsageError, match="no such directory"):
        export_onnx(TinyCNN(10), tmp_path / "missing" / "m.onnx")
    with pytest.raises(UsageError, match="is a directory"):
        export_onnx(TinyCNN(10), tmp_path)


def test_alexnet_helper_has_alexnets_parameter_count() -> None:
    assert sum(p.numel() for p in AlexNet().parameters()) == 61_100_840


@pytest.mark.slow
def test_export_alexnet_shaped_model_as_one_file(tmp_path: Path) -> None:
    # 244 MB of weights: by default torch would split them into an external data file.
    torch.manual_seed(0)
    model = AlexNet()
    dest = tmp_path / "alexnet.onnx"
    start = time.perf_counter()
    export_onnx(model, dest)
    elapsed = time.perf_counter() - start
    try:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["alexnet.onnx"]
        assert dest.stat().st_size > 61_100_840 * 4
        x = images(2, 224)
        np.testing.assert_allclose(run_onnx(dest, x), run_torch(model, x), atol=1e-4, rtol=0)
        print(f"AlexNet export: {elapsed:.1f} s, {dest.stat().st_size / 1e6:.1f} MB")
    finally:
        dest.unlink()  # do not keep 244 MB in pytest's retained temporary directories


# --- load_pickled_model / convert_to_onnx ------------------------------------------------------


def test_convert_whole_model_pickle(tmp_path: Path) -> None:
    model = TinyCNN(10).eval()
    src = tmp_path / "model.pt"
    torch.save(model, src)
    dest = tmp_path / "model.onnx"
    convert_to_onnx(src, dest, ModelInput(48))
    x = images(3, 48)
    np.testing.assert_allclose(run_onnx(dest, x), run_torch(model, x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("suffix", [".pth", ".PKL"])
def test_load_pickled_model_other_suffixes(tmp_path: Path, suffix: str) -> None:
    src = tmp_path / f"model{suffix}"
    torch.save(TinyCNN(10).train(), src)
    loaded = load_pickled_model(src)
    assert isinstance(loaded, TinyCNN)
    assert not loaded.training


def test_convert_onnx_file_is_validated_and_copied(tmp_path: Path) -> None:
    src = tmp_path / "given.onnx"
    export_onnx(TinyCNN(10), src, ModelInput(32))
    dest = tmp_path / "out" / "model.onnx"
    dest.parent.mkdir()
    convert_to_onnx(src, dest)
    assert dest.read_bytes() == src.read_bytes()
    convert_to_onnx(dest, dest)  # converting a file onto itself validates it and leaves it alone
    assert dest.read_bytes() == src.read_bytes()


def test_convert_onnx_with_external_data_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "given.onnx"
    export_onnx(TinyCNN(10), src, ModelInput(32))
    split = tmp_path / "split.onnx"
    split_onnx(src, split)
    with pytest.raises(UsageError, match="external data"):
        convert_to_onnx(split, tmp_path / "model.onnx")


def _module_from_file(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pickle_whose_code_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "owner_models_for_test.py"
    source.write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x.mean(dim=(2, 3))\n"
    )
    module = _module_from_file("owner_models_for_test", source)
    monkeypatch.setitem(sys.modules, "owner_models_for_test", module)
    src = tmp_path / "model.pt"
    torch.save(module.Net(), src)
    monkeypatch.delitem(sys.modules, "owner_models_for_test")
    with pytest.raises(UsageError, match=r"no module named 'owner_models_for_test'.*PYTHONPATH"):
        load_pickled_model(src)


def test_pickle_of_a_class_defined_in_the_saving_script(tmp_path: Path) -> None:
    """The class lives in the script's __main__, which no other program can import: the message
    says what works instead (export in that script, or move the class into a module)."""
    src = tmp_path / "model.pt"
    script = (
        "import sys, torch\n"
        "class Net(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x.mean(dim=(2, 3))\n"
        "torch.save(Net(), sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", script, str(src)], check=True, timeout=120)
    with pytest.raises(UsageError) as info:
        load_pickled_model(src)
    message = str(info.value)
    assert "class Net was defined in the script that saved it" in message
    assert "torch.onnx.export(model.eval()" in message and "move Net into a module" in message
    assert "PYTHONPATH" not in message and "\n" not in message


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (lambda: TinyCNN(10).state_dict(), "holds an OrderedDict, not a torch.nn.Module; a state_dict"),
        (lambda: {"model": TinyCNN(10)}, "holds a dict, not a torch.nn.Module; a state_dict"),
        (lambda: [1, 2, 3], "holds a list, not a torch.nn.Module$"),
        (lambda: torch.zeros(3), "holds a Tensor, not a torch.nn.Module$"),
    ],
    ids=["state-dict", "dict", "list", "tensor"],
)
def test_non_model_pickle_is_refused(tmp_path: Path, content: Callable[[], object], fragment: str) -> None:
    src = tmp_path / "weights.pt"
    torch.save(content(), src)
    with pytest.raises(UsageError, match=fragment) as info:
        convert_to_onnx(src, tmp_path / "model.onnx")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("model.pt", b"this is a text file, not a model\n", "not a torch.save"),
        ("model.pt", b"", "not a torch.save"),
        ("model.pkl", b"\x80\x04\x95garbage", "not a torch.save"),
        ("model.onnx", b"this is a text file, not a model\n", "ONNX model"),
        ("model.onnx", b"", "empty"),
        ("model.h5", b"whatever", "unsupported model file .h5"),
        ("model", b"whatever", "unsupported model file"),
    ],
)
def test_bad_model_files_are_refused(tmp_path: Path, name: str, content: bytes, fragment: str) -> None:
    src = tmp_path / name
    src.write_bytes(content)
    with pytest.raises(UsageError, match=fragment) as info:
        convert_to_onnx(src, tmp_path / "out.onnx")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out.onnx").exists()


def test_missing_files_are_refused(tmp_path: Path) -> None:
    for name in ("absent.pt", "absent.onnx"):
        with pytest.raises(UsageError, match="no such file"):
            convert_to_onnx(tmp_path / name, tmp_path / "out.onnx")
    with pytest.raises(UsageError, match="no such file"):
        load_pickled_model(tmp_path / "absent.pt")


# --- check_onnx: an owner's ONNX file against the enclave's input and the labels -------------------


@pytest.mark.parametrize(
    ("inputs", "want", "message"),
    [
        (
            [1, 3, 299, 299],
            ModelInput(224),
            "the model takes input 1x3x299x299 but preprocessing crops to 224: "
            "pass --crop 299 (and a --resize of at least 299)",
        ),
        (
            [1, 1, 28, 28],
            ModelInput(28),
            "the model takes input 1x1x28x28 but preprocessing gives Nx3x28x28: pass --grayscale",
        ),
        (
            ["N", 3, 28, 28],
            ModelInput(28, channels=1),
            "the model takes input Nx3x28x28 but preprocessing gives Nx1x28x28: leave out --grayscale",
        ),
        (
            [1, 32, 32, 3],
            ModelInput(32),
            "the model takes input 1x32x32x3 (channels last) but preprocessing gives Nx3x32x32: "
            "pass --layout NHWC",
        ),
        (
            [1, 3, 32, 32],
            ModelInput(32, layout="NHWC"),
            "the model takes input 1x3x32x32 (channels first) but preprocessing gives Nx32x32x3: "
            "pass --layout NCHW",
        ),
        (
            [1, 4, 32, 32],
            ModelInput(32),
            "the model takes input 1x4x32x32 but preprocessing gives Nx3x32x32: "
            "the enclave gives 1 (grey) or 3 (colour) channels, not 4",
        ),
        (
            [1, 3, 32, 48],
            ModelInput(32),
            "the model takes input 1x3x32x48, which is not square; the enclave centre-crops square images",
        ),
        (
            [8, 3, 32, 32],
            ModelInput(32),
            "the model takes only batches of 8; the enclave gives one image at a time: "
            "export it with a dynamic batch (or a batch of 1)",
        ),
    ],
    ids=[
        "size",
        "grey-model",
        "colour-model",
        "nhwc-model",
        "nchw-model",
        "4-channels",
        "not-square",
        "batch-8",
    ],
)
def test_check_onnx_says_what_the_model_takes(
    tmp_path: Path, inputs: list[int | str], want: ModelInput, message: str
) -> None:
    path = tmp_path / "given.onnx"
    tiny_onnx(path, inputs, [inputs[0], 5])
    with pytest.raises(UsageError) as info:
        check_onnx(path, want)
    assert str(info.value) == f"{path}: {message}"
    check_onnx(path)  # without want only the file itself is checked


def test_check_onnx_accepts_what_fits(tmp_path: Path) -> None:
    for inputs, want, classes in [
        (["N", 3, 32, 32], ModelInput(32), None),
        ([1, 3, 32, 32], ModelInput(32), 5),
        (["N", 1, 28, 28], ModelInput(28, channels=1), None),
        ([1, 32, 32, 3], ModelInput(32, layout="NHWC"), None),
        (["N", 3, "H", "W"], ModelInput(300), 5),  # symbolic sizes: run once to count
    ]:
        path = tmp_path / "m.onnx"
        tiny_onnx(path, inputs, [inputs[0], 5])
        check_onnx(path, want, classes=classes)


def test_check_onnx_counts_the_scores(tmp_path: Path) -> None:
    declared, symbolic = tmp_path / "declared.onnx", tmp_path / "symbolic.onnx"
    tiny_onnx(declared, ["N", 3, 32, 32], ["N", 5])
    tiny_onnx(symbolic, ["N", 3, 32, 32], ["N", "classes"])  # known only by running it
    for path in (declared, symbolic):
        with pytest.raises(UsageError) as info:
            check_onnx(path, ModelInput(32), classes=1000)
        assert str(info.value) == f"{path}: the model gives 5 scores per image but there are 1000 labels"


# --- the demo ----------------------------------------------------------------------------------


def test_demo_preprocessing_is_a_valid_preprocessing() -> None:
    pre = Preprocessing.from_json(DEMO_PREPROCESSING)
    assert pre == Preprocessing(resize=256, crop=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    assert pre.to_json() == DEMO_PREPROCESSING


def _top(probabilities: NDArray[np.float64], k: int = 3) -> list[int]:
    return [int(i) for i in np.argsort(probabilities)[::-1][:k]]


@pytest.mark.slow
def test_demo_model_classifies_the_skimage_photos(tmp_path: Path) -> None:
    import skimage

    model = build_demo_model()
    assert not model.training
    dest = tmp_path / "efficientnet-lite0.onnx"
    export_onnx(model, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == [dest.name]

    pre = Preprocessing.from_json(DEMO_PREPROCESSING)
    photos = Path(skimage.__file__).parent / "data"
    batch = []
    top3 = {}
    for name in ("chelsea", "coffee"):
        x = to_tensor(decode_image((photos / f"{name}.png").read_bytes(), max_pixels=50_000_000), pre)
        p_onnx = softmax(run_onnx(dest, x))[0]
        p_torch = softmax(run_torch(model, x))[0]
        # The same tensor through torch and through ONNX Runtime: nearly the same probabilities.
        np.testing.assert_allclose(p_onnx, p_torch, atol=1e-5, rtol=0)
        assert _top(p_onnx) == _top(p_torch)
        top3[name] = _top(p_onnx)
        batch.append(x)

    assert top3["chelsea"][0] == 282  # tiger cat
    assert {285, 281} <= set(top3["chelsea"])  # Egyptian cat, tabby
    assert top3["coffee"][0] == 967  # espresso

    # Both photos as one batch (the batch dimension is dynamic) give the same answers.
    both = run_onnx(dest, np.concatenate(batch))
    assert [_top(softmax(row))[0] for row in both] == [282, 967]
