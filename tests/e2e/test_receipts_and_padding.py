"""Signed receipts (verified offline, through the CLI) and padding (what an observer of the
ciphertext sees), against a real ``serve``."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from enclave_infer import Client, ConstraintError, InvalidImageError
from enclave_infer.attestation import constraints, receipt
from enclave_infer.attestation.evidence import Verifier
from enclave_infer.client._owner import load_owner_key
from enclave_infer.protocol import ohttp, padding

from .conftest import COLOUR_LABELS, Deployment, png, run_cli, start_server, stop_server


@pytest.fixture(scope="module")
def unpadded(workdir: Path, owner_key: Path, files: dict[str, Path]) -> Iterator[Deployment]:
    """A second server, measured with padding off: what the first would leak without it."""
    config = workdir / "unpadded.toml"
    config.write_text(files["config"].read_text() + "\n[padding]\nenabled = false\n")
    (workdir / "unpadded").mkdir(exist_ok=True)
    d = start_server(workdir / "unpadded", owner_key, config=config, data_dir=workdir / "unpadded-data")
    with Client(d.url, d.constraint) as client:
        client.provision(files["model"].read_bytes(), COLOUR_LABELS, load_owner_key(owner_key))
    yield d
    stop_server(d)


def noise(seed: int) -> bytes:
    """An image of its own size and content: a different answer, a different length of image."""
    rng = random.Random(seed)
    size = (rng.randrange(32, 400), rng.randrange(32, 300))
    colour = tuple(rng.randrange(256) for _ in range(3))
    image = Image.new("RGB", size, colour)  # type: ignore[arg-type]
    image.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(size[0] * size[1] // 7)])  # type: ignore[misc]
    buf = io.BytesIO()
    image.save(buf, "PNG" if seed % 2 else "JPEG")
    return buf.getvalue()


def wire(
    d: Deployment, images: list[bytes], top: int, *, receipt: bool = False
) -> tuple[list[int], list[int], list[str]]:
    """Encapsulated request and response lengths of each classification, and its top label (or the
    refusal's exception name)."""
    requests: list[int] = []
    responses: list[int] = []
    real = httpx.HTTPTransport()

    def recording(request: httpx.Request) -> httpx.Response:
        response = real.handle_request(request)
        if request.url.path == "/v1/ohttp":
            response.read()
            requests.append(len(request.content))
            responses.append(len(response.content))
        return response

    labels = []
    with Client(d.url, d.constraint, transport=httpx.MockTransport(recording)) as client:
        for image in images:
            try:
                labels.append(client.classify(image, top=top, receipt=receipt).results[0].label)
            except InvalidImageError as exc:
                labels.append(type(exc).__name__)
    real.close()
    return requests, responses, labels


def test_padding_gives_classifications_one_length_per_top_and_requests_few(
    served: object, deployment: Deployment, unpadded: Deployment
) -> None:
    images = [png((230, 20, 20)), png((20, 20, 230)), png((20, 230, 20)), png((128, 128, 128))]
    images += [noise(seed) for seed in range(12)] + [b"not an image", png((1, 2, 3))[:-40]]
    for top in (1, 3):
        requests, responses, labels = wire(deployment, images, top)
        assert len(set(labels)) >= 4 and "InvalidImageError" in labels  # answers and refusals differ ...
        assert len(set(responses)) == 1  # ... and their ciphertexts all have one length
        bare_requests, bare_responses, bare_labels = wire(unpadded, images, top)
        assert bare_labels == labels
        assert len(set(bare_responses)) > 1  # without padding, the length says something
        # requests: Padmé lengths of the binary HTTP message, at most 11.7% longer
        framing = ohttp.REQUEST_HEADER.size + 32 + 16  # hdr, X25519 enc, AES-GCM tag
        for padded, bare in zip(requests, bare_requests, strict=True):
            assert padded - framing == padding.padme(bare - framing)
            assert padded <= bare * 1.117 + framing
        assert len(set(requests)) < len(set(bare_requests))
    # answers with a receipt: one length too (longer by the receipt, which is this instance's)
    _, with_receipts, labels = wire(deployment, images[:6], 1, receipt=True)
    assert len(set(with_receipts)) == 1 and len(set(labels)) >= 3


def test_a_receipt_verifies_offline_and_names_the_image(
    served: object, deployment: Deployment, files: dict[str, Path], tmp_path: Path
) -> None:
    out = run_cli(
        "classify", deployment.url, deployment.constraint, str(files["red"]), str(files["blue"]),
        "--top", "2", "--receipt", str(tmp_path / "receipts"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    kept = tmp_path / "receipts" / "red.png.receipt.json"
    assert sorted(p.name for p in (tmp_path / "receipts").iterdir()) == [
        "blue.png.receipt.json",
        "red.png.receipt.json",
    ]
    ok = run_cli(
        "verify-receipt", str(kept), "--image", str(files["red"]), "--constraint", deployment.constraint
    )
    assert ok.returncode == 0, ok.stderr
    assert "receipt verified" in ok.stdout and "answer: red (" in ok.stdout
    # moved to another image
    moved = run_cli(
        "verify-receipt", str(kept), "--image", str(files["blue"]), "--constraint", deployment.constraint
    )
    assert moved.returncode == 1
    assert moved.stderr.strip() == (
        "enclave-infer: error: receipt refused: this image is not the one the receipt covers"
    )
    # another enclave's constraint
    other = run_cli("verify-receipt", str(kept), "--constraint", "C:" + "00" * 32 + " SEC:INSECURE")
    assert other.returncode == 1 and len(other.stderr.strip().splitlines()) == 1
    # its answer removed: nothing left to be proof of
    document = json.loads(kept.read_bytes())
    del document["response"]
    stripped = tmp_path / "stripped.receipt.json"
    stripped.write_text(json.dumps(document))
    bare = run_cli("verify-receipt", str(stripped), "--constraint", deployment.constraint)
    assert bare.returncode == 1
    assert bare.stderr.strip() == (
        "enclave-infer: error: receipt refused: it carries no answer (the answer it covers was removed)"
    )


def test_any_change_to_a_receipt_is_refused(
    served: object, deployment: Deployment, files: dict[str, Path]
) -> None:
    image = files["red"].read_bytes()
    with Client(deployment.url, deployment.constraint) as client:
        result = client.classify(image, receipt=True)
    assert result.receipt is not None
    kept = receipt.Receipt.decode(result.receipt)
    policy, production = constraints.parse(deployment.constraint), Verifier.production()
    statement, _ = receipt.verify(kept, policy, verifier=production, image=image)
    assert statement.model_sha256 == result.model_sha256
    assert statement.response_sha256 != statement.image_sha256
    document = json.loads(kept.evidence)
    changed = 0
    for field in ("statement", "signature", "key_config", "nonce", "response", "receipt_key", "config"):
        for position in (0, 7, -1):
            if field in ("receipt_key", "config"):  # inside the evidence document
                raw = bytearray(base64.b64decode(document[field]))
                raw[position] ^= 0x02
                forged = dataclasses.replace(
                    kept, evidence=json.dumps({**document, field: base64.b64encode(raw).decode()}).encode()
                )
            elif field == "response":
                assert kept.response is not None
                text = list(kept.response)
                text[position] = "x" if text[position] != "x" else "y"
                forged = dataclasses.replace(kept, response="".join(text))
            else:
                raw = bytearray(getattr(kept, field))
                raw[position] ^= 0x02
                forged = dataclasses.replace(kept, **{field: bytes(raw)})
            with pytest.raises((receipt.ReceiptError, ConstraintError)):
                receipt.verify(forged, policy, verifier=production, image=image)
            changed += 1
    assert changed == 21
    # the statement cannot be replaced by another receipt's: signed under this instance's key only
    with Client(deployment.url, deployment.constraint) as client:
        second = client.classify(files["blue"].read_bytes(), receipt=True).receipt
    assert second is not None
    spliced = dataclasses.replace(kept, statement=receipt.Receipt.decode(second).statement)
    with pytest.raises(receipt.ReceiptError, match="signature does not verify"):
        receipt.verify(spliced, policy, verifier=production)


def test_a_receipt_signed_by_another_instance_is_refused(
    served: object, deployment: Deployment, unpadded: Deployment, files: dict[str, Path]
) -> None:
    image = files["red"].read_bytes()
    receipts = []
    for d in (deployment, unpadded):
        with Client(d.url, d.constraint) as client:
            signed = client.classify(image, receipt=True).receipt
            assert signed is not None
            receipts.append(receipt.Receipt.decode(signed))
    ours, theirs = receipts
    # our statement and signature, presented with the other instance's evidence (and binding)
    presented = dataclasses.replace(
        ours, evidence=theirs.evidence, key_config=theirs.key_config, nonce=theirs.nonce
    )
    with pytest.raises(receipt.ReceiptError, match="signed by another instance"):
        receipt.verify(
            presented, constraints.parse(unpadded.constraint), verifier=Verifier.production(), image=image
        )


def test_a_receipt_of_another_enclave_is_refused_without_a_constraint(
    served: object, deployment: Deployment, unpadded: Deployment, files: dict[str, Path], tmp_path: Path
) -> None:
    """A receipt proves which enclave answered only against a constraint: without one, a receipt
    minted by an enclave of another measurement (here: another configuration, so another code hash)
    verified, "receipt verified" and exit 0. Now verify-receipt asks for a constraint, and verifies
    without one only when told that this proves nothing, saying so."""
    assert unpadded.code_hash != deployment.code_hash
    out = run_cli(
        "classify", unpadded.url, unpadded.constraint, str(files["red"]), "--receipt", str(tmp_path)
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    theirs = tmp_path / "red.png.receipt.json"
    # against the constraint of the enclave the submitter meant: refused
    ours = run_cli(
        "verify-receipt", str(theirs), "--image", str(files["red"]), "--constraint", deployment.constraint
    )
    assert ours.returncode == 1 and len(ours.stderr.strip().splitlines()) == 1, ours.stderr
    assert "receipt verified" not in ours.stdout
    # without a constraint: refused too, in one line that says what to give
    bare = run_cli("verify-receipt", str(theirs), "--image", str(files["red"]))
    assert bare.returncode == 1, bare.stdout
    assert "receipt verified" not in bare.stdout
    (line,) = bare.stderr.strip().splitlines()
    assert line.startswith("enclave-infer: error: ") and '--constraint "C:' in line
    assert "--unsafe-no-constraint" in line
    # told explicitly: signature, binding, answer and image are checked, and it says what that is worth
    unsafe = run_cli("verify-receipt", str(theirs), "--image", str(files["red"]), "--unsafe-no-constraint")
    assert unsafe.returncode == 0, unsafe.stderr
    assert "receipt verified" in unsafe.stdout and unpadded.code_hash in unsafe.stdout
    assert "constraint: none" in unsafe.stdout
    assert "proves nothing about which enclave" in unsafe.stderr
    moved = run_cli("verify-receipt", str(theirs), "--image", str(files["blue"]), "--unsafe-no-constraint")
    assert moved.returncode == 1 and "not the one the receipt covers" in moved.stderr
    # a constraint and the flag together: a contradiction, refused
    both = run_cli(
        "verify-receipt", str(theirs), "--constraint", unpadded.constraint, "--unsafe-no-constraint"
    )  # fmt: skip
    assert both.returncode != 0 and "receipt verified" not in both.stdout
