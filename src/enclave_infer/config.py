"""The measured enclave configuration: the role of Mystikos' ``config.json`` and Gramine's manifest.

Pure data, used on every side: the operator's CLI builds it from defaults, a TOML file and options;
the enclave loads it and folds it into its measurement (so a client that pins the code hash also
pins who may provision the model and under which limits); clients read it back from the evidence.

The canonical form is JSON with sorted keys and no white space (:meth:`EnclaveConfig.canonical`);
that byte string is what gets hashed. The ``cluster`` table appears in it only when it sets something,
so that a configuration without it keeps the digest it had before the table existed.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclave_infer.attestation.report import SNP_TCB_COMPONENTS, parse_snp_tcb_floor
from enclave_infer.errors import UsageError

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_QUEUE_DELAY_US",
    "Batching",
    "ClusterSettings",
    "EnclaveConfig",
    "Limits",
    "Padding",
    "format_public_key",
    "load_public_key_file",
    "owner_key_id",
]

MiB = 1024 * 1024
# The largest batch a configuration may ask for: 256 preprocessed 224x224 RGB images are 154 MB of
# input alone, and a batch never holds more than limits.max_concurrent_requests images anyway.
MAX_BATCH_SIZE = 256
# The longest a first image may wait for others: one second. Longer only adds latency.
MAX_QUEUE_DELAY_US = 1_000_000


@dataclass(frozen=True)
class Limits:
    """Request limits, enforced inside the enclave (the host enforces the byte caps too)."""

    # An uploaded photo; 16 MiB covers any camera JPEG/PNG a person would classify.
    max_image_bytes: int = 16 * MiB
    # Decoded pixels; 50 MP × 3 bytes is 150 MB of RGB, the most one request may make us hold.
    max_pixels: int = 50_000_000
    # A model upload in one (non-chunked) encapsulated request: the demo model is 19 MB,
    # the seed's AlexNet 233 MB.
    max_model_bytes: int = 512 * MiB
    # How many top classes one answer may list.
    max_top_k: int = 20
    # Concurrent requests the enclave works on at once; more wait in the host's queue. Twice the
    # batching default: one batch of 8 is inferred while the next 8 images are decoded. Each holds its
    # request frame (an image request is at most max_image_bytes; only one frame larger than that, a
    # whole model upload, is read at a time) and, once decoded, one preprocessed tensor.
    max_concurrent_requests: int = 16
    # Of those, how many decode and preprocess an image at once: the step that takes the memory (at
    # max_pixels, 150 MB of RGB, twice that while the EXIF orientation is applied). Four, the
    # concurrency before batching, keeps the enclave's peak memory what it was; on this project's
    # 2-core machines more would not decode any faster.
    max_concurrent_decodes: int = 4

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UsageError(f"limits.{f.name} must be a positive integer, got {value!r}")

    @property
    def max_request_bytes(self) -> int:
        """The largest encapsulated request the host relays: a model plus headers and labels."""
        return self.max_model_bytes + 4 * MiB


@dataclass(frozen=True)
class Batching:
    """Dynamic batching inside the enclave, with the two settings of Triton's dynamic batcher
    (``max_batch_size``, ``max_queue_delay_microseconds``). A model whose input has a fixed batch of
    one runs one image at a time whatever these say. ``max_batch_size = 1`` turns batching off, so
    that no model ever sees two requests' images in one run (README, Known limitations)."""

    # Images run through the model at once. Eight: half of limits.max_concurrent_requests, so one
    # batch runs while the next is decoded; on a CPU a larger batch mostly adds each image's wait.
    # Eight 224x224 RGB input tensors are 4.8 MB.
    max_batch_size: int = 8
    # How long the first image of a batch waits for others, in microseconds, while another request is
    # being decoded (with none on its way, a batch runs at once). Two milliseconds: an eighth of the
    # 16 ms one image takes in-process (decode, preprocess, EfficientNet-Lite0) on two cores, so a
    # partial batch costs little latency; under load, batches fill from the images that queue up
    # while the previous batch runs, and the delay hardly matters.
    max_queue_delay_us: int = 2000

    def __post_init__(self) -> None:
        for name, low, high in (
            ("max_batch_size", 1, MAX_BATCH_SIZE),
            ("max_queue_delay_us", 0, MAX_QUEUE_DELAY_US),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise UsageError(f"batching.{name} must be an integer from {low} to {high}, got {value!r}")


@dataclass(frozen=True)
class Padding:
    """Padding against traffic analysis (``protocol/padding.py``). On: clients pad requests to Padmé
    lengths, and the enclave pads every answer to a classification to one length per ``top``, so
    that an observer of the ciphertext learns neither the image's exact size nor, from the answer's
    length, anything of its labels. Measured, so clients learn it from the attestation."""

    enabled: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise UsageError("padding.enabled must be true or false")


@dataclass(frozen=True)
class ClusterSettings:
    """What a cluster of enclaves (``cluster/keyrelease.py``) requires of its members' platforms,
    beyond what the founder's own evidence shows: a minimum that the founder folds into the
    cluster's TCB floor, so that no member below it ever receives the cluster's keys, whatever
    collateral and clock its giver's host hands it.

    ``min_tcb_evaluation``: SGX and TDX, the least ``tcbEvaluationDataNumber`` of the DCAP
    collateral's TCB info and QE identity (a client's ``TCBEVAL:``). ``min_snp_tcb``: SEV-SNP, the
    least patch level of each named REPORTED_TCB component, as ``SNPTCB:`` writes it
    (``"bl=3,snp=8"``), kept in the components' order. A minimum the platform cannot show (a
    ``min_tcb_evaluation`` on SEV-SNP, either on simulation) refuses everything: no cluster is
    founded."""

    min_tcb_evaluation: int | None = None
    min_snp_tcb: str | None = None

    def __post_init__(self) -> None:
        value = self.min_tcb_evaluation
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF_FFFF
        ):
            raise UsageError(
                f"cluster.min_tcb_evaluation must be an integer from 0 to 4294967295, got {value!r}"
            )
        if self.min_snp_tcb is not None:
            if not isinstance(self.min_snp_tcb, str):
                raise UsageError(
                    f"cluster.min_snp_tcb must be a string such as 'bl=3,snp=8', got {self.min_snp_tcb!r}"
                )
            pairs = dict(parse_snp_tcb_floor(self.min_snp_tcb.lower(), what="cluster.min_snp_tcb:"))
            # one floor, one text: the components in their order, so that the measured bytes are one
            text = ",".join(f"{name}={pairs[name]}" for name in SNP_TCB_COMPONENTS if name in pairs)
            object.__setattr__(self, "min_snp_tcb", text)

    @property
    def snp_tcb_floor(self) -> tuple[tuple[str, int], ...]:
        """``min_snp_tcb`` as (component name, minimum) pairs; empty without it."""
        if self.min_snp_tcb is None:
            return ()
        return parse_snp_tcb_floor(self.min_snp_tcb, what="cluster.min_snp_tcb:")

    def to_json(self) -> dict[str, Any]:
        """The settings given, and only those (an empty table is left out of the canonical form)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }


@dataclass(frozen=True)
class EnclaveConfig:
    """Everything about the enclave that is measured besides its code."""

    owner_public_key: bytes  # raw Ed25519 public key, 32 bytes
    product_id: int = 1
    security_version: int = 1
    debug: bool = False
    enclave_size: str = "4G"  # Gramine's sgx.enclave_size
    # Gramine's sgx.max_threads: a connection thread per request in the enclave (16), ONNX Runtime's
    # pool (a quarter of this), the batcher, the main thread and Gramine's four helpers fit in 32.
    max_threads: int = 32
    # Which platform sealing key protects the stored model: "mrenclave" (only this exact enclave
    # can unseal; a code update loses the model) or "mrsigner" (any enclave of this signer and
    # product can, so updates keep it, but so would an older, vulnerable version).
    sealing_policy: str = "mrenclave"
    limits: Limits = field(default_factory=Limits)
    batching: Batching = field(default_factory=Batching)
    padding: Padding = field(default_factory=Padding)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)

    def __post_init__(self) -> None:
        if not isinstance(self.owner_public_key, bytes) or len(self.owner_public_key) != 32:
            raise UsageError("owner_public_key must be a raw 32-byte Ed25519 public key")
        for name in ("product_id", "security_version", "max_threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF:
                raise UsageError(f"{name} must be an integer from 0 to 65535, got {value!r}")
        if not isinstance(self.debug, bool):
            raise UsageError("debug must be true or false")
        if self.sealing_policy not in ("mrenclave", "mrsigner"):
            raise UsageError(f"sealing_policy must be mrenclave or mrsigner, got {self.sealing_policy!r}")
        if not isinstance(self.enclave_size, str) or not _is_size(self.enclave_size):
            raise UsageError(f"enclave_size must look like '4G' or '512M', got {self.enclave_size!r}")

    # -- canonical form ------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        doc = {
            "owner_public_key": self.owner_public_key.hex(),
            "product_id": self.product_id,
            "security_version": self.security_version,
            "debug": self.debug,
            "enclave_size": self.enclave_size,
            "max_threads": self.max_threads,
            "sealing_policy": self.sealing_policy,
            "limits": dataclasses.asdict(self.limits),
            "batching": dataclasses.asdict(self.batching),
            "padding": dataclasses.asdict(self.padding),
        }
        cluster = self.cluster.to_json()
        if cluster:  # absent when it sets nothing: the digests of configurations without it stand
            doc["cluster"] = cluster
        return doc

    def canonical(self) -> bytes:
        """The exact bytes that are measured and bound into attestation evidence."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    def digest(self) -> bytes:
        return hashlib.sha256(self.canonical()).digest()

    @classmethod
    def from_json(cls, doc: Any) -> EnclaveConfig:
        if not isinstance(doc, dict):
            raise UsageError("enclave configuration must be a table/object")
        doc = dict(doc)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise UsageError(f"unknown enclave configuration key(s): {', '.join(unknown)}")
        limits = Limits(**_table(doc.pop("limits", {}), "limits", Limits))
        batching = Batching(**_table(doc.pop("batching", {}), "batching", Batching))
        padding = Padding(**_table(doc.pop("padding", {}), "padding", Padding))
        cluster = ClusterSettings(**_table(doc.pop("cluster", {}), "cluster", ClusterSettings))
        key = doc.pop("owner_public_key", None)
        if not isinstance(key, str):
            raise UsageError("owner_public_key is required (hex, or the contents of owner.key.pub)")
        return cls(
            owner_public_key=_parse_public_key(key),
            limits=limits,
            batching=batching,
            padding=padding,
            cluster=cluster,
            **doc,
        )

    @classmethod
    def from_canonical(cls, data: bytes) -> EnclaveConfig:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise UsageError("enclave configuration is not JSON") from None
        config = cls.from_json(doc)
        if config.canonical() != data:
            raise UsageError("enclave configuration is not in canonical form")
        return config

    @classmethod
    def load(cls, path: Path | None = None, *, owner_public_key: bytes | None = None) -> EnclaveConfig:
        """Defaults, overridden by a TOML file, overridden by an explicit owner key."""
        doc: dict[str, Any] = {}
        if path is not None:
            try:
                doc = tomllib.loads(path.read_text(encoding="utf-8"))
            except OSError as exc:
                raise UsageError(f"cannot read {path}: {exc.strerror}") from None
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise UsageError(f"{path} is not valid TOML: {exc}") from None
        if owner_public_key is not None:
            if "owner_public_key" in doc:
                raise UsageError(
                    f"{path} sets owner_public_key and --owner-public-key gives one too: keep one of them"
                )
            doc["owner_public_key"] = owner_public_key.hex()
        if "owner_public_key" not in doc:
            raise UsageError("no owner public key: pass --owner-public-key FILE or set it in --config")
        return cls.from_json(doc)

    @property
    def owner_key_id(self) -> str:
        return owner_key_id(self.owner_public_key)

    @property
    def batch_size(self) -> int:
        """The most images one batch holds: ``batching.max_batch_size``, never more than there are
        requests in the enclave (``limits.max_concurrent_requests``)."""
        return min(self.batching.max_batch_size, self.limits.max_concurrent_requests)


