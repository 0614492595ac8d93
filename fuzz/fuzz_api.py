"""The inner API's documents as a client reads them (protocol/api.py): ProblemDetails.decode (also as
the host reads an enclave's error frame, framing.decode_problem), Classification, ModelInfo and
ProvisionResult.from_json. Input: raw bytes, or a valid document with values replaced by the input.

Beyond "only EnclaveInferError escapes": a problem document decodes to printable, bounded text, and
a result that parses re-encodes to a document that parses to the same result.
"""

from __future__ import annotations

import contextlib
import copy
import json
from datetime import UTC, datetime
from typing import Any

import atheris

from _harness import EnclaveInferError, dumps, main, mutate_doc

with atheris.instrument_imports(include=["enclave_infer"]):
    from enclave_infer.protocol import framing
    from enclave_infer.protocol.api import (
        MAX_DETAIL_CHARS,
        Classification,
        ModelInfo,
        Prediction,
        Preprocessing,
        Problem,
        ProblemDetails,
        ProvisionResult,
    )
    from enclave_infer.protocol.manifest import ModelFile

PREDICTIONS = (Prediction("cat", 0, 0.75), Prediction("dog", 1, 0.25))
INFO = ModelInfo(
    "ab" * 32, 3, (ModelFile("onnx", "cd" * 32, 99),), ("onnx",), 2, Preprocessing(),
    datetime(2026, 1, 1, tzinfo=UTC),
)  # fmt: skip
VALID: dict[str, Any] = {
    "classification": Classification("ab" * 32, 3, PREDICTIONS, {"onnx": PREDICTIONS}).to_json(),
    "model": INFO.to_json(),
    "provision": ProvisionResult(INFO, 2).to_json(),
    "problem": json.loads(Problem.TOO_LARGE.details("too large", limit=5).encode()),
}
PARSERS = {"classification": Classification, "model": ModelInfo, "provision": ProvisionResult}
KEYS = ("model", "results", "runtimes", "label", "index", "probability", "sha256", "version",
        "files", "labels", "preprocessing", "provisioned_at", "replaced_version", "type", "status",
        "title", "detail", "mean")  # fmt: skip


def problem(data: bytes, status: int | None) -> None:
    details = ProblemDetails.decode(data, status=status)
    for text in (details.type, details.title, details.detail):
        assert len(text) <= MAX_DETAIL_CHARS and text.isprintable(), text
    assert 400 <= details.status <= 599


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 3)
    try:
        if mode == 0:  # the host reading an enclave's error frame payload
            framing.decode_problem(fdp.ConsumeBytes(fdp.remaining_bytes()))
        elif mode == 1:
            name = fdp.PickValueInList(sorted(VALID))
            document = dumps(fdp, mutate_doc(fdp, copy.deepcopy(VALID[name]), KEYS))
            status = fdp.PickValueInList([None, 400, 503])
            if name == "problem":
                problem(document, status)
                return
            parser = PARSERS[name]
            try:
                doc = json.loads(document)
            except (ValueError, RecursionError):
                return  # the SDK turns what is not JSON into a ProtocolError before from_json
            result = parser.from_json(doc)
            again = parser.from_json(json.loads(json.dumps(result.to_json())))
            assert again == result, (again, result)
        else:
            raw = fdp.ConsumeBytes(fdp.remaining_bytes())
            with contextlib.suppress(EnclaveInferError):
                problem(raw, None if mode == 2 else 404)
            try:
                doc = json.loads(raw)
            except (ValueError, RecursionError):
                return  # the SDK turns what is not JSON into a ProtocolError before from_json
            for parser in PARSERS.values():
                with contextlib.suppress(EnclaveInferError):
                    parser.from_json(doc)
    except EnclaveInferError:
        pass


if __name__ == "__main__":
    main(test_one_input)
