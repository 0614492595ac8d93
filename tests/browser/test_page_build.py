"""The committed page is the build of the committed sources, and its policy allows only itself.

``make web`` (web/build.mjs) writes the SHA-256 of web/'s sources into the page; this recomputes it,
so that a change to web/ without a rebuild, or a page edited by hand, fails here without npm."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from tests.shared_vectors import REPOSITORY

from .conftest import PAGE

WEB = REPOSITORY / "web"


def sources_digest() -> str:
    """What web/build.mjs computes: SHA-256 over "path\\nsha256(content)\\n", sorted by path."""
    names = [
        "build.mjs",
        "package.json",
        "package-lock.json",
        *(f"src/{p.name}" for p in (WEB / "src").iterdir()),
    ]
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(f"{name}\n{hashlib.sha256((WEB / name).read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()


def test_the_committed_page_is_built_from_the_committed_sources() -> None:
    page = PAGE.read_text()
    found = re.search(r'<meta name="enclave-infer-sources" content="sha256:([0-9a-f]{64})">', page)
    assert found is not None
    assert found.group(1) == sources_digest(), "web/ changed since the page was built: run `make web`"


def test_the_page_policy_allows_its_own_script_and_style_and_nothing_else() -> None:
    page = PAGE.read_text()
    policy = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page)
    assert policy is not None
    directives = dict(d.strip().split(" ", 1) for d in policy.group(1).split(";"))
    (script,) = re.findall(r"<script>(.*?)</script>", page, re.DOTALL)
    (style,) = re.findall(r"<style>(.*?)</style>", page, re.DOTALL)

    def sha(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    assert directives == {
        "default-src": "'none'",
        "script-src": f"{sha(script)} 'wasm-unsafe-eval'",
        "style-src": sha(style),
        "img-src": "blob: data:",
        "connect-src": "http: https:",
        "base-uri": "'none'",
        "form-action": "'none'",
    }
    assert not re.search(r"<(script|link|img|iframe)[^>]*\s(src|href)=\"(?!data:,)", page)


def test_the_page_names_no_path_of_the_machine_that_built_it() -> None:
    page = PAGE.read_text()
    assert str(REPOSITORY) not in page and str(Path.home()) not in page
