"""Tests for the owner's tooling without torch: the labels file, the preprocessing built from
provision's options, and the messages for a model whose input or output does not fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from enclave_infer.client._model_input import ModelInput, input_mismatch, output_mismatch, run_failure
from enclave_infer.client._owner import MAX_LABELS_FILE_BYTES, build_preprocessing, parse_labels, read_labels
from enclave_infer.errors import ProtocolError, UsageError
from enclave_infer.protocol.api import Preprocessing
from enclave_infer.protocol.manifest import MANIFEST_TYPE, MAX_LABEL_CHARS, MAX_LABELS, Manifest, ModelFile

# --- labels ---------------------------------------------------------------------------------------


def test_labels_one_per_line() -> None:
    assert parse_labels("tench\ngoldfish\n", "labels.txt") == ("tench", "goldfish")
    assert parse_labels("tench\ngoldfish", "labels.txt") == ("tench", "goldfish")  # no final newline
    assert parse_labels("\ufefftench\r\ngoldfish\r\n", "labels.txt") == ("tench", "goldfish")  # BOM, CRLF
    assert parse_labels("  tiger cat \t\nTiger cat\n", "labels.txt") == ("tiger cat", "Tiger cat")
    assert parse_labels("naïve café\n日本\n", "labels.txt") == ("naïve café", "日本")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "labels.txt: no labels (one class name per line)"),
        ("\ufeff", "labels.txt: no labels (one class name per line)"),
        ("\n", "labels.txt:1: blank line"),
        ("a\nb\nc\nd\n\nf\n", "labels.txt:5: blank line"),
        ("a\n   \nb\n", "labels.txt:2: blank line"),
        ("a\nb\n\n", "labels.txt:3: blank line"),  # one newline ends the file; a second is a blank line
        (
            "x\ny\ntiger cat\n" + "".join(f"c{i}\n" for i in range(13)) + "tiger cat\n",
            "labels.txt:17: duplicate label 'tiger cat' (first on line 3);"
            " --allow-duplicate-labels if the model really has two such classes",
        ),
        (
            "a\n b \nb\n",
            "labels.txt:3: duplicate label 'b' (first on line 2);"
            " --allow-duplicate-labels if the model really has two such classes",
        ),
        ("a\nb\tc\n", "labels.txt:2: control character U+0009 in the label"),
        ("a\rb\n", "labels.txt:1: control character U+000D in the label"),
        (
            "a\n" + "x" * 300 + "\n",
            f"labels.txt:2: the label is 300 characters, at most {MAX_LABEL_CHARS} fit",
        ),
    ],
    ids=[
        "empty",
        "bom-only",
        "newline-only",
        "blank",
        "spaces",
        "two-final-newlines",
        "duplicate",
        "duplicate-after-strip",
        "tab",
        "lone-cr",
        "too-long",
    ],
)
def test_labels_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_labels(text, "labels.txt")
    assert str(info.value) == message


def test_labels_limits_are_the_manifests() -> None:
    most = parse_labels("".join(f"c{i}\n" for i in range(MAX_LABELS)), "l")
    longest = parse_labels("x" * MAX_LABEL_CHARS, "l")
    for labels in (most, longest):
        Manifest((ModelFile("onnx", "0" * 64, 1),), labels, {}, 1)  # the manifest takes them
    with pytest.raises(UsageError) as info:
        parse_labels("".join(f"c{i}\n" for i in range(MAX_LABELS + 1)), "l")
    assert str(info.value) == f"l: {MAX_LABELS + 1} lines; a model may have at most {MAX_LABELS} labels"


def test_a_manifest_of_another_type_is_refused_naming_the_type_this_one_reads() -> None:
    """The refusal named "manifest v1" while the type read is v2."""
    manifest = Manifest((ModelFile("onnx", "0" * 64, 1),), ("cat",), {}, 1)
    assert Manifest.decode(manifest.encode()) == manifest
    older = manifest.encode().replace(MANIFEST_TYPE.encode(), b"enclave-infer model manifest v1")
    with pytest.raises(ProtocolError) as info:
        Manifest.decode(older)
    assert str(info.value) == "not an enclave-infer model manifest v2" == f"not an {MANIFEST_TYPE}"


def test_read_labels(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_bytes(b"\xef\xbb\xbftench\r\ngoldfish\r\n")
    assert read_labels(path) == ("tench", "goldfish")
    path.write_bytes(b"tench\ngoldfish\nbad \xe9\n")  # Latin-1, not UTF-8
    with pytest.raises(UsageError) as info:
        read_labels(path)
    assert str(info.value) == f"{path}:3: not UTF-8 text (byte 0xE9)"
    path.write_text("a\na\n", encoding="utf-8")
    with pytest.raises(UsageError, match=rf"^{path}:2: duplicate label 'a' \(first on line 1\);"):
        read_labels(path)
    assert read_labels(path, allow_duplicates=True) == ("a", "a")  # ImageNet has two 'crane's
    path.write_bytes(b"a\n" * (MAX_LABELS_FILE_BYTES // 2 + 1))
    with pytest.raises(UsageError) as info:
        read_labels(path)
    assert str(info.value) == f"{path}: over 8 MiB, more than a model manifest can hold"
    with pytest.raises(UsageError) as info:
        read_labels(tmp_path / "missing.txt")
    assert str(info.value) == f"cannot read labels {tmp_path / 'missing.txt'}: No such file or directory"


# --- build_preprocessing --------------------------------------------------------------------------


def test_preprocessing_defaults_are_the_enclaves() -> None:
    assert build_preprocessing() == Preprocessing()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            {"channel_order": "BGR"},
            {"mean": [0.406, 0.456, 0.485], "std": [0.225, 0.224, 0.229], "channel_order": "BGR"},
        ),
        ({"layout": "NHWC", "resize": 320, "crop": 299}, {"layout": "NHWC", "resize": 320, "crop": 299}),
        ({"mean": "0.5,0.5,0.5", "std": [0.25, 0.25, 0.25]}, {"mean": [0.5] * 3, "std": [0.25] * 3}),
        (
            {"grayscale": True, "mean": "0.1307", "std": "0.3081"},
            {"mean": [0.1307], "std": [0.3081], "channels": 1},
        ),
        (
            {"grayscale": True, "mean": [0.5], "std": [0.5], "layout": "NHWC"},
            {"mean": [0.5], "std": [0.5], "channels": 1, "layout": "NHWC"},
        ),
    ],
    ids=["bgr-imagenet", "nhwc", "given-mean", "grey", "grey-nhwc"],
)
def test_preprocessing_from_options(options: dict[str, Any], expected: dict[str, Any]) -> None:
    pre = build_preprocessing(**options).to_json()
    assert pre == {**build_preprocessing().to_json(), **expected}
    assert Preprocessing.from_json(pre).to_json() == pre  # what the enclave parses, unchanged


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"crop": 299}, "--crop 299 is larger than --resize 256; pass --resize 299 or more"),
        ({"crop": 0}, "--crop must be an integer from 1 to 4096, got 0"),
        ({"resize": 5000}, "--resize must be an integer from 1 to 4096, got 5000"),
        ({"mean": "0.5,0.5"}, "--mean takes 3 numbers, got 2: 0.5,0.5"),
        ({"mean": "a,b,c"}, "--mean takes 3 numbers, comma-separated, got 'a,b,c'"),
        ({"std": "0.2,nan,0.2"}, "--std takes 3 numbers, comma-separated, got '0.2,nan,0.2'"),
        ({"std": "0.2,0,0.2"}, "--std values must be non-zero, got 0.2,0,0.2"),
        (
            {"grayscale": True},
            "a grey model needs --mean (one value; ImageNet's defaults are for colour images)",
        ),
        (
            {"grayscale": True, "mean": "0.5"},
            "a grey model needs --std (one value; ImageNet's defaults are for colour images)",
        ),
        (
            {"grayscale": True, "mean": "0.485,0.456,0.406", "std": "0.5"},
            "--mean takes 1 number with --grayscale, got 3: 0.485,0.456,0.406",
        ),
        (
            {"grayscale": True, "channel_order": "BGR"},
            "--channel-order BGR has no meaning with --grayscale (one channel)",
        ),
        ({"channel_order": "RGBA"}, "--channel-order must be RGB or BGR, got 'RGBA'"),
        ({"layout": "CHW"}, "--layout must be NCHW or NHWC, got 'CHW'"),
    ],
)
def test_preprocessing_options_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as info:
        build_preprocessing(**options)
    assert str(info.value) == message


# --- the model's input and output -----------------------------------------------------------------


def test_model_input() -> None:
    assert str(ModelInput()) == "Nx3x224x224"
    assert str(ModelInput(28, 1, "NHWC")) == "Nx28x28x1"
    assert ModelInput(32, layout="NHWC").shape(2) == (2, 32, 32, 3)
    for args, message in [
        ((0,), "input_size must be an integer from 1 to 4096, got 0"),
        ((True,), "input_size must be an integer from 1 to 4096, got True"),
        ((224, 2), "channels must be 1 (grey) or 3 (colour), got 2"),
        ((224, 3, "CHW"), "layout must be 'NCHW' or 'NHWC', got 'CHW'"),
    ]:
        with pytest.raises(UsageError) as info:
            ModelInput(*args)  # type: ignore[arg-type]
        assert str(info.value) == message


def test_input_mismatch_with_symbolic_sizes() -> None:
    want = ModelInput(224)
    assert input_mismatch([None, 3, None, None], want) is None
    assert input_mismatch([None, None, 224, 224], want) is None
    assert input_mismatch([None, 3, None, 299], want) == (
        "the model takes input Nx3x?x299 but preprocessing crops to 224: "
        "pass --crop 299 (and a --resize of at least 299)"
    )
    assert input_mismatch([None, 784], want) == (
        "the model takes input Nx784 but the enclave gives 4-dimensional images (Nx3x224x224)"
    )


def test_run_failure() -> None:
    error = "RuntimeError: shapes do not match"
    assert run_failure(ModelInput(32), 2, error) == (
        "the model fails on input 2x3x32x32 (RuntimeError: shapes do not match); "
        "if it takes another input, say so with --crop, --layout or --grayscale"
    )
    assert run_failure(ModelInput(32, 1), 2, error, first_channels=3) == (
        "the model's first convolution takes 3 channels but preprocessing gives Nx1x32x32: "
        "leave out --grayscale (RuntimeError: shapes do not match)"
    )


def test_output_mismatch() -> None:
    assert output_mismatch([2, 1000], 2, 1000) is None
    assert output_mismatch([None, None], 1, 1000) is None
    assert output_mismatch([2, 1000], 2, None) is None
    assert (
        output_mismatch([2, 1000], 2, 999) == "the model gives 1000 scores per image but there are 999 labels"
    )
    assert output_mismatch([2, 1000, 1, 1], 2, 1000) == (
        "the model's output is 2x1000x1x1 for a batch of 2; the enclave needs one row of scores per image"
    )
    assert output_mismatch([1, 1000], 2, 1000) == (
        "the model's output is 1x1000 for a batch of 2; the enclave needs one row of scores per image"
    )
