"""HTTP to the (untrusted) host, bounded: the SDK's only network I/O.

Client-side, internal. Every answer is read up to :attr:`ClientConfig.max_response_bytes` and
within :attr:`ClientConfig.timeout` as a whole, not per read; refusals the host (or the enclave,
for undecryptable requests) sends as RFC 9457 problem documents become :class:`ProblemDetails`.
An https:// host's certificate is checked against :attr:`ClientConfig.ca_file` when given, else
``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` when set, else certifi's roots (httpx's defaults).

A failure to connect becomes one :class:`TransportError` that says why in words
(:func:`connection_failure`): an untrusted certificate and how to trust it, http:// to a TLS port,
https:// to a plain one, a refused connection, an unknown name, a deadline.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from enclave_infer.client._config import ClientConfig
from enclave_infer.client._text import duration
from enclave_infer.errors import ProtocolError, TransportError, UsageError
from enclave_infer.protocol.api import PROBLEM_MEDIA_TYPE, ProblemDetails

__all__ = ["Reply", "Transport", "connection_failure", "tls_context"]

# OpenSSL's verification results that trusting the certificate, or its issuer, would cure
# (X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, _SELF_SIGNED_CERT_IN_CHAIN, _UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
# _UNABLE_TO_VERIFY_LEAF_SIGNATURE); others (expired, another name) are the server's to fix.
_UNTRUSTED_ISSUER = frozenset({18, 19, 20, 21})
# How to trust a certificate, in the command's and the SDK's terms.
TRUST_HINT = "--cacert FILE (ClientConfig(ca_file=...) in Python) or SSL_CERT_FILE=FILE"
# Seconds the check "does this port speak TLS?" may take, after an http:// request was cut off.
TLS_PROBE_SECONDS = 3.0


@dataclass(frozen=True)
class Reply:
    status: int
    media_type: str
    body: bytes
    retry_after: float | None = None
    url: str = ""  # what answered: the host's URL and the path, without the query

    def problem(self) -> ProblemDetails | None:
        """The problem document of an error answer, if it is one."""
        if self.status < 400 or self.media_type != PROBLEM_MEDIA_TYPE:
            return None
        try:
            return ProblemDetails.decode(self.body, status=self.status)
        except ProtocolError:
            return None


class Transport:
    def __init__(self, url: str, config: ClientConfig, transport: httpx.BaseTransport | None) -> None:
        self.url = url
        self._config = config
        verify: ssl.SSLContext | bool = tls_context(config.ca_file) if config.ca_file is not None else True
        self._http = httpx.Client(
            timeout=config.timeout, transport=transport, follow_redirects=False, verify=verify
        )

    def close(self) -> None:
        self._http.close()

    def send(
        self,
        method: str,
        path: str,
        *,
        content: bytes | Iterator[bytes] = b"",
        headers: dict[str, str] | None = None,
    ) -> Reply:
        limit, timeout = self._config.max_response_bytes, self._config.timeout
        deadline = time.monotonic() + timeout
        try:
            with self._http.stream(method, self.url + path, content=content, headers=headers) as reply:
                declared = reply.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise ProtocolError(f"the host's answer is larger than {limit} bytes")
                body = bytearray()
                for chunk in reply.iter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise ProtocolError(f"the host's answer is larger than {limit} bytes")
                    if time.monotonic() > deadline:
                        raise TransportError(f"{self.url} did not answer within {duration(timeout)}")
                media_type = reply.headers.get("content-type", "").split(";")[0].strip().lower()
                return Reply(
                    reply.status_code,
                    media_type,
                    bytes(body),
                    retry_after(reply.headers.get("retry-after", "")),
                    self.url + path.split("?")[0],
                )
        except httpx.HTTPError as exc:
            raise TransportError(
                f"cannot reach {self.url}: {connection_failure(exc, self.url, timeout)}"
            ) from None


def tls_context(ca_file: Path) -> ssl.SSLContext:
    """A client TLS context that trusts the certificates in ``ca_file`` (PEM) and nothing else."""
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except ssl.SSLError:  # an OSError too: first
        raise UsageError(f"{ca_file}: no PEM certificate in it") from None
    except FileNotFoundError:
        raise UsageError(f"{ca_file}: no such file (a CA certificate to trust, PEM)") from None
    except OSError as exc:
        raise UsageError(f"cannot read {ca_file}: {exc.strerror}") from None


def retry_after(value: str, *, now: datetime | None = None) -> float | None:
    """RFC 9110 §10.2.3 ``Retry-After``: delay-seconds or an HTTP-date, as seconds from ``now``;
    None when absent or not either."""
    value = value.strip()
    if value.isdigit():
        return float(value)
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def connection_failure(
    exc: httpx.HTTPError, url: str, timeout: float, *, trust_hint: str = TRUST_HINT
) -> str:
    """Why talking to ``url`` failed, in words a person can act on (never a class name), to follow
    ``cannot reach URL:``. ``trust_hint``: how to trust a certificate for this URL."""
    parts = urlsplit(url)
    host, scheme = parts.hostname or "", parts.scheme
    port = parts.port or (443 if scheme == "https" else 80)
    cause = _root(exc)
    if isinstance(cause, ssl.SSLCertVerificationError):
        why = cause.verify_message or "it does not verify"
        if cause.verify_code in _UNTRUSTED_ISSUER:
            return (
                f"its TLS certificate is not trusted ({why}); if this is the right server, trust that "
                f"certificate, or the CA that issued it, with {trust_hint}"
            )
        return f"its TLS certificate does not verify ({why})"
    if isinstance(cause, ssl.SSLError) and cause.reason == "WRONG_VERSION_NUMBER":
        return f"it does not speak TLS (it answers in plain HTTP): use http://{parts.netloc}"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {duration(timeout)}"
    if isinstance(cause, ConnectionRefusedError):
        return f"connection refused (nothing listens on port {port})"
    if isinstance(cause, socket.gaierror):
        return f"unknown host name {host}"
    cut_off = isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError)
    if scheme == "http" and cut_off and _speaks_tls(host, port):
        return f"it speaks TLS: use https://{parts.netloc}"
    if cut_off:
        return "it closed the connection without answering"
    reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
    return reason or "the connection failed"


def _root(exc: BaseException) -> BaseException:
    """The innermost cause: httpx wraps httpcore's error, which wraps the socket's or ssl's."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        exc = inner
        seen.add(id(exc))
    return exc


def _speaks_tls(host: str, port: int) -> bool:
    """Whether ``host:port`` completes a TLS handshake. Only to word an error: nothing is sent after
    the handshake and the certificate is not looked at."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=TLS_PROBE_SECONDS) as raw,
            probe.wrap_socket(raw, server_hostname=host or None),
        ):
            return True
    except (OSError, ValueError):  # ssl.SSLError is an OSError
        return False
