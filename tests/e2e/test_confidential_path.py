"""The whole confidential path with real processes on loopback, as its users drive it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from enclave_infer import (
    AttestationError,
    Classification,
    Client,
    ConstraintError,
    InvalidImageError,
    ModelInfo,
    ProvisionRefusedError,
    RemoteError,
    TransportError,
)
from enclave_infer.client._owner import generate_owner_key, load_owner_key
from enclave_infer.protocol import bhttp, ohttp

from .conftest import CLI as CLI_PATH
from .conftest import Deployment, free_port, png, run_cli, start_server, stop_server


def provision(
    d: Deployment, files: dict[str, Path], *extra: str, key: Path | None = None, model: Path | None = None
):
    return run_cli(
        "provision", d.url, d.constraint, str(model or files["model"]), str(files["labels"]),
        "--owner-key", str(key or d.owner_key), *extra,
    )  # fmt: skip


def one_error(stderr: str) -> bool:
    """Exactly one error line and no traceback (an INSECURE warning may stand beside it)."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("enclave-infer: error: ")]
    others = [
        line for line in lines if not line.startswith(("enclave-infer: error: ", "enclave-infer: warning: "))
    ]
    return len(errors) == 1 and not others


def served_model(d: Deployment) -> ModelInfo | None:
    with Client(d.url, d.constraint) as c:
        return c.model_info()


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_host_logs_attestation_summary(deployment: Deployment) -> None:
    log = deployment.log_text()
    assert f"Remote attestation for enclave {deployment.code_hash}" in log
    expected = (
        "Mode: SIMULATION", "Code signer:", "Key configuration: id 1", "Product ID: 1",
        "Revocation level (security version): 1", "is INSECURE", "Started enclave-infer in",
    )  # fmt: skip
    for line in expected:
        assert line in log


def test_measure_prints_the_served_code_hash(deployment: Deployment, files: dict[str, Path]) -> None:
    out = run_cli(
        "measure", "--owner-public-key", f"{deployment.owner_key}.pub", "--config", str(files["config"])
    )
    assert out.returncode == 0
    assert out.stdout.strip() == deployment.code_hash
    other = run_cli("measure", "--owner-public-key", f"{deployment.owner_key}.pub")  # other limits
    assert other.stdout.strip() != deployment.code_hash


def test_classify_before_provision_says_so(owner_key: Path, files: dict[str, Path], tmp_path: Path) -> None:
    fresh = start_server(tmp_path, owner_key)  # a deployment of its own: no model yet
    try:
        out = run_cli("classify", fresh.url, fresh.constraint, str(files["red"]))
        assert out.returncode != 0 and one_error(out.stderr)
        assert "no model has been provisioned yet" in out.stderr
        out = run_cli("model", fresh.url, fresh.constraint)
        assert out.returncode == 0 and out.stdout.strip() == "no model has been provisioned yet"
        out = provision(fresh, files)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("provisioned model version 1 (sha256 ")
    finally:
        stop_server(fresh)


def test_provision_then_classify(deployment: Deployment, files: dict[str, Path]) -> None:
    before = served_model(deployment)
    out = provision(deployment, files)
    assert out.returncode == 0, out.stderr
    version = before.version + 1 if before else 1
    assert f"provisioned model version {version} " in out.stdout
    # several images: each line names the image as it was given, so two photo.png never mix up
    out = run_cli("classify", deployment.url, deployment.constraint, str(files["red"]), str(files["blue"]))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{files['red']}: red (") and lines[0].endswith("%)")
    assert lines[1].startswith(f"{files['blue']}: blue (")


