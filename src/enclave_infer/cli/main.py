"""The ``enclave-infer`` command.

Untrusted-side code: it drives the host (``serve``), the owner's tools (``keygen``, ``provision``),
the submitter's client (``classify``) and the offline measurement (``measure``). Every failure ends
in one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from enclave_infer.config import EnclaveConfig, MiB, load_public_key_file
from enclave_infer.errors import EnclaveInferError, UsageError

__all__ = ["main"]

PROMPT = "Enter path or URL of image: "
# Client-side cap on an image fetched from a URL, the same as the enclave's default limit.
MAX_FETCH_BYTES = 16 * MiB
IMAGENET_MEAN = "0.485,0.456,0.406"
IMAGENET_STD = "0.229,0.224,0.225"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # classify's options may stand anywhere, also between CONSTRAINT and the images, where
    # argparse has already closed the IMAGE list: the images after them come back as extras.
    if extra and args.command == "classify" and not any(e.startswith("-") for e in extra):
        args.images.extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args))
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
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="start the enclave and the host")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    s.add_argument(
        "--data-dir",
        type=Path,
        default=Path("enclave-data"),
        help="sealed model storage and the enclave's socket; one server per folder (default enclave-data)",
    )
    s.add_argument(
        "--platform",
        choices=["auto", "simulation", "gramine-sgx", "tsm"],
        default="auto",
        help="the TEE to use; auto: Gramine-SGX, else TDX/SEV-SNP, else simulation (INSECURE)",
    )
    s.add_argument(
        "--enclave",
        metavar="ADDRESS",
        help="attach to an enclave already listening at tcp:127.0.0.1:PORT instead of starting one",
    )
    _config_options(s)
    s.set_defaults(func=_serve)

    m = sub.add_parser("measure", help="print the code hash clients pin with C:, offline")
    _config_options(m)
    m.add_argument("--json", action="store_true", help="print code hash, signer and owner key id as JSON")
    m.set_defaults(func=_measure)

    k = sub.add_parser("keygen", help="make the model owner's Ed25519 key (FILE and FILE.pub)")
    k.add_argument("path", type=Path, metavar="FILE")
    k.set_defaults(func=_keygen)

    v = sub.add_parser("provision", help="send a model and its labels to the enclave (model owner)")
    v.add_argument("url", metavar="URL", help="the host, e.g. http://127.0.0.1:8080")
    v.add_argument(
        "constraint", metavar="CONSTRAINT", help='what the enclave must be, e.g. "C:<code hash> SEC:INSECURE"'
    )
    v.add_argument(
        "model", type=Path, metavar="MODEL", help=".onnx, or a torch.save(model) pickle (.pt/.pth)"
    )
    v.add_argument("labels", type=Path, metavar="LABELS", help="class names, one per line")
    v.add_argument("--owner-key", type=Path, required=True, help="the owner's private key from keygen")
    v.add_argument(
        "--quiet", action="store_true", help="no progress bar (there is none when not on a terminal)"
    )
    _collateral_options(v)
    v.add_argument(
        "--runtime",
        choices=["onnx", "torch", "both"],
        default="onnx",
        help="serve with ONNX Runtime (default), PyTorch (TorchScript), or both side by side",
    )
    v.add_argument("--model-version", type=int, default=None, help="default: one more than the enclave's")
    v.add_argument("--resize", type=int, default=256, help="shorter side before cropping (default 256)")
    v.add_argument("--crop", type=int, default=224, help="centre crop size, the model's input (default 224)")
    v.add_argument(
        "--mean", default=IMAGENET_MEAN, help=f"per-channel mean on 0..1 (default ImageNet {IMAGENET_MEAN})"
    )
    v.add_argument(
        "--std", default=IMAGENET_STD, help=f"per-channel std on 0..1 (default ImageNet {IMAGENET_STD})"
    )
    v.set_defaults(func=_provision)

    a = sub.add_parser("attest", help="print an enclave's attestation report; check a constraint")
    a.add_argument("url", metavar="URL", help="the host, e.g. http://127.0.0.1:8080")
    a.add_argument("constraint", metavar="CONSTRAINT", nargs="?", help="if given, say whether it holds")
    _collateral_options(a)
    a.set_defaults(func=_attest)

    e = sub.add_parser("verify-evidence", help="verify an SGX/TDX DCAP quote offline; print JSON")
    e.add_argument("--quote", type=Path, required=True, help="the raw quote")
    _collateral_options(e)
    e.add_argument("--now", help="verify as of this RFC 3339 time (default: now)")
    e.add_argument("--constraint", help="also check this enclave constraint")
    e.set_defaults(func=_verify_evidence)

    from enclave_infer.cli import gramine

    gramine.register(sub)

    c = sub.add_parser("classify", help="classify image files or URLs (no IMAGE: interactive console)")
    c.add_argument("url", metavar="URL", help="the host, e.g. http://127.0.0.1:8080")
    c.add_argument(
        "constraint", metavar="CONSTRAINT", help='what the enclave must be, e.g. "C:<code hash> SEC:INSECURE"'
    )
    c.add_argument("images", nargs="*", metavar="IMAGE", help="file path or http(s):// URL")
    c.add_argument(
        "--top",
        type=int,
        default=1,
        help="classes to print per image (default 1; at most the enclave's max_top_k)",
    )
    c.add_argument("--json", action="store_true", help="print a JSON list, one object per image")
    c.add_argument(
        "--runtime",
        choices=["onnx", "torch", "both"],
        help="which provisioned runtime answers (default: the owner's first); both: side by side",
    )
    c.add_argument(
        "--model-sha256", metavar="HEX", help="refuse to use any model but this one (see GET /v1/model)"
    )
    _collateral_options(c)
    c.set_defaults(func=_classify)
    return p


def _client(args: argparse.Namespace, constraint: str | None) -> Any:
    from enclave_infer.client.sdk import Client

    collateral = _read(args.collateral, "collateral") if args.collateral else None
    pinned = getattr(args, "model_sha256", None)
    return Client(args.url, constraint, collateral=collateral, pccs_url=args.pccs, model_sha256=pinned)


def _collateral_options(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--collateral", type=Path, help="DCAP collateral, dcap-qvl's QuoteCollateralV3 JSON")
    group.add_argument("--pccs", metavar="URL", help="fetch DCAP collateral from this PCCS or Intel PCS URL")


def _config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--owner-public-key", type=Path, help="the model owner's key (owner.key.pub)")
    p.add_argument("--config", type=Path, help="enclave.toml overriding the defaults")


def _load_config(args: argparse.Namespace) -> EnclaveConfig:
    owner = load_public_key_file(args.owner_public_key) if args.owner_public_key else None
    return EnclaveConfig.load(args.config, owner_public_key=owner)


# -- commands ------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from enclave_infer.host.server import run
    from enclave_infer.protocol.framing import parse_address

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be 1..65535, got {args.port}")
    external = None
    if args.enclave:
        try:
            external = parse_address(args.enclave)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    run(
        _load_config(args),
        args.data_dir,
        host=args.host,
        port=args.port,
        platform=args.platform,
        external=external,
    )
    return 0


def _attest(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    with _client(args, args.constraint) as client:
        attestation = client.attest() if args.constraint else client.inspect()
    print(attestation.summary(now=datetime.now(UTC)))
    if args.constraint:
        print(f"Constraint holds: {args.constraint}")
    return 0


def _verify_evidence(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from enclave_infer.attestation import constraints
    from enclave_infer.attestation.dcap import verify_quote
    from enclave_infer.client.sdk import fetch_collateral

    constraint = constraints.parse(args.constraint) if args.constraint else None
    quote = _read(args.quote, "quote")
    if args.collateral:
        collateral = _read(args.collateral, "collateral")
    elif args.pccs:
        collateral = fetch_collateral(args.pccs, quote)
    else:
        raise UsageError("give --collateral FILE or --pccs URL")
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
    try:
        verdict = verify_quote(quote, collateral, now=now)
    except EnclaveInferError as exc:
        print(json.dumps({"verified": False, "error": str(exc)}, indent=2))
        raise
    doc: dict[str, Any] = {"verified": True, **verdict.to_json()}
    failure = None
    if constraint is not None:
        try:
            constraint.check(verdict.report, now=now)
            doc["constraint"] = {"given": args.constraint, "holds": True}
        except EnclaveInferError as exc:
            failure = exc
            doc["constraint"] = {"given": args.constraint, "holds": False, "reason": str(exc)}
    print(json.dumps(doc, indent=2))
    if failure is not None:
        raise failure
    return 0


def _measure(args: argparse.Namespace) -> int:
    from enclave_infer.attestation.measurement import SIMULATION_SIGNER, code_hash

    config = _load_config(args)
    digest = code_hash(config).hex().upper()
    if args.json:
        print(
            json.dumps(
                {
                    "code_hash": digest,
                    "signer": SIMULATION_SIGNER.hex().upper(),
                    "owner": config.owner_key_id.upper(),
                    "product_id": config.product_id,
                }
            )
        )
    else:
        print(digest)
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from enclave_infer.client.owner import generate_owner_key

    if not args.path.name or args.path.is_dir():
        raise UsageError(f"keygen needs a file name, got {str(args.path)!r}")
    owner_id = generate_owner_key(args.path)
    print(f"wrote {args.path} (keep it private) and {args.path}.pub (give it to the operator)")
    print(f"OWNER:{owner_id.upper()}")
    return 0


def _provision(args: argparse.Namespace) -> int:
    from enclave_infer.client.owner import load_owner_key
    from enclave_infer.client.progress import Progress
    from enclave_infer.client.sdk import load_labels

    key = load_owner_key(args.owner_key)
    labels = load_labels(args.labels)
    preprocessing = {
        "resize": args.resize,
        "crop": args.crop,
        "mean": _floats3("--mean", args.mean),
        "std": _floats3("--std", args.std),
        "channel_order": "RGB",
        "layout": "NCHW",
    }
    if args.model_version is not None and args.model_version < 1:
        raise UsageError("--model-version must be a positive integer")
    with _client(args, args.constraint) as client:
        attestation = client.attest()  # before any conversion work or secret leaves this machine
        _warn_if_insecure(attestation)
        with _model_files(args.model, args.runtime, args.crop) as files:
            limit = attestation.config.limits.max_model_bytes
            size = sum(path.stat().st_size for path in files.values())
            if size > limit:
                raise UsageError(f"the model is {size} bytes; this enclave's max_model_bytes is {limit}")
            bar = Progress(size, label="uploading", enabled=False if args.quiet else None)
            try:
                meta = client.provision_file(
                    files,
                    labels,
                    key,
                    preprocessing=preprocessing,
                    version=args.model_version,
                    progress=bar.advance,
                )
            finally:
                bar.close()
    runtimes = ", ".join(meta.get("runtimes", ["onnx"]))
    print(
        f"provisioned model version {meta['version']} (sha256 {meta['sha256']}, {meta['labels']} labels,"
        f" runtimes: {runtimes})"
    )
    return 0


def _classify(args: argparse.Namespace) -> int:

    if args.top < 1:
        raise UsageError("--top must be at least 1")
    with _client(args, args.constraint) as client:
        attestation = client.attest()
        _warn_if_insecure(attestation)
        max_top = attestation.config.limits.max_top_k
        if args.top > max_top:
            raise UsageError(f"--top must be at most {max_top} for this enclave (its max_top_k)")
        if not args.images:
            return _console(client, args.top, as_json=args.json, runtime=args.runtime or "default")
        failures = 0
        outputs: list[dict[str, Any]] = []
        level = attestation.report.security_level.name
        for source in args.images:
            name = _display_name(source)
            try:
                result = client.classify(_load_image(source), top=args.top, runtime=args.runtime or "default")
            except EnclaveInferError as exc:
                if args.json:
                    outputs.append({"image": source, "error": str(exc)})
                else:
                    _error(f"{name}: {exc}")
                failures += 1
                continue
            if args.json:
                outputs.append({"image": source, "security_level": level, **result.to_json()})
            else:
                for text in _lines(result):
                    print(f"{name}: {text}")
        if args.json:
            print(json.dumps(outputs, indent=2))
    return 1 if failures else 0


def _console(client: Any, top: int, *, as_json: bool, runtime: str) -> int:
    """The seed's console: a prompt, one answer per image, empty line or EOF to quit."""
    while True:
        try:
            line = input(PROMPT).strip()
        except EOFError:
            print()
            return 0
        if not line:
            return 0
        try:
            result = client.classify(_load_image(line), top=top, runtime=runtime)
        except EnclaveInferError as exc:
            _error(str(exc))
            continue
        if as_json:
            print(json.dumps({"image": line, **result.to_json()}))
        else:
            for text in _lines(result):
                print(text)


