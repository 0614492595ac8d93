"""The enclave's inner API: what a client and the enclave say to each other inside Oblivious HTTP.

Pure data and parsing, imported by both sides of the boundary, so that every wire object has one
definition: the enclave builds a :class:`Classification` or :class:`ModelInfo` with ``to_json`` and
the SDK reads it back with ``from_json`` from the same class.

======================  ==========================================================================
``POST /v1/classify``   body: image bytes; query ``top=K``, ``runtime=`` a :class:`Runtime`;
                        optional header ``model-sha256`` (a pin) → :class:`Classification`
``PUT /v1/model``       headers ``manifest``, ``manifest-signature`` (RFC 8941 byte sequences),
                        body: the model files → 201, :class:`ProvisionResult`
``GET /v1/model``       → :class:`ModelInfo`, or the ``no-model`` problem
======================  ==========================================================================

Every refusal, inside the encapsulation and outside it (the host's own), is an RFC 9457 problem
document (``application/problem+json``) whose ``type`` is one of :class:`Problem`: clients act on
the type, never on the text. Two types are RFC 9458's own: ``date`` (§6.5.2: the request's date is
missing or outside the enclave's window; the answer carries the enclave's ``date`` header so that
the client can correct its clock and retry once) and ``ohttp-key`` (§5.3: the request was not
encrypted to the key configuration the enclave holds; the client fetches it again).
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from enclave_infer.errors import ProtocolError, UsageError
from enclave_infer.protocol import bhttp
from enclave_infer.protocol.manifest import ModelFile, ModelFormat

__all__ = [
    "INNER_AUTHORITY",
    "PROBLEM_MEDIA_TYPE",
    "Classification",
    "EnclaveStatus",
    "Header",
    "ModelInfo",
    "Prediction",
    "Preprocessing",
    "Problem",
    "ProblemDetails",
    "ProvisionResult",
    "Route",
    "Runtime",
]

# The inner request's authority: the enclave is its own target resource (RFC 9458 §2).
INNER_AUTHORITY: Final = "enclave"
INNER_SCHEME: Final = "https"
PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
JSON_MEDIA_TYPE: Final = "application/json"
# An encapsulated image request is an image plus at most this much: its binary HTTP head and
# padding, the OHTTP header, encapsulated key and tag. The host's cap on a whole request and the
# enclave's on an image frame are an image's limit plus this.
REQUEST_OVERHEAD_BYTES: Final = 64 * 1024
# A problem document is a few hundred bytes; a peer's longer one is refused, its detail shortened.
MAX_PROBLEM_BYTES: Final = 16 * 1024
MAX_DETAIL_CHARS: Final = 500


class Route(enum.StrEnum):
    CLASSIFY = "/v1/classify"
    MODEL = "/v1/model"


class Header(enum.StrEnum):
    """Inner request and response header fields of the API (lower case, as binary HTTP carries them)."""

    MODEL_PIN = "model-sha256"
    MANIFEST = "manifest"
    MANIFEST_SIGNATURE = "manifest-signature"
    DATE = "date"


class Runtime(enum.StrEnum):
    """Which provisioned runtime answers a classification."""

    DEFAULT = "default"  # the first the owner provisioned
    ONNX = "onnx"  # ONNX Runtime
    TORCH = "torch"  # PyTorch, on a TorchScript archive
    BOTH = "both"  # every provisioned runtime, side by side (the Mystikos sample's behaviour)

    @classmethod
    def parse(cls, text: str) -> Runtime:
        try:
            return cls(text)
        except ValueError:
            raise UsageError(f"runtime must be one of {', '.join(cls)}, got {text!r}") from None


# -- Problem types (RFC 9457) ------------------------------------------------------------------------

_IANA: Final = "https://iana.org/assignments/http-problem-types#"
_OURS: Final = "urn:enclave-infer:problem:"


class Problem(enum.Enum):
    """Every reason the enclave or the host refuses a request: URI, HTTP status, title.

    The URIs are stable; the README lists them. RFC 9458's two are IANA's; the rest are URNs of this
    project (RFC 9457 §3.1.1 allows any URI; these are not meant to be dereferenced).
    """

    # RFC 9458
    DATE = (_IANA + "date", 400, "Date not acceptable")
    OHTTP_KEY = (_IANA + "ohttp-key", 400, "Oblivious HTTP key configuration not acceptable")
    # The request itself
    MALFORMED_REQUEST = (_OURS + "malformed-request", 400, "Malformed request")
    INVALID_PARAMETER = (_OURS + "invalid-parameter", 400, "Invalid parameter")
    NOT_FOUND = (_OURS + "not-found", 404, "No such resource")
    METHOD_NOT_ALLOWED = (_OURS + "method-not-allowed", 405, "Method not allowed")
    UNSUPPORTED_MEDIA_TYPE = (_OURS + "unsupported-media-type", 415, "Unsupported media type")
    TOO_LARGE = (_OURS + "too-large", 413, "Content too large")
    HEADERS_TOO_LARGE = (_OURS + "headers-too-large", 431, "Request header fields too large")
    REQUEST_TIMEOUT = (_OURS + "request-timeout", 408, "Request timeout")
    REPLAYED = (_OURS + "replayed-request", 400, "Replayed request")
    # Classification
    INVALID_IMAGE = (_OURS + "invalid-image", 400, "Not an acceptable image")
    NO_MODEL = (_OURS + "no-model", 404, "No model provisioned")
    MODEL_PIN_MISMATCH = (_OURS + "model-pin-mismatch", 409, "A different model is served")
    RUNTIME_NOT_PROVISIONED = (_OURS + "runtime-not-provisioned", 400, "Runtime not provisioned")
    INFERENCE_FAILED = (_OURS + "inference-failed", 500, "Inference failed")
    # Provisioning
    INVALID_SIGNATURE = (_OURS + "invalid-signature", 403, "Manifest signature does not verify")
    VERSION_NOT_NEWER = (_OURS + "version-not-newer", 409, "Model version not newer")
    INVALID_MANIFEST = (_OURS + "invalid-manifest", 400, "Invalid manifest")
    MODEL_INTEGRITY = (_OURS + "model-integrity", 400, "Model bytes do not match the manifest")
    INVALID_MODEL = (_OURS + "invalid-model", 400, "Model refused by the runtime")
    STORAGE_FULL = (_OURS + "storage-full", 507, "No space left for sealed storage")
    STORAGE_FAILED = (_OURS + "storage-failed", 500, "Sealed storage failed")
    # The service
    OVERLOADED = (_OURS + "overloaded", 503, "Too busy")
    ENCLAVE_UNAVAILABLE = (_OURS + "enclave-unavailable", 503, "Enclave unavailable")
    COLLATERAL_UNAVAILABLE = (_OURS + "collateral-unavailable", 503, "Attestation collateral unavailable")
    BAD_GATEWAY = (_OURS + "bad-gateway", 502, "Unexpected answer from the enclave")
    INTERNAL = (_OURS + "internal-error", 500, "Internal enclave error")
    # between the enclaves of a cluster only (key release): never an answer to a client
    KEY_RELEASE_REFUSED = (_OURS + "key-release-refused", 403, "Key release refused")

    def __init__(self, uri: str, status: int, title: str) -> None:
        self.uri, self.status, self.title = uri, status, title

    @classmethod
    def from_uri(cls, uri: str) -> Problem | None:
        return _BY_URI.get(uri)

    @property
    def slug(self) -> str:
        """The type's short name, its URI's last segment (``overloaded``, ``ohttp-key``): for logs
        and metric labels."""
        return slug(self.uri)

    def details(self, detail: str, **extensions: str | int) -> ProblemDetails:
        return ProblemDetails(self.uri, self.status, self.title, detail, dict(extensions))


_BY_URI: Final = {p.uri: p for p in Problem}


def slug(uri: str) -> str:
    """A problem type URI's last segment, for a type this version may not know (a peer's)."""
    return uri.rpartition(":")[2].rpartition("#")[2]


@dataclass(frozen=True)
class ProblemDetails:
    """An RFC 9457 problem document: ``type``, ``status``, ``title``, ``detail`` and extensions."""

    type: str
    status: int
    title: str
    detail: str
    extensions: Mapping[str, str | int] = field(default_factory=dict)

    @property
    def problem(self) -> Problem | None:
        """The known problem type, or None for one this version does not know."""
        return Problem.from_uri(self.type)

    def encode(self) -> bytes:
        doc: dict[str, Any] = {**self.extensions}
        doc.update(type=self.type, status=self.status, title=self.title, detail=self.detail)
        return json.dumps(doc).encode()

    @classmethod
    def decode(cls, data: bytes, *, status: int | None = None) -> ProblemDetails:
        """Parse a peer's problem document; ``status`` is the HTTP status it came with, which wins
        over the document's own (RFC 9457 §3.1.2). Text is shortened and made printable."""
        if len(data) > MAX_PROBLEM_BYTES:
            raise ProtocolError("problem document too large")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ProtocolError("problem document is not JSON") from None
        if not isinstance(doc, dict):
            raise ProtocolError("problem document is not a JSON object")
        kind = doc.get("type", "about:blank")  # RFC 9457 §3.1.1: absent means about:blank
        if not isinstance(kind, str):
            raise ProtocolError("problem type is not a string")
        if status is None:
            status = doc.get("status")
            if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
                raise ProtocolError("problem document without an error status")
        extensions = {
            str(k): v
            for k, v in doc.items()
            if k not in ("type", "status", "title", "detail") and isinstance(v, str | int)
        }
        return cls(
            _printable(kind), status, _printable(doc.get("title")), _printable(doc.get("detail")), extensions
        )

    def response(self, *headers: tuple[str, str]) -> bhttp.Response:
        """This problem as an inner (binary HTTP) response."""
        return bhttp.Response(
            status=self.status,
            headers=(("content-type", PROBLEM_MEDIA_TYPE), *headers),
            content=self.encode(),
        )

    def __str__(self) -> str:
        return self.detail or self.title or self.type