def test_top_k_and_json(served: ModelInfo, deployment: Deployment, files: dict[str, Path]) -> None:
    out = run_cli("classify", deployment.url, deployment.constraint, str(files["red"]), "--top", "3")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 3
    out = run_cli(
        "classify", deployment.url, deployment.constraint, str(files["blue"]), str(files["red"]),
        "--top", "4", "--json",
    )  # fmt: skip
    docs = json_lines(out.stdout)  # JSON Lines: one object per image
    assert [d["image"] for d in docs] == [str(files["blue"]), str(files["red"])]
    doc = docs[0]
    assert doc["security_level"] == "INSECURE"
    assert doc["results"][0]["label"] == "blue"
    assert abs(sum(r["probability"] for r in doc["results"]) - 1.0) < 1e-5
    meta = served_model(deployment)
    assert meta is not None and doc["model"] == {"sha256": meta.sha256, "version": meta.version}


def test_concurrent_classifications_each_get_their_own_answer(
    served: ModelInfo, deployment: Deployment, files: dict[str, Path]
) -> None:
    """Requests that arrive together are decoded side by side and inferred in batches: each answer
    is the one its image gets alone, and a bad image fails only its own request."""
    red, blue = files["red"].read_bytes(), files["blue"].read_bytes()
    images = [red, blue] * 4 + [b"not an image"]

    def classify(image: bytes) -> Classification | InvalidImageError:
        with Client(deployment.url, deployment.constraint, model_sha256=served.sha256) as client:
            try:
                return client.classify(image, top=4)
            except InvalidImageError as exc:
                return exc

    with ThreadPoolExecutor(len(images)) as pool:
        *answers, bad = pool.map(classify, images)
    assert isinstance(bad, InvalidImageError)
    alone = {red: classify(red), blue: classify(blue)}
    for image, answer in zip(images[:-1], answers, strict=True):
        assert isinstance(answer, Classification)
        expected = alone[image]
        assert isinstance(expected, Classification)
        assert answer.results[0].label == ("red" if image == red else "blue")
        assert [p.index for p in answer.results] == [p.index for p in expected.results]
        for got, want in zip(answer.results, expected.results, strict=True):
            assert abs(got.probability - want.probability) < 1e-5


def test_console_in_a_pipe(served: ModelInfo, deployment: Deployment, files: dict[str, Path]) -> None:
    """No prompts in a pipe, empty lines skipped, quotes stripped, quit ends, failures counted."""
    lines = f"{files['red']}\n\n'{files['blue']}'\nnot-a-file.png\nquit\n{files['red']}\n"
    out = run_cli("classify", deployment.url, deployment.constraint, stdin=lines)
    assert out.returncode == 1, out.stderr  # one image failed
    assert "Enter path" not in out.stdout + out.stderr
    assert out.stdout.splitlines() == [
        line for line in out.stdout.splitlines() if line.startswith((str(files["red"]), str(files["blue"])))
    ]
    assert len(out.stdout.splitlines()) == 2  # nothing after quit
    assert "not-a-file.png: no such file" in out.stderr
    # --json gives JSON Lines with the same fields as batch mode
    out = run_cli(
        "classify", deployment.url, deployment.constraint, "--json", stdin=f"{files['red']}\nnope.png\n"
    )
    docs = json_lines(out.stdout)
    batch = json_lines(
        run_cli("classify", deployment.url, deployment.constraint, "--json", str(files["red"])).stdout
    )
    assert docs[0].keys() == batch[0].keys() and docs[0]["results"] == batch[0]["results"]
    assert docs[1] == {"image": "nope.png", "error": "no such file"}  # the name once
    assert out.returncode == 1


