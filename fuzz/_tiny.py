"""A tiny real model and tiny images, shared by the enclave target and the HTTP fuzzer (no atheris)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = ["LABELS", "image", "tiny_model"]

LABELS = ["red", "green"]


def tiny_model() -> bytes:
    """A real ONNX classifier of 8x8 images into two classes: channel means, then a matrix product."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input", "axes"], ["pooled"], keepdims=0),
            helper.make_node("MatMul", ["pooled", "W"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        initializer=[
            numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
            numpy_helper.from_array(np.array([[1, -1], [-1, 1], [0, 0]], dtype=np.float32), "W"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def image(fmt: str = "PNG", size: tuple[int, int] = (6, 5)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format=fmt)
    return buffer.getvalue()