def _printable(value: object) -> str:
    if not isinstance(value, str):
        return ""
    return "".join(c for c in value[:MAX_DETAIL_CHARS] if c.isprintable())


# -- Results ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    probability: float

    def __str__(self) -> str:
        return f"{self.label} ({self.probability * 100:.1f}%)"

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "index": self.index, "probability": self.probability}

    @classmethod
    def from_json(cls, doc: Any) -> Prediction:
        return cls(_str(doc, "label"), _int(doc, "index"), _float(doc, "probability"))


@dataclass(frozen=True)
class Classification:
    """An answer to ``POST /v1/classify``. ``results`` are the default (or only) runtime's;
    with :attr:`Runtime.BOTH`, ``by_runtime`` holds every runtime's, side by side. ``receipt``: the
    signed receipt document for this answer (``attestation/receipt.py``), when one was asked for
    and verified; not part of the answer's JSON."""

    model_sha256: str
    model_version: int
    results: tuple[Prediction, ...]
    by_runtime: Mapping[str, tuple[Prediction, ...]] = field(default_factory=dict)
    receipt: bytes | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "model": {"sha256": self.model_sha256, "version": self.model_version},
            "results": [p.to_json() for p in self.results],
        }
        if self.by_runtime:
            doc["runtimes"] = {name: [p.to_json() for p in ps] for name, ps in self.by_runtime.items()}
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> Classification:
        def predictions(items: Any) -> tuple[Prediction, ...]:
            if not isinstance(items, list):
                raise ProtocolError("classification: results must be a list")
            return tuple(Prediction.from_json(item) for item in items)

        model = _dict(doc, "model")
        runtimes = doc.get("runtimes", {}) if isinstance(doc, dict) else None
        if not isinstance(runtimes, dict):
            raise ProtocolError("classification: runtimes must be an object")
        return cls(
            model_sha256=_str(model, "sha256"),
            model_version=_int(model, "version"),
            results=predictions(doc.get("results", None)),
            by_runtime={str(name): predictions(items) for name, items in runtimes.items()},
        )


