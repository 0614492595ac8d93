"""The ``enclave-infer`` command.

Untrusted-side code: it drives the host (``serve``), the owner's tools (``keygen``, ``provision``),
the submitter's client (``classify``) and the offline measurement (``measure``). Every failure ends
in one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

import httpx

import enclave_infer
from enclave_infer.cli import gramine, page, receipts
from enclave_infer.cli._options import (
    add_collateral,
    add_config,
    add_data_dir,
    add_target,
    load_config,
    read_file,
)
from enclave_infer.errors import AttestationError, EnclaveInferError, KeyConfigurationChangedError, UsageError
from enclave_infer.logs import LOG_FORMATS

if TYPE_CHECKING:
    from enclave_infer.attestation.evidence import Attestation
    from enclave_infer.client._sdk import Client
    from enclave_infer.host.collateral import CollateralSource
    from enclave_infer.protocol.api import Classification, Preprocessing

__all__ = ["main"]

PROMPT = "Enter path or URL of image: "
QUIT_WORDS = ("quit", "exit")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # classify's options may stand anywhere, also between CONSTRAINT and the images, where
    # argparse has already closed the IMAGE list: the images after them come back as extras.
    if extra and args.command == "classify" and not any(e.startswith("-") and e != "-" for e in extra):
        args.images.extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args))
    except KeyConfigurationChangedError as exc:  # the SDK names Python; say it in the command's terms
        accept = "run again, or pass --follow-key-changes" if args.command == "classify" else "run again"
        _error(str(KeyConfigurationChangedError(exc.old, exc.new, accept)))
        return 1
    except EnclaveInferError as exc:
        _error(str(exc))
        return 1
    except OSError as exc:
        _error(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: still one line, with a way to see more
        if os.environ.get("ENCLAVE_INFER_DEBUG"):
            raise
        _error(f"unexpected {type(exc).__name__}: {exc} (set ENCLAVE_INFER_DEBUG=1 for a traceback)")
        return 1


def _error(message: str) -> None:
    print(f"enclave-infer: error: {message}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="enclave-infer", description="Confidential image classification in a TEE."
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {enclave_infer.__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="start the enclave and the host")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0: any free one)")
    add_data_dir(s, "sealed model storage and the enclave's socket; one server per folder")
    s.add_argument(
        "--platform",
        choices=["auto", "simulation", "gramine-sgx", "tsm", "vtpm"],
        default="auto",
        help="the TEE to use; auto: Gramine-SGX, else TDX/SEV-SNP, else a TPM with its boot's event log "
        "(vtpm), else simulation (INSECURE)",
    )
    s.add_argument(
        "--measurements",
        type=Path,
        metavar="FILE",
        help="the release's reference measurements (measure --image), attached to the evidence for "
        "clients that pin IMAGE:",
    )
    s.add_argument(
        "--enclave",
        metavar="ADDRESS",
        help="attach to an enclave already listening at tcp:127.0.0.1:PORT instead of starting one",
    )
    s.add_argument("--log-format", choices=LOG_FORMATS, default="text", help="log lines as text or JSON")
    s.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this certificate chain")
    s.add_argument("--tls-key", type=Path, metavar="PEM", help="... and this private key")
    s.add_argument(
        "--max-in-flight",
        type=int,
        default=64,
        metavar="N",
        help="requests at once before the host answers 503 with Retry-After (default 64)",
    )
    s.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, how long requests in progress may take to finish (default 30)",
    )
    source = s.add_mutually_exclusive_group()
    source.add_argument(
        "--pccs", metavar="URL", help="fetch DCAP collateral (SGX, TDX) from this PCCS (default: Intel's PCS)"
    )
    source.add_argument(
        "--kds", metavar="URL", help="fetch SEV-SNP certificates from this KDS (default: AMD's KDS)"
    )
    source.add_argument(
        "--collateral",
        type=Path,
        metavar="FILE",
        help="serve this collateral instead (air-gapped sites): dcap-qvl JSON, or a PEM bundle for SEV-SNP",
    )
    add_config(s)
    s.set_defaults(func=_serve)

    m = sub.add_parser(
        "measure",
        help="print what clients pin, offline: C: for this code, or IMAGE: for a release (--image)",
        description="Without --image: the simulated code hash (C:) of this installation with a "
        "configuration. With --image: every value a verifier compares, derived from a release's "
        "artifacts alone (the UKI's measured boot for vTPM and TDX, SEV-SNP MEASUREMENTs, the trusted "
        "code base), written as reference measurements, and the one IMAGE: pin that stands for them.",
    )
    add_config(m)
    m.add_argument("--json", action="store_true", help="print code hash, signer and owner key id as JSON")
    m.add_argument(
        "--image",
        type=Path,
        metavar="RELEASE",
        help="a release's manifest (release.json) or its folder: derive its reference measurements",
    )
    m.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="with --image: write the reference measurements here (default RELEASE/measurements.json)",
    )
    m.add_argument(
        "--snp-ovmf",
        type=Path,
        metavar="FILE",
        help="with --image: an OVMF built for SEV-SNP (OvmfPkg/AmdSev; Debian's is not): add the "
        "SEV-SNP MEASUREMENT of a measured direct boot of the UKI's kernel",
    )
    m.add_argument("--vcpus", type=int, default=1, help="with --snp-ovmf: the guest's vCPU count (default 1)")
    m.add_argument(
        "--vcpu-type", default="EPYC-v4", help="with --snp-ovmf: the guest's vCPU type (default EPYC-v4)"
    )
    m.set_defaults(func=_measure)

    k = sub.add_parser("keygen", help="make the model owner's Ed25519 key (FILE and FILE.pub)")
    k.add_argument("path", type=Path, metavar="FILE")
    k.set_defaults(func=_keygen)

    v = sub.add_parser("provision", help="send a model and its labels to the enclave (model owner)")
    add_target(v)
    v.add_argument(
        "model",
        type=Path,
        metavar="MODEL",
        help="ONNX, a torch.save(model) pickle, TorchScript or an ExportedProgram (README: accepted formats)",
    )
    v.add_argument("labels", type=Path, metavar="LABELS", help="class names, one per line")
    v.add_argument("--owner-key", type=Path, required=True, help="the owner's private key from keygen")
    v.add_argument(
        "--allow-duplicate-labels",
        action="store_true",
        help="accept a label that stands on two lines (ImageNet-1k has two 'crane' classes)",
    )
    v.add_argument(
        "--quiet", action="store_true", help="no progress bar (there is none when not on a terminal)"
    )
    add_collateral(v)
    v.add_argument(
        "--runtime",
        choices=["onnx", "torch", "both"],
        default="onnx",
        help="serve with ONNX Runtime (default), PyTorch (TorchScript), or both side by side",
    )
    v.add_argument("--model-version", type=int, default=None, help="default: one more than the enclave's")
    v.add_argument("--resize", type=int, default=256, help="shorter side before cropping (default 256)")
    v.add_argument("--crop", type=int, default=224, help="centre crop size, the model's input (default 224)")
    v.add_argument("--mean", help="per-channel mean on 0..1, comma-separated (default: ImageNet's, colour)")
    v.add_argument("--std", help="per-channel std on 0..1, comma-separated (default: ImageNet's, colour)")
    v.add_argument("--channel-order", choices=["RGB", "BGR"], default="RGB", help="the model's channel order")
    v.add_argument("--layout", choices=["NCHW", "NHWC"], default="NCHW", help="the model's tensor layout")
    v.add_argument(
        "--grayscale", action="store_true", help="the model takes one grey channel (give --mean, --std)"
    )
    v.set_defaults(func=_provision)

    a = sub.add_parser("attest", help="print an enclave's attestation report; check a constraint")
    add_target(a, constraint_optional=True)
    add_collateral(a)
    a.set_defaults(func=_attest)

    i = sub.add_parser("model", help="print what the enclave says of its model (GET /v1/model)")
    add_target(i)
    i.add_argument("--json", action="store_true", help="print the enclave's answer as JSON")
    add_collateral(i)
    i.set_defaults(func=_model)

    e = sub.add_parser(
        "verify-evidence",
        help="verify an SGX/TDX DCAP quote or an SEV-SNP report offline; print JSON",
        description="Verify an SGX or TDX DCAP quote, or an AMD SEV-SNP report, told apart by content. "
        "A quote takes Intel's collateral (--collateral JSON or --pccs URL); an SEV-SNP report takes "
        "--collateral as a PEM bundle of the VCEK or VLEK, ASK or ASVK, and ARK, and optionally --crl.",
    )
    e.add_argument(
        "--quote",
        type=Path,
        required=True,
        help="the raw quote, or an SEV-SNP report (raw, Azure HCL, or enclave-infer's evidence container)",
    )
    add_collateral(e)
    e.add_argument("--crl", type=Path, help="SEV-SNP only: AMD's CRL for the report's product (PEM or DER)")
    e.add_argument("--now", help="verify as of this RFC 3339 time (default: now)")
    e.add_argument("--constraint", help="also check this enclave constraint")
    e.set_defaults(func=_verify_evidence)

    gramine.register(sub)
    page.register(sub)
    receipts.register(sub)

    c = sub.add_parser("classify", help="classify image files or URLs (no IMAGE: interactive console)")
    add_target(c)
    c.add_argument(
        "images", nargs="*", metavar="IMAGE", help="file path, http(s):// URL, or - for standard input"
    )
    c.add_argument(
        "--top",
        type=int,
        default=1,
        help="classes to print per image (default 1; at most the enclave's max_top_k)",
    )
    c.add_argument("--json", action="store_true", help="print one JSON object per image, one per line")
    c.add_argument(
        "--runtime",
        choices=["onnx", "torch", "both"],
        help="which provisioned runtime answers (default: the owner's first); both: side by side",
    )
    c.add_argument("--model-sha256", metavar="HEX", help="refuse to use any model but this one (see `model`)")
    c.add_argument(
        "--receipt",
        type=Path,
        metavar="DIR",
        help="ask for a signed receipt per image, verify it, and keep it in DIR (see verify-receipt)",
    )
    c.add_argument(
        "--follow-key-changes",
        action="store_true",
        help="when the host offers another key configuration (an enclave of the same code, restarted"
        " alone or another cluster), attest it and send the image again (default: stop, exit 1)",
    )
    add_collateral(c)
    c.set_defaults(func=_classify)
    return p


def _client(args: argparse.Namespace, constraint: str | None) -> Client:
    from enclave_infer.client._config import ClientConfig
    from enclave_infer.client._sdk import Client

    collateral = read_file(args.collateral, "collateral") if args.collateral else None
    measurements = read_file(args.measurements, "reference measurements") if args.measurements else None
    pinned = getattr(args, "model_sha256", None)
    config = ClientConfig(ca_file=args.cacert)
    return Client(
        args.url,
        constraint,
        config=config,
        collateral=collateral,
        pccs_url=args.pccs,
        model_sha256=pinned,
        measurements=measurements,
        follow_key_changes=getattr(args, "follow_key_changes", False),
    )


# -- commands ------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from enclave_infer.attestation.evidence import Verifier
    from enclave_infer.host.server import run
    from enclave_infer.protocol.framing import parse_address

    if not 0 <= args.port < 65536:
        raise UsageError(f"--port must be 0..65535 (0: any free port), got {args.port}")
    external = None
    if args.enclave:
        try:
            external = parse_address(args.enclave)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    run(
        load_config(args),
        args.data_dir,
        host=args.host,
        port=args.port,
        platform=args.platform,
        external=external,
        log_format=args.log_format,
        collateral=_collateral_source(args),
        verifier=Verifier.production(),
        tls=_tls(args),
        max_in_flight=args.max_in_flight,
        drain_seconds=args.drain_timeout,
        measurements=_measurements(args.measurements),
    )
    return 0


def _measurements(path: Path | None) -> bytes:
    """The reference measurements ``serve`` attaches, checked now (a one-line error at start)."""
    from enclave_infer.attestation.reference import ReferenceMeasurements

    if path is None:
        return b""
    raw = read_file(path, "reference measurements")
    try:
        ReferenceMeasurements.parse(raw)
    except AttestationError as exc:
        raise UsageError(f"{path}: {exc}") from None
    return raw


def _tls(args: argparse.Namespace) -> tuple[Path, Path] | None:
    """The certificate and key ``serve`` terminates TLS with, checked now (a one-line error, not a
    traceback from deep inside the server)."""
    if args.max_in_flight < 1 or args.drain_timeout < 0:
        raise UsageError("--max-in-flight must be at least 1 and --drain-timeout not negative")
    if args.tls_cert is None and args.tls_key is None:
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise UsageError("--tls-cert and --tls-key go together")
    import ssl

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc.args[-1])
        raise UsageError(
            f"cannot use --tls-cert {args.tls_cert} / --tls-key {args.tls_key}: {reason}"
        ) from None
    return args.tls_cert, args.tls_key


def _collateral_source(args: argparse.Namespace) -> CollateralSource | None:
    """What ``serve`` fetches its enclave's collateral from; None: Intel's PCS or AMD's KDS."""
    from enclave_infer.host.collateral import FileSource, KdsSource, PccsSource

    if args.collateral:
        return FileSource(args.collateral)
    if args.pccs:
        return PccsSource(args.pccs)
    if args.kds:
        return KdsSource(args.kds)
    return None


