"""What the command and the SDK say when they cannot talk to an enclave: TLS trust, the wrong scheme,
a web server that is not enclave-infer, a busy host. Real processes and servers on loopback."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from enclave_infer import (
    Client,
    ClientConfig,
    InvalidRequestError,
    KeyConfigurationChangedError,
    ModelInfo,
    OverloadedError,
    Problem,
    TransportError,
    UsageError,
)
from enclave_infer.client._owner import load_owner_key
from tests.certs import self_signed

from .conftest import CLI, COLOUR_LABELS, Deployment, png, run_cli, start_server, stop_server

ERROR = "enclave-infer: error: "


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory, owner_key: Path) -> Iterator[tuple[Deployment, Path]]:
    """``serve --tls-cert --tls-key`` with a self-signed certificate, and that certificate."""
    workdir = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(workdir)
    d = start_server(workdir, owner_key, extra=("--tls-cert", str(cert), "--tls-key", str(key)))
    assert d.url.startswith("https://")
    yield d, cert
    stop_server(d)


def only_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if not line.startswith("enclave-infer: warning: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_an_untrusted_certificate_is_named_with_how_to_trust_it(tls: tuple[Deployment, Path]) -> None:
    d, cert = tls
    out = run_cli("attest", d.url, d.constraint)
    assert out.returncode == 1
    assert only_line(out.stderr) == (
        f"{ERROR}cannot reach {d.url}: its TLS certificate is not trusted (self-signed certificate); if this "
        "is the right server, trust that certificate, or the CA that issued it, with --cacert FILE "
        "(ClientConfig(ca_file=...) in Python) or SSL_CERT_FILE=FILE"
    )
    out = run_cli("attest", d.url, d.constraint, "--cacert", str(cert))
    assert out.returncode == 0, out.stderr
    assert f"Constraint holds: {d.constraint}" in out.stdout
    by_env = subprocess.run(
        [CLI, "attest", d.url, d.constraint], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "SSL_CERT_FILE": str(cert)},
    )  # fmt: skip
    assert by_env.returncode == 0, by_env.stderr  # httpx reads SSL_CERT_FILE
    with Client(d.url, d.constraint, config=ClientConfig(ca_file=cert)) as client:
        assert client.attest().report.code_hash.hex().upper() == d.code_hash
    with Client(d.url, d.constraint) as client, pytest.raises(TransportError, match="not trusted"):
        client.attest()


def test_a_ca_file_that_holds_no_certificate_is_a_usage_error(tls: tuple[Deployment, Path]) -> None:
    d, cert = tls
    out = run_cli("attest", d.url, "--cacert", str(cert.with_name("missing.crt")))
    assert (
        only_line(out.stderr)
        == f"{ERROR}{cert.with_name('missing.crt')}: no such file (a CA certificate to trust, PEM)"
    )
    key = cert.with_name("host.key")
    out = run_cli("attest", d.url, "--cacert", str(key))
    assert only_line(out.stderr) == f"{ERROR}{key}: no PEM certificate in it"
    with pytest.raises(UsageError):
        Client(d.url, d.constraint, config=ClientConfig(ca_file=key))


def test_the_wrong_scheme_is_named_both_ways(tls: tuple[Deployment, Path], deployment: Deployment) -> None:
    d, _ = tls
    plain_to_tls = d.url.replace("https://", "http://")
    out = run_cli("attest", plain_to_tls)
    assert only_line(out.stderr) == f"{ERROR}cannot reach {plain_to_tls}: it speaks TLS: use {d.url}"
    tls_to_plain = deployment.url.replace("http://", "https://")
    out = run_cli("attest", tls_to_plain)
    assert only_line(out.stderr) == (
        f"{ERROR}cannot reach {tls_to_plain}: it does not speak TLS (it answers in plain HTTP): "
        f"use {deployment.url}"
    )


@pytest.fixture
def web_server(tmp_path: Path) -> Iterator[str]:
    """A plain web server (not enclave-infer) serving a folder with one photo."""
    (tmp_path / "index.html").write_text("<html>hello</html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=web.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{web.server_address[1]}"
    web.shutdown()
    web.server_close()
    thread.join()


def test_a_plain_web_server_is_named(web_server: str, deployment: Deployment, files: dict[str, Path]) -> None:
    out = run_cli("classify", web_server, deployment.constraint, str(files["red"]))
    assert out.returncode == 1
    assert only_line(out.stderr) == (
        f"{ERROR}{web_server} is not an enclave-infer host: GET /ohttp-keys answered 404 (text/html)"
    )


def test_unreachable_host_says_why_in_words(files: dict[str, Path]) -> None:
    out = run_cli("classify", "http://127.0.0.1:9", "C:" + "00" * 32 + " SEC:INSECURE", str(files["red"]))
    assert only_line(out.stderr) == (
        f"{ERROR}cannot reach http://127.0.0.1:9: connection refused (nothing listens on port 9)"
    )


def test_an_image_is_named_once(served: ModelInfo, deployment: Deployment, web_server: str) -> None:
    out = run_cli("classify", deployment.url, deployment.constraint, "nope.png")
    assert out.returncode == 1
    assert only_line(out.stderr) == f"{ERROR}nope.png: no such file"
    for url, why in (
        (f"{web_server}/cat.png", "answered 404"),
        ("http://127.0.0.1:9/cat.png", "connection refused (nothing listens on port 9)"),
    ):
        out = run_cli("classify", deployment.url, deployment.constraint, url)
        assert out.returncode == 1
        assert only_line(out.stderr) == f"{ERROR}{url}: {why}"


class Relay:
    """A reverse proxy on loopback in front of a real host that first refuses, for each path named in
    ``refusals``, as many requests as it lists, with that problem and ``Retry-After``: a host that
    is busy, or whose enclave is restarting, as the client meets one. With ``switch_to``, the host
    routes the first ``POST /v1/ohttp`` and everything after it to that other host instead."""

    def __init__(
        self, upstream: str, refusals: dict[str, list[tuple[Problem, int]]], *, switch_to: str | None = None
    ) -> None:
        self.upstream, self.switch_to = upstream, switch_to
        self.refusals = {path: list(items) for path, items in refusals.items()}
        self.seen: list[tuple[str, int]] = []
        relay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._relay()

            def do_POST(self) -> None:
                self._relay()

            def _relay(self) -> None:
                path = self.path.split("?")[0]
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                pending = relay.refusals.get(path)
                if pending:
                    problem, seconds = pending.pop(0)
                    relay.seen.append((path, problem.status))
                    document = problem.details("refused by the test's relay").encode()
                    self.send_response(problem.status)
                    self.send_header("content-type", "application/problem+json")
                    self.send_header("retry-after", str(seconds))
                    self.send_header("content-length", str(len(document)))
                    self.end_headers()
                    self.wfile.write(document)
                    return
                if relay.switch_to is not None and (self.command, path) == ("POST", "/v1/ohttp"):
                    relay.upstream, relay.switch_to = relay.switch_to, None
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")}
                url = relay.upstream + self.path
                answer = httpx.request(self.command, url, content=body, headers=headers)
                relay.seen.append((path, answer.status_code))
                self.send_response(answer.status_code)
                for name in ("content-type", "retry-after"):
                    if name in answer.headers:
                        self.send_header(name, answer.headers[name])
                self.send_header("content-length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Relay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def test_the_command_retries_a_busy_host_at_the_attestation_step(
    served: ModelInfo, deployment: Deployment, files: dict[str, Path]
) -> None:
    busy = [(Problem.OVERLOADED, 1)]
    refusals = {"/ohttp-keys": busy, "/v1/attestation": busy}
    with Relay(deployment.url, refusals) as relay:
        out = run_cli("classify", relay.url, deployment.constraint, str(files["red"]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{files['red']}: red (")
    assert relay.seen[:4] == [("/ohttp-keys", 503), ("/ohttp-keys", 200), ("/v1/attestation", 503),
                              ("/v1/attestation", 200)]  # fmt: skip


def test_the_sdk_waits_as_long_as_retry_after_says(
    served: ModelInfo, deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``enclave-unavailable`` (the enclave restarting) with Retry-After, on every kind of request:
    each is sent again, never sooner than the host asked."""
    waits: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    restarting = [(Problem.ENCLAVE_UNAVAILABLE, 2)]
    refusals = {"/ohttp-keys": restarting, "/v1/attestation": restarting, "/v1/ohttp": restarting * 2}
    with Relay(deployment.url, refusals) as relay, Client(relay.url, deployment.constraint) as client:
        assert client.model_info() == served
        assert client.classify(png((230, 20, 20))).results[0].label == "red"
    assert len(waits) == 4 and all(wait >= 2 for wait in waits)
    assert [status for _, status in relay.seen].count(503) == 4