@dataclass(frozen=True)
class ModelInfo:
    """Public metadata of the served model: an answer to ``GET /v1/model``. Nothing in it is secret:
    hashes, sizes, the label count (not the labels), the preprocessing and the version."""

    sha256: str  # the model's identity: SHA-256 of the signed manifest (what clients pin)
    version: int
    files: tuple[ModelFile, ...]
    runtimes: tuple[str, ...]  # "onnx", "torch": the first answers by default
    labels: int
    preprocessing: Preprocessing
    provisioned_at: datetime

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(f.format for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "version": self.version,
            "files": [{"format": f.format, "sha256": f.sha256, "size": f.size} for f in self.files],
            "size": self.size,
            "formats": list(self.formats),
            "runtimes": list(self.runtimes),
            "labels": self.labels,
            "preprocessing": self.preprocessing.to_json(),
            "provisioned_at": self.provisioned_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    @classmethod
    def from_json(cls, doc: Any) -> ModelInfo:
        files = doc.get("files") if isinstance(doc, dict) else None
        runtimes = doc.get("runtimes") if isinstance(doc, dict) else None
        if not isinstance(files, list) or not isinstance(runtimes, list):
            raise ProtocolError("model metadata: files and runtimes must be lists")
        try:
            parsed_files = tuple(
                ModelFile(ModelFormat.parse(_str(f, "format")), _str(f, "sha256"), _int(f, "size"))
                for f in files
            )
            preprocessing = Preprocessing.from_json(_dict(doc, "preprocessing"))
            when = datetime.strptime(_str(doc, "provisioned_at"), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except (UsageError, ValueError) as exc:
            raise ProtocolError(f"model metadata is malformed: {exc}") from None
        return cls(
            sha256=_str(doc, "sha256"),
            version=_int(doc, "version"),
            files=parsed_files,
            runtimes=tuple(str(r) for r in runtimes),
            labels=_int(doc, "labels"),
            preprocessing=preprocessing,
            provisioned_at=when,
        )


@dataclass(frozen=True)
class ProvisionResult:
    """An answer to ``PUT /v1/model``: the model now served, and the version it replaced."""

    model: ModelInfo
    replaced_version: int | None

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model.to_json(), "replaced_version": self.replaced_version}

    @classmethod
    def from_json(cls, doc: Any) -> ProvisionResult:
        replaced = doc.get("replaced_version") if isinstance(doc, dict) else None
        if replaced is not None and (not isinstance(replaced, int) or isinstance(replaced, bool)):
            raise ProtocolError("provision result: replaced_version must be an integer or null")
        return cls(ModelInfo.from_json(_dict(doc, "model")), replaced)


@dataclass(frozen=True)
class EnclaveStatus:
    """What the enclave tells its host about itself (the ``GET_STATUS`` frame), for health checks
    and metrics. Public by construction: the served model's identity and version (which ``GET
    /v1/model`` tells anyone), and counts of requests and batches, which the host sees anyway."""

    model_sha256: str | None
    model_version: int | None
    classifications: int = 0
    batches: int = 0
    batch_sizes: Mapping[int, int] = field(default_factory=dict)  # batch size -> how many batches
    # A cluster member (:mod:`enclave_infer.cluster`): its cluster's public id, and the lowest model
    # version it will serve; None for an enclave on its own, or one that has not joined yet.
    cluster_id: str | None = None
    version_floor: int | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "model": None
            if self.model_sha256 is None
            else {"sha256": self.model_sha256, "version": self.model_version},
            "classifications": self.classifications,
            "batches": self.batches,
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
        }
        if self.cluster_id is not None:
            doc["cluster"] = {"id": self.cluster_id, "version_floor": self.version_floor}
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> EnclaveStatus:
        model = doc.get("model") if isinstance(doc, dict) else None
        sizes = doc.get("batch_sizes", {}) if isinstance(doc, dict) else None
        cluster = doc.get("cluster") if isinstance(doc, dict) else None
        if not isinstance(sizes, dict) or not all(
            isinstance(k, str) and k.isdigit() and isinstance(v, int) for k, v in sizes.items()
        ):
            raise ProtocolError("enclave status: batch_sizes must map sizes to counts")
        return cls(
            model_sha256=None if model is None else _str(model, "sha256"),
            model_version=None if model is None else _int(model, "version"),
            classifications=_int(doc, "classifications"),
            batches=_int(doc, "batches"),
            batch_sizes={int(k): v for k, v in sizes.items()},
            cluster_id=None if cluster is None else _str(cluster, "id"),
            version_floor=None if cluster is None else _int(cluster, "version_floor"),
        )


