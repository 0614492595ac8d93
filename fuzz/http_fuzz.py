"""The host's HTTP surface, fuzzed over loopback against a real ``enclave-infer serve --port 0``.

    python fuzz/http_fuzz.py [--requests N] [--seed S]

The server runs in simulation mode with small limits and the tiny model provisioned by the SDK, as an
owner would. Requests come from three Hypothesis strategies: schemathesis' cases for
``fuzz/host-openapi.yaml`` (valid and invalid ones), raw requests (any method, path, query, headers and
body), and a real client's encapsulated requests (plain and chunked OHTTP) whose inner request is made
from the input. Every answer must be a well-formed HTTP response; errors ``application/problem+json``
with a known problem type and that type's status; no 5xx but the documented 502 and 503; a relayed
answer must open and hold a known problem type other than ``internal-error`` when it is a refusal.
Afterwards the server must be healthy (``GET /healthz`` 200, ``ok``, no enclave restart) and its log
free of errors. Each distinct failure is printed as one ``FINDING:`` line; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

from _tiny import LABELS, image, tiny_model
from enclave_infer import Client
from enclave_infer.attestation import constraints
from enclave_infer.attestation.evidence import Verifier, verify
from enclave_infer.attestation.measurement import code_hash
from enclave_infer.client._owner import generate_owner_key, load_owner_key
from enclave_infer.config import EnclaveConfig, load_public_key_file
from enclave_infer.errors import EnclaveInferError
from enclave_infer.protocol import bhttp, chunked_ohttp, ohttp
from enclave_infer.protocol.api import PROBLEM_MEDIA_TYPE, Preprocessing, Problem, ProblemDetails

HERE = Path(__file__).resolve().parent
CLI = str(Path(sys.executable).with_name("enclave-infer"))
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
LIMITS = "[limits]\nmax_image_bytes = 65536\nmax_model_bytes = 262144\n"
ROUTES = ("/ohttp-keys", "/v1/attestation", "/v1/ohttp", "/healthz")
SERVER_ERRORS = {502, 503}  # bad-gateway, enclave-unavailable, collateral-unavailable
REQUEST_TIMEOUT = 30.0
TOTAL_SECONDS = 900.0  # the whole run stops by itself after this, whatever is left to send


@dataclass
class Findings:
    seen: dict[str, str] = field(default_factory=dict)
    requests: int = 0

    def add(self, kind: str, example: str) -> None:
        self.seen.setdefault(kind, example)


FINDINGS = Findings()


class Server:
    """``enclave-infer serve --port 0`` in a temporary folder, as an operator starts it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.owner_key = folder / "owner.key"
        generate_owner_key(self.owner_key)
        config = folder / "enclave.toml"
        config.write_text(LIMITS)
        public = Path(f"{self.owner_key}.pub")
        digest = code_hash(EnclaveConfig.load(config, owner_public_key=load_public_key_file(public)))
        self.constraint = f"C:{digest.hex()} SEC:INSECURE"
        self.log = folder / "serve.log"
        command = [CLI, "serve", "--port", "0", "--data-dir", str(folder / "data"),
                   "--owner-public-key", str(public), "--config", str(config)]  # fmt: skip
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = LISTENING.search(self.log_text())
            if found:
                self.url = found.group(1)
                return
            if self.process.poll() is not None:
                raise SystemExit("FINDING: serve exited at start:\n" + self.log_text())
            time.sleep(0.1)
        self.process.kill()
        raise SystemExit("FINDING: serve did not start:\n" + self.log_text())

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- the checks -------------------------------------------------------------------------------------


def describe(method: str, url: str, headers: dict[str, str], body: bytes | None) -> str:
    shown = (body or b"")[:120]
    return f"{method} {url[:200]} headers={headers} body[{len(body or b'')}]={shown!r}"


def check_problem(kind: str, details: ProblemDetails, status: int) -> None:
    problem = details.problem
    if problem is None:
        raise Failure(f"{kind}: unknown problem type {details.type!r}")
    if problem.status != status:
        raise Failure(f"{kind}: problem {problem.name} with status {status}, not {problem.status}")
    if problem is Problem.INTERNAL:
        raise Failure(f"{kind}: internal-error")


class Failure(Exception):
    pass


