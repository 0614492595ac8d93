"""What the enclave will feed the owner's model, and the one-line messages for a model that does not fit.

Owner-side and pure (no torch, no onnx, no files): :class:`ModelInput` is the tensor the enclave's
preprocessing makes of each image (a square crop, 1 or 3 channels, NCHW or NHWC); :func:`input_mismatch`
compares a model's declared input shape with it, :func:`run_failure` explains a model that fails on it,
and :func:`output_mismatch` compares the model's scores with the labels. The messages name the
``provision`` option that fixes the mismatch (``--crop``, ``--layout``, ``--grayscale``).

The bounds are the inner API's (``protocol/api.py``), which the enclave applies too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from enclave_infer.errors import UsageError
from enclave_infer.protocol.api import CHANNELS, LAYOUTS, MAX_SIDE

# A dimension as a model file declares it: a size, or None where it is symbolic or unknown.
Dim = int | None


@dataclass(frozen=True)
class ModelInput:
    """The tensor the enclave gives the model for each image: ``size`` x ``size`` pixels, ``channels``
    channels (1: grey, 3: colour), laid out ``"NCHW"`` or ``"NHWC"``; the batch is 1 in the enclave."""

    size: int = 224
    channels: int = 3
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        if not _is_int(self.size) or not 0 < self.size <= MAX_SIDE:
            raise UsageError(f"input_size must be an integer from 1 to {MAX_SIDE}, got {self.size!r}")
        if not _is_int(self.channels) or self.channels not in CHANNELS:
            raise UsageError(f"channels must be 1 (grey) or 3 (colour), got {self.channels!r}")
        if self.layout not in LAYOUTS:
            raise UsageError(f"layout must be 'NCHW' or 'NHWC', got {self.layout!r}")

    def shape(self, batch: int) -> tuple[int, int, int, int]:
        s, c = self.size, self.channels
        return (batch, c, s, s) if self.layout == "NCHW" else (batch, s, s, c)

    def __str__(self) -> str:
        """``Nx3x224x224``: the shape with a batch of any size."""
        return _text((None, *self.shape(1)[1:]))


def input_mismatch(dims: Sequence[Dim], want: ModelInput) -> str | None:
    """Why a model declaring input ``dims`` (batch first) cannot take ``want``'s images, or None if it
    can as far as the static sizes tell. The batch dimension is the caller's to check."""
    shown = _text(dims)
    if len(dims) != 4:
        return f"the model takes input {shown} but the enclave gives 4-dimensional images ({want})"
    channels, height, width = _split(dims, want.layout)
    other = "NHWC" if want.layout == "NCHW" else "NCHW"
    other_channels, other_height, other_width = _split(dims, other)
    if (
        channels is not None
        and channels not in CHANNELS
        and other_channels in CHANNELS
        and other_height == other_width
    ):
        last = " (channels last)" if other == "NHWC" else " (channels first)"
        return f"the model takes input {shown}{last} but preprocessing gives {want}: pass --layout {other}"
    if channels is not None and channels != want.channels:
        return f"the model takes input {shown} but preprocessing gives {want}: {_channel_fix(channels)}"
    if height is not None and width is not None and height != width:
        return f"the model takes input {shown}, which is not square; the enclave centre-crops square images"
    side = height if height is not None else width
    if side is not None and side != want.size:
        return (
            f"the model takes input {shown} but preprocessing crops to {want.size}: "
            f"pass --crop {side} (and a --resize of at least {side})"
        )
    return None


def run_failure(want: ModelInput, batch: int, error: str, *, first_channels: int | None = None) -> str:
    """The message for a model that fails with ``error`` on a batch of ``want``'s images. A model's
    code does not declare the size it takes, so the hint can only name the options; where the input
    channels of the model's first convolution are known (``first_channels``) it names the fix."""
    shown = _text(want.shape(batch))
    if first_channels is not None and first_channels != want.channels and want.layout == "NCHW":
        return (
            f"the model's first convolution takes {first_channels} channel{'s' * (first_channels != 1)} "
            f"but preprocessing gives {want}: {_channel_fix(first_channels)} ({error})"
        )
    return (
        f"the model fails on input {shown} ({error}); if it takes another input, "
        "say so with --crop, --layout or --grayscale"
    )


def output_mismatch(shape: Sequence[Dim], batch: int, classes: int | None) -> str | None:
    """Why a model answering a batch of ``batch`` with scores of ``shape`` does not fit ``classes``
    labels (None: not known), or None if it does (or the sizes are symbolic)."""
    shown = _text(shape, batch_name=str(batch))
    if len(shape) != 2 or shape[0] not in (None, batch):
        return (
            f"the model's output is {shown} for a batch of {batch}; "
            "the enclave needs one row of scores per image"
        )
    scores = shape[1]
    if classes is not None and scores is not None and scores != classes:
        return f"the model gives {scores} scores per image but there are {classes} labels"
    return None


def _channel_fix(channels: int) -> str:
    if channels == 1:
        return "pass --grayscale"
    if channels == 3:
        return "leave out --grayscale"
    return f"the enclave gives 1 (grey) or 3 (colour) channels, not {channels}"


def _split(dims: Sequence[Dim], layout: str) -> tuple[Dim, Dim, Dim]:
    """(channels, height, width) of a 4-D shape read as ``layout``."""
    return (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])


def _text(dims: Sequence[Dim], *, batch_name: str = "N") -> str:
    """``1x3x224x224``; a symbolic batch is ``N``, any other symbolic size ``?``."""
    return "x".join(str(d) if d is not None else (batch_name if i == 0 else "?") for i, d in enumerate(dims))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


DEFAULT_INPUT = ModelInput()
"""224 x 224 colour images, channels first: what the enclave gives a model unless told otherwise."""
