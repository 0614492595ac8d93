"""Tiny models, model files and images shared by the tests: each model exports in about a second.

Importing this module needs torch and onnx (``make install`` installs both); the model tests skip
without torch first (``pytest.importorskip("torch")``). A model pickled from here names
``tests.helpers`` as its code. The verifiers' tamper helpers are in ``tests/tamper.py``, which needs
neither.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import torch
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from torch import nn


class TinyCNN(nn.Module):
    """The usual kinds of layers, few weights: convolution, batch norm (statistics set so that eval
    mode matters), ReLU, max pool, global average pool, dropout, linear. Any square input size."""

    def __init__(self, classes: int = 4, *, channels: int = 3, width: int = 8) -> None:
        super().__init__()
        bn = nn.BatchNorm2d(width)
        assert bn.running_mean is not None and bn.running_var is not None
        with torch.no_grad():
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1), bn, nn.ReLU(), nn.MaxPool2d(2)
        )
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(width, classes)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(self.features(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.dropout(torch.flatten(self.pooled(x), 1)))
        return out


class FixedBatch(TinyCNN):
    """Hard-codes a batch of 2 (``view(2, -1)``), which exporters do not reliably refuse."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.pooled(x).view(2, -1))
        return out


class ValueDependent(TinyCNN):
    """Python control flow on tensor values: tracing would keep one branch only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out if out.sum() > 0 else -out


class ChannelsLast(TinyCNN):
    """Takes ``(batch, height, width, channels)`` images (``--layout NHWC``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 3, 1, 2))


class FixedSize(nn.Module):
    """Takes only ``size`` x ``size`` images: a linear layer on the flattened pixels."""

    def __init__(self, size: int, classes: int = 4, *, channels: int = 3) -> None:
        super().__init__()
        self.fc = nn.Linear(channels * size * size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x.flatten(1))
        return out


class TwoOutputs(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.mean(dim=(2, 3)), x.amax(dim=(2, 3))


def images(
    batch: int, size: int, *, channels: int = 3, layout: str = "NCHW", seed: int = 0
) -> NDArray[np.float32]:
    """A seeded batch of random float32 images, ``(batch, channels, size, size)`` or channels last."""
    shape = (batch, channels, size, size) if layout == "NCHW" else (batch, size, size, channels)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def run_torch(model: nn.Module, x: NDArray[np.float32]) -> NDArray[np.float32]:
    """``model``'s output for ``x``, in eval mode, without gradients."""
    with torch.no_grad():
        out: NDArray[np.float32] = model.eval()(torch.from_numpy(x)).numpy()
    return out


def png(width: int = 80, height: int = 60) -> bytes:
    """A smooth colour gradient as PNG bytes: a photo for the enclave's decoder."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 3, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def split_onnx(src: Path, dest: Path, *, location: str = "w.bin") -> None:
    """Save the ONNX model ``src`` as ``dest`` with every weight in the external file ``location``."""
    onnx.save(onnx.load(str(src)), str(dest), save_as_external_data=True, size_threshold=0, location=location)


def tiny_onnx(path: Path, inputs: list[int | str], outputs: list[int | str]) -> None:
    """An ONNX model declaring input shape ``inputs`` and output shape ``outputs`` (a str is a
    symbolic dimension): global average pool, flatten, then a matrix product to the scores. Runs for
    an NCHW input whose second dimension and the output's last one are numbers."""
    channels = inputs[1] if isinstance(inputs[1], int) else 3
    classes = outputs[-1] if isinstance(outputs[-1], int) else 5
    weights = numpy_helper.from_array(np.ones((channels, classes), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, inputs)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, outputs)],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))


def poison_onnx(src: Path, dest: Path) -> None:
    """The ONNX model ``src`` with 4 bytes of its largest float weight flipped to a NaN (what a
    damaged file gives), written to ``dest``: every score it gives is NaN."""
    model = onnx.load(str(src))
    tensor = max(
        (t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT),
        key=lambda t: int(np.prod(t.dims)),
    )
    values = numpy_helper.to_array(tensor).copy()
    values.reshape(-1).view(np.uint32)[0] = 0xFFFFFFFF
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    onnx.save(model, str(dest))


def sqrt_onnx(path: Path, classes: int = 3) -> None:
    """An ONNX model whose scores are the mean square roots of its input channels: finite for a blank
    image, NaN for one with negative values (any normalised photo)."""
    graph = helper.make_graph(
        [
            helper.make_node("Sqrt", ["input"], ["roots"]),
            helper.make_node("GlobalAveragePool", ["roots"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["logits"], axis=1),
        ],
        "sqrt",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", classes, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
