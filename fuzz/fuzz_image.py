"""The enclave's image decoder: decode_image with a small max_pixels, then to_tensor.

The input is the image file itself (the seeds are tiny PNG, JPEG, GIF, BMP, TIFF and WEBP files made
with Pillow by ``seeds.py``); the preprocessing is picked by the input's length. Pillow's own plugins
are instrumented too. Beyond "only ImageError escapes": a decoded image is RGB within max_pixels, and
the tensor has the preprocessing's shape and finite values.
"""

from __future__ import annotations

import atheris

from _harness import EnclaveInferError, main

with atheris.instrument_imports(include=["enclave_infer", "PIL"]):
    import numpy as np

    from enclave_infer.enclave.preprocess import ImageError, decode_image, to_tensor
    from enclave_infer.protocol.api import Preprocessing

MAX_PIXELS = 64 * 64
PREPROCESSINGS = [
    Preprocessing(resize=8, crop=8),
    Preprocessing(resize=16, crop=7, channel_order="BGR", layout="NHWC"),
    Preprocessing(resize=5, crop=3, mean=(0.5,), std=(0.25,), channels=1),
]


def test_one_input(data: bytes) -> None:
    try:
        image = decode_image(data, max_pixels=MAX_PIXELS)
    except ImageError:
        return
    assert image.mode == "RGB", image.mode
    width, height = image.size
    assert 0 < width * height <= MAX_PIXELS, image.size
    pre = PREPROCESSINGS[len(data) % len(PREPROCESSINGS)]
    try:
        tensor = to_tensor(image, pre)
    except (ImageError, EnclaveInferError):
        return
    assert tensor.shape == pre.input_shape() and tensor.dtype == np.float32, tensor.shape
    assert bool(np.isfinite(tensor).all())


if __name__ == "__main__":
    main(test_one_input)
