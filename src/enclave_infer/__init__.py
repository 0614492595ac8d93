"""enclave-infer: confidential image classification in a trusted execution environment.

What users import lives here; everything else is internal. Imports are lazy so that the enclave
process, which imports this package too, does not load the client's HTTP stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from enclave_infer.errors import (
    AttestationError,
    ConstraintError,
    DecryptionError,
    EnclaveInferError,
    ProtocolError,
    RemoteError,
    TransportError,
    UsageError,
)

if TYPE_CHECKING:
    from enclave_infer.client.sdk import Classification, Client, Prediction

__version__ = "0.1.0"

__all__ = [
    "AttestationError",
    "Classification",
    "Client",
    "ConstraintError",
    "DecryptionError",
    "EnclaveInferError",
    "Prediction",
    "ProtocolError",
    "RemoteError",
    "TransportError",
    "UsageError",
]

_LAZY = {"Client", "Classification", "Prediction"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from enclave_infer.client import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'enclave_infer' has no attribute {name!r}")
