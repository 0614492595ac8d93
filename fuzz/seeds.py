"""Seed corpora and dictionaries for the fuzz targets, made by code (no file from elsewhere).

``python fuzz/seeds.py OUT`` writes ``OUT/corpus/<target>/seed-*`` and ``OUT/dict/<target>.dict``.
A target reads its mode from the input's last byte (atheris' FuzzedDataProvider takes integers from
the end and bytes from the front), so a seed for a raw-bytes mode is ``message || mode``; the other
modes get a few pseudo-random inputs of various lengths, from a fixed seed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import struct
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

from enclave_infer.attestation import eventlog, simulation
from enclave_infer.attestation.evidence import Evidence
from enclave_infer.config import EnclaveConfig
from enclave_infer.protocol import bhttp, chunked_ohttp, framing, ohttp
from enclave_infer.protocol.api import Classification, Prediction, Preprocessing, Problem
from enclave_infer.protocol.framing import FrameType
from enclave_infer.protocol.manifest import MANIFEST_TYPE, sf_binary

__all__ = ["TARGETS", "write"]

TARGETS = ("frames", "bhttp", "ohttp", "chunked_ohttp", "evidence", "manifest", "api", "labels",
           "image", "snp", "eventlog")  # fmt: skip
KEY = ohttp.GatewayKey(1, bytes(range(1, 33)))  # the targets' fixed gateway key
MODES = {"frames": 3, "bhttp": 5, "ohttp": 6, "chunked_ohttp": 4, "evidence": 6, "manifest": 4, "api": 4,
         "labels": 3, "snp": 5, "eventlog": 3}  # fmt: skip


def _request(path: str = "/v1/classify?top=3", content: bytes = b"\x89PNG") -> bhttp.Request:
    return bhttp.Request(
        "POST", "https", "enclave", path, (("date", "Sun, 06 Nov 1994 08:49:37 GMT"),), content
    )


def _images() -> list[bytes]:
    out = []
    for fmt, mode, size in [("PNG", "RGB", (3, 2)), ("PNG", "RGBA", (2, 2)), ("PNG", "P", (4, 1)),
                            ("PNG", "I;16", (2, 2)), ("JPEG", "RGB", (8, 8)), ("JPEG", "L", (3, 5)),
                            ("JPEG", "CMYK", (2, 2)), ("GIF", "P", (2, 3)), ("BMP", "RGB", (3, 3)),
                            ("BMP", "1", (9, 2)), ("TIFF", "RGB", (2, 2)), ("TIFF", "I;16", (2, 1)),
                            ("WEBP", "RGB", (4, 4)), ("WEBP", "RGBA", (2, 2))]:  # fmt: skip
        buffer = io.BytesIO()
        image = Image.new(mode, size)
        image.putdata([(i * 37) % 256 if image.getbands() == ("L",) or len(image.getbands()) == 1
                       else tuple((i * 37 + b * 11) % 256 for b in range(len(image.getbands())))
                       for i in range(size[0] * size[1])])  # fmt: skip
        if fmt == "JPEG":
            exif = Image.Exif()
            exif[0x0112] = 6  # orientation: rotate, as phones write it
            image.save(buffer, format=fmt, exif=exif.tobytes())
        elif fmt == "GIF":
            frames = [image, Image.new("P", size, 1)]
            frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:])
        elif fmt == "TIFF":
            image.save(buffer, format=fmt, compression="tiff_deflate" if mode == "RGB" else None)
        else:
            image.save(buffer, format=fmt)
        out.append(buffer.getvalue())
    return out


def _manifest() -> bytes:
    doc = {
        "type": MANIFEST_TYPE,
        "files": [{"format": "onnx", "sha256": "ab" * 32, "size": 10}],
        "labels": ["cat", "dog"],
        "preprocessing": Preprocessing().to_json(),
        "version": 1,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _evidence() -> tuple[bytes, bytes, bytes]:
    config = EnclaveConfig(owner_public_key=bytes(range(32)))
    sim = simulation.encode(
        code_hash=bytes(32), signer=bytes(32), product_id=1, security_version=1, debug=False,
        report_data=bytes(64), issued_at=datetime(2026, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    return Evidence("simulation", sim, config.canonical()).encode(), sim, config.canonical()


def _snp() -> tuple[bytes, bytes]:
    """An (unsigned) SEV-SNP report with a valid structure, and a PEM bundle of three certificates."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    report = bytearray(0x4A0)
    struct.pack_into("<IIQ", report, 0, 2, 0, 0x30000)
    struct.pack_into("<I", report, 0x34, 1)
    key = ec.derive_private_key(12345, ec.SECP384R1())
    pems = b""
    for cn in ("SEV-VCEK", "SEV-Milan", "ARK-Milan"):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(datetime(2025, 1, 1)).not_valid_after(datetime(2030, 1, 1))
            .sign(key, hashes.SHA384())
        )  # fmt: skip
        pems += cert.public_bytes(Encoding.PEM)
    return bytes(report), pems


