"""Entry point of the enclave process: ``python -m enclave_infer.enclave``.

Started by the host (never imported by it). Reads the canonical measured configuration from a file,
measures itself, restores any sealed model, and serves the host on a unix socket.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
from pathlib import Path

from enclave_infer import logs
from enclave_infer.attestation.evidence import Verifier
from enclave_infer.config import EnclaveConfig
from enclave_infer.enclave.platform import Platform, SimulationPlatform
from enclave_infer.enclave.preprocess import quiet_pillow
from enclave_infer.enclave.server import Enclave, serve
from enclave_infer.errors import EnclaveInferError
from enclave_infer.logs import LOG_FORMATS
from enclave_infer.protocol.framing import parse_address

log = logging.getLogger("enclave_infer.enclave")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m enclave_infer.enclave")
    parser.add_argument("--listen", required=True, help="unix socket path, or tcp:127.0.0.1:PORT")
    parser.add_argument("--config", type=Path, required=True, help="canonical enclave configuration (JSON)")
    parser.add_argument("--storage", type=Path, required=True, help="folder for sealed blobs")
    parser.add_argument(
        "--cluster-storage",
        type=Path,
        help="shared folder of a cluster: join or found one before serving",
    )
    parser.add_argument(
        "--exit-with-host",
        action="store_true",
        help="exit when standard input closes: the host that started this process is gone",
    )
    parser.add_argument("--platform", choices=PLATFORMS, default="auto")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text")
    args = parser.parse_args(argv)
    logs.configure("enclave", args.log_format)
    # Pillow's warnings and log records quote the images it decodes, and stderr goes to the host:
    # nothing of an image may leave, so Pillow says nothing outside this process.
    quiet_pillow()
    try:
        listen = parse_address(args.listen)
        config = EnclaveConfig.from_canonical(args.config.read_bytes())
        platform = select_platform(args.platform, config)
    except (OSError, ValueError, EnclaveInferError) as exc:
        print(f"enclave: error: {exc}", file=sys.stderr)
        return 2
    if args.exit_with_host:
        threading.Thread(target=_exit_with_host, name="host-watch", daemon=True).start()
    enclave = Enclave(
        config, platform, args.storage, shared=args.cluster_storage, verifier=Verifier.production()
    )
    with contextlib.suppress(KeyboardInterrupt):
        serve(enclave, listen)
    return 0


def _exit_with_host() -> None:
    """The host holds the other end of standard input: when it dies, even by SIGKILL, the kernel
    closes it, and an enclave that nobody relays to any more stops rather than lingering."""
    with contextlib.suppress(OSError):
        while sys.stdin.buffer.read(4096):
            pass
    log.warning("the host has gone: stopping")
    os._exit(0)


PLATFORMS = ("auto", "simulation", "gramine-sgx", "tsm", "vtpm")


def select_platform(name: str, config: EnclaveConfig) -> Platform:
    """The configured platform, or with ``auto`` the one this machine offers: Gramine-SGX, then a
    TDX / SEV-SNP guest (configfs-tsm), then a TPM (``/dev/tpmrm0`` readable and writable, with the
    boot's event log), else simulation, which is INSECURE and says so. The vTPM platform is INSECURE
    too (a software TPM, as far as its evidence shows) and logs so."""
    import enclave_infer.enclave.gramine as gramine
    import enclave_infer.enclave.tsm as tsm
    import enclave_infer.enclave.vtpm as vtpm

    if name == "gramine-sgx" or (name == "auto" and gramine.available()):
        return gramine.GramineSgxPlatform(sealing_policy=config.sealing_policy)
    if name == "tsm" or (name == "auto" and tsm.available()):
        return tsm.ConfigfsTsmPlatform()
    if name == "vtpm" or (name == "auto" and vtpm.available()):
        event_log = vtpm.find_event_log() or vtpm.DEFAULT_EVENT_LOG  # a missing log: its own error
        log.warning("vTPM platform: TPM 2.0 quotes with the boot's event log %s; INSECURE", event_log)
        return vtpm.VtpmPlatform(vtpm.DEFAULT_DEVICE, event_log)
    if name == "auto":
        log.warning(
            "no TEE found (no /dev/attestation, no configfs-tsm, no TPM with a boot event log): "
            "running in SIMULATION, INSECURE"
        )
    return SimulationPlatform(config)


if __name__ == "__main__":
    sys.exit(main())
