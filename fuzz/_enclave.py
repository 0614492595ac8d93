"""A simulation enclave for the fuzz targets, built as ``enclave/__main__.py`` builds one, with a tiny
real model provisioned; and inner requests (what a client encapsulates) made from fuzz input.

The enclave keeps its sealed storage in a temporary folder (the runner points TMPDIR into build/).
Its owner key is fixed, so that a target can sign manifests the enclave verifies.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from email.utils import formatdate
from pathlib import Path

import atheris
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from _harness import WEIRD_STRINGS, dumps, mutate_doc
from _tiny import LABELS, image, tiny_model

with atheris.instrument_imports(include=["enclave_infer"]):
    from enclave_infer.attestation.evidence import Verifier
    from enclave_infer.config import EnclaveConfig, Limits
    from enclave_infer.enclave.platform import SimulationPlatform
    from enclave_infer.enclave.server import Enclave
    from enclave_infer.protocol import bhttp, chunked_ohttp
    from enclave_infer.protocol.api import INNER_AUTHORITY, INNER_SCHEME, Preprocessing
    from enclave_infer.protocol.framing import FrameType, encode_frame
    from enclave_infer.protocol.manifest import MANIFEST_TYPE, SIGNATURE_CONTEXT, sf_binary

__all__ = ["LABELS", "OWNER", "build_enclave", "chunked_frames", "inner_request", "tiny_model"]

OWNER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PRE = Preprocessing(resize=8, crop=8)
MODEL = tiny_model()
IMAGES = [image(), image("JPEG"), image("GIF", (1, 1)), image("BMP", (70, 70))]


def manifest_document(version: int, model: bytes = MODEL) -> dict[str, object]:
    return {
        "type": MANIFEST_TYPE,
        "files": [{"format": "onnx", "sha256": hashlib.sha256(model).hexdigest(), "size": len(model)}],
        "labels": list(LABELS),
        "preprocessing": PRE.to_json(),
        "version": version,
    }


def signed_headers(document: bytes) -> tuple[tuple[str, str], tuple[str, str]]:
    signature = OWNER.sign(SIGNATURE_CONTEXT + document)
    return ("manifest", sf_binary(document)), ("manifest-signature", sf_binary(signature))


def now_date() -> tuple[str, str]:
    return ("date", formatdate(usegmt=True))


def build_enclave() -> Enclave:
    """The simulation enclave of ``enclave/__main__.py``, small limits, the tiny model as version 1."""
    public = OWNER.public_key().public_bytes_raw()
    limits = Limits(max_image_bytes=64 * 1024, max_pixels=4096, max_model_bytes=64 * 1024)
    config = EnclaveConfig(owner_public_key=public, limits=limits)
    storage = Path(tempfile.mkdtemp(prefix="fuzz-enclave-"))
    enclave = Enclave(config, SimulationPlatform(config), storage, verifier=Verifier.production())
    document = dumps_exact(manifest_document(1))
    request = bhttp.Request(
        "PUT", INNER_SCHEME, INNER_AUTHORITY, "/v1/model", (*signed_headers(document), now_date()), MODEL
    )
    encoder = chunked_ohttp.ChunkedRequestEncoder(enclave.key.config)
    exchange = enclave.gateway.begin_chunked()  # an upload streams, as a client sends it
    assert exchange.feed(encoder.header() + encoder.chunk(bhttp.encode_request_head(request))) is None
    assert exchange.feed(encoder.chunk(bhttp.encode_content_chunk(MODEL))) is None
    exchange.feed(encoder.final(bhttp.encode_request_end()))
    decoder = encoder.response_decoder()
    response = bhttp.decode_response(b"".join(decoder.feed(exchange.finish())) + decoder.finish())
    assert response.status == 201, response
    return enclave


def dumps_exact(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


PATHS = ["/v1/classify", "/v1/model", "/", "/v1/classify/", "/v1/Model", "/v1/classify#x", "//x"]
QUERY_KEYS = ["top", "runtime", "x"]
QUERY_VALUES = ["1", "2", "3", "20", "21", "0", "-1", "", "onnx", "torch", "both", "default",
                "%C2%B2", "%00", "1" * 5000, "9" * 30]  # fmt: skip
METHODS = ["POST", "GET", "PUT", "DELETE", "HEAD", "OPTIONS"]


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode().replace("?", "%3F")


def inner_request(fdp: atheris.FuzzedDataProvider, enclave: Enclave) -> bhttp.Request:
    """An inner request as a client (honest or not) could encapsulate it."""
    method = fdp.PickValueInList(METHODS)
    path = fdp.PickValueInList(PATHS)
    pairs = []
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        key = fdp.PickValueInList(QUERY_KEYS)
        value = fdp.PickValueInList(QUERY_VALUES) if fdp.ConsumeBool() else _ascii(fdp.ConsumeUnicode(6))
        pairs.append(f"{key}={value}")
    if pairs:
        path += "?" + "&".join(pairs)
    headers: list[tuple[str, str]] = []
    date = fdp.ConsumeIntInRange(0, 3)
    if date < 2:
        headers.append(now_date())
    elif date == 2:
        headers.append(("date", fdp.PickValueInList(list(WEIRD_STRINGS)).strip() or "x"))
    content_kind = fdp.ConsumeIntInRange(0, 3)
    content = (
        fdp.PickValueInList(IMAGES)
        if content_kind == 0
        else MODEL
        if content_kind == 1
        else fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256))
    )
    if fdp.ConsumeBool():  # a model upload's headers: a manifest signed by the owner, edited first
        current = enclave.store.current
        version = current.manifest.version + 1 if current is not None else 1
        doc = manifest_document(version, content if content_kind != 0 else MODEL)
        if fdp.ConsumeBool():
            doc = mutate_doc(fdp, doc, ("version", "labels", "files", "preprocessing", "mean", "crop"))
        document = dumps(fdp, doc) if fdp.ConsumeBool() else dumps_exact(doc)
        manifest, signature = signed_headers(document)
        if fdp.ConsumeIntInRange(0, 7) == 0:
            signature = ("manifest-signature", fdp.PickValueInList([":AAAA:", "", ":" + "A" * 88 + ":", "x"]))
        headers += [manifest, signature]
    if fdp.ConsumeBool():
        current = enclave.store.current
        pin = current.manifest.model_sha256 if current is not None and fdp.ConsumeBool() else "ab" * 32
        headers.append(("model-sha256", pin if fdp.ConsumeBool() else pin.upper()))
    for _ in range(fdp.ConsumeIntInRange(0, 1)):
        headers.append((fdp.PickValueInList(["x-a", "content-type", "date"]), _ascii(fdp.ConsumeUnicode(8))))
    return bhttp.Request(method, INNER_SCHEME, INNER_AUTHORITY, path, tuple(headers), content)


def chunked_frames(fdp: atheris.FuzzedDataProvider, enclave: Enclave, request: bhttp.Request) -> list[bytes]:
    """``request`` sent as a client sends an upload: chunked OHTTP in BEGIN, DATA*, END frames."""
    encoder = chunked_ohttp.ChunkedRequestEncoder(enclave.key.config)
    body = [encoder.header(), encoder.chunk(bhttp.encode_request_head(request))]
    content, pos = request.content, 0
    while pos < len(content):
        size = fdp.ConsumeIntInRange(1, max(1, len(content) - pos))
        body.append(encoder.chunk(bhttp.encode_content_chunk(content[pos : pos + size])))
        pos += size
    body.append(encoder.final(bhttp.encode_request_end()))
    stream = b"".join(body)
    frames, pos = [], 0
    while pos < len(stream):  # cut the ciphertext stream anywhere into frames
        size = fdp.ConsumeIntInRange(1, max(1, len(stream) - pos)) if fdp.ConsumeBool() else len(stream)
        frames.append(stream[pos : pos + size])
        pos += size
    kinds = [FrameType.CHUNKED_BEGIN] + [FrameType.CHUNKED_DATA] * (len(frames) - 1)
    return [encode_frame(kind, piece) for kind, piece in zip(kinds, frames, strict=True)] + [
        encode_frame(FrameType.CHUNKED_END)
    ]