def _lines(result: Any) -> list[str]:
    """One line per class; with both runtimes, each runtime's answer side by side."""
    if not result.by_runtime:
        return [str(p) for p in result.results]
    columns = list(result.by_runtime.items())
    rows = max(len(ps) for _, ps in columns)
    return ["  ".join(f"[{name}] {ps[i]}" for name, ps in columns if i < len(ps)) for i in range(rows)]


def _warn_if_insecure(attestation: Any) -> None:
    report = attestation.report
    if report.security_level.name == "INSECURE":
        print(f"enclave-infer: warning: the enclave is INSECURE: {report.level_reason}", file=sys.stderr)


# -- helpers -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _model_files(path: Path, runtime: str, input_size: int) -> Iterator[dict[str, Path]]:
    """The owner's model as the files the enclave serves: {"onnx": …, "torchscript": …}. An
    ``.onnx`` for ONNX Runtime alone is only checked; anything else is converted here, on the
    owner's machine, into a temporary folder (a pickle's code runs here, never in the enclave)."""
    if not path.exists():
        raise UsageError(f"model file {path} does not exist")
    if not path.is_file():
        raise UsageError(f"model file {path} is not a regular file")
    if runtime == "onnx" and path.suffix.lower() == ".onnx":
        from enclave_infer.client.convert import check_onnx

        try:
            check_onnx(path)  # a local one-line error beats an upload the enclave refuses
        except UsageError as exc:
            if "external data" not in str(exc):
                raise
        else:
            yield {"onnx": path}
            return
        # weights in external data files: fold them into one self-contained file below
    from enclave_infer.client.export import export_formats

    wanted = {"onnx", "torch"} if runtime == "both" else {runtime}
    with tempfile.TemporaryDirectory(prefix="enclave-infer-convert-") as tmp:
        made = export_formats(path, Path(tmp), wanted, input_size=input_size)
        yield {fmt: made[fmt] for fmt in ("onnx", "torchscript") if fmt in made}


