"""What every fuzz target shares: the contract it checks, and ways to make structured input.

The contract (``fuzz/README.md``): a parser given any bytes either returns or raises one of the
project's own exceptions (:class:`~enclave_infer.errors.EnclaveInferError`, or ``ImageError`` for
images). Anything else escaping a target (IndexError, KeyError, struct.error, UnicodeDecodeError,
RecursionError, MemoryError, an AssertionError from a target's own check) is a finding: libFuzzer
stops, writes the input to ``crash-<sha1>`` and exits non-zero. Hangs and memory are bounded by the
runner's libFuzzer flags (``-timeout``, ``-rss_limit_mb``) and by each target's own checks against the
project's named limits. Code that answers every exception with an "internal error" (the enclave's
request handlers) is checked through its log: an ERROR record from ``enclave_infer`` is a finding too.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import atheris

from enclave_infer.errors import EnclaveInferError

__all__ = [
    "BIG_NUMBER",
    "WEIRD_NUMBERS",
    "WEIRD_STRINGS",
    "EnclaveInferError",
    "LoggedErrors",
    "dumps",
    "json_value",
    "main",
    "mutate_bytes",
    "mutate_doc",
    "splits",
]

# Values that parsers of JSON and text tend to get wrong: integers beyond a float, beyond
# int()'s 4300-digit limit, Unicode digits that str.isdigit() accepts and int() does not, and so on.
WEIRD_NUMBERS: tuple[Any, ...] = (
    0,
    -1,
    1,
    2**16,
    2**31,
    2**63,
    2**64 + 1,
    10**400,
    -(10**400),
    1e308,
    -0.0,
    0.5,
    float("inf"),
    float("nan"),
    True,
    False,
)
WEIRD_STRINGS: tuple[str, ...] = (
    "",
    " ",
    "\x00",
    "\n",
    "\u00b2",  # SUPERSCRIPT TWO: isdigit(), not int()
    "\u0663",  # ARABIC-INDIC DIGIT THREE: isdigit() and int()
    "\u00b2G",
    "4G",
    "1" * 5000,
    "9" * 4301 + "G",
    "\u00e9",
    "\ud800",
    "\ufeff",
    "\u2028",
    "a" * 300,
    "00" * 32,
    "ff" * 64,
    ":AAAA:",
    "=",
    "RGB",
    "NCHW",
    "onnx",
    "2026-01-01T00:00:00Z",
    "2026-01-01T00:00:00+00:00",
    BIG_NUMBER := "<a JSON number of 4301 digits>",
)


def json_value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> Any:
    """A JSON-able value chosen by the input: scalars, weird values, or (shallow) containers."""
    kind = fdp.ConsumeIntInRange(0, 9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeIntInRange(-(2**16), 2**16)
    if kind == 3:
        return fdp.PickValueInList(list(WEIRD_NUMBERS))
    if kind == 4:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
    if kind in (5, 6):
        return fdp.PickValueInList(list(WEIRD_STRINGS))
    if kind == 7:
        return fdp.ConsumeRegularFloat()
    if kind == 8:
        return [json_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    return {
        fdp.ConsumeUnicodeNoSurrogates(8): json_value(fdp, depth + 1)
        for _ in range(fdp.ConsumeIntInRange(0, 4))
    }


def mutate_doc(fdp: atheris.FuzzedDataProvider, doc: Any, keys: tuple[str, ...] = ()) -> Any:
    """``doc`` (a valid document) with a few of its values replaced, removed or added by the input:
    deep enough to pass a parser's first checks and reach its later ones."""
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        target = doc
        # walk down a few levels into dicts and lists
        for _ in range(fdp.ConsumeIntInRange(0, 3)):
            if isinstance(target, dict) and target:
                child = target[fdp.PickValueInList(sorted(target, key=str))]
            elif isinstance(target, list) and target:
                child = target[fdp.ConsumeIntInRange(0, len(target) - 1)]
            else:
                break
            if not isinstance(child, dict | list):
                break
            target = child
        action = fdp.ConsumeIntInRange(0, 3)
        if isinstance(target, dict):
            names = sorted(target, key=str) + list(keys)
            key = fdp.PickValueInList(names) if names and action < 3 else fdp.ConsumeUnicodeNoSurrogates(6)
            if action == 0 and key in target:
                del target[key]
            else:
                target[key] = json_value(fdp)
        elif isinstance(target, list):
            if target and action == 0:
                del target[fdp.ConsumeIntInRange(0, len(target) - 1)]
            elif target and action < 3:
                target[fdp.ConsumeIntInRange(0, len(target) - 1)] = json_value(fdp)
            else:
                target.append(json_value(fdp))
        else:
            return json_value(fdp)
    return doc


def dumps(fdp: atheris.FuzzedDataProvider, doc: Any) -> bytes:
    """JSON as a peer might write it: NaN and Infinity included (Python's json writes them), raw
    UTF-8 or \\u escapes, a lone surrogate written as the bytes it would be, and BIG_NUMBER as a
    number longer than int() converts (json.dumps cannot write one)."""
    text = json.dumps(doc, ensure_ascii=fdp.ConsumeBool())
    return text.replace(json.dumps(BIG_NUMBER), "9" * 4301).encode("utf-8", "surrogatepass")


def mutate_bytes(fdp: atheris.FuzzedDataProvider, data: bytes) -> bytes:
    """``data`` with a few byte-level edits chosen by the input: flips, overwrites, cuts, insertions."""
    out = bytearray(data)
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        action = fdp.ConsumeIntInRange(0, 5)
        at = fdp.ConsumeIntInRange(0, len(out)) if out else 0
        if action == 0 and at < len(out):
            out[at] ^= 1 << fdp.ConsumeIntInRange(0, 7)
        elif action == 1 and at < len(out):
            out[at] = fdp.ConsumeIntInRange(0, 255)
        elif action == 2:
            del out[at:]
        elif action == 3:
            del out[at : at + fdp.ConsumeIntInRange(1, 64)]
        elif action == 4:
            out[at:at] = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 16))
        else:
            out += fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 64))
    return bytes(out)


def splits(fdp: atheris.FuzzedDataProvider, data: bytes) -> list[bytes]:
    """``data`` cut into pieces at points chosen by the input (empty pieces included)."""
    pieces, pos = [], 0
    while pos < len(data) and len(pieces) < 64:
        size = fdp.ConsumeIntInRange(0, max(1, len(data) - pos))
        pieces.append(data[pos : pos + size])
        pos += size
    if pos < len(data):
        pieces.append(data[pos:])
    return pieces


class LoggedErrors(logging.Handler):
    """Collects ERROR records of ``enclave_infer``: code that must not fail on any input logs an
    "internal error" instead of raising; a target calls :meth:`check` after each input."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        logger = logging.getLogger("enclave_infer")
        logger.addHandler(self)
        logger.propagate = False  # keep warnings about refused requests off the fuzzer's output
        logger.setLevel(logging.ERROR)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def check(self) -> None:
        if self.records:
            messages = [r.getMessage() for r in self.records]
            self.records.clear()
            raise AssertionError(f"the enclave logged an error: {messages}")


def main(test_one_input: Callable[[bytes], None]) -> None:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
