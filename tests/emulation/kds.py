"""A fake AMD Key Distribution Service: a real HTTP server on loopback serving an emulated chip's
certificates.

TEST-ONLY. It answers the two VCEK paths of AMD's "VCEK Certificate and KDS Interface Specification"
(publication 57230, §4 "KDS Interface") for one :class:`~tests.emulation.snp.EmulatedSnp`:

- ``/vcek/v1/{product}/{hwid}?blSPL=B&teeSPL=T&snpSPL=S&ucodeSPL=U`` (and ``&fmcSPL=F`` on Turin):
  the VCEK, DER (``application/pkix-cert``); ``hwid`` is CHIP_ID in hex (on Turin its first 8
  bytes), either case;
- ``/vcek/v1/{product}/cert_chain``: the ASK, then the ARK, PEM (``application/x-pem-file``).
- ``/vcek/v1/{product}/crl``: AMD's CRL for the product, signed by the ARK, DER.

A missing, repeated or unknown query parameter, or an SPL that is not a number from 0 to 255, is
400; another product, chip or TCB than the emulated one is 404 (AMD's KDS derives a VCEK for any
TCB on demand; this one knows only the chip's reported TCB). Anything else is 404.
:attr:`FakeKds.requests` counts requests per path (without the query) so that a test can tell a
cached answer from a fetched one.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections import Counter
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.emulation._http import LoopbackServer
from tests.emulation.snp import EmulatedSnp

__all__ = ["FakeKds"]


class FakeKds(LoopbackServer):
    """A KDS for one emulated chip; use it as a context manager. ``port`` 0: any free one."""

    def __init__(self, chip: EmulatedSnp, *, port: int = 0) -> None:
        self.chip = chip
        super().__init__(port=port)
        self.requests: Counter[str] = Counter()  # path (without query) -> number of requests
        self.log: list[str] = []  # every request target, in order
        self._lock = threading.Lock()

    @property
    def vcek_path(self) -> str:
        return f"/vcek/v1/{self.chip.product}/{self.chip.hwid.hex()}"

    @property
    def chain_path(self) -> str:
        return f"/vcek/v1/{self.chip.product}/cert_chain"

    def answer(self, target: str) -> tuple[int, dict[str, str], bytes]:
        url = urllib.parse.urlsplit(target)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        with self._lock:
            self.requests[url.path] += 1
            self.log.append(target)
        chip = self.chip
        match url.path.split("/"):
            case ["", "vcek", "v1", product, "cert_chain"] if not query:
                if product != chip.product:
                    return 404, {}, b""
                return 200, {"Content-Type": "application/x-pem-file"}, chip.cert_chain_pem
            case ["", "vcek", "v1", product, "crl"] if not query:
                if product != chip.product:
                    return 404, {}, b""
                now = datetime.now(UTC)  # AMD's CRL, current, revoking nothing (DER, as KDS sends it)
                pem = chip.crl(this_update=now - timedelta(hours=1), next_update=now + timedelta(days=7))
                return (
                    200,
                    {"Content-Type": "application/pkix-crl"},
                    x509.load_pem_x509_crl(pem).public_bytes(Encoding.DER),
                )
            case ["", "vcek", "v1", product, hwid]:
                return self._vcek(product, hwid, query)
        return 404, {}, b""

    def _vcek(
        self, product: str, hwid: str, query: dict[str, list[str]]
    ) -> tuple[int, dict[str, str], bytes]:
        tcb = self.chip.reported_tcb
        ours = {"blSPL": tcb.bootloader, "teeSPL": tcb.tee, "snpSPL": tcb.snp, "ucodeSPL": tcb.microcode}
        if product == "Turin" and tcb.fmc is not None:
            ours["fmcSPL"] = tcb.fmc
        wanted = {"blSPL", "teeSPL", "snpSPL", "ucodeSPL"} | ({"fmcSPL"} if product == "Turin" else set())
        if set(query) != wanted or any(len(values) != 1 for values in query.values()):
            return 400, {}, b""
        spl = {name: values[0] for name, values in query.items()}
        if not all(value.isdigit() and int(value) <= 255 for value in spl.values()):
            return 400, {}, b""
        if product != self.chip.product or hwid.lower() != self.chip.hwid.hex():
            return 404, {}, b""
        if {name: int(value) for name, value in spl.items()} != ours:
            return 404, {}, b""
        return 200, {"Content-Type": "application/pkix-cert"}, self.chip.vcek_der