def test_image_from_standard_input(served: ModelInfo, deployment: Deployment, files: dict[str, Path]) -> None:
    with files["red"].open("rb") as image:
        out = subprocess.run(
            [CLI_PATH, "classify", deployment.url, deployment.constraint, "-"],
            stdin=image, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("-: red (")


def test_model_metadata(served: ModelInfo, deployment: Deployment) -> None:
    meta = served_model(deployment)
    assert meta is not None
    assert meta.labels == 4 and meta.formats == ("onnx",) and meta.version >= 1
    assert len(meta.sha256) == 64
    out = run_cli("model", deployment.url, deployment.constraint, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["sha256"] == meta.sha256 and doc["labels"] == 4 and doc["provisioned_at"].endswith("Z")
    text = run_cli("model", deployment.url, deployment.constraint).stdout
    assert f"model sha256:  {meta.sha256}" in text and "labels:        4" in text
    assert "preprocessing: resize 256, crop 224" in text


def test_wrong_constraint_refused_before_sending(deployment: Deployment, files: dict[str, Path]) -> None:
    wrong = "C:" + "AB" * 32 + " SEC:INSECURE"
    out = run_cli("classify", deployment.url, wrong, str(files["red"]))
    assert out.returncode != 0
    assert out.stderr.count("\n") == 1
    assert f"code hash {deployment.code_hash} is not one of the accepted C: values" in out.stderr
    out = run_cli("classify", deployment.url, f"C:{deployment.code_hash}", str(files["red"]))
    assert out.returncode != 0 and "INSECURE is below SEC:SECURE" in out.stderr
    out = run_cli("classify", deployment.url, "C:12 SEC:INSECURE", str(files["red"]))
    assert out.returncode != 0 and "64 hex digits" in out.stderr


def test_unreachable_host(files: dict[str, Path]) -> None:
    out = run_cli("classify", "http://127.0.0.1:9", "C:" + "00" * 32 + " SEC:INSECURE", str(files["red"]))
    assert out.returncode != 0
    assert one_error(out.stderr)
    assert "cannot reach http://127.0.0.1:9" in out.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not an image", "not an image in an accepted format"),
        (png((1, 2, 3))[:200], "truncated"),
        (b"", "the file is empty"),
    ],
)
def test_bad_images_are_one_line_errors(served: ModelInfo, deployment: Deployment, files: dict[str, Path],
                                        tmp_path: Path, content: bytes, message: str) -> None:  # fmt: skip
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    out = run_cli("classify", deployment.url, deployment.constraint, str(bad))
    assert out.returncode != 0
    assert one_error(out.stderr), out.stderr
    assert "bad.png" in out.stderr
    assert message in out.stderr.lower()
    ok = run_cli("classify", deployment.url, deployment.constraint, str(files["red"]))
    assert ok.returncode == 0 and ok.stdout.startswith(f"{files['red']}: red")


def test_oversized_image_refused(
    served: ModelInfo, deployment: Deployment, files: dict[str, Path], tmp_path: Path
) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(png((0, 0, 0)) + b"\0" * 300_000)  # limit in this deployment: 256 KiB
    out = run_cli("classify", deployment.url, deployment.constraint, str(big))
    assert out.returncode != 0 and "larger than 262144 bytes" in out.stderr


def test_oversized_request_refused_by_host(deployment: Deployment) -> None:
    reply = httpx.post(deployment.url + "/v1/ohttp", content=b"\0" * (6 * 1024 * 1024),
                       headers={"content-type": "message/ohttp-req"})  # fmt: skip
    assert reply.status_code == 413
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.json()["type"] == "urn:enclave-infer:problem:too-large"
    assert httpx.get(deployment.url + "/healthz").status_code == 200


def test_tampered_ciphertext(served: ModelInfo, deployment: Deployment) -> None:
    with Client(deployment.url, deployment.constraint) as c:
        c.attest()
        assert c.attestation is not None
        key = ohttp.decode_key_configs(httpx.get(deployment.url + "/ohttp-keys").content)[0]
        inner = bhttp.Request("GET", "https", "enclave", "/v1/model", (("date", _now()),))
        encapsulated, _ = ohttp.encapsulate_request(key, bhttp.encode_request(inner))
        tampered = bytearray(encapsulated)
        tampered[-5] ^= 0x01
        reply = httpx.post(deployment.url + "/v1/ohttp", content=bytes(tampered),
                           headers={"content-type": "message/ohttp-req"})  # fmt: skip
        # RFC 9458 §5.3: not decryptable under the enclave's key: the ohttp-key problem, in plain
        assert reply.status_code == 400
        assert reply.headers["content-type"] == "application/problem+json"
        assert reply.json()["type"] == "https://iana.org/assignments/http-problem-types#ohttp-key"
        assert c.model_info() is not None  # still serving