def test_a_retry_after_longer_than_the_client_waits_is_raised_at_once(deployment: Deployment) -> None:
    with (
        Relay(deployment.url, {"/ohttp-keys": [(Problem.OVERLOADED, 3600)]}) as relay,
        Client(relay.url, deployment.constraint) as client,
        pytest.raises(OverloadedError) as info,
    ):
        client.attest()
    assert info.value.retry_after == 3600 and relay.seen == [("/ohttp-keys", 503)]


# -- another key configuration: the ohttp-key problem is the host's to send ----------------------------


@pytest.fixture(scope="module")
def twin(workdir: Path, owner_key: Path, files: dict[str, Path]) -> Iterator[Deployment]:
    """Another instance of the same code and configuration (so the same code hash) with a key
    configuration of its own, serving the same model: another cluster, founded by the host."""
    (workdir / "twin").mkdir(exist_ok=True)
    d = start_server(workdir / "twin", owner_key, config=files["config"], data_dir=workdir / "twin-data")
    with Client(d.url, d.constraint) as client:
        client.provision(files["model"].read_bytes(), COLOUR_LABELS, load_owner_key(owner_key))
    yield d
    stop_server(d)


class Switch:
    """The host's routing, as the SDK's transport: requests go to ``first`` until ``target`` is
    set to "second"; ``forge`` answers the next ``POST /v1/ohttp`` with the ohttp-key problem itself.
    ``seen``: (where, path, status) of each request."""

    def __init__(self, first: Deployment, second: Deployment) -> None:
        self._urls = {"first": first.url, "second": second.url}
        self.target, self.forge = "first", False
        self.seen: list[tuple[str, str, int]] = []
        self._real = httpx.HTTPTransport()
        self.transport = httpx.MockTransport(self._handle)

    def __enter__(self) -> Switch:
        return self

    def __exit__(self, *exc: object) -> None:
        self._real.close()

    def _handle(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        if self.forge and request.url.path == "/v1/ohttp":
            self.forge = False
            self.seen.append(("host", request.url.path, 400))
            document = Problem.OHTTP_KEY.details("forged by the host").encode()
            return httpx.Response(400, headers={"content-type": "application/problem+json"}, content=document)
        url = self._urls[self.target] + request.url.raw_path.decode()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")}
        answer = self._real.handle_request(httpx.Request(request.method, url, headers=headers, content=body))
        content = answer.read()
        answer.close()
        self.seen.append((self.target, request.url.path, answer.status_code))
        kept = {k: v for k, v in answer.headers.items() if k.lower() in ("content-type", "retry-after")}
        return httpx.Response(answer.status_code, headers=kept, content=content)


def key_of(d: Deployment) -> str:
    """A deployment's key configuration as ``attest`` prints it."""
    raw = httpx.get(d.url + "/ohttp-keys").content
    config = raw[2 : 2 + int.from_bytes(raw[:2], "big")]  # RFC 9458 §3.2: the first, u16-prefixed
    return f"key id {config[0]}, SHA-256 {hashlib.sha256(config).hexdigest().upper()}"


def changed(old: str, new: str, accept: str) -> str:
    return (
        f"the enclave's key configuration changed: this client verified {old}, the host now offers {new}"
        " (the same code, restarted alone or another cluster); nothing was resent to it;"
        f" to accept it: {accept}"
    )


def test_the_sdk_resends_no_image_to_another_key_configuration_without_consent(
    served: ModelInfo, deployment: Deployment, twin: Deployment, files: dict[str, Path]
) -> None:
    """Split view: the host routes a client that attested one instance to another of the same code
    hash, whose enclave answers ohttp-key (outside the encryption: the host could send it too). The
    SDK attested the other instance and resent the image to it, silently. Now it resends nothing
    and says which key configuration it verified and which the host offers, until the caller
    consents (attest() again, or follow_key_changes)."""
    assert twin.code_hash == deployment.code_hash and key_of(twin) != key_of(deployment)
    red = files["red"].read_bytes()
    with (
        Switch(deployment, twin) as switch,
        Client(deployment.url, deployment.constraint, transport=switch.transport) as client,
    ):
        verified = client.attest()
        switch.target = "second"
        for _ in range(2):  # refused, and again: the client keeps the configuration it verified
            with pytest.raises(KeyConfigurationChangedError) as info:
                client.classify(red)
            assert str(info.value) == changed(
                key_of(deployment), key_of(twin), "attest() again, or Client(follow_key_changes=True)"
            )
            assert client.attestation is verified
        assert ("second", "/v1/ohttp", 200) not in switch.seen  # the image never reached the twin
        # consent: attest what the host now offers
        client.attest()
        assert client.classify(red).results[0].label == "red"
        assert switch.seen[-1] == ("second", "/v1/ohttp", 200)
    # consent given up front: resent once, to the attested twin
    with (
        Switch(deployment, twin) as switch,
        Client(
            deployment.url, deployment.constraint, transport=switch.transport, follow_key_changes=True
        ) as client,
    ):
        client.attest()
        switch.target = "second"
        assert client.classify(red).results[0].label == "red"
        assert client.attestation is not None
        assert client.attestation.key_config != verified.key_config
    assert [(where, path) for where, path, _ in switch.seen[-4:]] == [
        ("second", "/v1/ohttp"), ("second", "/ohttp-keys"), ("second", "/v1/attestation"),
        ("second", "/v1/ohttp"),
    ]  # fmt: skip
    # the same key configuration after a forged ohttp-key: nothing resent, as before
    with (
        Switch(deployment, twin) as switch,
        Client(deployment.url, deployment.constraint, transport=switch.transport) as client,
    ):
        client.attest()
        switch.forge = True
        with pytest.raises(InvalidRequestError) as refused:
            client.classify(red)
        assert refused.value.problem == Problem.OHTTP_KEY.uri
        assert [path for _, path, _ in switch.seen].count("/v1/ohttp") == 1
        assert client.classify(red).results[0].label == "red"  # still the verified one


def test_an_upload_is_not_sent_to_another_key_configuration(
    served: ModelInfo, deployment: Deployment, twin: Deployment, files: dict[str, Path], owner_key: Path
) -> None:
    """The owner, routed to another cluster mid-way: its upload is not resent there, and the client
    does not adopt that cluster's key for what it sends next (it did, silently)."""
    with Client(twin.url, twin.constraint) as client:
        before = client.model_info()
    assert before is not None
    with (
        Switch(deployment, twin) as switch,
        Client(deployment.url, deployment.constraint, transport=switch.transport) as client,
    ):
        client.attest()
        switch.target = "second"
        model, key = files["model"].read_bytes(), load_owner_key(owner_key)
        with pytest.raises(KeyConfigurationChangedError):
            client.provision(model, COLOUR_LABELS, key, version=before.version + 1)
        with pytest.raises(KeyConfigurationChangedError):  # it kept the one it verified
            client.model_info()
    assert [path for _, path, status in switch.seen if status == 200].count("/v1/ohttp") == 0
    with Client(twin.url, twin.constraint) as client:
        assert client.model_info() == before


def test_the_command_stops_when_the_host_switches_key_configuration(
    served: ModelInfo, deployment: Deployment, twin: Deployment, files: dict[str, Path]
) -> None:
    images = (str(files["red"]), str(files["blue"]))
    with Relay(deployment.url, {}, switch_to=twin.url) as relay:
        out = run_cli("classify", relay.url, deployment.constraint, *images)
    assert out.returncode == 1 and out.stdout == ""
    accept = "run again, or pass --follow-key-changes"
    assert only_line(out.stderr) == ERROR + changed(key_of(deployment), key_of(twin), accept)
    assert ("/v1/ohttp", 200) not in relay.seen
    with Relay(deployment.url, {}, switch_to=twin.url) as relay:
        out = run_cli("classify", relay.url, deployment.constraint, *images, "--follow-key-changes")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{images[0]}: red (") and f"{images[1]}: blue (" in out.stdout
