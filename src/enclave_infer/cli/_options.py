"""Argument shapes that several ``enclave-infer`` commands share, and the loading they imply.

Untrusted-side code, internal to the CLI. Commands import from here, never from each other.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from enclave_infer.config import EnclaveConfig, load_public_key_file
from enclave_infer.errors import UsageError

__all__ = ["add_collateral", "add_config", "add_data_dir", "add_target", "load_config", "read_file"]


def add_target(p: argparse.ArgumentParser, *, constraint_optional: bool = False) -> None:
    """URL and CONSTRAINT: where the host is and what its enclave must be; ``--cacert``: the
    certificate an https:// host's must chain to."""
    p.add_argument("url", metavar="URL", help="the host, e.g. http://127.0.0.1:8080")
    p.add_argument(
        "--cacert",
        type=Path,
        metavar="FILE",
        help="trust an https:// host whose certificate chains to one in FILE (PEM), such as a "
        "self-signed one, instead of the usual roots (default: certifi's, or $SSL_CERT_FILE's)",
    )
    if constraint_optional:
        p.add_argument("constraint", metavar="CONSTRAINT", nargs="?", help="if given, say whether it holds")
    else:
        p.add_argument(
            "constraint",
            metavar="CONSTRAINT",
            help='what the enclave must be, e.g. "C:<code hash> SEC:INSECURE"',
        )


def add_collateral(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--collateral", type=Path, help="DCAP collateral, dcap-qvl's QuoteCollateralV3 JSON")
    group.add_argument("--pccs", metavar="URL", help="fetch DCAP collateral from this PCCS or Intel PCS URL")
    p.add_argument(
        "--measurements",
        type=Path,
        metavar="FILE",
        help="the release's reference measurements (measure --image writes them) that IMAGE: pins, "
        "instead of those the host attaches",
    )


def add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--owner-public-key", type=Path, help="the model owner's key (owner.key.pub)")
    p.add_argument("--config", type=Path, help="enclave.toml overriding the defaults")


def add_data_dir(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument(
        "--data-dir", type=Path, default=Path("enclave-data"), help=f"{help_text} (default enclave-data)"
    )


def load_config(args: argparse.Namespace) -> EnclaveConfig:
    """The measured configuration from ``--config`` and ``--owner-public-key``; giving the owner
    key both ways is refused rather than letting one silently win."""
    owner = load_public_key_file(args.owner_public_key) if args.owner_public_key else None
    return EnclaveConfig.load(args.config, owner_public_key=owner)


def read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
