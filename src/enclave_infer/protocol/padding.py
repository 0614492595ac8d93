"""Padding of binary HTTP messages against traffic analysis (RFC 9292 §3.8: zero bytes after a
message; a decoder ignores them).

Pure logic on bytes. Requests are padded by the client to Padmé lengths (Nikitin, Barman, Lueks,
Underwood, Bryan, Ford: "Reducing Metadata Leakage from Encrypted Files and Communication with
PURBs", PETS 2019): a length L >= 2 with E = floor(log2 L) and S = floor(log2 E) + 1 is rounded up
to a multiple of 2^(E-S). Of the lengths from 1 to N only O(log N · log log N) remain (298 below a
million), and the overhead is at most 11.7% (small messages), 6.25% from 4 KiB, 3.13% from 64 KiB
(the images this service sees). Responses to a
classification are padded by the enclave to one length per ``top`` (``enclave.app``).
"""

from __future__ import annotations

from enclave_infer.errors import ProtocolError

__all__ = ["RESPONSE_BLOCK", "pad", "padme"]

# A response longer than the bound computed for it (which should not happen) is padded to a
# multiple of this instead.
RESPONSE_BLOCK = 256


def padme(length: int) -> int:
    """The Padmé length for ``length`` bytes: at least ``length``, at most 11.7% more."""
    if length < 0:
        raise ValueError("negative length")
    if length < 2:
        return length
    e = length.bit_length() - 1  # floor(log2 L)
    s = e.bit_length()  # floor(log2 E) + 1
    mask = (1 << (e - s)) - 1
    return (length + mask) & ~mask


def pad(message: bytes, length: int) -> bytes:
    """``message`` followed by zero bytes up to ``length``."""
    if length < len(message):
        raise ProtocolError(f"message of {len(message)} bytes does not fit in {length}")
    return message + bytes(length - len(message))
