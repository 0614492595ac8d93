"""Image decoding and preprocessing inside the enclave: untrusted bytes in, a model input tensor out.

Trusted code. It sees every user's photo, so it is deliberately small and built on Pillow and numpy
only (no torch, no torchvision):

* :func:`decode_image` turns the bytes of an upload into an RGB :class:`PIL.Image.Image`. It accepts
  only the formats in :data:`ACCEPTED_FORMATS`, refuses images with more than ``max_pixels`` pixels
  before any pixel data is decoded, decodes fully (so truncated files fail here and not later),
  applies the EXIF orientation, and turns every decoding failure into :class:`ImageError`, whose
  message is one line and never quotes the image.
* :func:`to_tensor` applies a model's :class:`Preprocessing`: the equivalent of torchvision's
  ``Resize(resize)`` + ``CenterCrop(crop)`` + ``ToTensor()`` + ``Normalize(mean, std)`` on a Pillow
  image (with ``Grayscale()`` after the crop for a one-channel model), computed with the same sizes,
  offsets and float32 arithmetic, so that a model exported from a torchvision pipeline sees the
  inputs it was trained on.
* :class:`~enclave_infer.protocol.api.Preprocessing` (the model owner's description of those steps,
  part of the signed manifest) is defined with the rest of the inner API in ``protocol/api.py``.
"""

from __future__ import annotations

import io

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from enclave_infer.errors import UsageError
from enclave_infer.protocol.api import Preprocessing

__all__ = ["ACCEPTED_FORMATS", "ImageError", "decode_image", "quiet_pillow", "to_tensor"]

# The Pillow formats an upload may be in. Pillow can open about forty formats, and every parser
# that runs on attacker-chosen bytes inside the enclave is attack surface: several plugins are rarely
# used and little fuzzed (FLI, PCX, SGI, ICNS, PSD, ...), and EPS even starts a Ghostscript process.
# These six cover what cameras, phones, browsers and scanners produce; their decoders (libjpeg-turbo,
# zlib, libwebp, libtiff, and Pillow's own GIF/BMP code) are the most used and most fuzzed ones.
# TIFF is the largest of them (libtiff); drop it here if scanner output is not needed.
# Multi-picture JPEGs (MPO, from some cameras) open through the JPEG parser and are accepted as JPEG.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

# Formats Pillow reports for files it opened through one of ACCEPTED_FORMATS' parsers.
_FORMAT_ALIASES = {"MPO": "JPEG"}

# to_tensor resizes the whole image and then crops it (exactly what torchvision does) as long as the
# resized image has at most this many pixels; an image with an extreme aspect ratio (a 1x40000 strip
# resized to a 256 shorter side would be 10 million pixels) is instead resampled straight into the
# crop window, which keeps memory at crop x crop and differs from resize-then-crop by at most one
# 8-bit level in a few percent of pixels.
_MAX_EXACT_RESIZE_PIXELS = 1 << 22


def quiet_pillow() -> None:
    """Keep everything Pillow says about an image inside this process: what it warns (``Corrupt
    EXIF data. Expecting to read 2 bytes but only got 0``, ``Tag data larger than file. Skipping tag
    270``) and logs quotes the image, and the enclave's stderr goes to the host's log.

    Process-wide, called once at the enclave's start (filters set per call would race between the
    threads that decode): Pillow's warnings are ignored, except :class:`PIL.Image.DecompressionBombWarning`,
    which is raised so that :func:`decode_image` turns it into its own refusal; Pillow's loggers
    (``PIL`` and its children) write nowhere. An image's problems reach a client only as
    :class:`ImageError`'s fixed messages."""
    import logging
    import warnings

    # The later filter is matched first: the bomb warning becomes an error, the rest are dropped.
    warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
    pil = logging.getLogger("PIL")
    pil.handlers[:] = [logging.NullHandler()]
    pil.propagate = False
    pil.setLevel(logging.CRITICAL + 1)