def _dict(doc: Any, key: str) -> dict[str, Any]:
    value = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(value, dict):
        raise ProtocolError(f"malformed answer: {key} must be an object")
    return value


def _str(doc: Any, key: str) -> str:
    value = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(value, str):
        raise ProtocolError(f"malformed answer: {key} must be a string")
    return value


def _int(doc: Any, key: str) -> int:
    value = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"malformed answer: {key} must be an integer")
    return value


def _float(doc: Any, key: str) -> float:
    value = _finite(doc.get(key) if isinstance(doc, dict) else None)
    if value is None:
        raise ProtocolError(f"malformed answer: {key} must be a number")
    return value


def _finite(value: object) -> float | None:
    """``value`` as a float if it is a finite number: not a bool, nor an int beyond a float's range
    (JSON has those; float() and math.isfinite() raise OverflowError for them)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


# -- Preprocessing (part of the signed manifest) --------------------------------------------------------

CHANNEL_ORDERS: Final = ("RGB", "BGR")
LAYOUTS: Final = ("NCHW", "NHWC")
# 3: colour, in channel_order; 1: grey, Pillow's ITU-R 601-2 luma (L = 0.299 R + 0.587 G + 0.114 B).
CHANNELS: Final = (1, 3)
# Largest resize/crop side a Preprocessing may ask for: far above any classifier's input size, and
# small enough that the enclave never builds an unreasonable tensor because a manifest said so.
MAX_SIDE: Final = 4096


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its input: torchvision's Resize → CenterCrop → ToTensor → Normalize.

    ``resize``: the shorter image side is scaled to this many pixels (bilinear).
    ``crop``: a centred ``crop`` x ``crop`` square is cut out of the resized image.
    ``mean``, ``std``: per-channel normalisation of 0..1 pixel values, ``(x - mean) / std``, one value
    per channel, listed in the channel order the model receives (so for ``channel_order="BGR"`` the
    first value is blue's). ``channel_order``: ``"RGB"`` or ``"BGR"``. ``layout``: ``"NCHW"`` or
    ``"NHWC"``. ``channels``: 3, or 1 for a model that takes grey images (Pillow's ITU-R 601-2 luma,
    ``L = R * 299/1000 + G * 587/1000 + B * 114/1000``; ``channel_order`` must then be ``"RGB"``).

    The owner's tooling builds it, the signed manifest carries it as JSON, the enclave applies it
    (``enclave/preprocess.py``), and ``GET /v1/model`` shows it.
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"
    layout: str = "NCHW"
    channels: int = 3

    def __post_init__(self) -> None:
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_SIDE:
                raise UsageError(
                    f"preprocessing.{name} must be an integer from 1 to {MAX_SIDE}, got {value!r}"
                )
        if self.crop > self.resize:
            raise UsageError(
                f"preprocessing.crop ({self.crop}) must not be larger than"
                f" preprocessing.resize ({self.resize})"
            )
        channels = self.channels
        if not isinstance(channels, int) or isinstance(channels, bool) or channels not in CHANNELS:
            raise UsageError(f"preprocessing.channels must be 1 or 3, got {self.channels!r}")
        object.__setattr__(self, "mean", _floats("mean", self.mean, channels, nonzero=False))
        object.__setattr__(self, "std", _floats("std", self.std, channels, nonzero=True))
        if self.channel_order not in CHANNEL_ORDERS:
            raise UsageError(
                f"preprocessing.channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}"
            )
        if channels == 1 and self.channel_order != "RGB":
            raise UsageError("preprocessing.channel_order must be 'RGB' for one channel (grey images)")
        if self.layout not in LAYOUTS:
            raise UsageError(f"preprocessing.layout must be 'NCHW' or 'NHWC', got {self.layout!r}")

    def input_shape(self) -> tuple[int, int, int, int]:
        """The model input of one image: ``(1, channels, crop, crop)`` or, for ``"NHWC"``,
        ``(1, crop, crop, channels)``."""
        c, s = self.channels, self.crop
        return (1, c, s, s) if self.layout == "NCHW" else (1, s, s, c)

    def to_json(self) -> dict[str, Any]:
        """This preprocessing as a JSON-ready dict (tuples become lists).

        ``channels`` is written only when it is 1: a colour model's preprocessing reads exactly as it
        did before the field existed, so its signed manifest (and the model's SHA-256 identity) is
        unchanged and enclaves built before the field still accept it.
        """
        doc: dict[str, Any] = {
            "resize": self.resize,
            "crop": self.crop,
            "mean": list(self.mean),
            "std": list(self.std),
            "channel_order": self.channel_order,
            "layout": self.layout,
        }
        if self.channels != 3:
            doc["channels"] = self.channels
        return doc

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Preprocessing:
        """Parse and validate :meth:`to_json`'s form. Missing keys take the defaults; unknown keys,
        wrong types and out-of-range values raise :class:`~enclave_infer.errors.UsageError`."""
        if not isinstance(data, Mapping):
            raise UsageError(f"preprocessing must be a JSON object, got {type(data).__name__}")
        known = ("resize", "crop", "mean", "std", "channel_order", "layout", "channels")
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise UsageError(f"preprocessing has unknown keys: {', '.join(unknown)}")
        return cls(**{key: data[key] for key in known if key in data})


def _floats(name: str, value: object, count: int, *, nonzero: bool) -> tuple[float, ...]:
    """Validate a per-channel list of ``count`` numbers (a tuple or a JSON list); a tuple of floats."""
    numbers = f"{count} number{'s' if count != 1 else ''}"
    if not isinstance(value, tuple | list) or len(value) != count:
        raise UsageError(f"preprocessing.{name} must be a list of {numbers} (one per channel), got {value!r}")
    out: list[float] = []
    for item in value:
        number = _finite(item)
        if number is None:
            raise UsageError(f"preprocessing.{name} must be a list of {count} finite numbers, got {value!r}")
        if nonzero and number == 0:
            raise UsageError(f"preprocessing.{name} values must be non-zero, got {value!r}")
        out.append(number)
    return tuple(out)
