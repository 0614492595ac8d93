"""The enclave server's own limits: how long and how slowly the host may keep it busy.

Trusted code, pure data. These bound what the host (untrusted) can make the enclave hold: they are
the enclave's defences, not part of the measured configuration (``config.py``'s ``Limits``, which a
client pins, bounds what a request may ask for). Gathered here, each with its reason, as the client's
are in ``client/config.py``'s ``ClientConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass

from enclave_infer.protocol.api import REQUEST_OVERHEAD_BYTES

__all__ = ["ServerLimits"]


@dataclass(frozen=True)
class ServerLimits:
    # A chunked request may pause this long between frames: longer than any honest client's network
    # stall, far shorter than a slot held for nothing.
    stream_idle_seconds: float = 60.0
    # ... and last this long in all: 512 MiB at 0.5 MB/s fits; a held-back final chunk can no longer
    # make an old upload go live days later.
    max_stream_seconds: float = 1800.0
    # After its first stream_grace_seconds, a stream must have delivered at least this many bytes
    # per second since it began, or it is dropped: a 512 MiB model takes under 5 hours at this rate,
    # which the total above cuts anyway; a stranger trickling a byte every few seconds holds a
    # stream slot for the grace period only.
    min_stream_bytes_per_second: int = 32 * 1024
    stream_grace_seconds: float = 10.0
    # A frame longer than an image plus this much (binary HTTP framing and headers, the OHTTP
    # header, encapsulated key and tag) is, from any honest client, a model upload: the one
    # definition the host's whole-body bound uses too.
    image_request_overhead: int = REQUEST_OVERHEAD_BYTES
    # Frames larger than an image request read at once: one, so that the many slots batching wants
    # do not multiply the memory those frames can take (the highest version wins anyway).
    max_large_frames: int = 1

    def __post_init__(self) -> None:
        for name in ("stream_idle_seconds", "max_stream_seconds", "min_stream_bytes_per_second",
                     "image_request_overhead", "max_large_frames"):  # fmt: skip
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.stream_grace_seconds < 0:
            raise ValueError("stream_grace_seconds must not be negative")
