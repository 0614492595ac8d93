"""What ``cryptography`` raises on malformed certificates and CRLs, for verifiers of host-chosen input.

Pure logic, client side. Certificates and CRLs reach the verifiers from whoever delivered the
evidence (the host chooses its collateral), so a parse failure must become the project's
:class:`~enclave_infer.errors.AttestationError`, never a library's exception. ``cryptography`` parses
some parts lazily (names, extensions, dates), so these can surface on first access as well as at load.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

__all__ = ["PARSE_ERRORS"]

# Bad DER or values (ValueError), an X.509 or CRL version other than v1..v3 (InvalidVersion, which is
# not a ValueError), a name attribute of the wrong string type (TypeError), an unknown key type
# (UnsupportedAlgorithm). Found by the SEV-SNP bit-flip tests and by the fuzz campaign (a CRL of
# version 17 in DCAP collateral).
PARSE_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, x509.InvalidVersion, UnsupportedAlgorithm)