def _eventlog() -> bytes:
    """A small crypto-agile log in two banks, as the UKI's boot records PCR 4, 9 and 11 events."""
    algs, kind = (eventlog.Alg.SHA256, eventlog.Alg.SHA384), eventlog.EventType
    boot = [
        (4, kind.EV_EFI_ACTION, b"Calling EFI Application from Boot Option"),
        (4, kind.EV_SEPARATOR, bytes(4)),
        (11, kind.EV_IPL, ".linux\0".encode("utf-16-le")),
        (9, kind.EV_EVENT_TAG, struct.pack("<II", 0x8F3B22EC, 13) + b"Linux initrd\0"),
    ]
    events = tuple(
        eventlog.Event(n, register, event_type, {a: a.hash(data) for a in algs}, data)
        for n, (register, event_type, data) in enumerate(boot, 1)
    )
    return eventlog.encode(eventlog.EventLog(algs, events))


def _raw_seeds(target: str) -> Iterable[bytes]:
    """``message || mode`` for the targets' raw-bytes modes."""
    req = bhttp.encode_request(_request())
    if target == "frames":
        sent, _ = ohttp.encapsulate_request(KEY.config, req)
        yield (
            framing.encode_frame(FrameType.GET_KEYS)
            + framing.encode_frame(FrameType.OHTTP_REQUEST, sent)
            + b"\0"
        )
        yield framing.encode_frame(FrameType.GET_EVIDENCE, bytes(32)) + b"\0"
        yield framing.encode_problem(Problem.TOO_LARGE.details("x")) + b"\0"
    elif target == "bhttp":
        yield req + b"\0"
        yield bhttp.encode_response(Problem.NO_MODEL.details("none").response()) + b"\1"
        head = bhttp.encode_request_head(_request(content=b""))
        yield head + bhttp.encode_content_chunk(b"abc") + bhttp.encode_request_end() + b"\xff\xff\2"
    elif target == "ohttp":
        yield ohttp.encapsulate_request(KEY.config, req)[0] + b"\0"
        yield ohttp.encode_key_configs([KEY.config]) + b"\1"
        yield KEY.config.encode() + b"\2"
    elif target == "chunked_ohttp":
        encoder = chunked_ohttp.ChunkedRequestEncoder(KEY.config)
        yield encoder.header() + encoder.chunk(req) + encoder.final(b"") + b"\xff\xff\0"
    elif target == "evidence":
        document, sim, config = _evidence()
        yield document + b"\0"
        yield document + bytes(range(16)) + bytes(range(16)) + b"\x10\x10\x20\1"
        yield sim + b"\3"
        yield config + b"\4"
    elif target == "manifest":
        yield _manifest() + b"\0"
        yield sf_binary(_manifest()).encode() + b"\2"
    elif target == "api":
        yield framing.encode_problem(Problem.DATE.details("x", limit=3))[5:] + b"\0"
        yield Problem.OVERLOADED.details("busy").encode() + b"\2"
        predictions = (Prediction("cat", 0, 0.5),)
        yield json.dumps(Classification("ab" * 32, 1, predictions).to_json()).encode() + b"\3"
    elif target == "labels":
        yield b"cat\ndog\r\ntiger cat\n" + b"\2"
        yield "\ufeffa\nb".encode() + b"\2"
    elif target == "image":
        yield from _images()
    elif target == "snp":
        report, pems = _snp()
        yield report + b"\0"
        yield pems + b"\1"
        container = json.dumps({"report": base64.b64encode(report).decode(), "certs": None}).encode()
        yield container + b"\0"
    elif target == "eventlog":
        yield _eventlog() + b"\0"
        yield _eventlog() + b"\xff" * 32 + b"\0"


def write(out: Path) -> None:
    rng = random.Random(20260101)
    for target in TARGETS:
        folder = out / "corpus" / target
        folder.mkdir(parents=True, exist_ok=True)
        seeds = list(_raw_seeds(target))
        for mode in range(MODES.get(target, 0)):  # structured modes: any bytes will do, with the mode
            for length in (8, 40, 200):
                seeds.append(rng.randbytes(length) + bytes([mode]))
        for seed in seeds:
            (folder / f"seed-{hashlib.sha1(seed).hexdigest()[:16]}").write_bytes(seed)
    dictionary = [b'"type"', b'"version"', b'"labels"', b'"files"', b'"preprocessing"', b'"mean"', b'"std"',
                  b'"resize"', b'"crop"', b'"channels"', b'"evidence"', b'"config"', b'"collateral"',
                  b'"tee"', b'"simulation"', b'"report"', b'"certs"', b'"status"', b'"detail"', b'"title"',
                  b'"results"', b'"model"', b'"runtimes"', b"null", b"true", b"1e999", b"-0",
                  b"9" * 40, b"NaN", b"Infinity", b'"\\ud800"', b'"\\u0000"', b"\xc2\xb2", b"[[[[[[[[",
                  b"{", b"}", b"[", b"]", b":", b","]  # fmt: skip
    (out / "dict").mkdir(parents=True, exist_ok=True)
    text = "".join('"' + "".join(f"\\x{b:02x}" for b in token) + '"\n' for token in dictionary)
    for target in ("manifest", "evidence", "api", "snp"):
        (out / "dict" / f"{target}.dict").write_text(text)


if __name__ == "__main__":
    write(Path(sys.argv[1]))