class ImageError(ValueError):
    """The uploaded bytes are not an image this service accepts: the message says why, in one line."""


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode an uploaded image into a fully loaded, upright RGB :class:`PIL.Image.Image`.

    Only :data:`ACCEPTED_FORMATS` are parsed. The pixel count is checked against ``max_pixels`` from
    the header, before any pixel data is decoded. The first frame of an animation is used. The
    EXIF orientation (phone photos) is applied, and alpha is dropped.

    Raises :class:`ImageError` (one line, never quoting the data) for empty data, non-images,
    unsupported formats, zero-size, too large, truncated or corrupt images; no Pillow exception
    escapes. Raises :class:`~enclave_infer.errors.UsageError` if ``max_pixels`` is not a positive
    integer or Pillow is configured to accept truncated files (``ImageFile.LOAD_TRUNCATED_IMAGES``).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"image data must be bytes, not {type(data).__name__}")
    if not isinstance(max_pixels, int) or isinstance(max_pixels, bool) or max_pixels <= 0:
        raise UsageError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # A process-wide Pillow switch that makes truncated files decode with grey filling instead
        # of failing; refuse to run with it rather than silently classify half an image.
        raise UsageError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; refusing to decode images")
    if len(data) == 0:
        raise ImageError("the image is empty (0 bytes)")

    # Pillow's own decompression-bomb guard is process-wide (Image.MAX_IMAGE_PIXELS, checked in
    # Image.open: a warning above it, DecompressionBombError above twice it). Changing that global
    # per request would race between threads, so it is left alone and the per-call limit is applied
    # here instead, on the size parsed from the header, before load() decodes anything. A bomb error
    # from Pillow's own check is caught and reported like ours.
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as opened:
            fmt = _FORMAT_ALIASES.get(opened.format or "", opened.format or "")
            if fmt not in ACCEPTED_FORMATS:  # Image.open(formats=...) already ensures this
                raise ImageError(_unsupported_message())
            width, height = opened.size
            if width <= 0 or height <= 0:
                raise ImageError(f"the image has zero size ({width}x{height})")
            if width * height > max_pixels:
                raise ImageError(
                    f"the image is too large: {width}x{height} is {width * height} pixels, "
                    f"the limit is {max_pixels}"
                )
            opened.load()  # decode everything now: truncated or corrupt data fails here
            upright = ImageOps.exif_transpose(opened)
            return upright if upright.mode == "RGB" else upright.convert("RGB")
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(_unsupported_message()) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # DecompressionBombWarning only arrives as an exception when warnings are errors (tests).
        raise ImageError("the image is too large for the decoder's pixel limit") from None
    except MemoryError:
        raise ImageError("the image could not be decoded: out of memory") from None
    except Exception as exc:  # every other Pillow failure; its message may quote header bytes
        # Deliberately `from None`: Pillow's own message can contain bytes of the file, and a
        # chained traceback would carry them into logs outside the enclave. Pillow has no type for
        # a truncated file: it raises a plain OSError, as for corrupt data (and its decoders signal
        # the end of the pixel data the same way whether the file ended or the image data did), so
        # the two share one message rather than be told apart by Pillow's text.
        if isinstance(exc, OSError | EOFError):
            raise ImageError("the image data is truncated or corrupt and cannot be decoded") from None
        raise ImageError(f"the image data is corrupt and cannot be decoded ({type(exc).__name__})") from None


def _unsupported_message() -> str:
    return f"not an image in an accepted format ({', '.join(ACCEPTED_FORMATS)})"


def _resized_size(width: int, height: int, resize: int) -> tuple[int, int]:
    """torchvision's ``Resize(resize)`` output size: the shorter side becomes ``resize``, and the
    longer one ``int(resize * long / short)`` (truncated, exactly as torchvision computes it)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(resize * long / short)
    return (resize, new_long) if width <= height else (new_long, resize)


def to_tensor(image: Image.Image, pre: Preprocessing) -> NDArray[np.float32]:
    """Resize, centre-crop, scale to 0..1, normalise and lay out ``image`` as ``pre`` says.

    Returns a C-contiguous float32 array of shape :meth:`Preprocessing.input_shape`:
    ``(1, channels, crop, crop)`` (``"NCHW"``) or ``(1, crop, crop, channels)`` (``"NHWC"``). Matches
    torchvision's ``Resize(resize)`` (bilinear, on a PIL image) + ``CenterCrop(crop)`` + ``ToTensor()``
    + ``Normalize(mean, std)``: same output size, same crop offsets (``round((size - crop) / 2)``),
    same Pillow resampling, same float32 maths. For one channel the crop is converted to grey with
    Pillow's ``convert("L")`` (ITU-R 601-2 luma, as torchvision's ``Grayscale()``), after the crop, so
    only ``crop`` x ``crop`` pixels are converted; a grey upload comes back with its own values.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL.Image.Image, not {type(image).__name__}")
    if not isinstance(pre, Preprocessing):
        raise TypeError(f"pre must be a Preprocessing, not {type(pre).__name__}")
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(f"the image has zero size ({width}x{height})")

    crop = pre.crop
    new_w, new_h = _resized_size(width, height, pre.resize)
    left = round((new_w - crop) / 2.0)  # torchvision: int(round((w - crop) / 2.0))
    top = round((new_h - crop) / 2.0)
    if new_w * new_h <= _MAX_EXACT_RESIZE_PIXELS:
        resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        window = resized.crop((left, top, left + crop, top + crop))
    else:
        # Resample only the source region that maps onto the crop window, at the same scale.
        sx, sy = width / new_w, height / new_h
        box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
        window = image.resize((crop, crop), Image.Resampling.BILINEAR, box=box)

    if pre.channels == 1:
        window = window.convert("L")
    pixels = np.asarray(window, dtype=np.uint8).astype(np.float32)  # (crop, crop, 3) RGB, or (crop, crop)
    pixels = pixels.reshape(crop, crop, pre.channels) / np.float32(255.0)
    if pre.channel_order == "BGR":
        pixels = pixels[:, :, ::-1]
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    normalised = (pixels - mean) / std
    if pre.layout == "NCHW":
        normalised = normalised.transpose(2, 0, 1)
    return np.ascontiguousarray(normalised[np.newaxis], dtype=np.float32)
