"""The model owner's tooling: the key, the labels file, the preprocessing a model is provisioned with.

Client-side code, run on the owner's machine. The private key is PKCS#8 PEM, readable by its owner
only; the public key file is one line (``enclave-infer-owner-ed25519 <base64>``) to hand to the
operator, who puts it into the measured enclave configuration. :func:`read_labels` reads the class
names (one per line, UTF-8) and refuses, naming the line, what the manifest would refuse or what is
surely a mistake; :func:`build_preprocessing` turns ``provision``'s options into the manifest's
preprocessing, refusing, in terms of those options, what the enclave would refuse.
"""

from __future__ import annotations

import math
import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave_infer.config import format_public_key, owner_key_id
from enclave_infer.errors import UsageError
from enclave_infer.protocol.api import CHANNEL_ORDERS, CHANNELS, LAYOUTS, MAX_SIDE, Preprocessing
from enclave_infer.protocol.manifest import MAX_LABEL_CHARS, MAX_LABELS, MAX_MANIFEST_BYTES

__all__ = [
    "build_preprocessing",
    "generate_owner_key",
    "load_owner_key",
    "parse_labels",
    "public_key_bytes",
    "read_labels",
]

# The labels travel inside the signed manifest, so a labels file larger than a manifest may be can
# never be provisioned; reading stops there.
MAX_LABELS_FILE_BYTES = MAX_MANIFEST_BYTES
# torchvision's ImageNet normalisation, per colour in RGB order, on 0..1 pixels.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def public_key_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate_owner_key(path: Path, *, overwrite: bool = False) -> str:
    """Write ``path`` (private, mode 0600) and ``path.pub``; return the OWNER: value (hex)."""
    pub_path = path.with_name(path.name + ".pub")
    if not overwrite and (path.exists() or pub_path.exists()):
        raise UsageError(f"{path} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        pub_path.write_text(format_public_key(public_key_bytes(key)), encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    return owner_key_id(public_key_bytes(key))


def load_owner_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read owner key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise UsageError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path} is not an Ed25519 key")
    return key


# -- labels ----------------------------------------------------------------------------------------