def test_replayed_ciphertext(deployment: Deployment) -> None:
    key = ohttp.decode_key_configs(httpx.get(deployment.url + "/ohttp-keys").content)[0]
    inner = bhttp.Request("GET", "https", "enclave", "/v1/model", (("date", _now()),))
    encapsulated, context = ohttp.encapsulate_request(key, bhttp.encode_request(inner))
    answers = []
    for _ in range(2):
        reply = httpx.post(deployment.url + "/v1/ohttp", content=encapsulated,
                           headers={"content-type": "message/ohttp-req"})  # fmt: skip
        assert reply.status_code == 200
        answers.append(bhttp.decode_response(context.decapsulate_response(reply.content)))
    assert answers[0].status in (200, 404)
    assert answers[1].status == 400
    assert json.loads(answers[1].content)["type"] == "urn:enclave-infer:problem:replayed-request"


def test_a_request_dated_outside_the_window_gets_the_date_problem(deployment: Deployment) -> None:
    """RFC 9458 §6.5.2: 400, the date problem type, and the enclave's own date to retry with."""
    from email.utils import formatdate, parsedate_to_datetime

    key = ohttp.decode_key_configs(httpx.get(deployment.url + "/ohttp-keys").content)[0]
    skewed = formatdate(time.time() - 3600, usegmt=True)
    inner = bhttp.Request("GET", "https", "enclave", "/v1/model", (("date", skewed),))
    encapsulated, context = ohttp.encapsulate_request(key, bhttp.encode_request(inner))
    reply = httpx.post(deployment.url + "/v1/ohttp", content=encapsulated,
                       headers={"content-type": "message/ohttp-req"})  # fmt: skip
    answer = bhttp.decode_response(context.decapsulate_response(reply.content))
    assert answer.status == 400 and answer.header("content-type") == "application/problem+json"
    assert json.loads(answer.content)["type"] == "https://iana.org/assignments/http-problem-types#date"
    enclave_date = answer.header("date")
    assert (
        enclave_date is not None and abs(parsedate_to_datetime(enclave_date).timestamp() - time.time()) < 30
    )


