"""Every limit the client enforces, and the TLS roots it trusts, in one place (as python-tuf's
``UpdaterConfig``).

Client-side. The host is not trusted: each limit bounds what it can make a client hold or wait
for. Give a changed copy to :class:`~enclave_infer.Client`::

    Client(url, constraint, config=ClientConfig(timeout=60.0, ca_file=Path("host-ca.pem")))
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from enclave_infer.errors import UsageError

__all__ = ["ClientConfig"]

MiB = 1024 * 1024


@dataclass(frozen=True)
class ClientConfig:
    # Seconds one exchange with the host may take as a whole (not per read): a model upload of
    # 512 MiB at 2 MB/s fits.
    timeout: float = 300.0
    # The largest answer read from the host. Answers are small JSON documents and evidence with
    # collateral is tens of KB; anything larger is refused rather than buffered.
    max_response_bytes: int = 1 * MiB
    # A streamed model is read and sent in pieces of this size (plus 2-4 bytes of binary-HTTP
    # framing, well under a chunked-OHTTP chunk's 1 MiB).
    upload_piece_bytes: int = 256 * 1024
    # An image the CLI fetches from a URL, on the client's side; the enclave's default limit.
    max_fetch_bytes: int = 16 * MiB
    # Seconds to wait for an image URL.
    fetch_timeout: float = 30.0
    # A request that changes nothing (attestation, model metadata, a classification) refused with
    # 503 because the service is busy (``overloaded``) or its enclave is down or restarting
    # (``enclave-unavailable``) is sent again up to this many times (0: never), after exponential
    # backoff with full jitter (AWS's "Exponential Backoff And Jitter"): a random wait up to
    # retry_backoff × 2^attempt seconds, capped at retry_backoff_max, and never shorter than the
    # host's Retry-After. A Retry-After longer than max_retry_after is not waited for: the error
    # (with its ``retry_after``) is raised at once, rather than asking again too early.
    retries: int = 3
    retry_backoff: float = 0.25
    retry_backoff_max: float = 5.0
    max_retry_after: float = 30.0
    # An https:// host's certificate must chain to one in this PEM file (a self-signed host's own
    # certificate, or a private CA's), instead of the usual roots (certifi's, or SSL_CERT_FILE's when
    # that environment variable is set). Confidentiality does not rest on it (requests are encrypted
    # to the attested enclave whatever TLS does); an untrusted certificate is refused all the same.
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "ca_file":
                if value is not None and not isinstance(value, Path):
                    raise UsageError(f"ClientConfig.ca_file must be a Path or None, got {value!r}")
                continue
            if f.name == "retries":
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
                what = "a whole number, 0 or more"
            else:
                ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
                what = "a positive number"
            if not ok:
                raise UsageError(f"ClientConfig.{f.name} must be {what}, got {value!r}")
