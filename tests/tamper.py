"""Tamper helpers: every verifier test has a "flip one bit" twin. Pure Python, no torch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from enclave_infer.errors import AttestationError


def flipped(data: bytes, index: int, bit: int) -> bytes:
    """``data`` with bit ``bit`` (0 to 7) of byte ``index`` inverted."""
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


def refused_by(verify: Callable[..., object], *args: Any, **kwargs: Any) -> bool:
    """Whether ``verify(*args, **kwargs)`` refuses with :class:`AttestationError`; any other
    exception propagates, so that a crash never passes for a refusal."""
    try:
        verify(*args, **kwargs)
    except AttestationError:
        return True
    return False