def _attest(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    with _client(args, args.constraint) as client:
        attestation = client.attest() if args.constraint else client.inspect()
    print(attestation.summary(now=datetime.now(UTC)))
    if args.constraint:
        print(f"Constraint holds: {args.constraint}")
    return 0


def _model(args: argparse.Namespace) -> int:
    with _client(args, args.constraint) as client:
        _warn_if_insecure(client.attest())
        info = client.model_info()
    if args.json:
        print(json.dumps(info.to_json() if info is not None else None))
        return 0
    if info is None:
        print("no model has been provisioned yet")
        return 0
    pre = info.preprocessing
    files = ", ".join(f"{f.format} {f.size} bytes sha256 {f.sha256}" for f in info.files)
    print(f"model sha256:  {info.sha256}")
    print(f"version:       {info.version}")
    print(f"labels:        {info.labels}")
    print(f"runtimes:      {', '.join(info.runtimes)} (first answers by default)")
    print(f"files:         {files}")
    print(
        f"preprocessing: resize {pre.resize}, crop {pre.crop}, mean {_joined(pre.mean)},"
        f" std {_joined(pre.std)}, {'grey' if pre.channels == 1 else pre.channel_order}, {pre.layout}"
    )
    print(f"provisioned:   {info.provisioned_at.strftime('%Y-%m-%dT%H:%M:%SZ')}")
    return 0


def _verify_evidence(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from enclave_infer.attestation import constraints, dcap, snp
    from enclave_infer.client._sdk import fetch_collateral
    from enclave_infer.errors import AttestationError

    constraint = constraints.parse(args.constraint) if args.constraint else None
    if constraint is not None and constraint.image is not None:
        raise UsageError(
            "IMAGE: needs the whole attestation document (the boot's event log, the configuration): "
            "check it with `attest URL CONSTRAINT`, not against a bare quote"
        )
    if args.measurements:
        raise UsageError("--measurements is for IMAGE:, which verify-evidence does not check")
    evidence = read_file(args.quote, "quote")
    now = datetime.now(UTC)
    if args.now:
        try:
            now = datetime.fromisoformat(args.now)
        except ValueError:
            raise UsageError(
                f"--now takes an RFC 3339 time such as 2025-06-20T10:56:11Z, got {args.now!r}"
            ) from None
        if now.tzinfo is None:
            raise UsageError("--now needs a time zone, e.g. 2025-06-20T10:56:11Z")
    # Told apart by content: an SEV-SNP report (raw, Azure HCL or the evidence container), else the
    # DCAP quote header's version and TEE type (SGX: v3, TDX: v4 or v5).
    is_snp = snp.looks_like_snp_report(evidence)
    if is_snp and args.pccs:
        raise UsageError(
            "--pccs fetches Intel DCAP collateral; an SEV-SNP report takes --collateral FILE "
            "(VCEK or VLEK, ASK or ASVK, ARK as PEM)"
        )
    if not is_snp and args.crl:
        raise UsageError(
            "--crl is AMD's CRL for an SEV-SNP report; a DCAP quote's CRLs are in its collateral"
        )
    verdict: dcap.QuoteVerdict | snp.SnpVerdict
    try:
        if is_snp:
            collateral = read_file(args.collateral, "collateral") if args.collateral else b""
            crl = read_file(args.crl, "CRL") if args.crl else None
            verdict = snp.verify_snp_report(evidence, collateral, now=now, crl=crl)
        else:
            try:
                dcap.parse_quote_layout(evidence)  # before any collateral is fetched for it
            except AttestationError as exc:
                raise AttestationError(
                    f"{args.quote} is neither an SEV-SNP report nor an SGX or TDX DCAP quote: {exc}"
                ) from None
            if args.collateral:
                collateral = read_file(args.collateral, "collateral")
            elif args.pccs:
                collateral = fetch_collateral(args.pccs, evidence)
            else:
                raise UsageError("give --collateral FILE or --pccs URL")
            verdict = dcap.verify_quote(evidence, collateral, now=now)
    except AttestationError as exc:
        print(json.dumps({"verified": False, "error": str(exc)}, indent=2))
        raise
    doc: dict[str, Any] = {"verified": True, **verdict.to_json()}
    failure = None
    try:
        if constraint is not None:
            constraint.check(verdict.report, now=now)
            doc["constraint"] = {"given": args.constraint, "holds": True}
        else:  # no constraint still refuses stale DCAP collateral: GRACE: is the only way to allow it
            constraints.check_dcap_collateral(verdict.report, now=now)
    except EnclaveInferError as exc:
        failure = exc
        doc["constraint"] = {"given": args.constraint, "holds": False, "reason": str(exc)}
    print(json.dumps(doc, indent=2))
    if failure is not None:
        raise failure
    return 0


def _measure(args: argparse.Namespace) -> int:
    from enclave_infer.attestation.measurement import SIMULATION_SIGNER, code_hash

    if args.image is not None:
        return _measure_image(args)
    if args.out or args.snp_ovmf:
        raise UsageError("--out and --snp-ovmf go with --image")
    config = load_config(args)
    digest = code_hash(config).hex().upper()
    if args.json:
        doc = {
            "code_hash": digest,
            "signer": SIMULATION_SIGNER.hex().upper(),
            "owner": config.owner_key_id.upper(),
            "product_id": config.product_id,
        }
        print(json.dumps(doc))
    else:
        print(digest)
    return 0


def _measure_image(args: argparse.Namespace) -> int:
    from enclave_infer.attestation.reference import image_pin
    from enclave_infer.release.derive import SnpTarget, derive, load_release

    if args.owner_public_key or args.config:
        raise UsageError(
            "--image derives from the release alone: the owner's key and configuration are bound into "
            "the evidence at run time (pin the owner with OWNER:)"
        )
    if args.vcpus < 1:
        raise UsageError(f"--vcpus must be at least 1, got {args.vcpus}")
    snp = [SnpTarget(args.snp_ovmf, args.vcpus, args.vcpu_type)] if args.snp_ovmf else []
    folder, manifest = load_release(args.image)
    reference = derive(folder, manifest, snp=snp)
    out = args.out or folder / "measurements.json"
    pin = image_pin(reference.raw)
    stated = (manifest.get("measurements") or {}).get("image")
    if stated is not None and stated != pin and not snp:
        raise UsageError(f"the release manifest states {stated}, but its artifacts give {pin}")
    try:
        out.write_bytes(reference.raw)
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror}") from None
    doc = reference.document
    if args.json:
        print(json.dumps({"image": pin, "measurements": str(out), **doc}, indent=2))
        return 0
    print(f"reference measurements written to {out}", file=sys.stderr)
    if stated == pin:
        print("  the same IMAGE: the release manifest states", file=sys.stderr)
    for tee in ("vtpm", "tdx"):
        for register, events in sorted(doc[tee]["registers"].items(), key=lambda kv: int(kv[0])):
            token = f"PCR{register}" if tee == "vtpm" else f"RTMR{register}"
            value = doc[tee]["values"][register].upper()
            whats = ", ".join(e["what"] for e in events)
            print(f"  {tee:8} {token}:{value}\n{'':11}{len(events)} events: {whats}", file=sys.stderr)
    snp_count = len(doc["sev-snp"]["measurements"])
    print(
        f"  sev-snp  {snp_count} MEASUREMENT(s)" + ("" if snp_count else " (give --snp-ovmf FILE)"),
        file=sys.stderr,
    )
    print(
        f"  sgx      {doc['sgx']['trusted_files']} trusted files; MRENCLAVE needs Gramine's signer",
        file=sys.stderr,
    )
    print(f"  simulation {len(doc['simulation']['trusted_files'])} trusted code base files", file=sys.stderr)
    print(pin)
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from enclave_infer.client._owner import generate_owner_key

    if not args.path.name or args.path.is_dir():
        raise UsageError(f"keygen needs a file name, got {str(args.path)!r}")
    owner_id = generate_owner_key(args.path)
    print(f"wrote {args.path} (keep it private) and {args.path}.pub (give it to the operator)")
    print(f"OWNER:{owner_id.upper()}")
    return 0


def _provision(args: argparse.Namespace) -> int:
    from enclave_infer.client._owner import build_preprocessing, load_owner_key, read_labels
    from enclave_infer.client._progress import Progress
    from enclave_infer.client._text import count

    key = load_owner_key(args.owner_key)
    labels = read_labels(args.labels, allow_duplicates=args.allow_duplicate_labels)
    preprocessing = build_preprocessing(
        resize=args.resize,
        crop=args.crop,
        mean=args.mean,
        std=args.std,
        channel_order=args.channel_order,
        layout=args.layout,
        grayscale=args.grayscale,
    )
    if args.model_version is not None and args.model_version < 1:
        raise UsageError("--model-version must be a positive integer")
    with _client(args, args.constraint) as client:
        attestation = client.attest()  # before any conversion work or secret leaves this machine
        _warn_if_insecure(attestation)
        stage = None if args.quiet else _stage
        with _model_files(args.model, args.runtime, preprocessing, len(labels), stage) as files:
            limit = attestation.config.limits.max_model_bytes
            size = sum(path.stat().st_size for path in files.values())
            if size > limit:
                raise UsageError(f"the model is {size} bytes; this enclave's max_model_bytes is {limit}")
            bar = Progress(size, label="uploading", enabled=False if args.quiet else None)
            try:
                result = client.provision_file(
                    files,
                    labels,
                    key,
                    preprocessing=preprocessing,
                    version=args.model_version,
                    progress=bar.advance,
                )
            finally:
                bar.close()
    model = result.model
    replaced = f", replacing version {result.replaced_version}" if result.replaced_version is not None else ""
    print(
        f"provisioned model version {model.version} (sha256 {model.sha256}, {count(model.labels, 'label')},"
        f" runtimes: {', '.join(model.runtimes)}{replaced})"
    )
    return 0


def _classify(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise UsageError("--top must be at least 1")
    if args.images.count("-") > 1:
        raise UsageError("- (standard input) can be given once")
    with _client(args, args.constraint) as client:
        attestation = client.attest()
        _warn_if_insecure(attestation)
        max_top = attestation.config.limits.max_top_k
        if args.top > max_top:
            raise UsageError(f"--top must be at most {max_top} for this enclave (its max_top_k)")
        session = _Session(client, attestation, args)
        if args.images:
            for source in args.images:
                session.classify(source, prefix=True)
        else:
            session.console(sys.stdin)
    return 1 if session.failures else 0


class _Session:
    """Classify images one by one and print each answer as it comes, as text or JSON Lines; the
    same fields in batch mode and in the console."""

    def __init__(self, client: Client, attestation: Attestation, args: argparse.Namespace) -> None:
        self._client, self._args = client, args
        self._level = attestation.report.security_level.name
        self.failures = 0
        self._receipts: set[Path] = set()
        if args.receipt is not None:
            try:
                args.receipt.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UsageError(f"cannot use --receipt {args.receipt}: {exc.strerror}") from None

    def classify(self, source: str, *, prefix: bool) -> None:
        args = self._args
        try:
            result = self._client.classify(
                _load_image(source),
                top=args.top,
                runtime=args.runtime or "default",
                receipt=args.receipt is not None,
            )
            if result.receipt is not None:
                path = receipts.receipt_path(args.receipt, source, self._receipts)
                try:
                    path.write_bytes(result.receipt)
                except OSError as exc:
                    raise UsageError(f"cannot write the receipt {path}: {exc.strerror}") from None
        except KeyConfigurationChangedError:  # not this image's failure: the session's, and it ends
            raise
        except EnclaveInferError as exc:  # the message does not name the image: it is named here, once
            self.failures += 1
            if args.json:
                print(json.dumps({"image": source, "error": str(exc)}), flush=True)
            else:
                _error(f"{source or repr(source)}: {exc}")
            return
        if args.json:
            print(
                json.dumps({"image": source, "security_level": self._level, **result.to_json()}), flush=True
            )
            return
        for text in _lines(result):
            print(f"{source}: {text}" if prefix else text, flush=True)

    def console(self, stream: TextIO) -> None:
        """The seed's console. On a terminal: a prompt on stderr and line editing; in a pipe: no
        prompt, one image per line. Empty lines are skipped; EOF or ``quit`` ends."""
        interactive = stream.isatty() and sys.stderr.isatty()
        if interactive:
            with contextlib.suppress(ImportError):
                import readline  # noqa: F401 - line editing and history for input()
        while True:
            try:
                if interactive:
                    print(PROMPT, end="", file=sys.stderr, flush=True)
                    line = input()
                else:
                    line = stream.readline()
                    if not line:
                        return
            except EOFError:
                if interactive:
                    print(file=sys.stderr)
                return
            source = _unquote(line.strip())
            if not source:
                continue
            if source.lower() in QUIT_WORDS:
                return
            # several images in one session: name each, as batch mode does, unless it is one at a prompt
            self.classify(source, prefix=not interactive)


def _unquote(text: str) -> str:
    """A path dragged into a terminal arrives quoted ('…' or "…"); the quotes are not the name."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _lines(result: Classification) -> list[str]:
    """One line per class; with both runtimes, each runtime's answer side by side."""
    if not result.by_runtime:
        return [str(p) for p in result.results]
    columns = list(result.by_runtime.items())
    rows = max(len(ps) for _, ps in columns)
    return ["  ".join(f"[{name}] {ps[i]}" for name, ps in columns if i < len(ps)) for i in range(rows)]


def _warn_if_insecure(attestation: Attestation) -> None:
    report = attestation.report
    if report.security_level.name == "INSECURE":
        # it was accepted: the constraint holds, so it says SEC:INSECURE; say why that matters
        print(
            f"enclave-infer: warning: the enclave is INSECURE ({report.level_reason}),"
            " accepted because the constraint says SEC:INSECURE",
            file=sys.stderr,
        )


# -- helpers -------------------------------------------------------------------------------------


def _stage(text: str) -> None:
    print(f"enclave-infer: {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _model_files(
    path: Path, runtime: str, preprocessing: Preprocessing, classes: int, stage: Callable[[str], None] | None
) -> Iterator[dict[str, Path]]:
    """The owner's model as the files the enclave serves: {"onnx": …, "torchscript": …}. An
    ``.onnx`` for ONNX Runtime alone is only checked; anything else is converted here, on the
    owner's machine, into a temporary folder (a pickle's code runs here, never in the enclave)."""
    if not path.exists():
        raise UsageError(f"model file {path} does not exist")
    if not path.is_file():
        raise UsageError(f"model file {path} is not a regular file")
    from enclave_infer.client.export import ExternalDataError, ModelInput, check_onnx, export_formats

    want = ModelInput(preprocessing.crop, preprocessing.channels, preprocessing.layout)
    if runtime == "onnx" and path.suffix.lower() == ".onnx":
        try:
            # a local one-line error beats an upload the enclave refuses
            check_onnx(path, want, classes=classes)
        except ExternalDataError:
            pass
        else:
            yield {"onnx": path}
            return
        # weights in external data files: fold them into one self-contained file below
    wanted = {"onnx", "torch"} if runtime == "both" else {runtime}
    step: Callable[[str], None] | None = None
    if stage is not None:
        # the files named below are made for the upload only: say so, so that nobody looks for them
        stage(f"converting {path.name} for the upload, into a temporary folder removed afterwards:")
        step = functools.partial(_indented, stage)
    with tempfile.TemporaryDirectory(prefix="enclave-infer-convert-") as tmp:
        made = export_formats(path, Path(tmp), wanted, want, classes=classes, progress=step)
        yield {fmt.value: made_path for fmt, made_path in made.items()}


def _indented(stage: Callable[[str], None], text: str) -> None:
    stage(f"  {text}")


def _joined(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)


def _load_image(source: str) -> bytes:
    """The image's bytes. Errors say what is wrong without naming ``source``, which the caller does."""
    if source == "-":
        data = sys.stdin.buffer.read()
        if not data:
            raise UsageError("standard input is empty")
        return data
    if source.startswith(("http://", "https://")):
        return _fetch(source)
    scheme = urlsplit(source).scheme
    if len(scheme) > 1 and "://" in source:  # not a Windows drive letter
        raise UsageError(f"unsupported URL scheme {scheme}:// (use a file path, http:// or https://)")
    path = Path(source).expanduser()
    if not source or not path.exists():
        raise UsageError("no such file")
    if not path.is_file():
        raise UsageError("not a regular file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read it: {exc.strerror}") from None
    if not data:
        raise UsageError("the file is empty")
    return data


def _fetch(url: str) -> bytes:
    """Fetch an image on the client's side: the host never sees the URL."""
    from enclave_infer.client._config import ClientConfig
    from enclave_infer.client._transport import connection_failure

    limit, timeout = ClientConfig().max_fetch_bytes, ClientConfig().fetch_timeout
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=timeout) as reply:
            if reply.status_code != 200:
                raise UsageError(f"answered {reply.status_code}")
            return b"".join(_capped(reply.iter_bytes(), limit))
    except httpx.HTTPError as exc:
        raise UsageError(connection_failure(exc, url, timeout, trust_hint="SSL_CERT_FILE=FILE")) from None


def _capped(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise UsageError(f"an image larger than {limit} bytes")
        yield chunk


if __name__ == "__main__":
    sys.exit(main())
