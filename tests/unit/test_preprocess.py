"""Tests for the enclave's image decoding and preprocessing (Pillow + numpy only)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image, ImageFile

from enclave_infer.enclave.preprocess import (
    ACCEPTED_FORMATS,
    ImageError,
    decode_image,
    to_tensor,
)
from enclave_infer.errors import UsageError
from enclave_infer.protocol.api import Preprocessing

RAW = Preprocessing(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # to_tensor gives plain 0..1 pixels
MAX = 50_000_000


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def smooth(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like image: coarse noise, upscaled smoothly."""
    return noise(width // 8 + 2, height // 8 + 2, seed).resize((width, height), Image.Resampling.BICUBIC)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG header announcing ``width`` x ``height`` RGB, followed by far too little data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def reference_tensor(image: Image.Image, pre: Preprocessing) -> NDArray[np.float32]:
    """torchvision's Resize + CenterCrop + ToTensor + Normalize, spelled out the straightforward way."""
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new_short, new_long = pre.resize, int(pre.resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = round((new_h - pre.crop) / 2.0)  # torchvision: int(round((h - crop) / 2.0))
    left = round((new_w - pre.crop) / 2.0)
    cropped = resized.crop((left, top, left + pre.crop, top + pre.crop))
    pixels: NDArray[np.float32] = np.asarray(cropped).astype(np.float32) / np.float32(255)
    mean: NDArray[np.float32] = np.asarray(pre.mean, dtype=np.float32)
    std: NDArray[np.float32] = np.asarray(pre.std, dtype=np.float32)
    x: NDArray[np.float32] = (pixels - mean) / std
    return x.transpose(2, 0, 1)[None]


# --- Preprocessing -----------------------------------------------------------------------------


def test_preprocessing_defaults_are_imagenet() -> None:
    pre = Preprocessing()
    assert pre.to_json() == {
        "resize": 256,
        "crop": 224,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "channel_order": "RGB",
        "layout": "NCHW",
    }


def test_preprocessing_json_round_trip() -> None:
    pre = Preprocessing(
        resize=320, crop=300, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0), channel_order="BGR", layout="NHWC"
    )
    assert Preprocessing.from_json(pre.to_json()) == pre
    assert Preprocessing.from_json({}) == Preprocessing()
    assert Preprocessing.from_json({"mean": [0, 0, 0], "std": [1, 1, 1]}) == RAW
    assert isinstance(Preprocessing.from_json({"mean": [1, 2, 3]}).mean, tuple)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"resize": 256, "colour": "RGB"}, "unknown keys: colour"),
        ({"resize": 0}, "resize"),
        ({"resize": -5}, "resize"),
        ({"resize": 256.0}, "resize"),
        ({"resize": True}, "resize"),
        ({"resize": "256"}, "resize"),
        ({"crop": 0}, "crop"),
        ({"resize": 200, "crop": 224}, "must not be larger"),
        ({"resize": 100_000, "crop": 224}, "resize"),
        ({"mean": [0.5, 0.5]}, "mean"),
        ({"mean": [0.5, 0.5, 0.5, 0.5]}, "mean"),
        ({"mean": "0.5"}, "mean"),
        ({"mean": [0.5, "x", 0.5]}, "mean"),
        ({"mean": [0.5, float("nan"), 0.5]}, "mean"),
        ({"std": [0.2, 0.0, 0.2]}, "non-zero"),
        ({"std": [0.2, 0.2]}, "std"),
        ({"std": [0.2, float("inf"), 0.2]}, "std"),
        ({"channel_order": "RGBA"}, "channel_order"),
        ({"channel_order": "rgb"}, "channel_order"),
        ({"layout": "CHW"}, "layout"),
    ],
)
def test_preprocessing_rejects_bad_values(data: dict[str, object], fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment) as info:
        Preprocessing.from_json(data)
    assert "\n" not in str(info.value)


def test_preprocessing_from_json_needs_an_object() -> None:
    with pytest.raises(UsageError, match="JSON object"):
        Preprocessing.from_json([256, 224])  # type: ignore[arg-type]


def test_preprocessing_validates_direct_construction_and_is_frozen() -> None:
    with pytest.raises(UsageError, match="crop"):
        Preprocessing(resize=100, crop=101)
    pre = Preprocessing()
    with pytest.raises(AttributeError):
        pre.crop = 1  # type: ignore[misc]


# --- to_tensor ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("layout", "shape"), [("NCHW", (1, 3, 224, 224)), ("NHWC", (1, 224, 224, 3))])
def test_to_tensor_shape_and_dtype(layout: str, shape: tuple[int, ...]) -> None:
    x = to_tensor(noise(320, 240), Preprocessing(layout=layout))
    assert x.shape == shape
    assert x.dtype == np.float32
    assert x.flags.c_contiguous