def check_answer(
    method: str,
    path: str,
    response: requests.Response,
    *,
    context: ohttp.ClientResponseContext | chunked_ohttp.ChunkedRequestEncoder | None = None,
    nonce: bytes | None = None,
) -> None:
    """Raise Failure if ``response`` breaks the host's contract (the module docstring)."""
    status = response.status_code
    media = response.headers.get("content-type", "").split(";")[0].strip()
    route = path.split("?")[0]
    where = f"{method} {route if route in ROUTES else '<other path>'} {status}"
    if status >= 500 and status not in SERVER_ERRORS:
        raise Failure(f"{where}: server error")
    if status >= 400:
        if media != PROBLEM_MEDIA_TYPE:
            raise Failure(f"{where}: error answered as {media or 'no media type'}, not problem+json")
        if method == "HEAD":
            return
        try:
            details = ProblemDetails.decode(response.content, status=status)
        except EnclaveInferError as exc:
            raise Failure(f"{where}: malformed problem document ({exc})") from None
        check_problem(where, details, status)
        return
    if status not in (200, 201) or method == "HEAD":
        if status not in (200, 201):
            raise Failure(f"{where}: unexpected status")
        return
    if path.startswith("/v1/attestation") and nonce is not None and KEY_CONFIG:
        try:
            policy, production = constraints.parse(CONSTRAINT[0]), Verifier.production()
            verify(
                response.content,
                policy,
                verifier=production,
                key_config=KEY_CONFIG[0],
                nonce=nonce,
                now=now(),
            )
        except EnclaveInferError as exc:
            raise Failure(f"{where}: evidence does not appraise ({exc})") from None
    if context is None:
        return
    try:
        if isinstance(context, ohttp.ClientResponseContext):
            plaintext = context.decapsulate_response(response.content)
        else:
            decoder = context.response_decoder()
            plaintext = b"".join(decoder.feed(response.content)) + decoder.finish()
        inner = bhttp.decode_response(plaintext)
    except EnclaveInferError as exc:
        raise Failure(f"{where}: the relayed answer does not open ({type(exc).__name__})") from None
    if inner.status >= 400:
        try:
            details = ProblemDetails.decode(inner.content, status=inner.status)
        except EnclaveInferError as exc:
            raise Failure(f"{where}: inner {inner.status} without a problem document ({exc})") from None
        check_problem(f"{where} inner {inner.status}", details, inner.status)
    elif inner.status >= 300:
        raise Failure(f"{where}: inner status {inner.status}")


def now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


SESSION = requests.Session()
URL: list[str] = []
KEY_CONFIG: list[bytes] = []
CONSTRAINT: list[str] = []  # the server's, once it runs
DEADLINE: list[float] = []


def send(
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | Iterator[bytes] | None = None,
    **check: Any,
) -> None:
    if time.monotonic() > DEADLINE[0]:
        return
    headers = headers or {}
    FINDINGS.requests += 1
    shown = body if isinstance(body, bytes) else None
    try:
        response = SESSION.request(
            method, URL[0] + path, headers=headers, data=body, timeout=REQUEST_TIMEOUT, allow_redirects=False
        )
    except requests.RequestException as exc:
        FINDINGS.add(f"{method} {path.split('?')[0][:40]}: no well-formed answer ({type(exc).__name__})",
                     describe(method, path, headers, shown))  # fmt: skip
        return
    try:
        check_answer(method, path, response, **check)
    except Failure as failure:
        FINDINGS.add(str(failure), describe(method, path, headers, shown) + f" -> {response.content[:200]!r}")


# --- the strategies ---------------------------------------------------------------------------------

INNER_PATHS = ["/v1/classify", "/v1/model", "/", "/v1/classify?top=3", "/v1/classify?top=21",
               "/v1/classify?runtime=both", "/v1/classify?top=1&top=2", "/x"]  # fmt: skip
PNG = image()


@st.composite
def inner_requests(draw: st.DrawFn) -> bhttp.Request:
    method = draw(st.sampled_from(["POST", "GET", "PUT", "DELETE"]))
    path = draw(st.sampled_from(INNER_PATHS))
    headers: list[tuple[str, str]] = []
    if draw(st.integers(0, 9)):
        headers.append(("date", formatdate(usegmt=True)))
    if draw(st.booleans()):
        headers.append(("model-sha256", draw(st.sampled_from(["ab" * 32, "x", "AB" * 32]))))
    content = draw(st.one_of(st.just(PNG), st.binary(max_size=512)))
    return bhttp.Request(method, "https", "enclave", path, tuple(headers), content)


@st.composite
def client_requests(draw: st.DrawFn) -> None:
    config = ohttp.KeyConfig.decode(KEY_CONFIG[0])
    inner = draw(inner_requests())
    if draw(st.booleans()):
        sent, context = ohttp.encapsulate_request(config, bhttp.encode_request(inner))
        send(
            "POST",
            "/v1/ohttp",
            headers={"content-type": ohttp.MEDIA_TYPE_REQUEST},
            body=sent,
            context=context,
        )
        return
    encoder = chunked_ohttp.ChunkedRequestEncoder(config)
    pieces = [encoder.header(), encoder.chunk(bhttp.encode_request_head(inner))]
    if inner.content:
        pieces.append(encoder.chunk(bhttp.encode_content_chunk(inner.content)))
    pieces.append(encoder.final(bhttp.encode_request_end()))
    streamed = draw(st.booleans())  # chunked transfer coding, or one body with a length
    body: bytes | Iterator[bytes] = iter(pieces) if streamed else b"".join(pieces)
    send("POST", "/v1/ohttp", headers={"content-type": chunked_ohttp.MEDIA_TYPE_CHUNKED_REQUEST},
         body=body, context=encoder)  # fmt: skip


PATHS = ["/ohttp-keys", "/v1/attestation", "/v1/ohttp", "/healthz", "/", "/v1", "/v1/ohttp/", "/healthz/",
         "/openapi.json", "/v1/attestation/x", "/%2e%2e/etc", "//healthz", "/v1/model"]  # fmt: skip
