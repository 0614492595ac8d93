"""TEST-ONLY launcher: the host (``enclave-infer serve``'s code) attached to an enclave on TCP loopback,
fetching collateral from a fake PCCS or KDS and appraising its enclave under test roots.

    python -m tests.emulation.run_host SPEC.json

SPEC is this launcher's own file, written by the test (hex for DER)::

    {"config": "enclave.json", "data_dir": "DIR", "enclave": "tcp:127.0.0.1:PORT",
     "pccs": "http://127.0.0.1:P" | null, "kds": "http://127.0.0.1:P" | null,
     "intel_root_ca_der": "<hex>" | null, "snp_roots": {"Genoa": "<hex>"} | null,
     "collateral_first_retry": 0.5}

It calls :func:`enclave_infer.host.server.run` as ``serve --enclave … --pccs …/--kds …`` does,
except for two keywords that only code can give: ``verifier``, a
:class:`~enclave_infer.attestation.evidence.Verifier` holding the test roots (the product has no
flag, environment variable or configuration key that reaches one), and a short
``collateral_first_retry``. The host then logs like ``serve`` (``listening on http://…``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from enclave_infer.attestation.evidence import Verifier
from enclave_infer.config import EnclaveConfig
from enclave_infer.errors import EnclaveInferError
from enclave_infer.host.collateral import CollateralSource, KdsSource, PccsSource
from enclave_infer.host.server import run
from enclave_infer.protocol.framing import parse_address


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tests.emulation.run_host SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    snp_roots = spec.get("snp_roots")
    verifier = Verifier(
        intel_root_ca_der=bytes.fromhex(spec["intel_root_ca_der"]) if spec.get("intel_root_ca_der") else None,
        snp_roots={product: bytes.fromhex(der) for product, der in snp_roots.items()} if snp_roots else None,
    )
    source: CollateralSource = KdsSource(spec["kds"]) if spec.get("kds") else PccsSource(spec["pccs"])
    try:
        run(
            EnclaveConfig.from_canonical(Path(spec["config"]).read_bytes()),
            Path(spec["data_dir"]),
            port=0,
            external=parse_address(spec["enclave"]),
            collateral=source,
            verifier=verifier,
            collateral_first_retry=float(spec.get("collateral_first_retry", 15.0)),
        )
    except EnclaveInferError as exc:
        print(f"host: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
