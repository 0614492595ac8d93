"""``enclave-infer page``: the browser client (``web/``), its SHA-256, and a copy to open from disk.

A page that the operator's host serves could have been altered by that operator; this command prints
the SHA-256 of the page this package carries, in ``sha256sum``'s format, so that a user can compare it
with the file they open, and ``--write FILE`` writes that page, to be opened as a local file::

    enclave-infer page --write enclave-infer.html --url http://host:8080 --constraint "C:<hash> SEC:SECURE"
    2f1c…  enclave-infer.html
    file:///home/me/enclave-infer.html#url=http%3A%2F%2Fhost%3A8080&constraint=C%3A…%20SEC%3ASECURE

The URL's fragment carries the service and the constraint to the page, and never reaches a server.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
from pathlib import Path
from urllib.parse import quote, urlencode

from enclave_infer.attestation import constraints
from enclave_infer.errors import UsageError

__all__ = ["PAGE_RESOURCE", "page_bytes", "page_url", "register"]

PAGE_RESOURCE = ("data", "web", "enclave-infer.html")


def page_bytes() -> bytes:
    """The page as the package carries it (built from ``web/`` by ``make web``)."""
    try:
        return importlib.resources.files("enclave_infer").joinpath(*PAGE_RESOURCE).read_bytes()
    except OSError:
        raise UsageError("this installation carries no web page (enclave_infer/data/web)") from None


def page_url(base: str, *, url: str | None, constraint: str | None) -> str:
    """``base`` with a fragment that fills the page's service URL and constraint."""
    fields = {key: value for key, value in (("url", url), ("constraint", constraint)) if value}
    return f"{base}#{urlencode(fields, quote_via=quote, safe='')}" if fields else base


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "page",
        help="print the browser page's SHA-256; --write FILE writes the page to open from disk",
        description="Print the SHA-256 of the browser page this package carries (as sha256sum prints "
        "it), to compare with the page you opened; with --write, write the page to FILE and print the "
        "file:// URL to open it with (--url and --constraint fill the page's fields).",
    )
    p.add_argument("--write", type=Path, metavar="FILE", help="write the page to FILE")
    p.add_argument("--url", help="the service's URL, for the page to open with")
    p.add_argument("--constraint", help="the enclave constraint, for the page to open with")
    p.set_defaults(func=_page)


def _page(args: argparse.Namespace) -> int:
    if args.url is not None and not args.url.startswith(("http://", "https://")):
        raise UsageError(f"--url must start with http:// or https://, got {args.url!r}")
    if args.constraint is not None:
        # a constraint the page would refuse is refused here first
        parsed = constraints.parse(args.constraint)
        if parsed.image is not None or parsed.registers:
            raise UsageError(
                "the page does not check IMAGE:, PCRn: or RTMRn: (they need the boot's event log and the "
                "release's measurements): verify the service with `enclave-infer attest URL CONSTRAINT`"
            )
    page = page_bytes()
    name = str(args.write) if args.write else PAGE_RESOURCE[-1]
    if args.write:
        args.write.write_bytes(page)
    print(f"{hashlib.sha256(page).hexdigest()}  {name}")
    if args.write:
        print(page_url(args.write.resolve().as_uri(), url=args.url, constraint=args.constraint))
    elif args.url:
        print(page_url(args.url.rstrip("/") + "/", url=None, constraint=args.constraint))
    return 0
