"""Browser fixtures: Debian's Chromium, headless, driven by Selenium through the system chromedriver,
and the end-to-end fixtures (a real ``enclave-infer serve`` with the colour model provisioned).

A missing browser fails these tests, never skips them: ``.ci/run`` installs ``chromium`` and
``chromium-driver``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from enclave_infer.cli.page import PAGE_RESOURCE
from tests.e2e.conftest import deployment, files, owner_key, served, workdir  # noqa: F401 - fixtures
from tests.recording import Recorder
from tests.shared_vectors import REPOSITORY

ARTIFACTS = REPOSITORY / "build" / "test-artifacts"
PAGE = REPOSITORY.joinpath("src", "enclave_infer", *PAGE_RESOURCE)
# As the machine notes say Chromium must run here: no background traffic, a fresh profile, no sandbox
# (root in CI).
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1000,1300",
)


def _found(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: the browser tests need Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver; .ci/run installs them)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = _found("chromium")
    profile = tempfile.mkdtemp(prefix="enclave-infer-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(_found("chromedriver")))
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def recorder(deployment) -> Iterator[Recorder]:  # noqa: F811 - the e2e fixture, imported above
    host, port = deployment.url.removeprefix("http://").split(":")
    relay = Recorder((host, int(port)))
    yield relay
    relay.close()


def padme(length: int) -> int:
    """The Padmé length of the spec the page implements."""
    if length < 2:
        return length
    e = length.bit_length() - 1
    s = e.bit_length()
    mask = (1 << (e - s)) - 1
    return (length + mask) & ~mask


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name