def read_labels(path: Path, *, allow_duplicates: bool = False) -> tuple[str, ...]:
    """The class names in the labels file ``path``: UTF-8, one per line, in the order of the model's
    scores. See :func:`parse_labels` for what is refused; the messages start with ``path``. Files
    over :data:`MAX_LABELS_FILE_BYTES` (a manifest's limit) are refused unread."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_LABELS_FILE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read labels {path}: {exc.strerror}") from None
    if len(data) > MAX_LABELS_FILE_BYTES:
        raise UsageError(
            f"{path}: over {MAX_LABELS_FILE_BYTES // 2**20} MiB, more than a model manifest can hold"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UsageError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02X})") from None
    return parse_labels(text, str(path), allow_duplicates=allow_duplicates)


def parse_labels(text: str, name: str, *, allow_duplicates: bool = False) -> tuple[str, ...]:
    """The class names in ``text``, a labels file's content; ``name`` is the file's name in messages.

    One label per line (``\\n`` or ``\\r\\n``); spaces around a label are dropped; a UTF-8 byte
    order mark at the start is ignored, and so is one line break at the end. Refused, with the line
    (``labels.txt:17: duplicate label 'tiger cat' (first on line 3)``): a blank line, a duplicate, a
    control character in a label, a label over ``MAX_LABEL_CHARS`` characters; and a file with no
    labels or more than ``MAX_LABELS``, the manifest's limits. A duplicate is usually a mistake (an
    answer naming it is ambiguous), but some label sets repeat names on purpose (ImageNet-1k has two
    ``crane`` classes, a bird and a machine, and two ``maillot``): ``allow_duplicates`` accepts them.
    """
    text = text.removeprefix("\ufeff")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the line break that ends the last line
    if not lines:
        raise UsageError(f"{name}: no labels (one class name per line)")
    if len(lines) > MAX_LABELS:
        raise UsageError(f"{name}: {len(lines)} lines; a model may have at most {MAX_LABELS} labels")
    first: dict[str, int] = {}
    labels: list[str] = []
    for number, line in enumerate(lines, start=1):
        label = line.removesuffix("\r").strip()
        if not label:
            raise UsageError(f"{name}:{number}: blank line")
        control = next((c for c in label if unicodedata.category(c) == "Cc"), None)
        if control is not None:
            raise UsageError(f"{name}:{number}: control character U+{ord(control):04X} in the label")
        if len(label) > MAX_LABEL_CHARS:
            raise UsageError(
                f"{name}:{number}: the label is {len(label)} characters, at most {MAX_LABEL_CHARS} fit"
            )
        if label in first and not allow_duplicates:
            raise UsageError(
                f"{name}:{number}: duplicate label {label!r} (first on line {first[label]});"
                " --allow-duplicate-labels if the model really has two such classes"
            )
        first.setdefault(label, number)
        labels.append(label)
    return tuple(labels)


# -- preprocessing ---------------------------------------------------------------------------------


def build_preprocessing(
    *,
    resize: int = 256,
    crop: int = 224,
    mean: str | Sequence[float] | None = None,
    std: str | Sequence[float] | None = None,
    channel_order: str = "RGB",
    layout: str = "NCHW",
    grayscale: bool = False,
) -> Preprocessing:
    """The manifest's preprocessing for ``provision``'s options, checked here in their terms.

    The enclave resizes the shorter side to ``resize``, centre-crops ``crop`` x ``crop``, scales to
    0..1, converts to grey (``grayscale``: one channel, ITU-R 601-2 luma) or keeps colour in
    ``channel_order``, normalises with ``(x - mean) / std`` and lays out ``layout``. ``mean`` and
    ``std`` hold one value per channel in the order the model takes them, as numbers or a
    comma-separated string (``"0.485,0.456,0.406"``); None gives ImageNet's for colour (reordered
    for BGR) and is refused for grey, which has no such default. Raises
    :class:`~enclave_infer.errors.UsageError` naming the option at fault.

    The options are checked here so that errors name them; :class:`Preprocessing` checks the
    result again, as the enclave does.
    """
    for option, value in (("--resize", resize), ("--crop", crop)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_SIDE:
            raise UsageError(f"{option} must be an integer from 1 to {MAX_SIDE}, got {value!r}")
    if crop > resize:
        raise UsageError(f"--crop {crop} is larger than --resize {resize}; pass --resize {crop} or more")
    if channel_order not in CHANNEL_ORDERS:
        raise UsageError(f"--channel-order must be RGB or BGR, got {channel_order!r}")
    if layout not in LAYOUTS:
        raise UsageError(f"--layout must be NCHW or NHWC, got {layout!r}")
    channels = CHANNELS[0] if grayscale else CHANNELS[1]
    if grayscale and channel_order != "RGB":
        raise UsageError("--channel-order BGR has no meaning with --grayscale (one channel)")
    means = _per_channel("--mean", mean, channels, channel_order, IMAGENET_MEAN)
    stds = _per_channel("--std", std, channels, channel_order, IMAGENET_STD)
    if any(value == 0 for value in stds):
        raise UsageError(f"--std values must be non-zero, got {_joined(stds)}")
    return Preprocessing(resize, crop, tuple(means), tuple(stds), channel_order, layout, channels)


def _per_channel(
    option: str,
    value: str | Sequence[float] | None,
    channels: int,
    channel_order: str,
    imagenet: tuple[float, float, float],
) -> list[float]:
    """``value`` as one finite float per channel; None: ImageNet's, in ``channel_order``."""
    if value is None:
        if channels == 1:
            raise UsageError(
                f"a grey model needs {option} (one value; ImageNet's defaults are for colour images)"
            )
        return list(imagenet[::-1] if channel_order == "BGR" else imagenet)
    count = f"{channels} {'number' if channels == 1 else 'numbers'}"
    try:
        numbers = [float(v) for v in value.split(",")] if isinstance(value, str) else list(map(float, value))
    except (TypeError, ValueError):
        numbers = []
    if not numbers or not all(math.isfinite(n) for n in numbers):
        raise UsageError(f"{option} takes {count}, comma-separated, got {value!r}")
    if len(numbers) != channels:
        where = " with --grayscale" if channels == 1 else ""
        raise UsageError(f"{option} takes {count}{where}, got {len(numbers)}: {_joined(numbers)}")
    return numbers


def _joined(numbers: Sequence[float]) -> str:
    return ",".join(f"{n:g}" for n in numbers)
