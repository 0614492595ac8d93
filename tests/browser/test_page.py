"""The browser client in real headless Chromium against a real ``enclave-infer serve``: served by the
host and opened from a file, it attests, encrypts, and shows the answer; a constraint that the enclave
does not meet sends nothing. The host answers CORS on its three public paths and nowhere else."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from enclave_infer import ModelInfo
from enclave_infer.cli.page import page_bytes, page_url
from enclave_infer.protocol import bhttp
from tests.e2e.conftest import Deployment

from .conftest import PAGE, Recorder, artifact, padme

CARD = """
const card = document.querySelector(".card");
if (!card || !["done", "refused", "failed"].includes(card.dataset.state)) return null;
const text = (selector) => card.querySelector(selector)?.textContent ?? null;
return {
  state: card.dataset.state,
  labels: [...card.querySelectorAll(".predictions .label")].map((e) => e.textContent),
  level: text(".level"),
  banner: text(".banner.insecure"),
  refusal: text(".refusal"),
  model: text(".model"),
};
"""


def open_page(browser: WebDriver, url: str) -> None:
    browser.get("about:blank")  # from one fragment of a page to another is no new page load
    browser.get(url)
    deadline = time.monotonic() + 10
    while browser.execute_script("return document.body.dataset.ready") != "true":
        assert time.monotonic() < deadline, "the page did not start"
        time.sleep(0.05)
    browser.get_log("browser")  # what came before this page


def classify(browser: WebDriver, image: Path, timeout: float = 30) -> dict[str, Any]:
    """Give the page ``image`` and wait for its card's outcome."""
    browser.find_element(By.ID, "files").send_keys(str(image))
    deadline = time.monotonic() + timeout
    while (card := browser.execute_script(CARD)) is None:
        assert time.monotonic() < deadline, "the page gave no outcome"
        time.sleep(0.1)
    return dict(card)


def no_console_errors(browser: WebDriver) -> None:
    """Nothing the page did was refused by its Content-Security-Policy, or failed otherwise."""
    logs = browser.get_log("browser")
    assert not [entry for entry in logs if entry["level"] == "SEVERE"], logs


def test_page_served_by_the_host_attests_encrypts_and_shows_the_answer(
    browser: WebDriver, deployment: Deployment, served: ModelInfo, files: dict[str, Path]
) -> None:
    reply = httpx.get(deployment.url + "/")
    assert reply.status_code == 200 and reply.content == page_bytes()
    policy = reply.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "script-src 'sha256-" in policy and "'unsafe-inline'" not in policy
    assert "access-control-allow-origin" not in reply.headers

    open_page(browser, f"{deployment.url}/#constraint={quote(deployment.constraint)}")
    assert browser.find_element(By.ID, "url").get_attribute("value") == deployment.url  # the page's origin
    card = classify(browser, files["red"])
    assert card["state"] == "done", card
    assert card["labels"][0] == "red" and sorted(card["labels"]) == ["blue", "green", "grey", "red"]
    assert card["level"].startswith("INSECURE: simulation mode")
    assert "The enclave is INSECURE" in card["banner"]
    assert f"Model SHA-256 {served.sha256}, version {served.version}" == card["model"]
    browser.save_screenshot(str(artifact("browser-page.png")))
    no_console_errors(browser)


def test_page_opened_from_a_file_classifies_through_cors_and_pads_its_request(
    browser: WebDriver, deployment: Deployment, served: ModelInfo, files: dict[str, Path], recorder: Recorder
) -> None:
    open_page(browser, page_url(PAGE.as_uri(), url=recorder.url, constraint=deployment.constraint))
    card = classify(browser, files["blue"])
    assert card["state"] == "done", card
    assert card["labels"][0] == "blue"
    no_console_errors(browser)
    # on the wire: the preflight, then hdr || enc || HPKE(binary HTTP, padded when the enclave says so)
    sent = recorder.sent
    assert b"OPTIONS /v1/ohttp HTTP/1.1" in sent
    head = sent[sent.index(b"POST /v1/ohttp HTTP/1.1") :].split(b"\r\n\r\n")[0].decode().lower()
    length = int(head.split("content-length: ")[1].split("\r\n")[0])
    date = "Sun, 01 Nov 2026 12:00:00 GMT"  # an IMF-fixdate is always 29 characters
    inner = bhttp.encode_request(
        bhttp.Request(
            "POST", "https", "enclave", "/v1/classify?top=5&runtime=default",
            (("content-type", "application/octet-stream"), ("date", date)), files["blue"].read_bytes(),
        )
    )  # fmt: skip
    document = json.loads(httpx.get(f"{deployment.url}/v1/attestation?nonce={secrets.token_hex(32)}").content)
    measured = json.loads(base64.b64decode(document["config"]))
    padded = measured.get("padding", {}).get("enabled") is True
    assert length == 7 + 32 + (padme(len(inner)) if padded else len(inner)) + 16