MEDIA_TYPES = [
    "message/ohttp-req",
    "message/ohttp-chunked-req",
    "MESSAGE/OHTTP-REQ; charset=x",
    "message/ohttp-req;",
    "application/json",
    "",
    "message/ohttp-res",
    'text/plain; x="y"',
]


@st.composite
def raw_requests(draw: st.DrawFn) -> None:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]))
    path = draw(st.one_of(st.sampled_from(PATHS), st.text(max_size=20).map(lambda t: "/" + quote(t))))
    nonce = None
    if draw(st.booleans()):
        raw = draw(st.one_of(st.binary(min_size=0, max_size=80).map(bytes.hex), st.text(max_size=30)))
        path += "?nonce=" + quote(raw)
        if re.fullmatch(r"([0-9a-f]{2}){16,64}", raw):
            nonce = bytes.fromhex(raw)
    headers = {}
    if draw(st.booleans()):
        headers["content-type"] = draw(st.sampled_from(MEDIA_TYPES))
    if draw(st.integers(0, 4)) == 0:
        headers["accept"] = draw(st.sampled_from(["*/*", "application/json", "x"]))
    body = draw(st.one_of(st.none(), st.binary(max_size=1024)))
    if body is not None and draw(st.integers(0, 3)) == 0:  # chunked transfer coding
        size = draw(st.integers(1, 64))
        send(
            method, path, headers=headers, body=iter([body[i : i + size] for i in range(0, len(body), size)])
        )
        return
    send(method, path, headers=headers, body=body, nonce=nonce)


def schemathesis_cases(schema: Any, count: int, random_seed: int) -> None:
    cases = schema.as_strategy(GenerationMode.POSITIVE) | schema.as_strategy(GenerationMode.NEGATIVE)

    @seed(random_seed)
    @settings(max_examples=count, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def run(case: Any) -> None:
        kwargs = case.as_transport_kwargs(base_url=URL[0])
        body = kwargs.get("data", kwargs.get("json"))
        body = json.dumps(body).encode() if "json" in kwargs else body
        path = kwargs["url"][len(URL[0]) :]
        params = kwargs.get("params") or {}
        nonce = None
        if params:
            path += "?" + "&".join(f"{quote(str(k))}={quote(str(v))}" for k, v in params.items())
            value = str(params.get("nonce", ""))
            nonce = bytes.fromhex(value) if re.fullmatch(r"([0-9a-f]{2}){16,64}", value) else None
        headers = {str(k): str(v) for k, v in (kwargs.get("headers") or {}).items()}
        send(
            kwargs["method"],
            path,
            headers=headers,
            body=body if isinstance(body, bytes) else None,
            nonce=nonce,
        )

    run()


def run_strategy(strategy: st.SearchStrategy[None], count: int, random_seed: int) -> None:
    @seed(random_seed)
    @settings(max_examples=count, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(_: None) -> None:
        pass

    run()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=9458)
    args = parser.parse_args()
    schemathesis.openapi.media_type("message/ohttp-req", st.binary(max_size=2048))
    schemathesis.openapi.media_type("message/ohttp-chunked-req", st.binary(max_size=2048))
    schema = schemathesis.openapi.from_path(HERE / "host-openapi.yaml")
    started = time.monotonic()
    DEADLINE.append(started + TOTAL_SECONDS)
    with tempfile.TemporaryDirectory(prefix="fuzz-http-") as folder:
        server = Server(Path(folder))
        URL.append(server.url)
        CONSTRAINT.append(server.constraint)
        try:
            KEY_CONFIG.append(SESSION.get(server.url + "/ohttp-keys", timeout=30).content[2:])
            with Client(server.url, server.constraint) as owner:  # the tiny model, as an owner provisions it
                owner.provision(tiny_model(), LABELS, load_owner_key(server.owner_key),
                                preprocessing=Preprocessing(resize=8, crop=8))  # fmt: skip
            share = args.requests // 3
            schemathesis_cases(schema, share, args.seed)
            run_strategy(raw_requests(), share, args.seed + 1)
            run_strategy(client_requests(), args.requests - 2 * share, args.seed + 2)
            health = SESSION.get(server.url + "/healthz", timeout=30)
            state = health.json() if health.status_code == 200 else {}
            if state != {"status": "ok", "restarts": 0}:
                FINDINGS.add(
                    "unhealthy afterwards", f"GET /healthz {health.status_code} {health.content[:200]!r}"
                )
            if server.process.poll() is not None:
                FINDINGS.add("serve exited", f"exit status {server.process.returncode}")
        finally:
            server.stop()
        log = server.log_text()
        for line in log.splitlines():
            if " ERROR " in line or "Traceback" in line or "internal error" in line:
                FINDINGS.add(f"serve logged: {line.split(': ', 1)[-1][:160]}", line[:300])
    print(f"sent {FINDINGS.requests} requests in {time.monotonic() - started:.0f} s")
    for kind, example in FINDINGS.seen.items():
        print(f"FINDING: {kind}\n    e.g. {example}")
    return 1 if FINDINGS.seen else 0


if __name__ == "__main__":
    sys.exit(main())