def test_to_tensor_other_crop_sizes() -> None:
    assert to_tensor(noise(50, 70), Preprocessing(resize=300, crop=288)).shape == (1, 3, 288, 288)
    assert to_tensor(noise(1, 1), Preprocessing(resize=8, crop=8)).shape == (1, 3, 8, 8)


def test_centre_crop_offsets_without_scaling() -> None:
    # Shorter side already 256: Resize keeps the image, CenterCrop takes rows 16..240 and columns
    # round((512 - 224) / 2) = 144 .. 368; the tensor is exactly those source pixels.
    image = noise(512, 256)
    x = to_tensor(image, RAW)
    expected = np.asarray(image)[16:240, 144:368].astype(np.float32) / 255
    np.testing.assert_array_equal(x[0].transpose(1, 2, 0), expected)


def test_centre_crop_rounds_half_offsets_like_torchvision() -> None:
    # 256 x 259: (259 - 224) / 2 = 17.5, and Python's round() (torchvision's too) gives 18.
    image = noise(256, 259)
    x = to_tensor(image, RAW)
    expected = np.asarray(image)[18:242, 16:240].astype(np.float32) / 255
    np.testing.assert_array_equal(x[0].transpose(1, 2, 0), expected)


@pytest.mark.parametrize("size", [(451, 300), (300, 451), (640, 480), (257, 1000), (1000, 256), (224, 224)])
def test_resize_and_crop_match_torchvision_semantics(size: tuple[int, int]) -> None:
    image = smooth(*size)
    pre = Preprocessing()
    np.testing.assert_array_equal(to_tensor(image, pre), reference_tensor(image, pre))


def test_extreme_aspect_ratio_is_resampled_into_the_crop_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import enclave_infer.enclave.preprocess as preprocess

    # Full resize of this 3 x 40000 strip would be 256 x 3413333 pixels (2.6 GB of RGB).
    strip = noise(3, 40_000)
    assert to_tensor(strip, RAW).shape == (1, 3, 224, 224)
    # The crop-window path agrees with resize-then-crop to within one 8-bit level.
    image = smooth(700, 500)
    exact = to_tensor(image, RAW)
    monkeypatch.setattr(preprocess, "_MAX_EXACT_RESIZE_PIXELS", 0)
    windowed = to_tensor(image, RAW)
    assert np.abs(windowed - exact).max() <= 1 / 255 + 1e-6
    assert np.mean(windowed != exact) < 0.1


def test_normalisation_values() -> None:
    image = Image.new("RGB", (300, 260), (255, 128, 0))
    pre = Preprocessing()
    x = to_tensor(image, pre)
    expected = [(255 / 255 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (0 / 255 - 0.406) / 0.225]
    for channel, value in enumerate(expected):
        np.testing.assert_allclose(x[0, channel], value, rtol=1e-6)
    # EfficientNet-Lite's (x - 127) / 128 on 0..255.
    lite = Preprocessing(mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    np.testing.assert_allclose(to_tensor(image, lite)[0, :, 0, 0], [1.0, 1 / 128, -127 / 128], atol=1e-6)


def test_bgr_and_nhwc() -> None:
    image = Image.new("RGB", (256, 256), (10, 20, 30))
    pre = Preprocessing(mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 1.0), channel_order="BGR", layout="NHWC")
    x = to_tensor(image, pre)
    assert x.shape == (1, 224, 224, 3)
    # Channels come out blue, green, red; mean/std are given in that order.
    expected = [(30 / 255 - 0.1) / 0.5, (20 / 255 - 0.2) / 0.25, (10 / 255 - 0.3) / 1.0]
    np.testing.assert_allclose(x[0, 5, 7], expected, rtol=1e-6)


def test_to_tensor_converts_other_modes() -> None:
    grey = Image.new("L", (256, 256), 200)
    x = to_tensor(grey, RAW)
    np.testing.assert_allclose(x, 200 / 255, rtol=1e-6)


def test_to_tensor_rejects_wrong_argument_types() -> None:
    with pytest.raises(TypeError):
        to_tensor(np.zeros((4, 4, 3)), RAW)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        to_tensor(noise(4, 4), RAW.to_json())  # type: ignore[arg-type]


# --- one channel (grey) ---------------------------------------------------------------------------


GREY = Preprocessing(mean=(0.0,), std=(1.0,), channels=1)


def test_grey_preprocessing_json() -> None:
    pre = Preprocessing(mean=(0.5,), std=(0.25,), channels=1, layout="NHWC")
    assert pre.to_json() == {
        "resize": 256,
        "crop": 224,
        "mean": [0.5],
        "std": [0.25],
        "channel_order": "RGB",
        "layout": "NHWC",
        "channels": 1,
    }
    assert Preprocessing.from_json(pre.to_json()) == pre
    assert "channels" not in Preprocessing().to_json()  # colour manifests read as before the field
    assert Preprocessing.from_json({"channels": 3}) == Preprocessing()
    assert (pre.input_shape(), Preprocessing(crop=200).input_shape()) == ((1, 224, 224, 1), (1, 3, 200, 200))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"channels": 2}, "preprocessing.channels must be 1 or 3, got 2"),
        ({"channels": True}, "preprocessing.channels must be 1 or 3, got True"),
        ({"channels": "1"}, "preprocessing.channels must be 1 or 3, got '1'"),
        (
            {"channels": 1},
            "preprocessing.mean must be a list of 1 number (one per channel), got (0.485, 0.456, 0.406)",
        ),
        (
            {"channels": 1, "mean": [0.5]},
            "preprocessing.std must be a list of 1 number (one per channel), got (0.229, 0.224, 0.225)",
        ),
        ({"mean": [0.5]}, "preprocessing.mean must be a list of 3 numbers (one per channel), got [0.5]"),
        (
            {"channels": 1, "mean": [0.5], "std": [0.5], "channel_order": "BGR"},
            "preprocessing.channel_order must be 'RGB' for one channel (grey images)",
        ),
    ],
)
def test_grey_preprocessing_rejects(data: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError) as info:
        Preprocessing.from_json(data)
    assert str(info.value) == message


