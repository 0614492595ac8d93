"""What the command and the SDK say when they cannot talk to an enclave: TLS trust, the wrong scheme,
a web server that is not enclave-infer, a busy host. Real processes and servers on loopback."""

from __future__ import annotations

import datetime
import functools
import http.server
import ipaddress
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclave_infer import Client, ClientConfig, ModelInfo, TransportError, UsageError

from .conftest import CLI, Deployment, run_cli, start_server, stop_server

ERROR = "enclave-infer: error: "


def self_signed(workdir: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as an operator makes one for a test."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = workdir / "host.crt", workdir / "host.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


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
