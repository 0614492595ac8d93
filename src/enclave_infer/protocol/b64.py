"""Base64 (RFC 4648 §4, with padding) for the JSON documents of attestation, key release and
receipts: decoding is strict, and anything but a string of base64 raises ValueError."""

from __future__ import annotations

import base64

__all__ = ["decode", "encode"]


def encode(data: bytes) -> str:
    return base64.b64encode(data).decode()


def decode(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not base64")
    return base64.b64decode(text, validate=True)
