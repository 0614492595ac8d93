"""What an operator relies on, with real processes: health, metrics, overload, drain, crash, TLS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from enclave_infer import (
    Client,
    ClientConfig,
    KeyConfigurationChangedError,
    ModelInfo,
    OverloadedError,
    UnavailableError,
)
from enclave_infer.client._owner import load_owner_key

from .conftest import COLOUR_LABELS, Deployment, png, start_server, stop_server

RED = png((230, 20, 20))
LOOPBACK = ipaddress.ip_address("127.0.0.1")


def provision(d: Deployment, model: bytes) -> ModelInfo:
    with Client(d.url, d.constraint) as c:
        return c.provision(model, COLOUR_LABELS, load_owner_key(d.owner_key)).model


def metrics(url: str, **kwargs: object) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = httpx.get(url + "/metrics", **kwargs).text  # type: ignore[arg-type]
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def slowly(image: bytes, pause: float, pieces: int = 4) -> Callable[[], Iterator[bytes]]:
    """A request body that trickles in ``pieces`` over ``pause`` seconds each."""

    def body() -> Iterator[bytes]:
        step = -(-len(image) // pieces)
        for i in range(0, len(image), step):
            time.sleep(pause)
            yield image[i : i + step]

    return body


def enclave_pids(d: Deployment) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"enclave_infer.enclave .*{d.data_dir}"], capture_output=True,
                           text=True, check=False)  # fmt: skip
    return [int(p) for p in found.stdout.split()]


def eventually(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Health answers are shared for a second (host/enclave_process.py, STATUS_CACHE_SECONDS)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture
def fresh(tmp_path: Path, owner_key: Path) -> Iterator[Deployment]:
    d = start_server(tmp_path, owner_key, extra=("--max-in-flight", "2", "--drain-timeout", "20"))
    yield d
    stop_server(d)


def test_health_follows_the_open_inference_protocol(fresh: Deployment, files: dict[str, Path]) -> None:
    url = fresh.url
    assert httpx.get(url + "/v2/health/live").json() == {"live": True}
    not_yet = httpx.get(url + "/v2/health/ready")  # attested, but no model yet
    assert (not_yet.status_code, not_yet.json()) == (
        400,
        {"ready": False, "reason": "no model provisioned yet"},
    )
    info = provision(fresh, files["model"].read_bytes())
    assert eventually(lambda: httpx.get(url + "/v2/health/ready").json() == {"ready": True})
    for name in ("default", info.sha256):
        reply = httpx.get(f"{url}/v2/models/{name}/ready")
        assert (reply.status_code, reply.json()) == (200, {"name": name, "ready": True})
    assert httpx.get(f"{url}/v2/models/default/versions/{info.version}/ready").status_code == 200
    assert httpx.get(f"{url}/v2/models/default/versions/{info.version + 1}/ready").status_code == 400
    other = httpx.get(f"{url}/v2/models/resnet50/ready").json()
    assert other == {
        "name": "resnet50",
        "ready": False,
        "reason": f"resnet50 is not the served model (default, or {info.sha256})",
    }
    for pid in enclave_pids(fresh):  # the enclave is down until the next request restarts it
        os.kill(pid, signal.SIGKILL)
    assert eventually(lambda: httpx.get(url + "/v2/health/ready").status_code == 400)
    down = httpx.get(url + "/v2/health/ready").json()["reason"]
    assert down == "the enclave process is down (the next request starts it again)"
    assert httpx.get(url + "/healthz").json() == {"status": "starting", "restarts": 0}
    assert httpx.get(url + "/v2/health/live").status_code == 200


def test_metrics_count_what_the_host_relays_and_nothing_of_the_content(
    fresh: Deployment, files: dict[str, Path]
) -> None:
    info = provision(fresh, files["model"].read_bytes())
    with Client(fresh.url, fresh.constraint) as c:
        for _ in range(3):
            assert c.classify(RED).results[0].label == "red"
    m = metrics(fresh.url)
    assert m["enclave_infer_model_info"] == [({"sha256": info.sha256, "version": str(info.version)}, 1.0)]
    assert m["enclave_infer_classifications_total"][0][1] >= 3
    assert m["enclave_infer_enclave_up"][0][1] == 1 and m["enclave_infer_attestation_ready"][0][1] == 1
    ok = [
        v
        for labels, v in m["enclave_infer_requests_total"]
        if labels["route"] == "/v1/ohttp" and labels["code"] == "200"
    ]
    assert ok and ok[0] >= 4  # the provision and three classifications
    assert m["enclave_infer_batch_size_count"][0][1] >= 3
    assert any(
        labels == {"route": "/v1/ohttp"} for labels, _ in m["enclave_infer_request_duration_seconds_count"]
    )
    # no label value anywhere is a label of the model's, or anything but public identifiers
    values = {v for samples in m.values() for labels, _ in samples for v in labels.values()}
    assert not values & set(COLOUR_LABELS)


def test_overload_is_refused_at_once_with_retry_after(fresh: Deployment, files: dict[str, Path]) -> None:
    """Streams beyond --max-in-flight are refused at once with Retry-After, and the streams in
    progress hold nothing whole requests need: keys and classifications are answered meanwhile."""
    provision(fresh, files["model"].read_bytes())
    holding = []

    def hold() -> None:  # a client that trickles its image: it holds one of the two places for ~2 s
        with Client(fresh.url, fresh.constraint) as c:
            holding.append(c._request("POST", "/v1/classify?top=1", stream=slowly(RED, 0.5)).status)

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.8)
    no_retries = ClientConfig(retries=0)
    with Client(fresh.url, fresh.constraint, config=no_retries) as c:
        started = time.monotonic()
        with pytest.raises(OverloadedError) as info:
            c._request("POST", "/v1/classify?top=1", stream=slowly(RED, 0.0))
        assert time.monotonic() - started < 1.0  # at once, not queued behind the slow ones
        assert info.value.status == 503 and info.value.retry_after == 1.0
        assert httpx.get(fresh.url + "/ohttp-keys").status_code == 200
        assert c.classify(RED).results[0].label == "red"
    for t in threads:
        t.join()
    assert holding == [200, 200]  # the requests that were in were answered
    overloads = metrics(fresh.url)["enclave_infer_requests_refused_overload_total"][0][1]
    assert overloads >= 1


def test_sigterm_drains_requests_in_progress(tmp_path: Path, owner_key: Path, files: dict[str, Path]) -> None:
    d = start_server(tmp_path, owner_key, extra=("--drain-timeout", "20"))
    try:
        provision(d, files["model"].read_bytes())
        answers: list[int] = []
        with Client(d.url, d.constraint) as c:
            c.attest()
            slow = threading.Thread(
                target=lambda: answers.append(
                    c._request("POST", "/v1/classify?top=1", stream=slowly(RED, 0.5)).status
                )
            )
            slow.start()
            time.sleep(0.7)  # the request is in, and still arriving
            d.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(httpx.HTTPError):  # no new requests
                httpx.get(d.url + "/v2/health/live", timeout=2)
            slow.join(30)
        assert answers == [200]  # the accepted request finished
        assert d.process.wait(30) == 0
        assert "SIGTERM received: stopping" in d.log_text()
        assert not enclave_pids(d)  # and then the enclave stopped
    finally:
        if d.process.poll() is None:
            stop_server(d)


def test_an_enclave_whose_host_is_killed_stops_too(tmp_path: Path, owner_key: Path) -> None:
    """The enclave runs in its own session (Ctrl-C reaches the host alone); a host killed outright
    (SIGKILL, the OOM killer, a Ray replica replaced) must not leave it running, unreachable."""
    d = start_server(tmp_path, owner_key)
    enclaves = enclave_pids(d)
    assert enclaves
    d.process.kill()
    d.process.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in enclaves):
        time.sleep(0.1)
    assert not any(Path(f"/proc/{p}").exists() for p in enclaves)


def test_an_enclave_crash_under_load_fails_clearly_or_is_retried(
    fresh: Deployment, files: dict[str, Path]
) -> None:
    provision(fresh, files["model"].read_bytes())
    outcomes: list[str] = []
    stop = threading.Event()
    strict = Client(fresh.url, fresh.constraint)  # attested before the crash, consents to nothing
    strict.attest()

    def load() -> None:
        # one enclave outside a cluster: restarted, it has a new key, which these clients accept
        with Client(fresh.url, fresh.constraint, follow_key_changes=True) as c:
            while not stop.is_set():
                try:
                    outcomes.append(c.classify(RED).results[0].label)
                except UnavailableError as exc:  # a clear 503, never a hang
                    outcomes.append(str(exc.status))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    for pid in enclave_pids(fresh):
        os.kill(pid, signal.SIGKILL)
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "a client hung"
    assert outcomes and set(outcomes) <= {"red", "503"}
    assert outcomes[-1] == "red"  # the enclave came back (a new key: the SDK attested again)
    assert metrics(fresh.url)["enclave_infer_enclave_restarts_total"][0][1] == 1
    with strict, pytest.raises(KeyConfigurationChangedError):  # a new key, not what it verified
        strict.classify(RED)


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(LOOPBACK)]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_serve_over_tls(tmp_path: Path, owner_key: Path, files: dict[str, Path]) -> None:
    cert, key = self_signed(tmp_path)
    d = start_server(tmp_path, owner_key, extra=("--tls-cert", str(cert), "--tls-key", str(key)))
    try:
        assert d.url.startswith("https://127.0.0.1:")
        trust = ssl.create_default_context(cafile=str(cert))
        with Client(d.url, d.constraint, transport=httpx.HTTPTransport(verify=trust)) as c:
            assert c.attest().report.tee == "simulation"
        with pytest.raises(httpx.ConnectError):  # not trusted without the certificate
            httpx.get(d.url + "/v2/health/live")
    finally:
        stop_server(d)