@pytest.mark.parametrize(("layout", "shape"), [("NCHW", (1, 1, 224, 224)), ("NHWC", (1, 224, 224, 1))])
def test_grey_to_tensor_is_pillows_luma_of_the_crop(layout: str, shape: tuple[int, ...]) -> None:
    image = smooth(320, 240)
    pre = Preprocessing(mean=(0.0,), std=(1.0,), channels=1, layout=layout)
    x = to_tensor(image, pre)
    assert x.shape == shape and x.dtype == np.float32 and x.flags.c_contiguous
    colour = reference_tensor(image, RAW)[0].transpose(1, 2, 0)  # the RGB crop, 0..1
    crop = Image.fromarray(np.rint(colour * 255).astype(np.uint8))
    np.testing.assert_array_equal(x.reshape(224, 224), np.asarray(crop.convert("L"), np.float32) / 255)


def test_grey_to_tensor_values() -> None:
    # ITU-R 601-2 luma: (10 * 299 + 20 * 587 + 30 * 114) / 1000 = 18.15, rounded to 18.
    x = to_tensor(Image.new("RGB", (256, 256), (10, 20, 30)), GREY)
    np.testing.assert_allclose(x, 18 / 255, rtol=1e-6)
    # A grey upload (decoded as RGB) comes back with its own values; mean and std apply.
    pre = Preprocessing(mean=(0.5,), std=(0.25,), channels=1)
    grey = decode_image(encode(Image.new("L", (300, 260), 200), "PNG"), max_pixels=MAX)
    np.testing.assert_allclose(to_tensor(grey, pre), (200 / 255 - 0.5) / 0.25, rtol=1e-6)


# --- decode_image ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_decode_accepted_formats(fmt: str) -> None:
    assert fmt in ACCEPTED_FORMATS
    image = decode_image(encode(smooth(64, 48), fmt), max_pixels=MAX)
    assert image.mode == "RGB"
    assert image.size == (64, 48)


def test_decode_lossless_png_is_exact() -> None:
    original = noise(33, 17)
    np.testing.assert_array_equal(np.asarray(decode_image(encode(original, "PNG"), max_pixels=MAX)), original)


def test_decode_multi_picture_jpeg_as_jpeg() -> None:
    data = encode(Image.new("RGB", (8, 8), (200, 0, 0)), "MPO", save_all=True, append_images=[noise(8, 8)])
    image = decode_image(data, max_pixels=MAX)
    assert image.size == (8, 8)
    assert np.asarray(image)[4, 4, 0] > 150


@pytest.mark.parametrize(
    ("mode", "colour"), [("L", 90), ("LA", (90, 255)), ("RGBA", (1, 2, 3, 4)), ("P", 5), ("I;16", 300)]
)
def test_decode_converts_modes_to_rgb(mode: str, colour: object) -> None:
    image = decode_image(encode(Image.new(mode, (10, 10), colour), "PNG"), max_pixels=MAX)  # type: ignore[arg-type]
    assert image.mode == "RGB"
    assert image.size == (10, 10)


def test_decode_cmyk_jpeg() -> None:
    image = decode_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"), max_pixels=MAX)
    assert image.mode == "RGB"
    r, g, b = np.asarray(image)[8, 8]
    assert r > 200 and g < 60 and b < 60


def test_decode_animation_uses_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert tuple(np.asarray(decode_image(data, max_pixels=MAX))[0, 0]) == (255, 0, 0)


