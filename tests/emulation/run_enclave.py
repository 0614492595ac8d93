"""TEST-ONLY launcher: the enclave process, on a fake Gramine or configfs-tsm tree or swtpm, on TCP loopback.

    python -m tests.emulation.run_enclave --platform gramine-sgx|tsm --root DIR \\
        --listen tcp:127.0.0.1:PORT --config enclave.json --storage DIR [--ccel FILE]
    python -m tests.emulation.run_enclave --platform vtpm --tpm tcp:127.0.0.1:PORT --event-log FILE \\
        --listen tcp:127.0.0.1:PORT --config enclave.json --storage DIR

What ``python -m enclave_infer.enclave`` does, with one difference: the platform is built on the
pseudo-file root the test gives (``GramineSgxPlatform(root)``, ``ConfigfsTsmPlatform(root)``)
instead of ``/dev/attestation`` or ``/sys/kernel/config/tsm/report``, and a TD's CC event log is the
file ``--ccel`` names (none without it) instead of the machine's own; or, for the vTPM, on swtpm's
TCP socket and an event log file (``VtpmPlatform(TcpTpm(...), log)``) instead of ``/dev/tpmrm0``
and the boot's log: the product has no option or variable that points it elsewhere. A fake tree is
served by a fake kernel thread in the test process (:mod:`tests.emulation.pseudofs`), which mints
the evidence over the report data this process writes; swtpm is a real TPM. The host attaches to it
with ``external=`` (what ``serve --enclave tcp:…`` does for an enclave started by ``gramine-sgx``).

On configfs-tsm the kernel populates an entry as ``mkdir`` creates it. Here another process (the
test's ``FakeTsm``) does, so this process's ``mkdir`` waits until the entry's ``provider``
attribute, which the fake writes last, is there; and ``rmdir`` removes the attributes with the
entry, as configfs does. These are the provider's own hooks for playing the kernel
(``tsm._mkdir``, ``tsm._rmdir``); everything else is the product's code.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

from enclave_infer import logs
from enclave_infer.attestation.evidence import Verifier
from enclave_infer.config import EnclaveConfig
from enclave_infer.enclave import tsm
from enclave_infer.enclave.gramine import GramineSgxPlatform
from enclave_infer.enclave.platform import Platform
from enclave_infer.enclave.server import Enclave, serve
from enclave_infer.enclave.vtpm import TcpTpm, VtpmPlatform
from enclave_infer.errors import EnclaveInferError
from enclave_infer.protocol.framing import parse_address

# How long mkdir waits for the fake kernel to populate a configfs-tsm entry.
POPULATE_TIMEOUT = 10.0


def _mkdir_populated(path: Path) -> None:
    os.mkdir(path)
    deadline = time.monotonic() + POPULATE_TIMEOUT
    while not (path / "provider").exists():
        if time.monotonic() > deadline:
            raise OSError(f"the fake configfs-tsm kernel did not populate {path}")
        time.sleep(0.001)


def _rmdir_with_attributes(path: Path) -> None:
    shutil.rmtree(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.emulation.run_enclave")
    parser.add_argument("--platform", choices=["gramine-sgx", "tsm", "vtpm"], required=True)
    parser.add_argument("--root", type=Path, help="the fake pseudo-file tree (gramine-sgx, tsm)")
    parser.add_argument("--tpm", help="vtpm: swtpm's data socket, tcp:127.0.0.1:PORT")
    parser.add_argument("--event-log", type=Path, help="vtpm: the boot's TCG event log")
    parser.add_argument("--listen", required=True, help="tcp:127.0.0.1:PORT")
    parser.add_argument("--config", type=Path, required=True, help="canonical enclave configuration")
    parser.add_argument("--storage", type=Path, required=True, help="folder for sealed blobs")
    parser.add_argument("--ccel", type=Path, help="a TD's CC event log (as the ACPI CCEL table shows it)")
    args = parser.parse_args(argv)
    vtpm_given = (args.root is None, args.tpm is not None, args.event_log is not None)
    if vtpm_given != ((True, True, True) if args.platform == "vtpm" else (False, False, False)):
        parser.error("gramine-sgx and tsm take --root; vtpm takes --tpm and --event-log")
    logs.configure("enclave", "text")
    try:
        config = EnclaveConfig.from_canonical(args.config.read_bytes())
        platform: Platform
        if args.platform == "vtpm":
            host, _, port = args.tpm.removeprefix("tcp:").rpartition(":")
            platform = VtpmPlatform(TcpTpm(host, int(port)), args.event_log)
        elif args.platform == "gramine-sgx":
            platform = GramineSgxPlatform(args.root, sealing_policy=config.sealing_policy)
        else:
            tsm._mkdir = _mkdir_populated
            tsm._rmdir = _rmdir_with_attributes
            platform = tsm.ConfigfsTsmPlatform(args.root, event_logs=(args.ccel,) if args.ccel else ())
        enclave = Enclave(config, platform, args.storage, verifier=Verifier.production())
        listen = parse_address(args.listen)
    except (OSError, ValueError, EnclaveInferError) as exc:
        print(f"enclave: error: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        serve(enclave, listen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
