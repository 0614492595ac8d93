"""The model owner's signed manifest: Manifest.decode and verify, parse_sf_binary, and the step the
enclave takes next, Preprocessing.from_json on the manifest's preprocessing.

Input is either raw bytes or a valid manifest with values replaced by the input (so that the later
checks are reached), signed by a fixed owner key half of the time. Beyond "only EnclaveInferError
escapes": a manifest that decodes re-encodes and decodes to itself.
"""

from __future__ import annotations

import copy

import atheris

from _harness import EnclaveInferError, dumps, main, mutate_doc

with atheris.instrument_imports(include=["enclave_infer"]):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from enclave_infer.protocol.api import Preprocessing
    from enclave_infer.protocol.manifest import (
        MANIFEST_TYPE,
        SIGNATURE_CONTEXT,
        Manifest,
        parse_sf_binary,
        sf_binary,
    )

OWNER = Ed25519PrivateKey.from_private_bytes(bytes(32))
OWNER_PUBLIC = OWNER.public_key().public_bytes_raw()
VALID = {
    "type": MANIFEST_TYPE,
    "files": [{"format": "onnx", "sha256": "ab" * 32, "size": 1234}],
    "labels": ["cat", "dog"],
    "preprocessing": Preprocessing().to_json(),
    "version": 2,
}
KEYS = ("type", "files", "labels", "preprocessing", "version", "format", "sha256", "size", "resize",
        "crop", "mean", "std", "channel_order", "layout", "channels")  # fmt: skip


def accepted(manifest: Manifest) -> None:
    """What the enclave does with a manifest that verified: re-encode, read its preprocessing."""
    again = Manifest.decode(manifest.encode())
    assert again.encode() == manifest.encode()
    Preprocessing.from_json(manifest.preprocessing)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 3)
    try:
        if mode == 0:
            accepted(Manifest.decode(fdp.ConsumeBytes(fdp.remaining_bytes())))
        elif mode == 1:
            document = dumps(fdp, mutate_doc(fdp, copy.deepcopy(VALID), KEYS))
            if fdp.ConsumeBool():
                accepted(Manifest.decode(document))
            else:
                signature = OWNER.sign(SIGNATURE_CONTEXT + document)
                accepted(Manifest.verify(document, signature, OWNER_PUBLIC))
        elif mode == 2:
            value = fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes())
            raw = parse_sf_binary(value)
            assert parse_sf_binary(sf_binary(raw)) == raw
        else:
            signature = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 80))
            key = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
            Manifest.verify(fdp.ConsumeBytes(fdp.remaining_bytes()), signature, key)
    except EnclaveInferError:
        pass


if __name__ == "__main__":
    main(test_one_input)
