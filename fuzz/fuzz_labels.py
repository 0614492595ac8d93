"""The model owner's labels file: parse_labels on text, read_labels on the bytes of a file.

Beyond "only UsageError escapes": labels that parse_labels accepts are labels the signed manifest
accepts too (so the owner's tool never builds a manifest that the enclave would refuse).
"""

from __future__ import annotations

import os
from pathlib import Path

import atheris

from _harness import WEIRD_STRINGS, EnclaveInferError, main

with atheris.instrument_imports(include=["enclave_infer"]):
    from enclave_infer.client._owner import parse_labels, read_labels
    from enclave_infer.protocol.manifest import Manifest, ModelFile

# read_labels opens a path: an in-memory file, so that nothing is left on disk when libFuzzer exits
FD = os.memfd_create("labels.txt")
FILE = Path(f"/proc/self/fd/{FD}")
PIECES = [
    "\n",
    "\r\n",
    "\r",
    "\ufeff",
    " ",
    "\t",
    "cat",
    "tiger cat",
    "\x85",
    "\u2028",
    "\x00",
    "é",
    *WEIRD_STRINGS,
]


def check(labels: tuple[str, ...]) -> None:
    assert labels and all(isinstance(label, str) for label in labels)
    Manifest((ModelFile("onnx", "ab" * 32, 1),), labels, {}, 1)  # raises ProtocolError if refused


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 2)
    try:
        if mode == 0:
            check(parse_labels(fdp.ConsumeUnicode(fdp.remaining_bytes()), "labels.txt"))
        elif mode == 1:  # text built from pieces that matter to a line-based parser
            text = "".join(
                fdp.PickValueInList(PIECES) if fdp.ConsumeBool() else fdp.ConsumeUnicode(4)
                for _ in range(fdp.ConsumeIntInRange(0, 40))
            )
            check(parse_labels(text, "labels.txt"))
        else:
            os.ftruncate(FD, 0)
            os.pwrite(FD, fdp.ConsumeBytes(fdp.remaining_bytes()), 0)
            check(read_labels(FILE))
    except EnclaveInferError:
        pass


if __name__ == "__main__":
    main(test_one_input)
