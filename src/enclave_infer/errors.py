"""The exception tree of enclave-infer, split by whose fault a failure is.

Lives on both sides of every boundary: it holds no secrets and does no I/O.

::

    EnclaveInferError
    ├── UsageError            the caller misused the API or the CLI (bad arguments, bad files)
    ├── ProtocolError         a peer sent bytes that do not parse (BHTTP, OHTTP, framing)
    │   └── DecryptionError   authenticated decryption failed; says nothing more, on purpose
    ├── AttestationError      evidence did not verify, or its binding to the key/nonce is wrong
    │   ├── ConstraintError   evidence verified but does not satisfy the client's constraint
    │   │   └── ModelPinError     another model than the pinned one is served (also a RemoteError)
    │   └── KeyConfigurationChangedError  the host now offers another attested key configuration
    ├── TransportError        the network or the enclave process could not be reached
    └── RemoteError           the enclave (or the host) refused with an RFC 9457 problem document
        ├── InvalidRequestError    malformed request, bad parameter, unknown route or method
        ├── InvalidImageError      the enclave could not decode the image, or does not accept it
        ├── TooLargeError          a request, image or model over the enclave's limits
        ├── NoModelError           no model has been provisioned yet
        ├── ProvisionRefusedError  a model upload was refused (signature, version, manifest, bytes)
        ├── OverloadedError        the service is too busy now; retrying later may succeed
        ├── UnavailableError       the enclave is down, restarting or not reachable by the host
        └── EnclaveFailureError    the enclave failed (inference, sealed storage, an internal error)

Clients act on a problem's ``type`` (``enclave_infer.protocol.api.Problem``), which the SDK maps
onto these classes; ``RemoteError.problem`` keeps the type, ``status`` the HTTP status.
"""

from __future__ import annotations

__all__ = [
    "AttestationError",
    "ConstraintError",
    "DecryptionError",
    "EnclaveFailureError",
    "EnclaveInferError",
    "InvalidImageError",
    "InvalidRequestError",
    "KeyConfigurationChangedError",
    "ModelPinError",
    "NoModelError",
    "OverloadedError",
    "ProtocolError",
    "ProvisionRefusedError",
    "RemoteError",
    "TooLargeError",
    "TransportError",
    "UnavailableError",
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


class KeyConfigurationChangedError(AttestationError):
    """After an ``ohttp-key`` problem, the host offers an attested key configuration other than the
    one the client verified: an enclave of the same code, but another instance (one restarted
    outside a cluster, or another cluster the host founded). Nothing was resent to it. ``old`` and
    ``new`` name the two (key id and SHA-256 of the encoded configuration), ``accept`` how the
    caller accepts the new one."""

    def __init__(self, old: str, new: str, accept: str) -> None:
        super().__init__(
            f"the enclave's key configuration changed: this client verified {old}, the host now offers"
            f" {new} (the same code, restarted alone or another cluster); nothing was resent to it;"
            f" to accept it: {accept}"
        )
        self.old, self.new, self.accept = old, new, accept


class TransportError(EnclaveInferError):
    """The host, or the enclave behind it, could not be reached or broke the connection."""


class RemoteError(EnclaveInferError):
    """The enclave or the host refused a request. ``status`` is the HTTP status, ``problem`` the
    RFC 9457 problem type URI (empty when the peer sent none), ``retry_after`` the seconds the host
    asked to wait before trying again (its ``Retry-After``; None when it sent none)."""

    def __init__(
        self, status: int, message: str, problem: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem
        self.retry_after = retry_after


class InvalidRequestError(RemoteError):
    """The request was malformed, named an unknown route or method, or had a bad parameter."""


class InvalidImageError(RemoteError):
    """The enclave could not decode the image, or does not accept its format or size in pixels."""


class TooLargeError(RemoteError):
    """A request, image or model is larger than the enclave's limits allow."""


class NoModelError(RemoteError):
    """No model has been provisioned yet."""


class ProvisionRefusedError(RemoteError):
    """A model upload was refused: signature, version, manifest, bytes or the runtime's check."""


class OverloadedError(RemoteError):
    """The service is too busy; the same request may succeed later (``retry_after`` seconds)."""


class UnavailableError(RemoteError):
    """The host could not reach its enclave (down, restarting), or got a broken answer from it."""


class ModelPinError(ConstraintError, RemoteError):
    """The enclave serves, or answered with, a model other than the one the client pinned: a
    constraint that failed, found by the client or refused by the enclave (status 409)."""


class EnclaveFailureError(RemoteError):
    """The enclave failed while answering: inference, sealed storage, or an internal error."""
