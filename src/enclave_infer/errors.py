"""The exception tree of enclave-infer, split by whose fault a failure is.

Lives on both sides of every boundary: it holds no secrets and does no I/O.

::

    EnclaveInferError
    ├── UsageError            the caller misused the API or the CLI (bad arguments, bad files)
    ├── ProtocolError         a peer sent bytes that do not parse (BHTTP, OHTTP, framing)
    │   └── DecryptionError   authenticated decryption failed; says nothing more, on purpose
    ├── AttestationError      evidence did not verify, or its binding to the key/nonce is wrong
    │   └── ConstraintError   evidence verified but does not satisfy the client's constraint
    ├── TransportError        the network or the enclave process could not be reached
    └── RemoteError           the enclave answered with an error status (4xx/5xx) and a message
"""

from __future__ import annotations

__all__ = [
    "AttestationError",
    "ConstraintError",
    "DecryptionError",
    "EnclaveInferError",
    "ProtocolError",
    "RemoteError",
    "TransportError",
    "UsageError",
]


class EnclaveInferError(Exception):
    """Root of every error this package raises on purpose."""


class UsageError(EnclaveInferError):
    """The caller misused the API: a bad argument, a missing or malformed file."""


class ProtocolError(EnclaveInferError):
    """A peer sent bytes that are not a well-formed message of the expected kind."""


class DecryptionError(ProtocolError):
    """Authenticated decryption failed. Deliberately carries no detail."""

    def __init__(self) -> None:
        super().__init__("decryption failed")


class AttestationError(EnclaveInferError):
    """The enclave's evidence did not verify, or does not bind the keys we were given."""


class ConstraintError(AttestationError):
    """The evidence verified, but it does not satisfy the client's enclave constraint."""


class TransportError(EnclaveInferError):
    """The host, or the enclave behind it, could not be reached or broke the connection."""


class RemoteError(EnclaveInferError):
    """The enclave answered with an error status; ``status`` is the HTTP status code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