def test_a_constraint_the_enclave_does_not_meet_sends_nothing(
    browser: WebDriver, deployment: Deployment, served: ModelInfo, files: dict[str, Path], recorder: Recorder
) -> None:
    wrong = "C:" + "00" * 32 + " SEC:INSECURE"
    open_page(browser, page_url(PAGE.as_uri(), url=recorder.url, constraint=wrong))
    card = classify(browser, files["red"])
    assert card["state"] == "refused", card
    assert card["refusal"] == (
        f"The enclave was refused: code hash {deployment.code_hash} is not one of the accepted C: values."
    )
    assert card["labels"] == [] and card["banner"] is None
    sent = recorder.sent
    assert b"GET /ohttp-keys " in sent and b"GET /v1/attestation?nonce=" in sent
    assert b"/v1/ohttp " not in sent and b"message/ohttp-req" not in sent
    assert files["red"].read_bytes()[:64] not in sent


def test_cors_answers_the_three_public_paths_and_nothing_else(deployment: Deployment) -> None:
    origin = {"origin": "null"}  # what a page opened from a file sends
    nonce = secrets.token_hex(32)
    for path in ("/ohttp-keys", f"/v1/attestation?nonce={nonce}"):
        reply = httpx.get(deployment.url + path, headers=origin)
        assert reply.status_code == 200
        assert reply.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in reply.headers
    preflight = {
        **origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type",
    }
    reply = httpx.options(deployment.url + "/v1/ohttp", headers=preflight)
    assert reply.status_code == 200 and reply.content == b""
    assert reply.headers["access-control-allow-origin"] == "*"
    assert reply.headers["access-control-allow-methods"] == "POST"
    assert reply.headers["access-control-allow-headers"] == "content-type"
    assert "access-control-allow-credentials" not in reply.headers
    refused = httpx.post(
        deployment.url + "/v1/ohttp", headers={**origin, "content-type": "text/plain"}, content=b"x"
    )
    assert refused.status_code == 415 and refused.headers["access-control-allow-origin"] == "*"
    for path in (
        "/metrics",
        "/healthz",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/default/ready",
        "/",
    ):
        reply = httpx.get(deployment.url + path, headers=origin)
        assert not [h for h in reply.headers if h.startswith("access-control-")], (path, reply.headers)
        reply = httpx.options(
            deployment.url + path, headers={**preflight, "access-control-request-method": "GET"}
        )
        assert reply.status_code == 405, path
        assert not [h for h in reply.headers if h.startswith("access-control-")], (path, reply.headers)


def test_page_command_prints_the_sha256_of_the_page_it_writes(tmp_path: Path) -> None:
    from tests.e2e.conftest import run_cli

    target = tmp_path / "page.html"
    done = run_cli(
        "page", "--write", str(target), "--url", "http://127.0.0.1:8080", "--constraint", "C:" + "ab" * 32
    )
    assert done.returncode == 0, done.stderr
    digest, url = done.stdout.splitlines()
    assert digest == f"{hashlib.sha256(target.read_bytes()).hexdigest()}  {target}"
    assert target.read_bytes() == PAGE.read_bytes()
    assert url == f"{target.as_uri()}#url=http%3A%2F%2F127.0.0.1%3A8080&constraint=C%3A{'ab' * 32}"
    assert run_cli("page").stdout == f"{hashlib.sha256(PAGE.read_bytes()).hexdigest()}  enclave-infer.html\n"


@pytest.mark.parametrize("constraint", ["C:zz", "SEC:INSECURE", f"IMAGE:{'ab' * 32} SEC:INSECURE"])
def test_page_command_refuses_a_constraint_the_page_would_refuse(constraint: str) -> None:
    from tests.e2e.conftest import run_cli

    done = run_cli("page", "--constraint", constraint)
    assert done.returncode == 1 and done.stdout == "" and done.stderr.startswith("enclave-infer: error: ")