def _left_red_right_blue(width: int = 40, height: int = 20) -> Image.Image:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_decode_applies_exif_orientation(fmt: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; display rotated 90° clockwise
    data = encode(_left_red_right_blue(), fmt, exif=exif.tobytes())
    image = decode_image(data, max_pixels=MAX)
    assert image.size == (20, 40)  # width and height swapped
    pixels = np.asarray(image).astype(int)
    # Rotating clockwise brings the stored left (red) half to the top.
    assert pixels[5, 10, 0] > 200 and pixels[5, 10, 2] < 50
    assert pixels[35, 10, 2] > 200 and pixels[35, 10, 0] < 50


def test_decode_without_exif_keeps_orientation() -> None:
    image = decode_image(encode(_left_red_right_blue(), "PNG"), max_pixels=MAX)
    assert image.size == (40, 20)


def test_max_pixels_is_inclusive() -> None:
    data = encode(noise(100, 100), "PNG")
    assert decode_image(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageError, match=r"too large: 100x100 is 10000 pixels, the limit is 9999"):
        decode_image(data, max_pixels=9_999)


def test_max_pixels_is_checked_before_decoding() -> None:
    # The header claims 9000 x 9000 and the data is a few bytes: refused as too large, not as
    # truncated, so the pixel data was never decoded (nor 243 MB allocated for it).
    with pytest.raises(ImageError, match="too large"):
        decode_image(png_claiming(9000, 9000), max_pixels=1_000_000)
    with pytest.raises(ImageError, match="truncated"):
        decode_image(png_claiming(900, 900), max_pixels=1_000_000)


def test_pillow_bomb_limit_is_reported_as_image_error() -> None:
    # Above twice Image.MAX_IMAGE_PIXELS Pillow refuses by itself, whatever max_pixels says.
    with pytest.raises(ImageError, match="too large"):
        decode_image(png_claiming(20_000, 20_000), max_pixels=10**10)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # decode_image never changes Pillow's global


def _truncated_jpeg() -> bytes:
    data = encode(smooth(128, 128), "JPEG", quality=90)
    return data[: len(data) // 2]


def _truncated_png() -> bytes:
    data = encode(noise(64, 64), "PNG")
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"Dear enclave, please classify this text.\n", "not an image"),
        (bytes(range(256)) * 8, "not an image"),
        (b"\x89PNG\r\n\x1a\n", "not an image"),
        (_truncated_png(), "truncated"),
        (_truncated_jpeg(), "truncated"),
        (encode(noise(64, 64), "JPEG")[:200], "truncated"),
        (png_claiming(0, 10), "not an image|zero size"),
        (encode(noise(8, 8), "PPM"), "not an image in an accepted format"),
        (encode(noise(8, 8), "TGA"), "not an image in an accepted format"),
        (encode(noise(16, 16), "ICO"), "not an image in an accepted format"),
        (encode(noise(8, 8), "JPEG2000"), "not an image in an accepted format"),
        (encode(noise(8, 8), "PDF"), "not an image in an accepted format"),
    ],
    ids=[
        "empty",
        "text",
        "binary",
        "png-signature-only",
        "truncated-png",
        "truncated-jpeg",
        "jpeg-header-only",
        "zero-width-png",
        "ppm",
        "tga",
        "ico",
        "jpeg2000",
        "pdf",
    ],
)
def test_bad_images_raise_image_error(data: bytes, fragment: str) -> None:
    with pytest.raises(ImageError, match=fragment) as info:
        decode_image(data, max_pixels=MAX)
    message = str(info.value)
    assert "\n" not in message
    assert isinstance(info.value, ValueError)
    # The message never quotes the data, and no Pillow exception is chained into tracebacks.
    assert "\\x" not in message and "b'" not in message and "BytesIO" not in message
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_corrupt_image_data_raises_image_error() -> None:
    data = bytearray(encode(smooth(64, 64), "PNG"))
    data[60:80] = bytes(20)  # inside the compressed IDAT stream
    with pytest.raises(ImageError):
        decode_image(bytes(data), max_pixels=MAX)


def test_decode_argument_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(noise(4, 4), "PNG")
    for bad in (0, -1, True, 1.5):
        with pytest.raises(UsageError, match="max_pixels"):
            decode_image(data, max_pixels=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        decode_image("not bytes", max_pixels=MAX)  # type: ignore[arg-type]
    assert decode_image(bytearray(data), max_pixels=MAX).size == (4, 4)  # type: ignore[arg-type]
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(UsageError, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(data, max_pixels=MAX)


def test_decode_then_to_tensor() -> None:
    x = to_tensor(decode_image(encode(smooth(500, 375), "JPEG"), max_pixels=MAX), Preprocessing())
    assert x.shape == (1, 3, 224, 224)
    assert np.isfinite(x).all()
