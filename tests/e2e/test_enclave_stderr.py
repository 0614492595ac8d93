"""Nothing derived from an image leaves the enclave: its stderr (the host's log) carries only its own
lines, whatever Pillow thinks of an image."""

from __future__ import annotations

import io
import struct

from PIL import Image

from enclave_infer import Client, ModelInfo

from .conftest import Deployment


def corrupt_exif_jpeg() -> bytes:
    """A JPEG whose EXIF block names a 100,000-byte description lying beyond its end: Pillow warns
    "Tag data larger than file. Skipping tag 270" when the enclave reads the orientation."""
    entries = struct.pack("<HHLL", 0x010E, 2, 100_000, 26)  # ImageDescription, ASCII, outside the block
    entries += struct.pack("<HHLHH", 0x0112, 3, 1, 1, 0)  # Orientation: upright
    tiff = b"II*\x00" + struct.pack("<L", 8) + struct.pack("<H", 2) + entries + struct.pack("<L", 0)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="JPEG", exif=b"Exif\x00\x00" + tiff)
    return buffer.getvalue()


def test_pillow_says_nothing_about_an_image_on_stderr(served: ModelInfo, deployment: Deployment) -> None:
    with Client(deployment.url, deployment.constraint) as client:
        result = client.classify(corrupt_exif_jpeg(), top=1)
    assert result.results[0].label == "red"  # the image was decoded and classified
    log = deployment.log_text()
    for fragment in ("Tag data larger than file", "Skipping tag", "EXIF", "PIL", "Warning"):
        assert fragment not in log, log
