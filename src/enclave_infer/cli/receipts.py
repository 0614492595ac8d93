"""``enclave-infer verify-receipt``, and where ``classify --receipt DIR`` keeps receipts.

A receipt (``attestation/receipt.py``) verifies offline, later, on another machine: its evidence as
of the time it was signed (with the collateral it carries, under the production roots), the binding
of the signing key, the signature, a constraint, the answer it carries (a receipt whose answer was
removed is refused), and that an image is the one classified::

    enclave-infer verify-receipt receipts/chelsea.png.receipt.json --image chelsea.png \\
        --constraint "C:<code hash> SEC:INSECURE"

The constraint is what makes a receipt proof of *which* enclave answered: any enclave whose evidence
verifies (another code hash, another configuration, a cluster the host founded on the side) can mint
a receipt whose signature, binding and answer check out. So a constraint is required; only
``--unsafe-no-constraint`` verifies without one, with a warning on stderr that this proves nothing
about which enclave minted the receipt, and ``constraint: none`` in what it prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from enclave_infer.attestation import constraints
from enclave_infer.attestation.evidence import Policy, UnsafeNoPolicy, Verifier
from enclave_infer.attestation.receipt import Receipt, verify
from enclave_infer.attestation.report import SecurityLevel
from enclave_infer.cli._options import read_file
from enclave_infer.errors import UsageError

__all__ = ["receipt_path", "register"]

SUFFIX = ".receipt.json"
# verify-receipt without a constraint: what it says, in one line, instead of "receipt verified".
NO_CONSTRAINT = (
    "a receipt verified without a constraint proves nothing about which enclave minted it: give the"
    ' enclave\'s, e.g. --constraint "C:<code hash> SEC:SECURE" (or IMAGE:<pin>), or'
    " --unsafe-no-constraint to check its signature and answer only"
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    r = sub.add_parser(
        "verify-receipt",
        help="verify a classification's signed receipt, offline",
        description="Verify a receipt: the enclave's evidence (as of the receipt's time, with the"
        " collateral it carries), the signature with the key that evidence binds, a constraint, the"
        " answer it carries, and that an image is the one that was classified. Exit 1 with one line"
        " on any failure.",
    )
    r.add_argument("receipt", type=Path, metavar="FILE", help="a receipt, as `classify --receipt DIR` writes")
    r.add_argument("--image", type=Path, help="check that this is the image that was classified")
    r.add_argument(
        "--constraint",
        help="the enclave the receipt must come from (required: without one a receipt proves nothing)",
    )
    r.add_argument(
        "--unsafe-no-constraint",
        action="store_true",
        help="verify without a constraint: the signature and answer only, which proves nothing about"
        " which enclave minted the receipt",
    )
    r.add_argument(
        "--measurements",
        type=Path,
        metavar="FILE",
        help="the release's reference measurements (measure --image), for a constraint that pins IMAGE:",
    )
    r.set_defaults(func=_verify_receipt)


def receipt_path(directory: Path, source: str, taken: set[Path]) -> Path:
    """Where the receipt for the image ``source`` goes: ``DIR/<its file name>.receipt.json``, with a
    number added when two images share a name."""
    name = Path(source.rstrip("/")).name or "image"
    if source == "-":
        name = "stdin"
    path, n = directory / f"{name}{SUFFIX}", 1
    while path in taken:
        n += 1
        path = directory / f"{name}.{n}{SUFFIX}"
    taken.add(path)
    return path


def _verify_receipt(args: argparse.Namespace) -> int:
    if args.constraint and args.unsafe_no_constraint:
        raise UsageError("--constraint and --unsafe-no-constraint contradict each other: give one")
    if not args.constraint and not args.unsafe_no_constraint:
        raise UsageError(NO_CONSTRAINT)
    receipt = Receipt.decode(read_file(args.receipt, "receipt"))
    image = read_file(args.image, "image") if args.image else None
    constraint = constraints.parse(args.constraint) if args.constraint else None
    policy: Policy = constraint or UnsafeNoPolicy("verify-receipt --unsafe-no-constraint")
    measurements = read_file(args.measurements, "reference measurements") if args.measurements else None
    statement, attestation = verify(
        receipt, policy, verifier=Verifier.production(), image=image, measurements=measurements
    )
    report = attestation.report
    if report.security_level is SecurityLevel.INSECURE:  # e.g. simulation: anyone can forge such a receipt
        print(
            f"enclave-infer: warning: the receipt's enclave is INSECURE: {report.level_reason}",
            file=sys.stderr,
        )
    mode = report.tee.upper()  # SIMULATION, SGX, TDX, SEV-SNP
    print(
        f"receipt verified: signed {statement.time:%Y-%m-%dT%H:%M:%SZ} by enclave"
        f" {report.code_hash.hex().upper()} ({mode}, {report.security_level.name}),"
        f" model {statement.model_sha256} version {statement.model_version}"
    )
    print(f"  image sha256 {statement.image_sha256}{' (matches --image)' if image is not None else ''}")
    try:  # verify() refuses a receipt without its answer
        results = json.loads(receipt.response or "")["results"]
        answer = ", ".join(f"{r['label']} ({100 * r['probability']:.1f}%)" for r in results)
    except (ValueError, KeyError, TypeError):
        raise UsageError("the receipt's answer is not a classification") from None
    print(f"  answer: {answer}")
    if constraint is None:
        print("  constraint: none (--unsafe-no-constraint)")
        print(
            "enclave-infer: warning: no constraint: this proves nothing about which enclave minted the"
            " receipt (any enclave whose evidence verifies could have signed it)",
            file=sys.stderr,
        )
    else:
        print(f"  constraint: {args.constraint.strip()} (met)")
    return 0
