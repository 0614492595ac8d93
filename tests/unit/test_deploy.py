"""The deployment files say what the CLI accepts."""

from __future__ import annotations

import shlex
from pathlib import Path

from enclave_infer.cli.main import _parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def exec_start(unit: Path) -> list[str]:
    lines = unit.read_text().replace("\\\n", " ").splitlines()
    [command] = [line.split("=", 1)[1] for line in lines if line.startswith("ExecStart=")]
    return shlex.split(command)


def test_the_systemd_unit_runs_a_serve_the_cli_accepts() -> None:
    unit = DEPLOY / "systemd" / "enclave-infer.service"
    argv = exec_start(unit)
    assert Path(argv[0]).name == "enclave-infer"
    args = _parser().parse_args(argv[1:])
    assert args.command == "serve" and args.tls_cert and args.tls_key and args.log_format == "json"
    text = unit.read_text()
    # SIGTERM drains for --drain-timeout (30 s by default): systemd must wait longer than that
    stop = int(next(line for line in text.splitlines() if line.startswith("TimeoutStopSec=")).split("=")[1])
    assert "KillSignal=SIGTERM" in text and stop > args.drain_timeout


def test_the_systemd_unit_allows_connections_beyond_the_default_open_file_limit() -> None:
    """systemd's default soft limit of 1,024 descriptors was used up by about 1,000 idle connections."""
    from enclave_infer.host.server import FD_RESERVE

    text = (DEPLOY / "systemd" / "enclave-infer.service").read_text()
    [limit] = [int(line.split("=")[1]) for line in text.splitlines() if line.startswith("LimitNOFILE=")]
    assert limit - FD_RESERVE >= 60_000