def _floats3(option: str, text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3:
        raise UsageError(f"{option} takes three comma-separated numbers, got {text!r}")
    return values


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None


def _display_name(source: str) -> str:
    if source.startswith(("http://", "https://")):
        return Path(urlsplit(source).path).name or source
    return Path(source).name or source


def _load_image(source: str) -> bytes:
    if source.startswith(("http://", "https://")):
        return _fetch(source)
    scheme = urlsplit(source).scheme
    if len(scheme) > 1 and "://" in source:  # not a Windows drive letter
        raise UsageError(
            f"{source}: unsupported URL scheme {scheme}:// (use a file path, http:// or https://)"
        )
    path = Path(source).expanduser()
    if not source or not path.exists():
        raise UsageError(f"{source or repr(source)}: no such file")
    if not path.is_file():
        raise UsageError(f"{source}: not a regular file")
    data = _read(path, "image")
    if not data:
        raise UsageError(f"{source}: the file is empty")
    return data


def _fetch(url: str) -> bytes:
    """Fetch an image on the client's side: the host never sees the URL."""
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=30.0) as reply:
            if reply.status_code != 200:
                raise UsageError(f"{url}: answered {reply.status_code}")
            return b"".join(_capped(reply.iter_bytes(), url))
    except httpx.HTTPError as exc:
        raise UsageError(f"cannot fetch {url}: {type(exc).__name__}") from None


def _capped(chunks: Iterator[bytes], url: str) -> Iterator[bytes]:
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > MAX_FETCH_BYTES:
            raise UsageError(f"{url}: image larger than {MAX_FETCH_BYTES} bytes")
        yield chunk


if __name__ == "__main__":
    sys.exit(main())