def test_the_sdk_corrects_its_clock_by_the_date_problem(
    served: ModelInfo, deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    import enclave_infer.client._sdk as sdk

    real = time.time
    monkeypatch.setattr(sdk.time, "time", lambda: real() - 3600)  # the client's clock is an hour slow
    with Client(deployment.url, deployment.constraint) as c:
        assert c.model_info() == served  # one refusal, one corrected retry


def test_provision_signed_by_another_key_is_refused(deployment: Deployment, files: dict[str, Path],
                                                    tmp_path: Path) -> None:  # fmt: skip
    before = served_model(deployment)
    mallory = tmp_path / "mallory.key"
    generate_owner_key(mallory)
    out = provision(deployment, files, key=mallory)
    assert out.returncode != 0
    assert "signature does not verify under the enclave's owner key" in out.stderr
    assert served_model(deployment) == before
    assert "refused: invalid-signature" in deployment.log_text()  # one line, no content


def test_not_a_model_is_refused(deployment: Deployment, files: dict[str, Path], tmp_path: Path) -> None:
    before = served_model(deployment)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07" + os.urandom(2000))
    out = provision(deployment, files, model=junk)  # the owner's tooling refuses it locally
    assert out.returncode != 0 and "junk.onnx: not an ONNX model" in out.stderr
    assert one_error(out.stderr)
    # and the enclave refuses it too, when a client skips that check
    with (
        Client(deployment.url, deployment.constraint) as c,
        pytest.raises(ProvisionRefusedError, match="not a valid ONNX") as info,
    ):
        c.provision(junk.read_bytes(), ["a", "b"], load_owner_key(deployment.owner_key))
    assert info.value.problem == "urn:enclave-infer:problem:invalid-model"
    assert served_model(deployment) == before


def test_old_version_refused(served: ModelInfo, deployment: Deployment, files: dict[str, Path]) -> None:
    before = served_model(deployment)
    assert before is not None
    out = provision(deployment, files, "--model-version", str(before.version))
    assert out.returncode != 0 and "is not newer than the served version" in out.stderr
    assert f"provision of model version {before.version} refused: version-not-newer" in deployment.log_text()
    out = provision(deployment, files)  # default: one more than the current
    assert out.returncode == 0, out.stderr
    assert f"replacing version {before.version}" in out.stdout
    after = served_model(deployment)
    assert after is not None and after.version == before.version + 1


def test_oversized_model_refused(deployment: Deployment, files: dict[str, Path], tmp_path: Path) -> None:
    before = served_model(deployment)
    big = tmp_path / "big.onnx"
    big.write_bytes(files["model"].read_bytes() + b"\0" * (5 * 1024 * 1024))
    out = provision(deployment, files, model=big)
    assert out.returncode != 0 and one_error(out.stderr)
    assert served_model(deployment) == before


def test_enclave_crash_is_survived_with_the_sealed_model(
    served: ModelInfo, deployment: Deployment, files: dict[str, Path]
) -> None:
    before = served_model(deployment)
    found = subprocess.run(["pgrep", "-f", f"enclave_infer.enclave .*{deployment.data_dir}"],
                           capture_output=True, text=True, check=False)  # fmt: skip
    pids = [int(p) for p in found.stdout.split()]
    assert pids, "enclave process not found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    out = run_cli("classify", deployment.url, deployment.constraint, str(files["red"]))
    assert out.returncode == 0, out.stderr + deployment.log_text()[-2000:]
    assert out.stdout.startswith(f"{files['red']}: red (")
    assert served_model(deployment) == before


def test_sdk_raises_specific_errors(served: ModelInfo, deployment: Deployment) -> None:
    with Client(deployment.url, "C:" + "00" * 32 + " SEC:INSECURE") as c, pytest.raises(ConstraintError):
        c.attest()
    with Client(deployment.url, deployment.constraint) as c, pytest.raises(InvalidImageError) as info:
        c.classify(b"GIF89a not really")
    assert info.value.status == 400 and info.value.problem == "urn:enclave-infer:problem:invalid-image"
    assert isinstance(info.value, RemoteError)


def _now() -> str:
    from email.utils import formatdate

    return formatdate(usegmt=True)


def test_provision_a_torch_pickle(deployment: Deployment, files: dict[str, Path], tmp_path: Path) -> None:
    """The seed's format: a whole-model torch.save() pickle, converted to ONNX on the owner's side."""
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 4), torch.nn.Softmax(dim=1),
    )  # fmt: skip
    pickle = tmp_path / "tiny-pretrained.pt"
    torch.save(model, pickle)
    before = served_model(deployment)
    out = provision(deployment, files, model=pickle)
    assert out.returncode == 0, out.stderr
    # the converted files are the upload's only: the lines that name them say so first
    stages = [line for line in out.stderr.splitlines() if not line.startswith("enclave-infer: warning: ")]
    assert stages[0] == (
        "enclave-infer: converting tiny-pretrained.pt for the upload, into a temporary folder removed"
        " afterwards:"
    )
    assert stages[1:] and all(line.startswith("enclave-infer:   ") for line in stages[1:])
    assert any("tiny-pretrained.onnx" in line for line in stages[1:])
    assert not (tmp_path / "tiny-pretrained.onnx").exists()
    after = served_model(deployment)
    assert after is not None and after.sha256 != (before.sha256 if before else None)
    out = run_cli(
        "classify", deployment.url, deployment.constraint, str(files["red"]), "--json", "--top", "4"
    )
    [doc] = json_lines(out.stdout)
    assert doc["model"]["sha256"] == after.sha256
    assert sorted(r["label"] for r in doc["results"]) == sorted(["red", "green", "blue", "grey"])


