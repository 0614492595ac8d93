"""The framing Intel's DCAP quotes share, read by :mod:`.gramine` (SGX, v3) and :mod:`.tsm` (TDX, v4, v5).

Trusted code: runs on the enclave's side of the trust boundary, to learn the enclave's own identity
from its first quote; structure only, no signature check (verifying is the client's job). Layout
as in Intel's ``sgx_quote_3.h``, ``sgx_quote_4.h`` and ``sgx_quote_5.h``
(intel/SGXDataCenterAttestationPrimitives, ``QuoteGeneration/quote_wrapper/common/inc``)::

    0    header (48): version u16, att_key_type u16, then (v4, v5) tee_type u32 (v3: reserved)
    ...  report body (where and how large depends on the version)
    +0   signature_data_len u32 LE, right after the report body
    +4   signature data (signature_data_len bytes)

Each caller checks the fields whose meaning is its own (version, TEE type, body layout), in its own
words; :func:`report_body` is the framing check they share.
"""

from __future__ import annotations

import struct

from enclave_infer.errors import AttestationError

__all__ = ["ATT_KEY_TYPE_ECDSA_P256", "HEADER", "HEADER_SIZE", "report_body"]

HEADER_SIZE = 48
HEADER = struct.Struct("<HHI")  # version, att_key_type, tee_type: the header's first 8 bytes
ATT_KEY_TYPE_ECDSA_P256 = 2
SIGNATURE_LEN = struct.Struct("<I")  # signature_data_len


def report_body(quote: bytes, offset: int, size: int, *, tee: str, body: str) -> bytes:
    """The ``size``-byte report body at ``offset`` of ``quote``, once the ``signature_data_len`` after
    it, and as many bytes of signature data, are there.

    ``tee`` (``"SGX"``, ``"TDX"``) and ``body`` (``"TD report body"``) word the errors.
    """
    length_offset = offset + size
    if len(quote) < length_offset + SIGNATURE_LEN.size:
        raise AttestationError(f"{tee} quote truncated: {len(quote)} bytes, the {body} is incomplete")
    (signature_len,) = SIGNATURE_LEN.unpack_from(quote, length_offset)
    present = len(quote) - length_offset - SIGNATURE_LEN.size
    if signature_len > present:
        raise AttestationError(
            f"{tee} quote truncated: signature data claims {signature_len} bytes, {present} present"
        )
    return quote[offset:length_offset]
