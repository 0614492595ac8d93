"""Entry point of the enclave process: ``python -m enclave_infer.enclave``.

Started by the host (never imported by it). Reads the canonical measured configuration from a file,
measures itself, restores any sealed model, and serves the host on a unix socket.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from enclave_infer.config import EnclaveConfig
from enclave_infer.enclave.platform import SimulationPlatform
from enclave_infer.enclave.server import Enclave, serve
from enclave_infer.errors import UsageError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m enclave_infer.enclave")
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True, help="canonical enclave configuration (JSON)")
    parser.add_argument("--storage", type=Path, required=True, help="folder for sealed blobs")
    parser.add_argument("--platform", choices=["simulation"], default="simulation")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="enclave: %(levelname)s %(message)s", stream=sys.stderr)
    try:
        config = EnclaveConfig.from_canonical(args.config.read_bytes())
    except (OSError, UsageError) as exc:
        print(f"enclave: error: {exc}", file=sys.stderr)
        return 2
    enclave = Enclave(config, SimulationPlatform(config), args.storage)
    with contextlib.suppress(KeyboardInterrupt):
        serve(enclave, args.socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