def test_classify_a_url_fetched_by_the_client(
    served: ModelInfo, deployment: Deployment, files: dict[str, Path]
) -> None:
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(files["red"].parent))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=web.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{web.server_address[1]}"
        out = run_cli(
            "classify", deployment.url, deployment.constraint, f"{base}/blue.png", "--top", "4", "--json"
        )
        assert out.returncode == 0, out.stderr
        assert json_lines(out.stdout)[0]["image"] == f"{base}/blue.png"
        missing = run_cli("classify", deployment.url, deployment.constraint, f"{base}/nothing.png")
        assert missing.returncode != 0 and "nothing.png: answered 404" in missing.stderr
    finally:
        web.shutdown()
        web.server_close()
        thread.join()
    assert "blue.png" not in deployment.log_text()  # the host never saw the URL


def test_serve_on_a_busy_port_is_one_line(deployment: Deployment) -> None:
    port = deployment.url.rsplit(":", 1)[1]
    out = run_cli("serve", "--port", port, "--data-dir", str(deployment.workdir / "other"),
                  "--owner-public-key", f"{deployment.owner_key}.pub")  # fmt: skip
    assert out.returncode != 0
    assert (
        out.stderr.strip()
        == f"enclave-infer: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert httpx.get(deployment.url + "/healthz").status_code == 200


def test_cli_usage_errors_are_one_line(
    served: ModelInfo, deployment: Deployment, files: dict[str, Path], tmp_path: Path
) -> None:
    d, c = deployment.url, deployment.constraint
    owner_in_config = tmp_path / "enclave.toml"
    owner_in_config.write_text(f'owner_public_key = "{"00" * 32}"\n')
    # options may stand between CONSTRAINT and the images
    out = run_cli("classify", d, c, "--top", "2", str(files["red"]), str(files["blue"]))
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 4
    assert out.stderr.splitlines() == [
        "enclave-infer: warning: the enclave is INSECURE (simulation mode: no hardware root of trust, the"
        " evidence is unsigned), accepted because the constraint says SEC:INSECURE"
    ]
    cases = [
        (["classify", d, c, str(files["red"]), "--top", "21"], "--top must be at most 20 for this enclave"),
        (["classify", d, c, str(tmp_path)], "not a regular file"),
        (["classify", d, c, "file:///etc/hostname"], "unsupported URL scheme file://"),
        (["classify", d, c, str(tmp_path / "missing.png")], "missing.png: no such file"),
        (["keygen", ""], "keygen needs a file name"),
        (["serve", "--data-dir", str(files["red"]), "--port", str(free_port()),
          "--owner-public-key", f"{deployment.owner_key}.pub"], "exists and is not a directory"),
        (["serve", "--data-dir", str(deployment.data_dir), "--port", str(free_port()),
          "--owner-public-key", f"{deployment.owner_key}.pub"], "is in use by another enclave-infer serve"),
        (["measure", "--owner-public-key", f"{deployment.owner_key}.pub", "--config", str(owner_in_config)],
         "sets owner_public_key and --owner-public-key gives one too"),
    ]  # fmt: skip
    for args, message in cases:
        out = run_cli(*args)
        assert out.returncode != 0, args
        assert one_error(out.stderr), (args, out.stderr)
        assert message in out.stderr, (args, out.stderr)
    # the second serve on the same data dir did not disturb the first
    ok = run_cli("classify", d, c, str(files["red"]))
    assert ok.returncode == 0 and ok.stdout.startswith(f"{files['red']}: ")


def test_attest_prints_the_report_and_checks_the_constraint(deployment: Deployment) -> None:
    out = run_cli("attest", deployment.url)
    assert out.returncode == 0, out.stderr
    assert f"Remote attestation for enclave {deployment.code_hash}:" in out.stdout
    assert "Assessed security level at" in out.stdout and "is INSECURE" in out.stdout
    assert "Constraint holds" not in out.stdout
    out = run_cli("attest", deployment.url, deployment.constraint)
    assert out.returncode == 0 and f"Constraint holds: {deployment.constraint}" in out.stdout
    out = run_cli("attest", deployment.url, f"C:{deployment.code_hash}")
    assert out.returncode == 1 and one_error(out.stderr) and "INSECURE is below SEC:SECURE" in out.stderr


def test_client_refuses_replayed_evidence(deployment: Deployment) -> None:
    """A host that answers every attestation request with one recorded document is caught:
    each request carries a fresh nonce, and the evidence binds the nonce."""
    recorded = httpx.get(deployment.url + "/v1/attestation", params={"nonce": "ab" * 32}).content
    real = httpx.HTTPTransport()

    def hostile(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/attestation":
            return httpx.Response(200, content=recorded, headers={"content-type": "application/json"})
        return real.handle_request(request)

    with Client(deployment.url, deployment.constraint, transport=httpx.MockTransport(hostile)) as c:
        with pytest.raises(AttestationError, match="not bound"):
            c.attest()
        with pytest.raises(AttestationError, match="not bound"):
            c.classify(b"never sent")
    real.close()


def test_model_pinning(served: ModelInfo, deployment: Deployment, files: dict[str, Path]) -> None:
    sha = served.sha256
    ok = run_cli("classify", deployment.url, deployment.constraint, str(files["red"]), "--model-sha256", sha)
    assert ok.returncode == 0, ok.stderr
    other = "0" * 64
    out = run_cli(
        "classify", deployment.url, deployment.constraint, str(files["red"]), "--model-sha256", other
    )
    assert out.returncode == 1 and one_error(out.stderr)
    assert f"the enclave serves model {sha}, not the pinned {other}" in out.stderr
    out = run_cli(
        "classify", deployment.url, deployment.constraint, str(files["red"]), "--model-sha256", "xyz"
    )
    assert out.returncode == 1 and "64 hex digits" in out.stderr


def test_serve_with_a_relative_data_dir(deployment: Deployment, tmp_path: Path) -> None:
    """As `make demo` runs it: relative paths, resolved against the operator's directory."""
    other = start_server(tmp_path, deployment.owner_key, data_dir="rel/data", cwd=tmp_path)
    try:
        out = run_cli("attest", other.url)
        assert out.returncode == 0, out.stderr
        assert (tmp_path / "rel" / "data" / "enclave.json").exists()
    finally:
        stop_server(other)


def test_provision_streams_through_chunked_ohttp(deployment: Deployment, files: dict[str, Path]) -> None:
    seen: list[str] = []
    real = httpx.HTTPTransport()

    def recording(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("content-type", ""))
        return real.handle_request(request)

    before = served_model(deployment)
    with Client(deployment.url, deployment.constraint, transport=httpx.MockTransport(recording)) as c:
        key = load_owner_key(deployment.owner_key)
        result = c.provision_file(files["model"], ["red", "green", "blue", "grey"], key)
    real.close()
    assert "message/ohttp-chunked-req" in seen
    assert result.model.version == (before.version if before else 0) + 1
    assert result.replaced_version == (before.version if before else None)
    assert served_model(deployment) == result.model


def _served_and_a_bigger_model(
    deployment: Deployment, files: dict[str, Path], tmp_path: Path
) -> tuple[ModelInfo | None, Path]:
    """The model served now, and an upload big enough to interrupt."""
    big = tmp_path / "big.onnx"
    big.write_bytes(files["model"].read_bytes() + os.urandom(900_000))  # under this deployment's 1 MiB cap
    return served_model(deployment), big


def test_an_upload_cut_midway_changes_nothing(
    served: ModelInfo, deployment: Deployment, files: dict[str, Path], tmp_path: Path
) -> None:
    before, big = _served_and_a_bigger_model(deployment, files, tmp_path)

    class CutConnection(Exception):
        pass

    sent = 0

    def cut_after_half(n: int) -> None:
        nonlocal sent
        sent += n
        if sent > 400_000:
            raise CutConnection

    with Client(deployment.url, deployment.constraint) as c, pytest.raises((CutConnection, TransportError)):
        c.provision_file(big, ["a", "b", "c", "d"], load_owner_key(deployment.owner_key),
                         progress=cut_after_half)  # fmt: skip
    time.sleep(0.5)
    assert served_model(deployment) == before
    assert "ended after" in deployment.log_text()  # the interrupted upload is logged, in one line
    assert not list((deployment.data_dir / "sealed").glob("*.partial"))


def test_both_runtimes_side_by_side(deployment: Deployment, files: dict[str, Path], tmp_path: Path) -> None:
    """The Mystikos sample's behaviour: PyTorch and ONNX Runtime answer together, and agree."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 4),
    )  # fmt: skip
    pickle = tmp_path / "tiny.pt"
    torch.save(model, pickle)
    out = provision(deployment, files, "--runtime", "both", model=pickle)
    assert out.returncode == 0, out.stderr
    assert "runtimes: onnx, torch" in out.stdout
    out = run_cli("classify", deployment.url, deployment.constraint, str(files["red"]), "--runtime", "both")
    assert out.returncode == 0, out.stderr
    assert "[onnx] " in out.stdout and "[torch] " in out.stdout
    out = run_cli("classify", deployment.url, deployment.constraint, str(files["red"]), "--runtime", "both",
                  "--top", "4", "--json")  # fmt: skip
    [doc] = json_lines(out.stdout)
    onnx = {r["index"]: r["probability"] for r in doc["runtimes"]["onnx"]}
    torch_ = {r["index"]: r["probability"] for r in doc["runtimes"]["torch"]}
    assert onnx.keys() == torch_.keys() == {0, 1, 2, 3}
    assert all(abs(onnx[i] - torch_[i]) < 1e-4 for i in onnx)
    meta = served_model(deployment)
    assert meta is not None and meta.formats == ("onnx", "torchscript")
    only_torch = run_cli(
        "classify", deployment.url, deployment.constraint, str(files["red"]), "--runtime", "torch"
    )
    assert only_torch.returncode == 0, only_torch.stderr


def test_onnx_with_external_data_is_folded_by_the_owner_tooling(
    deployment: Deployment, files: dict[str, Path], tmp_path: Path
) -> None:
    import onnx

    model = onnx.load_from_string(files["model"].read_bytes())
    split = tmp_path / "split"
    split.mkdir()
    onnx.save(
        model, split / "colours.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0
    )
    assert (split / "weights.bin").exists()
    out = provision(deployment, files, model=split / "colours.onnx")
    assert out.returncode == 0, out.stderr
    meta = served_model(deployment)
    assert meta is not None and meta.formats == ("onnx",)
    ok = run_cli("classify", deployment.url, deployment.constraint, str(files["red"]))
    assert ok.returncode == 0 and ok.stdout.startswith(f"{files['red']}: red")


def test_enclave_killed_mid_upload_keeps_the_previous_model(
    served: ModelInfo, deployment: Deployment, files: dict[str, Path], tmp_path: Path
) -> None:
    before, big = _served_and_a_bigger_model(deployment, files, tmp_path)
    killed = False

    def kill_enclave_halfway(n: int) -> None:
        nonlocal killed
        if not killed:
            found = subprocess.run(["pgrep", "-f", f"enclave_infer.enclave .*{deployment.data_dir}"],
                                   capture_output=True, text=True, check=False)  # fmt: skip
            for pid in found.stdout.split():
                os.kill(int(pid), signal.SIGKILL)
            killed = True
            time.sleep(0.3)

    with Client(deployment.url, deployment.constraint) as c, pytest.raises((RemoteError, TransportError)):
        c.provision_file(big, ["a", "b", "c", "d"], load_owner_key(deployment.owner_key),
                         progress=kill_enclave_halfway)  # fmt: skip
    assert killed
    assert served_model(deployment) == before  # restarted, restored from the untouched sealed file
    assert not list((deployment.data_dir / "sealed").glob("*.partial"))