def owner_key_id(public_key: bytes) -> str:
    """SHA-256 of the raw owner public key, hex: the value of the ``OWNER:`` constraint."""
    return hashlib.sha256(public_key).hexdigest()


_PUB_PREFIX = "enclave-infer-owner-ed25519 "


def format_public_key(public_key: bytes) -> str:
    """The one-line text form of ``owner.key.pub``."""
    return _PUB_PREFIX + base64.b64encode(public_key).decode() + "\n"


def load_public_key_file(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read owner public key {path}: {exc}") from None
    return _parse_public_key(text)


def _parse_public_key(text: str) -> bytes:
    text = text.strip()
    raw: bytes | None = None
    if text.startswith(_PUB_PREFIX):
        try:
            raw = base64.b64decode(text[len(_PUB_PREFIX) :], validate=True)
        except ValueError:
            raw = None
    else:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = None
    if raw is None or len(raw) != 32:
        raise UsageError("owner public key is not an enclave-infer Ed25519 public key")
    return raw


def _table(
    doc: Any, name: str, cls: type[Limits] | type[Batching] | type[Padding] | type[ClusterSettings]
) -> dict[str, Any]:
    """The keys of the ``[name]`` table, checked against the fields of ``cls``."""
    if not isinstance(doc, dict):
        raise UsageError(f"[{name}] must be a table")
    unknown = sorted(set(doc) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise UsageError(f"unknown key(s) in [{name}]: {', '.join(unknown)}")
    return doc


def _is_size(text: str) -> bool:
    # ASCII digits: str.isdigit() holds for "²", which int() refuses; and a bounded count of them,
    # since int() refuses more than 4300 digits (ValueError) and 18 already exceed any memory.
    digits = text[:-1]
    return (
        2 <= len(text) <= 19
        and digits.isascii()
        and digits.isdigit()
        and text[-1] in "KMG"
        and int(digits) > 0
    )
