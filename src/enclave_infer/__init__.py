"""enclave-infer: confidential image classification in a trusted execution environment.

What users import lives here; every other module is internal to the package and may change. The
SDK's names are imported lazily so that the enclave process, which imports this package too, does
not load the client's HTTP stack::

    from enclave_infer import Client

    with Client("http://127.0.0.1:8080", "C:<code hash> SEC:INSECURE") as client:
        print(client.classify(open("cat.jpg", "rb").read(), top=3).results[0])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from enclave_infer.errors import (
    AttestationError,
    ConstraintError,
    DecryptionError,
    EnclaveFailureError,
    EnclaveInferError,
    InvalidImageError,
    InvalidRequestError,
    KeyConfigurationChangedError,
    ModelPinError,
    NoModelError,
    OverloadedError,
    ProtocolError,
    ProvisionRefusedError,
    RemoteError,
    TooLargeError,
    TransportError,
    UnavailableError,
    UsageError,
)

if TYPE_CHECKING:
    from enclave_infer.attestation.constraints import Constraint
    from enclave_infer.attestation.constraints import parse as parse_constraint
    from enclave_infer.attestation.evidence import Attestation, UnsafeNoPolicy, Verifier
    from enclave_infer.attestation.report import EnclaveReport, SecurityLevel, Tee
    from enclave_infer.client._config import ClientConfig
    from enclave_infer.client._owner import generate_owner_key, load_owner_key
    from enclave_infer.client._sdk import Client, verify_receipt
    from enclave_infer.protocol.api import (
        Classification,
        ModelInfo,
        Prediction,
        Preprocessing,
        Problem,
        ProvisionResult,
        Runtime,
    )

# The installed distribution's version (``__getattr__`` reads the package metadata on first use).
__version__: str

__all__ = [
    "Attestation",
    "AttestationError",
    "Classification",
    "Client",
    "ClientConfig",
    "Constraint",
    "ConstraintError",
    "DecryptionError",
    "EnclaveFailureError",
    "EnclaveInferError",
    "EnclaveReport",
    "InvalidImageError",
    "InvalidRequestError",
    "KeyConfigurationChangedError",
    "ModelInfo",
    "ModelPinError",
    "NoModelError",
    "OverloadedError",
    "Prediction",
    "Preprocessing",
    "Problem",
    "ProtocolError",
    "ProvisionRefusedError",
    "ProvisionResult",
    "RemoteError",
    "Runtime",
    "SecurityLevel",
    "Tee",
    "TooLargeError",
    "TransportError",
    "UnavailableError",
    "UnsafeNoPolicy",
    "UsageError",
    "Verifier",
    "generate_owner_key",
    "load_owner_key",
    "parse_constraint",
    "verify_receipt",
]

# name -> (module, attribute)
_LAZY = {
    "Attestation": ("enclave_infer.attestation.evidence", "Attestation"),
    "Classification": ("enclave_infer.protocol.api", "Classification"),
    "Client": ("enclave_infer.client._sdk", "Client"),
    "ClientConfig": ("enclave_infer.client._config", "ClientConfig"),
    "Constraint": ("enclave_infer.attestation.constraints", "Constraint"),
    "EnclaveReport": ("enclave_infer.attestation.report", "EnclaveReport"),
    "ModelInfo": ("enclave_infer.protocol.api", "ModelInfo"),
    "Prediction": ("enclave_infer.protocol.api", "Prediction"),
    "Preprocessing": ("enclave_infer.protocol.api", "Preprocessing"),
    "Problem": ("enclave_infer.protocol.api", "Problem"),
    "ProvisionResult": ("enclave_infer.protocol.api", "ProvisionResult"),
    "Runtime": ("enclave_infer.protocol.api", "Runtime"),
    "UnsafeNoPolicy": ("enclave_infer.attestation.evidence", "UnsafeNoPolicy"),
    "Verifier": ("enclave_infer.attestation.evidence", "Verifier"),
    "SecurityLevel": ("enclave_infer.attestation.report", "SecurityLevel"),
    "Tee": ("enclave_infer.attestation.report", "Tee"),
    "generate_owner_key": ("enclave_infer.client._owner", "generate_owner_key"),
    "load_owner_key": ("enclave_infer.client._owner", "load_owner_key"),
    "parse_constraint": ("enclave_infer.attestation.constraints", "parse"),
    "verify_receipt": ("enclave_infer.client._sdk", "verify_receipt"),
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return _version()
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'enclave_infer' has no attribute {name!r}")


def _version() -> str:
    """The installed distribution's version: one number, ``version`` in pyproject.toml. Read on
    first use, not at import: the enclave imports this package and never needs it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("enclave-infer")
    except PackageNotFoundError:  # the sources on sys.path, not installed
        return "0+unknown"


def __dir__() -> list[str]:
    return sorted(__all__)
