"""A fake PCCS: a real HTTP server on loopback that serves an emulated platform's collateral.

TEST-ONLY. It answers the Intel PCS API v4 paths a DCAP collateral client asks for (Intel "SGX and TDX
services, V4 API": "Get Revocation List", "Get SGX/TDX TCB Info", "Enclave Identity"), plus the
root CA CRL path of Intel's reference PCCS, with the issuer chains in the response headers,
URL-encoded, as Intel sends them:

- ``/sgx/certification/v4/pckcrl?ca=C``: the PCK CA's CRL, PEM or (``&encoding=der``) DER;
  header ``SGX-PCK-CRL-Issuer-Chain``;
- ``/{sgx,tdx}/certification/v4/tcb?fmspc=F``: ``{"tcbInfo":…,"signature":…}``; header
  ``TCB-Info-Issuer-Chain``;
- ``/{sgx,tdx}/certification/v4/qe/identity``: ``{"enclaveIdentity":…,"signature":…}``; header
  ``SGX-Enclave-Identity-Issuer-Chain``;
- ``/sgx/certification/v4/rootcacrl``: the Root CA's CRL as hex text (what a PCCS serves).

``update=standard|early`` and ``tcbEvaluationDataNumber=N`` are accepted where PCS accepts them
(not both at once: 400, as PCS); a TCB info or identity for another evaluation data number than
the one served is 404. Anything else is 404. The documents are minted once, when the server is
built, so every answer is byte-identical; :attr:`FakePccs.requests` counts requests per path so
that a test can tell a cached answer from a fetched one.

Only the platform's own PCK CA exists here, so ``pckcrl`` for the other CA is 404.
"""

from __future__ import annotations

import re
import threading
import urllib.parse
from collections import Counter
from typing import Unpack

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.emulation._http import LoopbackServer
from tests.emulation.dcap import EVALUATION_DATA_NUMBER, Collateral, CollateralOptions, EmulatedDcap

__all__ = ["FakePccs"]

FMSPC_PATTERN = re.compile(r"[0-9a-fA-F]{12}")


class FakePccs(LoopbackServer):
    """A PCCS for one :class:`EmulatedDcap` platform; use it as a context manager.

    It serves the collateral :meth:`EmulatedDcap.collateral_parts` mints with ``options``: the TCB
    info gives the platform ``status`` (see :meth:`EmulatedDcap.tcb_info`); all documents and CRLs
    are valid from ``issue_date`` to ``next_update``. It listens on loopback at ``port`` (0: any free
    one; a fixed one for a PCCS that comes up where clients already look).
    """

    def __init__(self, dcap: EmulatedDcap, *, port: int = 0, **options: Unpack[CollateralOptions]) -> None:
        self.dcap = dcap
        super().__init__(port=port)
        self.evaluation_data_number = options.get("evaluation_data_number", EVALUATION_DATA_NUMBER)
        self.collateral: dict[str, Collateral] = {
            tee: dcap.collateral_parts(tee, **options) for tee in ("sgx", "tdx")
        }
        self.pck_crl = self.collateral["sgx"].pck_crl  # the CRLs are the same for both TEEs
        self.root_ca_crl = self.collateral["sgx"].root_ca_crl
        self.requests: Counter[str] = Counter()  # path (without query) -> number of requests
        self.log: list[str] = []  # every request target, in order
        self._lock = threading.Lock()

    def answer(self, target: str) -> tuple[int, dict[str, str], bytes]:
        url = urllib.parse.urlsplit(target)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        with self._lock:
            self.requests[url.path] += 1
            self.log.append(target)
        if any(len(values) != 1 for values in query.values()):
            return _error(400)
        params = {k: v[0] for k, v in query.items()}
        match url.path.split("/"):
            case ["", "sgx", "certification", "v4", "pckcrl"]:
                return self._pck_crl(params)
            case ["", "sgx", "certification", "v4", "rootcacrl"] if not params:
                return 200, {"Content-Type": "text/plain"}, self.root_ca_crl.hex().encode()
            case ["", ("sgx" | "tdx") as tee, "certification", "v4", "tcb"]:
                fmspc = params.pop("fmspc", "")
                if not FMSPC_PATTERN.fullmatch(fmspc):
                    return _error(400)
                if bytes.fromhex(fmspc) != self.dcap.platform.fmspc:
                    return _error(404)
                tcb_info = self.collateral[tee].tcb_info.response()
                return self._document(params, tcb_info, "TCB-Info-Issuer-Chain")
            case ["", ("sgx" | "tdx") as tee, "certification", "v4", "qe", "identity"]:
                return self._document(
                    params, self.collateral[tee].qe_identity.response(), "SGX-Enclave-Identity-Issuer-Chain"
                )
        return _error(404)

    def _pck_crl(self, params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        encoding = params.pop("encoding", "pem")
        ca = params.pop("ca", None)
        if params or ca not in ("processor", "platform") or encoding not in ("pem", "der"):
            return _error(400)
        if ca != self.dcap.platform.ca:
            return _error(404)
        chain = {"SGX-PCK-CRL-Issuer-Chain": urllib.parse.quote(self.dcap.pck_crl_issuer_chain, safe="")}
        if encoding == "der":
            return 200, {"Content-Type": "application/pkix-crl", **chain}, self.pck_crl
        pem = x509.load_der_x509_crl(self.pck_crl).public_bytes(serialization.Encoding.PEM)
        return 200, {"Content-Type": "application/x-pem-file", **chain}, pem

    def _document(
        self, params: dict[str, str], body: str, chain_header: str
    ) -> tuple[int, dict[str, str], bytes]:
        update = params.pop("update", None)
        number = params.pop("tcbEvaluationDataNumber", None)
        if params or (update is not None and number is not None) or update not in (None, "standard", "early"):
            return _error(400)
        if number is not None and (not number.isdigit() or int(number) != self.evaluation_data_number):
            return _error(404)
        chain = urllib.parse.quote(self.dcap.tcb_info_issuer_chain, safe="")
        return 200, {"Content-Type": "application/json", chain_header: chain}, body.encode()


def _error(status: int) -> tuple[int, dict[str, str], bytes]:
    return status, {}, b""
